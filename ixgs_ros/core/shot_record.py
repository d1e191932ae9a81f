"""The shot record: every paired C-arm shot written to disk the moment it exists, so that none is lost.

``xray_ingest_node`` appends each shot here before it publishes it; ``reconstruction_node`` takes up from here
the shots it did not receive (it was down, or a message was lost), and a recorded acquisition can be replayed
or turned into an ixgs-scan folder (:meth:`ShotRecord.to_scan`). A public contract, format
``ixgs-shot-record`` version 1::

    RECORD/
      record.json          {"format": "ixgs-shot-record", "version": 1, "units": "mm"}
      shots/000000.npy     the image as acquired ([H, W], its own dtype: uint16 / uint8 / float32 ...)
      shots/000000.json    {"seq": 0, "view_id": "shot_000", "stamp": 1712.5, "image_kind": "raw",
                            "K": [[...]], "T_world_source": [[...]], "width": W, "height": H,
                            "image": "000000.npy", "sha256": "<of the image bytes>", ...extras}

Each file is written to a temporary name, flushed to disk and renamed, the image first and its JSON last: a
shot exists once its JSON does, and a process killed at any moment leaves either the whole shot or none of
it (a stray image without JSON is overwritten by the next shot). Appending is O(1) per shot, which a single
ixgs-scan stack (rewritten on every append) is not. Conventions of ``K`` / ``T_world_source`` are those of
:mod:`ixgs_ros.core.geometry`; ``image_kind`` is ``"raw"`` (detector values) or ``"line_integral"``.

``seq`` numbers grow by one per shot and are never reused, also across restarts of the writer, so view ids made
from them (``view_id_prefix + seq``) stay unique for the life of the record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .geometry import GeometryError, View, validate_K, validate_pose
from .scan import IMAGE_KINDS, Scan, ScanError, atomic_write

__all__ = ["ShotRecord", "RecordedShot", "RecordError", "FORMAT", "VERSION"]

FORMAT = "ixgs-shot-record"
VERSION = 1
_SHOT_NAME = re.compile(r"^(\d{6,})\.json$")
_RESERVED = ("seq", "view_id", "stamp", "image_kind", "K", "T_world_source", "width", "height", "image", "sha256")

_log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A record folder or a shot that cannot be written or read (the message names the file)."""


@dataclass(frozen=True)
class RecordedShot:
    """One shot's entry: its JSON fields (``meta`` holds the extras, e.g. ``i0`` and ``sdd``) and its files."""
    seq: int
    view_id: str
    stamp: float
    image_kind: str
    K: np.ndarray
    T_world_source: np.ndarray
    width: int
    height: int
    image_path: Path
    sha256: str
    meta: dict

    def view(self) -> View:
        return View(self.K, self.T_world_source, self.width, self.height, dict(self.meta, view_id=self.view_id,
                                                                                stamp=self.stamp))

    def image(self) -> np.ndarray:
        """The image as recorded; RecordError when the file is missing, unreadable or not what the JSON says."""
        try:
            img = np.load(self.image_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RecordError(f"{self.image_path}: cannot read the image: {exc}") from None
        if not isinstance(img, np.ndarray) or img.shape != (self.height, self.width):
            raise RecordError(f"{self.image_path}: expected an image of {self.width}x{self.height}, got "
                              f"{getattr(img, 'shape', type(img).__name__)}")
        if hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() != self.sha256:
            raise RecordError(f"{self.image_path}: the image does not match its sha256 (a damaged file)")
        return img


class ShotRecord:
    """A record folder (created when missing). Appending is for one writer process; any number may read."""

    def __init__(self, path):
        self.path = Path(path).expanduser()
        self.shots_dir = self.path / "shots"
        head = self.path / "record.json"
        try:
            self.shots_dir.mkdir(parents=True, exist_ok=True)
            if head.exists():
                doc = json.loads(head.read_text(encoding="utf-8"))
                if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                    raise RecordError(f"{head}: not an {FORMAT} folder (format {doc.get('format')!r})"
                                      if isinstance(doc, dict) else f"{head}: not an {FORMAT} folder")
                if doc.get("version") != VERSION:
                    raise RecordError(f"{head}: unsupported version {doc.get('version')!r} (this reader supports "
                                      f"{VERSION})")
            else:
                text = json.dumps({"format": FORMAT, "version": VERSION, "units": "mm"}) + "\n"
                atomic_write(head, lambda f: f.write(text.encode()))
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordError(f"{self.path}: cannot open the shot record: {exc}") from None
        self._next = self._scan_next_seq()

    def _scan_next_seq(self) -> int:
        seqs = [int(m.group(1)) for p in self.shots_dir.iterdir() if (m := _SHOT_NAME.match(p.name))]
        return max(seqs) + 1 if seqs else 0

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next shot appended through this object gets."""
        return self._next

    def latest_seq(self) -> int:
        """The largest ``seq`` committed on disk now (by any writer), -1 when none."""
        return self._scan_next_seq() - 1

    def __len__(self) -> int:
        return sum(1 for p in self.shots_dir.iterdir() if _SHOT_NAME.match(p.name))

    def append(self, view: View, image, *, view_id, stamp: float, image_kind: str, **extra) -> RecordedShot:
        """Write one shot (image, then its JSON) and return its entry. ``view_id``: a string, or a function of
        the shot's sequence number giving it (ids unique for the life of the record). RecordError when it cannot
        be written; nothing is then recorded for it."""
        if image_kind not in IMAGE_KINDS:
            raise RecordError(f"image_kind must be one of {', '.join(IMAGE_KINDS)}, got {image_kind!r}")
        img = np.ascontiguousarray(image)
        if img.shape != view.shape:
            raise RecordError(f"image shape {img.shape} does not match the view's detector {view.shape}")
        clash = sorted(set(extra) & set(_RESERVED))
        if clash:
            raise RecordError(f"extra key(s) {clash} are reserved by the record format")
        seq = self._next
        vid = str(view_id(seq) if callable(view_id) else view_id)
        name = f"{seq:06d}"
        doc = {"seq": seq, "view_id": vid, "stamp": float(stamp), "image_kind": image_kind, "K": view.K.tolist(),
               "T_world_source": view.T_world_source.tolist(), "width": view.width, "height": view.height,
               "image": f"{name}.npy", "sha256": hashlib.sha256(img.tobytes()).hexdigest(), **extra}
        try:
            text = json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RecordError(f"shot {vid}: values must be JSON numbers/strings: {exc}") from None
        try:
            atomic_write(self.shots_dir / f"{name}.npy", lambda f: np.save(f, img, allow_pickle=False))
            atomic_write(self.shots_dir / f"{name}.json", lambda f: f.write(text.encode()))
        except OSError as exc:
            raise RecordError(f"{self.shots_dir}: cannot record shot {vid}: {exc}") from None
        self._next = seq + 1
        return self._entry(self.shots_dir / f"{name}.json", doc)

    # ------------------------------------------------------------------------------------------ reading
    def _entry(self, path: Path, doc) -> RecordedShot:
        if not isinstance(doc, dict):
            raise RecordError(f"{path}: must be a JSON object")
        try:
            K = validate_K(doc["K"], "K")
            T = validate_pose(doc["T_world_source"], "T_world_source")
            seq, w, h = int(doc["seq"]), int(doc["width"]), int(doc["height"])
            kind = doc["image_kind"]
            if kind not in IMAGE_KINDS:
                raise RecordError(f"{path}: image_kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
            image = str(doc["image"])
            if Path(image).name != image:  # a name inside shots/, never a path elsewhere
                raise RecordError(f"{path}: image must be a file name inside {self.shots_dir}, got {image!r}")
            return RecordedShot(seq, str(doc["view_id"]), float(doc["stamp"]), kind, K, T, w, h,
                                self.shots_dir / image, str(doc["sha256"]),
                                {k: v for k, v in doc.items() if k not in _RESERVED})
        except KeyError as exc:
            raise RecordError(f"{path}: missing key {exc}") from None
        except (GeometryError, TypeError, ValueError) as exc:
            if isinstance(exc, RecordError):
                raise
            raise RecordError(f"{path}: {exc}") from None

    def entries(self, after_seq: int = -1) -> list[RecordedShot]:
        """The committed shots with ``seq > after_seq``, by seq. A shot whose JSON cannot be read is skipped with
        a logged warning (the others stay readable)."""
        out = []
        for p in sorted(self.shots_dir.iterdir()):
            m = _SHOT_NAME.match(p.name)
            if not m or int(m.group(1)) <= after_seq:
                continue
            try:
                out.append(self._entry(p, json.loads(p.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError, RecordError) as exc:
                _log.warning(f"shot record: skipped {p}: {exc}")
        return out

    def to_scan(self, after_seq: int = -1) -> Scan:
        """The recorded shots as an ixgs-scan (images as float32; every shot must be of one kind and size)."""
        shots = self.entries(after_seq)
        if not shots:
            raise RecordError(f"{self.path}: no shots recorded")
        kinds = {s.image_kind for s in shots}
        sizes = {(s.width, s.height) for s in shots}
        if len(kinds) > 1 or len(sizes) > 1:
            raise RecordError(f"{self.path}: shots of several kinds {sorted(kinds)} or sizes {sorted(sizes)} do "
                              "not make one scan")
        try:
            return Scan([s.view() for s in shots], np.stack([s.image().astype(np.float32) for s in shots]),
                        kinds.pop(), {"shot_record": str(self.path)})
        except ScanError as exc:
            raise RecordError(f"{self.path}: {exc}") from None

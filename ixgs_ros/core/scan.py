"""The ixgs-scan v1 format: a directory with ``scan.json`` and ``projections.npy``. A public contract.

``scan.json``::

    {"format": "ixgs-scan", "version": 1, "units": "mm",
     "image_kind": "line_integral" | "raw",
     "projections": "projections.npy",
     "mask": "mask.npy",                          # optional: per-pixel validity, uint8 [N, H, W], 1 = valid
     "views": [{"K": [[fx, s, cx], [0, fy, cy], [0, 0, 1]],
                "T_world_source": [[...4x4 camera-to-world...]],
                "width": W, "height": H,          # optional; must match the array when present
                "sdd": 1000.0, "view_id": "...", # optional extras -> View.meta, written back
                ...}, ...],
     ...}                                         # optional top-level extras -> Scan.extra, written back

``projections.npy``: float32 ``[N, H, W]``, image ``i`` belongs to ``views[i]``. For ``line_integral`` each
value is the integral of mu (1/mm) from the source to the pixel centre; ``raw`` holds detector intensities.
``mask.npy`` (optional, named by ``"mask"``): uint8 ``[N, H, W]`` of 0/1, 0 where a pixel carries no
information (collimator shutters, saturation, metal, burnt-in overlays); readers that ignore it keep working.
Conventions of ``K`` / ``T_world_source`` are those of :mod:`ixgs_ros.core.geometry`.

Readers are strict (:class:`ScanError` names the file and field) but keep unknown keys; writers are atomic
(temporary file, then rename; ``scan.json`` last).
"""
from __future__ import annotations

import copy
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .geometry import GeometryError, View, validate_K, validate_pose

__all__ = ["scan_file", "Scan", "ScanError", "FORMAT", "VERSION", "SCAN_JSON", "PROJECTIONS_FILE", "MASK_FILE", "IMAGE_KINDS",
           "NEGATIVE_LINE_INTEGRAL_TOL", "MAX_LINE_INTEGRAL"]

FORMAT = "ixgs-scan"
VERSION = 1
SCAN_JSON = "scan.json"
PROJECTIONS_FILE = "projections.npy"
MASK_FILE = "mask.npy"
IMAGE_KINDS = ("line_integral", "raw")
#: Line integrals below ``-NEGATIVE_LINE_INTEGRAL_TOL`` are rejected (small negatives are noise in air).
NEGATIVE_LINE_INTEGRAL_TOL = 0.1
#: Line integrals above this are not physical: mu below 0.1/mm over less than 1 m of body gives under 100; raw
#: detector counts mislabelled as line integrals read in the thousands.
MAX_LINE_INTEGRAL = 1000.0

_TOP_KEYS = ("format", "version", "units", "image_kind", "projections", "views", "width", "height", "mask")
_VIEW_KEYS = ("K", "T_world_source", "width", "height")


class ScanError(ValueError):
    """Invalid scan directory, scan.json or projections (the message names the file and the field)."""


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def scan_file(folder, name, where: str) -> Path:
    """The file ``name`` (relative, as scan.json names its files) inside the scan ``folder``; ScanError before
    anything is opened when it is absolute, leaves the folder (``..``, or a symbolic link pointing outside) or
    does not exist. A scan file from elsewhere must be copied into the folder."""
    folder = Path(folder)
    rel = Path(name)
    if rel.is_absolute():
        raise ScanError(f"{where}: {name!r} must be a file name relative to the scan folder, not an absolute path")
    path = folder / rel
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise ScanError(f"{where}: cannot resolve {path}: {exc}") from None
    if not inside:
        raise ScanError(f"{where}: {name!r} leads outside the scan folder {folder} (refused: scan files must be "
                        "inside it)")
    if not path.is_file():
        raise ScanError(f"{where}: file not found: {path}")
    return path


def _check_stack(a: np.ndarray, n_views: int, where: str, holder: str) -> tuple[int, int, int]:
    """``(N, H, W)`` of a projection stack: a float32 [N, H, W] array with one image per view."""
    if a.ndim != 3:
        raise ScanError(f"{where}: projections: expected a float32 array [N, H, W], got shape {a.shape}")
    if a.dtype != np.float32:
        raise ScanError(f"{where}: projections: dtype must be float32, got {a.dtype}")
    if a.shape[0] != n_views:
        raise ScanError(f"{where}: views: {n_views} view(s) but {holder} {a.shape[0]} image(s)")
    return tuple(int(x) for x in a.shape)


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_mask(mask, shape, where: str) -> None:
    """A validity mask must be a uint8 (or bool) array of the projections' shape holding only 0 and 1."""
    if not isinstance(mask, np.ndarray):
        raise ScanError(f"{where}: expected a numpy array, got {type(mask).__name__}")
    if mask.dtype not in (np.uint8, np.bool_):
        raise ScanError(f"{where}: dtype must be uint8 (0/1), got {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ScanError(f"{where}: shape {mask.shape} does not match the projections {tuple(shape)}")
    if mask.dtype == np.uint8 and mask.size and int(mask.max()) > 1:
        raise ScanError(f"{where}: values must be 0 or 1, found {int(mask.max())}")


@dataclass
class Scan:
    """A set of X-ray views and their images.

    ``views[i]`` belongs to ``projections[i]`` (float32 ``[N, H, W]``); ``image_kind`` is ``"line_integral"``
    or ``"raw"``; ``extra`` holds the top-level keys of scan.json this version does not interpret; ``mask``
    is the optional per-pixel validity (uint8 ``[N, H, W]``, 1 = valid; None when the scan has none).
    """

    views: list
    projections: np.ndarray
    image_kind: str = "line_integral"
    extra: dict = field(default_factory=dict)
    mask: np.ndarray | None = None

    def __post_init__(self):
        self.views = list(self.views)
        if self.extra is None:
            self.extra = {}
        if isinstance(self.mask, np.ndarray) and self.mask.dtype == np.bool_:
            self.mask = self.mask.astype(np.uint8)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def height(self) -> int:
        return int(self.projections.shape[1])

    @property
    def width(self) -> int:
        return int(self.projections.shape[2])

    # ----------------------------------------------------------------- validation
    def validate(self, negative_tol: float = NEGATIVE_LINE_INTEGRAL_TOL, where: str = "scan") -> "Scan":
        """Check the scan against the v1 contract; raises :class:`ScanError`, returns ``self``."""
        if self.image_kind not in IMAGE_KINDS:
            raise ScanError(f"{where}: image_kind: must be one of {', '.join(IMAGE_KINDS)}, got {self.image_kind!r}")
        if not isinstance(self.extra, dict):
            raise ScanError(f"{where}: extra: must be a dict, got {type(self.extra).__name__}")
        clash = sorted(set(self.extra) & set(_TOP_KEYS))
        if clash:
            raise ScanError(f"{where}: extra: key(s) {', '.join(clash)} are reserved by the format")
        if len(self.views) == 0:
            raise ScanError(f"{where}: views: a scan needs at least one view")
        for i, v in enumerate(self.views):
            if not isinstance(v, View):
                raise ScanError(f"{where}: views[{i}]: expected a View, got {type(v).__name__}")
        p = self.projections
        if not isinstance(p, np.ndarray):
            raise ScanError(f"{where}: projections: expected a numpy array, got {type(p).__name__}")
        _, H, W = _check_stack(p, len(self.views), where, "the projections hold")
        for i, v in enumerate(self.views):
            if (v.height, v.width) != (H, W):
                raise ScanError(f"{where}: views[{i}]: detector {v.width}x{v.height} (width x height) does not "
                                f"match the projections image size {W}x{H}")
        if self.mask is not None:
            _check_mask(self.mask, p.shape, f"{where}: mask")
        for i in range(p.shape[0]):
            img = np.asarray(p[i])
            if not np.isfinite(img).all():
                raise ScanError(f"{where}: projections[{i}]: contains NaN or inf")
            if self.image_kind == "line_integral":
                lo = float(img.min())
                if lo < -negative_tol:
                    raise ScanError(f"{where}: projections[{i}]: negative line integral {lo:.4g} (below "
                                    f"-{negative_tol}); is image_kind 'raw' or the sign flipped?")
                hi = float(img.max())
                if hi > MAX_LINE_INTEGRAL:
                    raise ScanError(f"{where}: projections[{i}]: line integral {hi:.4g} above {MAX_LINE_INTEGRAL:g} "
                                    "is not physical (detector counts labelled as line integrals? then image_kind "
                                    "is 'raw')")
        return self

    # ----------------------------------------------------------------- I/O
    @classmethod
    def load(cls, path, negative_tol: float = NEGATIVE_LINE_INTEGRAL_TOL) -> "Scan":
        """Read a scan directory (or the path of its scan.json) strictly."""
        path = Path(path)
        jp = path if path.suffix == ".json" and not path.is_dir() else path / SCAN_JSON
        where = str(jp)
        if not jp.is_file():
            raise ScanError(f"{where}: not found (a scan is a directory with {SCAN_JSON} and {PROJECTIONS_FILE})")
        try:
            doc = json.loads(jp.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScanError(f"{where}: invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ScanError(f"{where}: top level must be a JSON object")

        def need(key):
            if key not in doc:
                raise ScanError(f"{where}: {key}: missing")
            return doc[key]

        fmt = need("format")
        if fmt != FORMAT:
            raise ScanError(f"{where}: format: expected {FORMAT!r}, got {fmt!r}")
        ver = need("version")
        if isinstance(ver, bool) or not isinstance(ver, int):
            raise ScanError(f"{where}: version: must be an integer, got {ver!r}")
        if ver != VERSION:
            raise ScanError(f"{where}: version: unsupported version {ver} (this reader supports {VERSION})")
        units = need("units")
        if units != "mm":
            raise ScanError(f"{where}: units: must be 'mm', got {units!r}")
        kind = need("image_kind")
        if kind not in IMAGE_KINDS:
            raise ScanError(f"{where}: image_kind: must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
        pname = need("projections")
        if not isinstance(pname, str) or not pname:
            raise ScanError(f"{where}: projections: must be a file name, got {pname!r}")
        views_doc = need("views")
        if not isinstance(views_doc, list) or not views_doc:
            raise ScanError(f"{where}: views: must be a non-empty list")

        Ks, Ts = [], []
        for i, vd in enumerate(views_doc):
            if not isinstance(vd, dict):
                raise ScanError(f"{where}: views[{i}]: must be an object with K and T_world_source")
            for key in ("K", "T_world_source"):
                if key not in vd:
                    raise ScanError(f"{where}: views[{i}].{key}: missing")
            try:
                Ks.append(validate_K(vd["K"], f"views[{i}].K"))
                Ts.append(validate_pose(vd["T_world_source"], f"views[{i}].T_world_source"))
            except GeometryError as exc:
                raise ScanError(f"{where}: {exc}") from None

        ppath = scan_file(jp.parent, pname, f"{where}: projections")
        try:
            mm = np.load(ppath, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, OverflowError, MemoryError) as exc:
            raise ScanError(f"{where}: projections: cannot read {ppath}: {exc}") from None
        if not isinstance(mm, np.ndarray):
            raise ScanError(f"{where}: projections: {ppath} is not a single .npy array")
        N, H, W = _check_stack(mm, len(views_doc), where, f"{ppath.name} holds")
        for key, size in (("width", W), ("height", H)):
            if key in doc and doc[key] != size:
                raise ScanError(f"{where}: {key}: {doc[key]!r} does not match the projections ({size})")
            for i, vd in enumerate(views_doc):
                if key in vd and vd[key] != size:
                    raise ScanError(f"{where}: views[{i}].{key}: {vd[key]!r} does not match the projections ({size})")

        views = [View(K, T, W, H, {k: v for k, v in vd.items() if k not in _VIEW_KEYS})
                 for K, T, vd in zip(Ks, Ts, views_doc)]
        projections = np.array(mm, dtype=np.float32, order="C")
        del mm
        mask = None
        if "mask" in doc:
            mname = doc["mask"]
            if not isinstance(mname, str) or not mname:
                raise ScanError(f"{where}: mask: must be a file name, got {mname!r}")
            mpath = scan_file(jp.parent, mname, f"{where}: mask")
            try:
                mask = np.load(mpath, allow_pickle=False)
            except (ValueError, OSError, EOFError, OverflowError, MemoryError) as exc:
                raise ScanError(f"{where}: mask: cannot read {mpath}: {exc}") from None
            if not isinstance(mask, np.ndarray):
                raise ScanError(f"{where}: mask: {mpath} is not a single .npy array")
            _check_mask(mask, projections.shape, f"{where}: mask")
            mask = np.ascontiguousarray(mask, dtype=np.uint8)
        extra = {k: v for k, v in doc.items() if k not in _TOP_KEYS}
        return cls(views, projections, kind, extra, mask).validate(negative_tol, where=where)

    def to_json_dict(self) -> dict:
        """The scan.json document of this scan (views carry width/height and their meta)."""
        views = []
        for v in self.views:
            d = {"K": v.K.tolist(), "T_world_source": v.T_world_source.tolist(), "width": v.width,
                 "height": v.height}
            d.update({k: val for k, val in v.meta.items() if k not in _VIEW_KEYS})
            views.append(d)
        doc = {"format": FORMAT, "version": VERSION, "units": "mm", "image_kind": self.image_kind,
               "projections": PROJECTIONS_FILE, "views": views}
        if self.mask is not None:
            doc["mask"] = MASK_FILE
        doc.update(self.extra)
        return doc

    def save(self, path, negative_tol: float = NEGATIVE_LINE_INTEGRAL_TOL) -> Path:
        """Validate, then write ``path/projections.npy`` and ``path/scan.json`` atomically. Returns ``path``."""
        self.validate(negative_tol)
        path = Path(path)
        try:
            text = json.dumps(self.to_json_dict(), indent=1, default=_jsonable, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ScanError(f"scan: extra/meta values must be JSON serialisable (finite numbers): {exc}") from None
        path.mkdir(parents=True, exist_ok=True)
        arr = np.ascontiguousarray(self.projections, dtype=np.float32)
        atomic_write(path / PROJECTIONS_FILE, lambda f: np.save(f, arr, allow_pickle=False))
        if self.mask is not None:
            m = np.ascontiguousarray(self.mask, dtype=np.uint8)
            atomic_write(path / MASK_FILE, lambda f: np.save(f, m, allow_pickle=False))
        atomic_write(path / SCAN_JSON, lambda f: f.write((text + "\n").encode("utf-8")))
        return path

    # ----------------------------------------------------------------- selection
    def subset(self, indices) -> "Scan":
        """A new scan with the views ``indices`` (ints, a slice or a boolean mask), in that order."""
        try:
            idx = np.atleast_1d(np.arange(len(self.views))[indices])
        except (IndexError, TypeError, ValueError) as exc:
            raise ScanError(f"subset: invalid selection for {len(self.views)} views: {exc}") from None
        if idx.size == 0:
            raise ScanError("subset: the selection is empty")
        views = [self.views[int(i)] for i in idx]
        views = [View(v.K, v.T_world_source, v.width, v.height, copy.deepcopy(v.meta)) for v in views]
        mask = np.ascontiguousarray(self.mask[idx]) if self.mask is not None else None
        return Scan(views, np.ascontiguousarray(self.projections[idx]), self.image_kind,
                    copy.deepcopy(self.extra), mask)

    def __repr__(self) -> str:
        shape = getattr(self.projections, "shape", None)
        return f"Scan({len(self.views)} views, projections {shape}, image_kind={self.image_kind!r})"

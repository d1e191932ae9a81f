"""Import X-ray images into the ixgs-scan format (:mod:`ixgs_ros.core.scan`).

Sources
    * a folder (searched recursively) or a single file of DICOM images (XA / RF / DX, single- or
      multi-frame; uncompressed or any transfer syntax pydicom can decode), or
    * a folder of PNG / TIFF images (one single-channel image per file).

Geometry
    * With a poses file (JSON or CSV, see :func:`read_poses`) the views are the entries of that file, in its
      order, each naming its image file (``"name.png"``, ``"sub/x.dcm"``, ``"cine.dcm#3"`` for frame 3 of a
      multi-frame DICOM) and giving either ``K`` + ``T_world_source`` or C-arm angles.
    * Without one, DICOM positioner attributes are used: PositionerPrimaryAngle / PositionerSecondaryAngle
      (plus the per-frame ...AngleIncrement of a DYNAMIC multi-frame run, as absolute offsets from the
      first angle), DistanceSourceToDetector, DistanceSourceToPatient and ImagerPixelSpacing, through
      :meth:`View.from_carm` (patient LPS = world, isocenter at the origin, isocenter on the image centre).

Image orientation
    :meth:`View.from_carm` describes the image as seen from the source (at AP: columns toward the patient's
    right). Radiographs are stored the way they are displayed, as seen from the detector side (at AP: the
    patient's left on the right of the image), so images whose geometry comes from DICOM angles are mirrored
    left-right on import by default (``mirror="auto"``; each view's meta records ``"mirrored": true``).
    C-arm angles from a poses file are taken as describing beam's-eye images (no mirror) unless
    ``mirror="yes"``; K / T_world_source entries always describe the image exactly as stored in the file.

Intensities
    ``kind="raw"`` (default) keeps detector values; ``kind="line_integral"`` declares the images already
    are line integrals (mu in 1/mm times mm). ``to_line_integral=True`` with ``i0`` converts raw intensities
    with ``-log(I / i0)`` (I clipped to ``[i0 * 1e-6, i0]``, so the result is >= 0; clip counts go to
    ``Scan.extra['import']``). DICOM values pass through the modality LUT (RescaleSlope / Intercept).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .geometry import GeometryError, View
from .validate import finite_number
from .radiograph import to_line_integral as _log_transform
from .scan import Scan, ScanError

__all__ = ["ScanImportError", "import_folder", "read_poses", "entry_to_view", "read_image",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
_CARM_KEYS = ("primary_deg", "secondary_deg", "sid_mm", "sod_mm", "pixel_spacing_mm", "isocenter",
              "principal_offset_px", "detector_roll_deg")
_SKIP_SUFFIXES = (".json", ".csv", ".txt", ".md", ".npy", ".nii", ".gz", ".yaml", ".yml", ".xml")


class ScanImportError(ValueError):
    """A source folder, image or poses file that cannot be imported (the message names it)."""


# ===================================================================== poses files
def _num(x, where):
    return finite_number(x, where, ScanImportError)


def _csv_value(s: str):
    try:
        return float(s)
    except ValueError:
        return s


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "file" not in [c.strip() for c in reader.fieldnames]:
            raise ScanImportError(f"{path}: a CSV poses file needs a header row with a 'file' column")
        rows = []
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            where = f"{path}:{lineno}"
            entry: dict = {"file": row.pop("file")}
            if not entry["file"]:
                raise ScanImportError(f"{where}: file: empty")
            row = {k: v for k, v in row.items() if v != ""}

            def take(keys):
                return [_num(row.pop(k), f"{where}: {k}") for k in keys]

            kk = [f"K{i}{j}" for i in range(3) for j in range(3)]
            if all(k in row for k in kk):
                entry["K"] = np.array(take(kk)).reshape(3, 3).tolist()
            elif all(k in row for k in ("fx", "fy", "cx", "cy")):
                fx, fy, cx, cy = take(("fx", "fy", "cx", "cy"))
                skew = take(("skew",))[0] if "skew" in row else 0.0
                entry["K"] = [[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
            tt = [f"T{i}{j}" for i in range(3) for j in range(4)]
            if all(k in row for k in tt):
                T = np.eye(4)
                T[:3] = np.array(take(tt)).reshape(3, 4)
                bottom = [f"T3{j}" for j in range(4)]
                if any(k in row for k in bottom):
                    T[3] = take([k for k in bottom])
                entry["T_world_source"] = T.tolist()
            for k in ("primary_deg", "secondary_deg", "sid_mm", "sod_mm", "detector_roll_deg"):
                if k in row:
                    entry[k] = take((k,))[0]
            if "pixel_spacing_mm" in row:
                entry["pixel_spacing_mm"] = take(("pixel_spacing_mm",))[0]
            elif "pixel_spacing_row_mm" in row or "pixel_spacing_col_mm" in row:
                entry["pixel_spacing_mm"] = take(("pixel_spacing_row_mm", "pixel_spacing_col_mm"))
            if "principal_offset_u_px" in row or "principal_offset_v_px" in row:
                entry["principal_offset_px"] = take(("principal_offset_u_px", "principal_offset_v_px"))
            if any(k in row for k in ("isocenter_x", "isocenter_y", "isocenter_z")):
                entry["isocenter"] = take(("isocenter_x", "isocenter_y", "isocenter_z"))
            entry.update({k: _csv_value(v) for k, v in row.items()})
            rows.append(entry)
    return rows


def read_poses(path) -> tuple[list[dict], dict]:
    """Read a poses file. Returns ``(entries, settings)``: ``entries`` in file order, each a dict with
    ``"file"`` and either ``K`` + ``T_world_source`` or C-arm keys (``primary_deg``, ``secondary_deg``,
    ``sid_mm``, ``sod_mm``, ``pixel_spacing_mm`` and optionally ``isocenter``, ``principal_offset_px``,
    ``detector_roll_deg``; also accepted nested under ``"carm"``), plus any extra keys (kept as view meta).
    ``settings`` holds the JSON top-level ``defaults`` (merged into every C-arm entry) and
    ``patient_to_world``.

    JSON forms: ``{"views": [{"file": ...}, ...], "defaults": {...}, "patient_to_world": [[...]]}``, a list
    of entries, or a mapping ``{"name.png": {...}, ...}``. CSV: a header row with ``file`` and either
    ``K00..K22`` or ``fx, fy, cx, cy[, skew]`` plus ``T00..T23`` (row-major 3x4, optional ``T30..T33``), or
    ``primary_deg, secondary_deg, sid_mm, sod_mm`` with ``pixel_spacing_mm`` (square) or
    ``pixel_spacing_row_mm, pixel_spacing_col_mm``, and optional ``detector_roll_deg``,
    ``principal_offset_u_px, principal_offset_v_px``, ``isocenter_x, isocenter_y, isocenter_z``; other
    columns become view meta.
    """
    path = Path(path)
    if not path.is_file():
        raise ScanImportError(f"{path}: poses file not found")
    settings: dict = {}
    if path.suffix.lower() == ".csv":
        entries = _csv_rows(path)
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScanImportError(f"{path}: invalid JSON: {exc}") from None
        if isinstance(doc, list):
            entries = doc
        elif isinstance(doc, dict) and "views" in doc:
            entries = doc["views"]
            settings = {k: doc[k] for k in ("defaults", "patient_to_world") if k in doc}
        elif isinstance(doc, dict) and doc and all(isinstance(v, dict) for v in doc.values()):
            entries = [dict(v, file=k) for k, v in doc.items()]
        else:
            raise ScanImportError(f"{path}: expected {{'views': [...]}}, a list of views or a mapping "
                                  "file name -> view")
        if not isinstance(entries, list):
            raise ScanImportError(f"{path}: views: must be a list")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not e["file"]:
                raise ScanImportError(f"{path}: views[{i}]: must be an object with a 'file' name")
        if "defaults" in settings and not isinstance(settings["defaults"], dict):
            raise ScanImportError(f"{path}: defaults: must be an object")
    if not entries:
        raise ScanImportError(f"{path}: no views")
    names = [e["file"] for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScanImportError(f"{path}: file(s) listed more than once: {', '.join(dup)}")
    return entries, settings


def entry_to_view(entry: dict, width: int, height: int, defaults: dict | None = None,
                  patient_to_world=None, where: str = "poses") -> View:
    """A :class:`View` from one poses entry (see :func:`read_poses`) for an image of ``width x height``."""
    e = dict(entry)
    e.pop("file", None)
    try:
        if "K" in e or "T_world_source" in e:
            if "K" not in e or "T_world_source" not in e:
                raise ScanImportError(f"{where}: needs both K and T_world_source")
            K, T = e.pop("K"), e.pop("T_world_source")
            for k in ("width", "height"):
                if k in e and e.pop(k) != (width if k == "width" else height):
                    raise ScanImportError(f"{where}: {k} does not match the image ({width}x{height})")
            return View(K, T, width, height, e)
        carm = dict(defaults or {})
        if isinstance(e.get("carm"), dict):
            carm.update(e.pop("carm"))
        carm.update({k: e.pop(k) for k in _CARM_KEYS if k in e})
        for k in ("width", "height"):
            carm.pop(k, None)
            e.pop(k, None)
        missing = [k for k in ("primary_deg", "secondary_deg", "sid_mm", "sod_mm", "pixel_spacing_mm")
                   if k not in carm]
        if missing:
            raise ScanImportError(f"{where}: needs K and T_world_source, or C-arm angles; missing "
                                  f"{', '.join(missing)}")
        unknown = sorted(set(carm) - set(_CARM_KEYS))
        if unknown:
            raise ScanImportError(f"{where}: unknown C-arm key(s) {', '.join(unknown)}")
        return View.from_carm(width=width, height=height, patient_to_world=patient_to_world, meta=e, **carm)
    except GeometryError as exc:
        raise ScanImportError(f"{where}: {exc}") from None


# ===================================================================== images
def read_image(path) -> np.ndarray:
    """A single-channel PNG / TIFF as float32 ``[H, W]`` (raw stored values, no scaling)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            img = tifffile.imread(str(path))
        except Exception as exc:  # tifffile raises several types for broken files
            raise ScanImportError(f"{path}: cannot read TIFF: {exc}") from None
    elif suffix == ".png":
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ScanImportError(f"{path}: cannot read PNG")
        if img.ndim == 3:
            img = img[..., :3][..., ::-1]  # BGR -> RGB (channels are checked equal below anyway)
    else:
        raise ScanImportError(f"{path}: unsupported image type (use PNG or TIFF)")
    img = np.asarray(img)
    img = np.squeeze(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ScanImportError(f"{path}: colour image; X-ray images must be single-channel (grey)")
        img = rgb[..., 0]
    if img.ndim != 2:
        raise ScanImportError(f"{path}: expected one 2D single-channel image, got shape {img.shape}")
    if img.dtype == bool or not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
        raise ScanImportError(f"{path}: unsupported pixel type {img.dtype}")
    return img.astype(np.float32)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


class _Frame:
    __slots__ = ("key", "path", "image", "ds", "index", "nframes")

    def __init__(self, key, path, image, ds=None, index=0, nframes=1):
        self.key, self.path, self.image, self.ds, self.index, self.nframes = key, path, image, ds, index, nframes


def _dicom_frames(path: Path, key: str) -> list[_Frame]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ScanImportError(f"{path}: cannot read DICOM: {exc}") from None
    if "PixelData" not in ds:
        return []  # DICOMDIR, structured reports, ...
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ScanImportError(f"{path}: colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}); expected grey")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing decoder plugins raise RuntimeError/NotImplementedError/...
        raise ScanImportError(f"{path}: cannot decode pixel data "
                              f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): {exc}") from None
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes == 1 and arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != nframes:
        raise ScanImportError(f"{path}: unexpected pixel array shape {arr.shape} for {nframes} frame(s)")
    if nframes == 1:
        return [_Frame(key, path, arr[0], ds, 0, 1)]
    return [_Frame(f"{key}#{k}", path, arr[k], ds, k, nframes) for k in range(nframes)]


def _dicom_view(fr: _Frame, width: int, height: int) -> View:
    ds, where = fr.ds, f"{fr.path}" + (f" frame {fr.index}" if fr.nframes > 1 else "")

    def need(name):
        val = ds.get(name)
        if val is None or val == "":
            raise ScanImportError(f"{where}: DICOM attribute {name} is missing; give a poses file (--poses)")
        return val

    rot = ds.get("FieldOfViewRotation")
    if rot not in (None, "") and float(rot) % 360 != 0:
        raise ScanImportError(f"{where}: FieldOfViewRotation {rot} is not supported; give a poses file")
    if str(ds.get("FieldOfViewHorizontalFlip", "NO")).upper() == "YES":
        raise ScanImportError(f"{where}: FieldOfViewHorizontalFlip YES is not supported; give a poses file")
    primary = _num(need("PositionerPrimaryAngle"), f"{where}: PositionerPrimaryAngle")
    secondary = _num(need("PositionerSecondaryAngle"), f"{where}: PositionerSecondaryAngle")
    if fr.nframes > 1:  # per-frame offsets from the first angle (DYNAMIC runs; also honoured if unflagged)
        for attr, name in (("PositionerPrimaryAngleIncrement", "primary"),
                           ("PositionerSecondaryAngleIncrement", "secondary")):
            inc = ds.get(attr)
            if inc is None or inc == "":
                continue
            inc = [inc] if not isinstance(inc, (list, tuple)) and not hasattr(inc, "__len__") else list(inc)
            if len(inc) != fr.nframes:
                raise ScanImportError(f"{fr.path}: {attr} has {len(inc)} value(s) for {fr.nframes} frames")
            delta = _num(inc[fr.index], f"{where}: {attr}")
            if name == "primary":
                primary += delta
            else:
                secondary += delta
    sid = _num(need("DistanceSourceToDetector"), f"{where}: DistanceSourceToDetector")
    sod = _num(need("DistanceSourceToPatient"), f"{where}: DistanceSourceToPatient")
    spacing = ds.get("ImagerPixelSpacing")
    if spacing is None or spacing == "":
        raise ScanImportError(f"{where}: DICOM attribute ImagerPixelSpacing is missing; give a poses file (--poses)")
    values = list(spacing) if isinstance(spacing, (list, tuple)) or hasattr(spacing, "__iter__") and \
        not isinstance(spacing, str) else [spacing]
    if len(values) != 2:
        raise ScanImportError(f"{where}: ImagerPixelSpacing must hold 2 values (row, column spacing in mm), got "
                              f"{len(values)}")
    spacing = [_num(s, f"{where}: ImagerPixelSpacing") for s in values]
    meta = {"dicom": {"sop_instance_uid": str(ds.get("SOPInstanceUID", "")), "modality": str(ds.get("Modality", "")),
                      "frame": fr.index, "photometric": str(ds.get("PhotometricInterpretation", ""))}}
    try:
        return View.from_carm(primary, secondary, sid, sod, spacing, width, height, meta=meta)
    except GeometryError as exc:
        raise ScanImportError(f"{where}: {exc}") from None


def _collect(src: Path) -> tuple[list[_Frame], list[str]]:
    """All image frames under ``src`` (a folder, searched recursively, or one file), keyed by relative path."""
    if src.is_file():
        files, root = [src], src.parent
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
        root = src
    else:
        raise ScanImportError(f"{src}: no such file or folder")
    frames, skipped = [], []
    for p in files:
        key = p.relative_to(root).as_posix()
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            frames.append(_Frame(key, p, read_image(p)))
        elif suffix in (".dcm", ".dicom") or (suffix not in _SKIP_SUFFIXES and _is_dicom(p)):
            got = _dicom_frames(p, key)
            frames.extend(got)
            if not got:
                skipped.append(key)
        else:
            skipped.append(key)
    if not frames:
        raise ScanImportError(f"{src}: no DICOM, PNG or TIFF images found")
    kinds = {"dicom" if f.ds is not None else "image" for f in frames}
    if len(kinds) > 1:
        raise ScanImportError(f"{src}: holds both DICOM and PNG/TIFF images; import them separately")
    return frames, skipped


def _match(frames: list[_Frame], name: str, where: str) -> _Frame:
    by_key = {f.key: f for f in frames}
    if name in by_key:
        return by_key[name]
    if name.endswith("#0") and name[:-2] in by_key:
        return by_key[name[:-2]]
    base = [f for f in frames if f.key.rsplit("/", 1)[-1] == name]
    if len(base) == 1:
        return base[0]
    if len(base) > 1:
        raise ScanImportError(f"{where}: file {name!r} matches several images: "
                              f"{', '.join(f.key for f in base)}; use the relative path")
    raise ScanImportError(f"{where}: file {name!r} not found among the images")


# ===================================================================== import
def import_folder(src, poses=None, kind: str = "raw", to_line_integral: bool = False, i0: float | None = None,
                  mirror: str = "auto") -> Scan:
    """Import images (see the module docs) into a validated :class:`Scan`.

    ``poses``: path of a JSON / CSV poses file, or None for DICOM positioner attributes. ``kind``:
    ``"raw"`` or ``"line_integral"`` (what the stored values are). ``to_line_integral`` + ``i0``: convert
    raw intensities to line integrals. ``mirror``: ``"auto"``, ``"yes"`` or ``"no"`` (mirror left-right
    the images whose views come from C-arm angles; auto = only DICOM attributes).
    """
    src = Path(src)
    if kind not in ("raw", "line_integral"):
        raise ScanImportError(f"kind: must be 'raw' or 'line_integral', got {kind!r}")
    if mirror not in ("auto", "yes", "no"):
        raise ScanImportError(f"mirror: must be 'auto', 'yes' or 'no', got {mirror!r}")
    if to_line_integral:
        if kind == "line_integral":
            raise ScanImportError("to_line_integral: the images are already line integrals (kind=line_integral)")
        if i0 is None:
            raise ScanImportError("to_line_integral needs i0 (the unattenuated intensity, --i0)")
        i0 = _num(i0, "i0")
        if i0 <= 0:
            raise ScanImportError(f"i0: must be positive, got {i0}")

    frames, skipped = _collect(src)
    sizes = {f.image.shape for f in frames}
    if len(sizes) > 1:
        detail = ", ".join(f"{f.key}: {f.image.shape[1]}x{f.image.shape[0]}" for f in frames[:6])
        raise ScanImportError(f"{src}: images differ in size ({detail}{', ...' if len(frames) > 6 else ''})")
    H, W = frames[0].image.shape

    views, images, used = [], [], []
    if poses is not None:
        entries, settings = read_poses(poses)
        p2w = settings.get("patient_to_world")
        for i, e in enumerate(entries):
            where = f"{poses}: views[{i}] ({e['file']})"
            fr = _match(frames, e["file"], where)
            v = entry_to_view(e, W, H, settings.get("defaults"), p2w, where)
            flip = "carm" in v.meta and mirror == "yes"
            views.append(v)
            images.append(fr.image[:, ::-1] if flip else fr.image)
            used.append((fr.key, flip))
    else:
        if frames[0].ds is None:
            raise ScanImportError(f"{src}: PNG/TIFF images need a poses file (--poses) for their geometry")
        frames.sort(key=lambda f: (int(f.ds.get("InstanceNumber", 0) or 0), f.key, f.index))
        flip = mirror in ("auto", "yes")
        for fr in frames:
            views.append(_dicom_view(fr, W, H))
            images.append(fr.image[:, ::-1] if flip else fr.image)
            used.append((fr.key, flip))
    for v, (key, flip) in zip(views, used):
        v.meta.setdefault("view_id", key)
        v.meta["file"] = key
        if flip:
            v.meta["mirrored"] = True

    proj = np.ascontiguousarray(np.stack(images), dtype=np.float32)
    info: dict = {"source": str(src), "poses": None if poses is None else str(poses), "stored_kind": kind}
    used_keys = {k for k, _ in used}
    ignored = [f.key for f in frames if f.key not in used_keys] + skipped
    if ignored:
        info["ignored"] = ignored
    if not np.isfinite(proj).all():
        raise ScanImportError(f"{src}: images contain NaN or inf values")
    for (key, _), img in zip(used, proj):
        if float(img.max()) == float(img.min()):
            raise ScanImportError(f"{src}: image {key} is constant ({float(img.min()):g} everywhere): no exposure, a "
                                  "saturated detector or a broken modality LUT")
    if to_line_integral:
        proj, info["to_line_integral"] = _log_transform(proj, i0)
        kind = "line_integral"
    scan = Scan(views, proj, kind, {"import": info})
    try:
        return scan.validate(where=str(src))
    except ScanError as exc:
        raise ScanImportError(str(exc)) from None

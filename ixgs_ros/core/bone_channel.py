"""The bone channel of a scan: bone-only line integrals beside the full ones (a compatible extension of the
ixgs-scan v1 format).

A scan carries its bone channel as a top-level extra key of ``scan.json``::

    "bone": "bone.npy"        # float32 [N, H, W]: for view i, the line integral of the bone volume (mu in 1/mm of
                              # the CT voxels above 200 HU, zero elsewhere) along every pixel ray, in 1/mm x mm

written by the standardization model (its second output) or any other source; readers that do not know the key
ignore it (and keep it). Simulated scans (``ixgs simulate --style``, :mod:`ixgs_ros.simulation.bone_scan`) carry
the ideal bone projection in ``ideal/bone.npy`` instead (scan.json ``"ideal": {"bone": ...}``): that one is
for evaluation only and is read only when asked for explicitly (``from_ideal``, the CLI's
``--bone-from-ideal``).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from .scan import SCAN_JSON, Scan, ScanError

__all__ = ["BONE_KEY", "BONE_FILE", "BoneChannelError", "load_bone_channel", "save_bone_channel", "has_bone_channel"]

BONE_KEY = "bone"
BONE_FILE = "bone.npy"


class BoneChannelError(ScanError):
    """A scan has no usable bone channel (missing, unreadable, wrong shape or values)."""


def has_bone_channel(scan: Scan, from_ideal: bool = False) -> bool:
    """Whether ``scan`` names a bone channel (its ``"bone"`` key, or with ``from_ideal`` its ``ideal/bone``)."""
    extra = scan.extra or {}
    if isinstance(extra.get(BONE_KEY), str):
        return True
    return bool(from_ideal and isinstance((extra.get("ideal") or {}).get("bone"), str))


def _source(scan: Scan, from_ideal: bool) -> tuple[str, str]:
    extra = scan.extra or {}
    name = extra.get(BONE_KEY)
    if name is not None:
        if not isinstance(name, str) or not name:
            raise BoneChannelError(f"scan.json: {BONE_KEY}: must be a file name, got {name!r}")
        return name, BONE_KEY
    ideal = (extra.get("ideal") or {}).get("bone")
    if from_ideal:
        if isinstance(ideal, str) and ideal:
            return ideal, "ideal.bone"
        raise BoneChannelError("scan.json: this scan has neither a bone channel (\"bone\": \"bone.npy\") nor an "
                               "ideal bone projection (ideal/bone.npy): the bone target needs one")
    hint = (" (it has the simulator's ideal/bone.npy: pass --bone-from-ideal to use it for evaluation)"
            if isinstance(ideal, str) else "")
    raise BoneChannelError("scan.json: this scan has no bone channel (\"bone\": \"bone.npy\", float32 [N, H, W] "
                           f"bone line integrals, e.g. from the standardization model); the bone target needs one{hint}")


def load_bone_channel(scan_dir, scan: Scan, *, from_ideal: bool = False, negative_tol: float = 0.1) -> np.ndarray:
    """The bone line integrals of the scan in ``scan_dir`` (float32 ``[N, H, W]``, row ``i`` for
    ``scan.views[i]``): the file named by scan.json's ``"bone"`` key, or with ``from_ideal`` (evaluation only) the
    simulator's ``ideal/bone.npy`` when the scan has no ``"bone"`` key. Raises :class:`BoneChannelError` naming
    the problem (no channel, missing file, wrong shape or dtype, NaN, negative values)."""
    name, key = _source(scan, from_ideal)
    base = Path(scan_dir)
    if base.is_file():
        base = base.parent
    path = Path(name) if Path(name).is_absolute() else base / name
    where = f"scan.json: {key}"
    if not path.is_file():
        raise BoneChannelError(f"{where}: file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BoneChannelError(f"{where}: cannot read {path}: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 3:
        raise BoneChannelError(f"{where}: expected a float32 array [N, H, W], got shape {getattr(arr, 'shape', None)}")
    if arr.dtype != np.float32:
        raise BoneChannelError(f"{where}: dtype must be float32, got {arr.dtype}")
    want = (len(scan.views), scan.height, scan.width)
    if arr.shape != want:
        raise BoneChannelError(f"{where}: shape {arr.shape} does not match the scan's projections {want}")
    if not np.isfinite(arr).all():
        raise BoneChannelError(f"{where}: contains NaN or inf")
    lo = float(arr.min())
    if lo < -negative_tol:
        raise BoneChannelError(f"{where}: negative bone line integral {lo:.4g} (below -{negative_tol})")
    return np.ascontiguousarray(arr, dtype=np.float32)


def save_bone_channel(scan_dir, bone, file_name: str = BONE_FILE) -> Path:
    """Write ``bone`` (float32 ``[N, H, W]``) as ``scan_dir/file_name`` and name it in scan.json's ``"bone"`` key
    (the scan must exist; its other keys are kept). Returns the file's path."""
    d = Path(scan_dir)
    scan = Scan.load(d)
    arr = np.ascontiguousarray(bone, dtype=np.float32)
    if arr.shape != (len(scan.views), scan.height, scan.width):
        raise BoneChannelError(f"bone channel: shape {arr.shape} does not match the scan's projections "
                               f"{(len(scan.views), scan.height, scan.width)}")
    if not np.isfinite(arr).all():
        raise BoneChannelError("bone channel: contains NaN or inf")
    path = d / file_name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    os.replace(tmp, path)
    doc = json.loads((d / SCAN_JSON).read_text(encoding="utf-8"))
    doc[BONE_KEY] = file_name
    jt = d / f".{SCAN_JSON}.tmp-{os.getpid()}"
    jt.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(jt, d / SCAN_JSON)
    return path

"""Volume exports that 3D Slicer (and ITK, nibabel) open with the right geometry: NIfTI and NRRD.

The world frame of ixgs_ros is the NIfTI scanner frame (RAS+). NRRD files state their frame in the ``space``
field; they are written in ``left-posterior-superior`` by default (what Slicer and ITK write themselves),
with the x and y components of ``space directions`` / ``space origin`` negated, or in
``right-anterior-superior`` unchanged. Axis ``n`` of the array is NRRD axis ``n`` (fastest first), so
``space directions`` row ``n`` is column ``n`` of the grid affine (in the chosen space).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.volume import Grid, VolumeError, load_nifti, mu_to_hu, save_nifti

__all__ = ["NRRD_SPACES", "save_nrrd", "load_nrrd", "nrrd_header", "affine_from_nrrd_header", "export_nifti",
           "load_nifti"]

#: NRRD ``space`` value -> sign flip from RAS to that space.
NRRD_SPACES = {
    "right-anterior-superior": np.array([1.0, 1.0, 1.0]),
    "left-posterior-superior": np.array([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.array([-1.0, 1.0, 1.0]),
}
_SPACE_ALIASES = {"ras": "right-anterior-superior", "lps": "left-posterior-superior",
                  "las": "left-anterior-superior"}


def _space_name(space: str) -> str:
    key = str(space).strip().lower()
    key = _SPACE_ALIASES.get(key, key)
    if key not in NRRD_SPACES:
        raise VolumeError(f"unsupported NRRD space {space!r}; use RAS, LPS or LAS")
    return key


def nrrd_header(grid: Grid, space: str = "LPS", *, content: str | None = None) -> dict:
    """The geometry part of an NRRD header for ``grid`` in ``space`` (``"LPS"`` or ``"RAS"``)."""
    name = _space_name(space)
    flip = NRRD_SPACES[name]
    A = grid.affine
    header = {
        "space": name,
        "space directions": (A[:3, :3] * flip[:, None]).T.copy(),  # row n = world step of array axis n
        "space origin": A[:3, 3] * flip,
        "kinds": ["domain", "domain", "domain"],
        "space units": ["mm", "mm", "mm"],
    }
    if content:
        header["content"] = content
    return header


def affine_from_nrrd_header(header: dict) -> np.ndarray:
    """The RAS+ voxel-to-world affine described by an NRRD header (3D, ``space`` RAS/LPS/LAS)."""
    space = header.get("space")
    if space is None:
        raise VolumeError("NRRD header has no 'space' field: the world frame is unknown")
    flip = NRRD_SPACES[_space_name(space)]
    D = np.asarray(header["space directions"], dtype=np.float64)
    if D.shape != (3, 3) or not np.all(np.isfinite(D)):
        raise VolumeError(f"NRRD 'space directions' must be 3 finite 3-vectors, got {D.tolist()}")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    A = np.eye(4)
    A[:3, :3] = D.T * flip[:, None]
    A[:3, 3] = origin * flip
    return A


def save_nrrd(path, data, grid: Grid, *, space: str = "LPS", values: str = "mu", compress: bool = True,
              extra: dict | None = None) -> Path:
    """Write a volume as ``.nrrd`` (``values="hu"`` converts mu to Hounsfield units first).

    ``extra``: additional key/value pairs stored in the header (strings).
    """
    import nrrd

    data = np.asarray(data, dtype=np.float32)
    if data.shape != grid.shape:
        raise VolumeError(f"data shape {data.shape} does not match grid shape {grid.shape}")
    if values == "hu":
        data = mu_to_hu(data).astype(np.float32)
        content = "ixgs_ros volume, Hounsfield units"
    elif values == "mu":
        content = "ixgs_ros volume, linear attenuation mu [1/mm]"
    else:
        raise VolumeError(f"values must be 'mu' or 'hu', got {values!r}")
    header = nrrd_header(grid, space, content=content)
    header["encoding"] = "gzip" if compress else "raw"
    custom = {}
    if extra:
        for k, v in extra.items():
            header[str(k)] = str(v)
            custom[str(k)] = "string"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, header, index_order="F", custom_field_map=custom or None, compression_level=6)
    return path


def load_nrrd(path) -> tuple[np.ndarray, Grid, dict]:
    """Read a 3D NRRD as ``(float32 array [I, J, K], Grid (RAS+), header)``."""
    import nrrd

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"volume file not found: {path}")
    data, header = nrrd.read(str(path), index_order="F")
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return np.asarray(data, dtype=np.float32), Grid(data.shape, affine_from_nrrd_header(header)), header


def export_nifti(path, data, grid: Grid, *, values: str = "mu") -> Path:
    """NIfTI export (sform = qform = the grid affine, scanner RAS+), mu or HU."""
    if values == "hu":
        return save_nifti(path, mu_to_hu(np.asarray(data, dtype=np.float32)), grid, description="HU")
    if values != "mu":
        raise VolumeError(f"values must be 'mu' or 'hu', got {values!r}")
    return save_nifti(path, data, grid)

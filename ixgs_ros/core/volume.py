"""Volume grids: a shape plus an affine from voxel index (i, j, k) to world mm, and NIfTI I/O.

Arrays are indexed ``data[i, j, k]`` exactly as NIfTI stores them; ``affine @ (i, j, k, 1)`` is the world
position (mm) of the voxel centre. Attenuation volumes hold mu in 1/mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Grid", "VolumeError", "MU_WATER", "hu_to_mu", "mu_to_hu", "load_nifti", "save_nifti", "resample",
           "read_nifti_image", "read_nifti_array"]

#: Linear attenuation of water near 70 keV effective energy (1/mm).
MU_WATER = 0.0195


class VolumeError(ValueError):
    """Raised for invalid grids or volume files."""


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """mu = mu_water * (1 + HU/1000), clipped at 0 (1/mm). Works on numpy arrays and torch tensors."""
    mu = mu_water * (1.0 + hu / 1000.0)
    return mu.clip(min=0) if hasattr(mu, "clip") else max(mu, 0.0)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    return (mu / mu_water - 1.0) * 1000.0


@dataclass(frozen=True)
class Grid:
    """A regular 3D grid: ``shape`` (I, J, K) and ``affine`` (4x4, voxel index -> world mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise VolumeError(f"grid shape must be 3 positive integers, got {self.shape}")
        A = np.array(self.affine, dtype=np.float64)
        if A.shape != (4, 4) or not np.all(np.isfinite(A)):
            raise VolumeError("grid affine must be a finite 4x4 matrix")
        if not np.allclose(A[3], [0, 0, 0, 1]):
            raise VolumeError(f"grid affine last row must be [0, 0, 0, 1], got {A[3].tolist()}")
        if abs(np.linalg.det(A[:3, :3])) < 1e-12:
            raise VolumeError("grid affine is singular")
        A.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", A)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def centered(cls, size, spacing, center=(0.0, 0.0, 0.0)) -> "Grid":
        """Axis-aligned grid of ``size`` voxels (int or 3 ints), ``spacing`` mm, centred on ``center``."""
        size = np.broadcast_to(np.asarray(size, dtype=int), (3,))
        spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
        if np.any(spacing <= 0):
            raise VolumeError(f"spacing must be positive, got {spacing.tolist()}")
        A = np.diag(np.append(spacing, 1.0))
        A[:3, 3] = np.asarray(center, dtype=np.float64) - spacing * (size - 1) / 2.0
        return cls(tuple(int(s) for s in size), A)

    @classmethod
    def like(cls, path) -> "Grid":
        img = read_nifti_image(path)
        return cls(img.shape[:3], img.affine)

    # ---------------------------------------------------------------- properties
    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def center(self) -> np.ndarray:
        return self.index_to_world((np.array(self.shape) - 1) / 2.0)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def index_to_world(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=np.float64)
        Ainv = np.linalg.inv(self.affine)
        return xyz @ Ainv[:3, :3].T + Ainv[:3, 3]

    def contains(self, xyz, margin_vox: float = 0.0) -> np.ndarray:
        """Whether world points ``[N, 3]`` lie inside the grid's box (voxel edges, not centres), shrunk by
        ``margin_vox`` voxels on every side (negative: grown)."""
        ijk = self.world_to_index(xyz)
        return np.all((ijk >= -0.5 + margin_vox) & (ijk <= np.array(self.shape) - 0.5 - margin_vox), axis=-1)

    def world_coords(self) -> np.ndarray:
        """World coordinates of all voxel centres, ``[I, J, K, 3]``."""
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in self.shape], indexing="ij"), axis=-1)
        return self.index_to_world(ijk)

    def corners(self) -> np.ndarray:
        """World coordinates of the 8 outer corners of the grid (voxel edges, not centres)."""
        lo, hi = -0.5, np.array(self.shape) - 0.5
        c = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
        return self.index_to_world(c)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.corners()
        return c.min(0), c.max(0)

    def beyond_mm(self, other: "Grid") -> float:
        """How far this grid's box reaches beyond ``other``'s (mm, the largest overshoot of the axis-aligned world
        bounds along any axis); 0 when it lies inside."""
        (lo, hi), (slo, shi) = other.bounds(), self.bounds()
        return float(max(0.0, np.max(lo - slo), np.max(shi - hi)))

    def padded(self, pad: int) -> "Grid":
        """This grid grown by ``pad`` voxels on every side (same axes and spacing)."""
        A = np.array(self.affine, dtype=np.float64)
        A[:3, 3] = self.index_to_world(np.full(3, -float(pad)))
        return Grid(tuple(int(s) + 2 * int(pad) for s in self.shape), A)

    def coarsened(self, factor: int) -> "Grid":
        """A grid over (at least) the same box with voxels ``factor`` times larger along each axis (same axes
        and centre; ceil(n / factor) voxels per axis)."""
        factor = int(factor)
        if factor < 1:
            raise ValueError(f"coarsening factor must be >= 1, got {factor}")
        shape = tuple(-(-int(n) // factor) for n in self.shape)
        A = np.array(self.affine, dtype=np.float64)
        A[:3, :3] *= factor
        A[:3, 3] = self.center - A[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)
        return Grid(shape, A)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine": self.affine.tolist()}

    def __eq__(self, other):
        if not isinstance(other, Grid):
            return NotImplemented
        return self.shape == other.shape and np.allclose(self.affine, other.affine)

    __hash__ = None


def read_nifti_image(path):
    """The nibabel image of a NIfTI file; VolumeError naming the file when it is missing or not a readable NIfTI
    (truncated, garbage, not gzip)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"volume file not found: {path}")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel's ImageFileError, EOFError, zlib and gzip errors
        raise VolumeError(f"{path}: not a readable NIfTI volume ({type(exc).__name__}: {exc})") from None


def read_nifti_array(path, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(3D array [I, J, K], affine)`` of a NIfTI file (``dtype``: convert, else the stored type after scaling);
    VolumeError naming the file when it is unreadable or not 3D."""
    path = Path(path)
    img = read_nifti_image(path)
    try:
        data = np.asarray(img.dataobj, dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated or corrupt data after a readable header
        raise VolumeError(f"{path}: cannot read the volume data: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_nifti(path) -> tuple[np.ndarray, Grid]:
    """Load a NIfTI volume as (float32 array [I, J, K], Grid)."""
    data, affine = read_nifti_array(path, np.float32)
    return data, Grid(data.shape, affine)


def save_nifti(path, data, grid: Grid, description: str = "mu [1/mm]") -> Path:
    """Write ``data`` (float32 [I, J, K]) with ``grid.affine`` as sform and qform (code 1, scanner mm)."""
    import nibabel as nib

    data = np.asarray(data, dtype=np.float32)
    if data.shape != grid.shape:
        raise VolumeError(f"data shape {data.shape} does not match grid shape {grid.shape}")
    img = nib.Nifti1Image(data, np.asarray(grid.affine))
    img.set_sform(np.asarray(grid.affine), code=1)
    img.set_qform(np.asarray(grid.affine), code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def resample(data: np.ndarray, src: Grid, dst: Grid, order: int = 1, cval: float = 0.0,
             chunk: int = 1 << 21) -> np.ndarray:
    """Resample ``data`` (on ``src``) onto ``dst`` through the affines: trilinear (``order=1``) or nearest
    (``order=0``); points outside ``src`` get ``cval``. Returns an array of ``dst.shape`` (data's dtype for
    nearest, float32 otherwise)."""
    from scipy.ndimage import map_coordinates

    if data.shape != src.shape:
        raise VolumeError(f"data shape {data.shape} does not match its grid {src.shape}")
    M = np.linalg.inv(src.affine) @ dst.affine  # dst index -> src index
    n = dst.n_voxels
    out = np.empty(n, dtype=data.dtype if order == 0 else np.float32)
    vals = data if order == 0 else np.asarray(data, dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ijk = np.stack(np.unravel_index(np.arange(start, stop), dst.shape), axis=0).astype(np.float64)
        coords = M[:3, :3] @ ijk + M[:3, 3:4]
        if order == 0:
            # nearest with exact half-way rounding away from ambiguity: round the coordinates ourselves
            r = np.rint(coords).astype(np.int64)
            inside = np.all((r >= 0) & (r < np.array(src.shape)[:, None]), axis=0)
            o = np.full(stop - start, cval, dtype=data.dtype)
            o[inside] = data[r[0, inside], r[1, inside], r[2, inside]]
            out[start:stop] = o
        else:
            out[start:stop] = map_coordinates(vals, coords, order=1, mode="constant", cval=cval,
                                              prefilter=False)
    return out.reshape(dst.shape)

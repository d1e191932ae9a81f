"""Analytic ellipsoid phantoms: exact line integrals for any :class:`View` and voxelised volumes.

Attenuation is additive: the mu of a point is the sum of the ``mu`` of every ellipsoid containing it (a
negative ``mu`` carves out a region, as in Shepp-Logan). The line integral of a ray is therefore
``sum_e mu_e * chord_e``, with the chord clipped to the segment from the source to the pixel centre on the
detector when the detector distance is known (``sdd``), else to the half-line in front of the source.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..core.geometry import GeometryError, View, rotation_z
from ..core.volume import MU_WATER

__all__ = ["Ellipsoid", "arc_views", "line_integral", "project", "make_scan", "voxelize", "shepp_logan_3d"]


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: ``center`` (mm, world), ``semi_axes`` (mm, along the body axes), ``rotation``
    (3x3 body-to-world; its columns are the ellipsoid axes in world, default identity) and ``mu`` (1/mm)."""

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = None
    mu: float = MU_WATER

    def __post_init__(self):
        c = np.array(self.center, dtype=np.float64).reshape(-1)
        a = np.array(self.semi_axes, dtype=np.float64).reshape(-1)
        R = np.eye(3) if self.rotation is None else np.array(self.rotation, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise GeometryError(f"Ellipsoid center: must be 3 finite numbers, got {self.center!r}")
        if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise GeometryError(f"Ellipsoid semi_axes: must be 3 positive numbers, got {self.semi_axes!r}")
        if R.shape != (3, 3) or not np.all(np.isfinite(R)) or np.abs(R.T @ R - np.eye(3)).max() > 1e-6 \
                or np.linalg.det(R) < 0:
            raise GeometryError("Ellipsoid rotation: must be a 3x3 rotation matrix")
        mu = float(self.mu)
        if not np.isfinite(mu):
            raise GeometryError(f"Ellipsoid mu: must be finite, got {self.mu!r}")
        for name, val in (("center", c), ("semi_axes", a), ("rotation", R)):
            val.setflags(write=False)
            object.__setattr__(self, name, val)
        object.__setattr__(self, "mu", mu)

    def _to_unit(self, points) -> np.ndarray:
        """World points/vectors -> unit-sphere coordinates (no translation for vectors: pass center=0)."""
        return (np.asarray(points, dtype=np.float64) @ self.rotation) / self.semi_axes

    def contains(self, points) -> np.ndarray:
        """Boolean mask of world points ``[..., 3]`` inside (or on) the ellipsoid."""
        q = self._to_unit(np.asarray(points, dtype=np.float64) - self.center)
        return np.einsum("...i,...i->...", q, q) <= 1.0

    def chord(self, origins, directions, t_max=np.inf) -> np.ndarray:
        """Length (mm) of the rays ``origins + t * directions``, ``0 <= t * |directions| <= t_max``, inside.

        ``origins`` / ``directions`` broadcast as ``[..., 3]``; ``t_max`` (mm, broadcastable) clips the far
        end (e.g. at the detector). Directions need not be unit vectors.
        """
        d = np.asarray(directions, dtype=np.float64)
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        p = self._to_unit(np.asarray(origins, dtype=np.float64) - self.center)
        q = self._to_unit(d)
        a = np.einsum("...i,...i->...", q, q)
        b = np.einsum("...i,...i->...", p, q)
        c = np.einsum("...i,...i->...", p, p) - 1.0
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        t1, t2 = (-b - root) / a, (-b + root) / a
        length = np.minimum(t2, t_max) - np.maximum(t1, 0.0)
        return np.where(disc > 0, np.maximum(length, 0.0), 0.0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world bounding box (lo, hi)."""
        ext = np.sqrt(((self.rotation * self.semi_axes) ** 2).sum(axis=1))
        return self.center - ext, self.center + ext

    @property
    def volume(self) -> float:
        return float(4.0 / 3.0 * np.pi * np.prod(self.semi_axes))


def _ellipsoids(ellipsoids) -> list[Ellipsoid]:
    if isinstance(ellipsoids, Ellipsoid):
        return [ellipsoids]
    out = list(ellipsoids)
    for e in out:
        if not isinstance(e, Ellipsoid):
            raise GeometryError(f"expected Ellipsoid objects, got {type(e).__name__}")
    return out


def line_integral(ellipsoids: Ellipsoid | Iterable[Ellipsoid], view: View, sdd: float | None = None,
                  uv=None) -> np.ndarray:
    """Exact line integrals (float32 ``[H, W]``, or ``[...]`` for pixel coordinates ``uv [..., 2]``).

    Rays go from the source through the pixel centres; they stop at the detector plane at distance ``sdd``
    (default ``view.meta['sdd']``; no clipping when neither is known).
    """
    dirs = view.ray_directions(uv)
    if sdd is None:
        sdd = view.meta.get("sdd")
    t_max = np.inf if sdd is None else float(sdd) / (dirs @ view.principal_axis)
    src = view.source
    out = np.zeros(dirs.shape[:-1], dtype=np.float64)
    for e in _ellipsoids(ellipsoids):
        out += e.mu * e.chord(src, dirs, t_max)
    return out.astype(np.float32)


def project(ellipsoids, views: Sequence[View], sdd: float | None = None) -> np.ndarray:
    """Line integrals of every view, float32 ``[N, H, W]`` (all views must share the detector size)."""
    views = list(views)
    shapes = {v.shape for v in views}
    if len(shapes) != 1:
        raise GeometryError(f"project: views have different detector sizes {sorted(shapes)}")
    ell = _ellipsoids(ellipsoids)
    return np.stack([line_integral(ell, v, sdd) for v in views]).astype(np.float32)


def arc_views(n: int, size: int, focal: float, *, sod: float = 400.0, seed: int | np.random.Generator = 0,
              pp_jitter: float = 3.0) -> list[View]:
    """``n`` views of ``size``² pixels (focal length ``focal`` pixels) on a 160-degree arc around the origin at
    ``sod`` mm, each tilted by a random angle within +-10 degrees and with its principal point off centre by up to
    ``pp_jitter`` pixels (random, ``seed``: a seed or a generator, which then goes on from its draws): the small
    phantom scans of the tests and benchmarks."""
    from ..core.geometry import look_at

    rng = np.random.default_rng(seed)
    views = []
    for k in range(n):
        a = np.deg2rad(-80 + 160 * k / max(1, n - 1))
        tilt = np.deg2rad(rng.uniform(-10, 10))
        src = sod * np.array([np.sin(a) * np.cos(tilt), -np.cos(a) * np.cos(tilt), np.sin(tilt)])
        K = [[focal, 0.0, size / 2 - 0.5 + rng.uniform(-pp_jitter, pp_jitter)],
             [0.0, focal, size / 2 - 0.5 + rng.uniform(-pp_jitter, pp_jitter)], [0.0, 0.0, 1.0]]
        views.append(View(K, look_at(src, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)), size, size))
    return views


def make_scan(ellipsoids, views: Sequence[View], sdd: float | None = None, extra: dict | None = None):
    """A line-integral :class:`ixgs_ros.core.scan.Scan` of the phantom (noise-free)."""
    from ..core.scan import Scan

    return Scan(list(views), project(ellipsoids, views, sdd), "line_integral", dict(extra or {}))


def voxelize(ellipsoids, grid, supersample: int = 1, dtype=np.float32) -> np.ndarray:
    """mu volume ``[I, J, K]`` on ``grid`` (a :class:`ixgs_ros.core.volume.Grid`).

    Each voxel is the mean over ``supersample**3`` regularly placed sub-voxel points (1 = voxel centre
    only), i.e. partial-volume fractions times mu, summed over ellipsoids.
    """
    s = int(supersample)
    if s < 1:
        raise GeometryError(f"supersample: must be a positive integer, got {supersample!r}")
    shape = tuple(grid.shape)
    A = np.asarray(grid.affine, dtype=np.float64)
    Ainv = np.linalg.inv(A)
    vol = np.zeros(shape, dtype=np.float64)
    sub = (np.arange(s) + 0.5) / s - 0.5  # sub-voxel offsets in index units
    offsets = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), axis=-1).reshape(-1, 3)
    for e in _ellipsoids(ellipsoids):
        lo, hi = e.bounds()
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = box @ Ainv[:3, :3].T + Ainv[:3, 3]
        i0 = np.maximum(np.floor(ijk.min(0) - 1).astype(int), 0)
        i1 = np.minimum(np.ceil(ijk.max(0) + 1).astype(int) + 1, shape)
        if np.any(i1 <= i0):
            continue
        idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(i0, i1)], indexing="ij"), axis=-1)
        frac = np.zeros(idx.shape[:-1], dtype=np.float64)
        for off in offsets:
            pts = (idx + off) @ A[:3, :3].T + A[:3, 3]
            frac += e.contains(pts)
        vol[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]] += e.mu * frac / len(offsets)
    return vol.astype(dtype)


# 3D Shepp-Logan head (Kak & Slaney geometry) with the "modified" (higher-contrast) intensities:
# (relative mu, semi-axes a b c, centre x y z, rotation about z in degrees), lengths relative to the radius.
_SHEPP_LOGAN = [
    (1.0, (0.69, 0.92, 0.81), (0.0, 0.0, 0.0), 0.0),
    (-0.8, (0.6624, 0.874, 0.78), (0.0, -0.0184, 0.0), 0.0),
    (-0.2, (0.11, 0.31, 0.22), (0.22, 0.0, 0.0), -18.0),
    (-0.2, (0.16, 0.41, 0.28), (-0.22, 0.0, 0.0), 18.0),
    (0.1, (0.21, 0.25, 0.41), (0.0, 0.35, -0.15), 0.0),
    (0.1, (0.046, 0.046, 0.05), (0.0, 0.1, 0.25), 0.0),
    (0.1, (0.046, 0.046, 0.05), (0.0, -0.1, 0.25), 0.0),
    (0.1, (0.046, 0.023, 0.05), (-0.08, -0.605, 0.0), 0.0),
    (0.1, (0.023, 0.023, 0.02), (0.0, -0.606, 0.0), 0.0),
    (0.1, (0.023, 0.046, 0.02), (0.06, -0.605, 0.0), 0.0),
]


def shepp_logan_3d(radius_mm: float = 100.0, center=(0.0, 0.0, 0.0), mu_brain: float = MU_WATER) -> list[Ellipsoid]:
    """A 3D Shepp-Logan-style head: 10 ellipsoids scaled so the outer shell spans ``radius_mm`` (its
    longest semi-axis is 0.92 * radius), with the brain (relative value 0.2) at ``mu_brain`` 1/mm."""
    scale = mu_brain / 0.2
    c0 = np.asarray(center, dtype=np.float64)
    return [Ellipsoid(c0 + radius_mm * np.asarray(c), radius_mm * np.asarray(a),
                      rotation_z(np.deg2rad(phi)), rel * scale)
            for rel, a, c, phi in _SHEPP_LOGAN]

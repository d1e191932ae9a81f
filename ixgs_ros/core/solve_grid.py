"""Where the iterative solvers work: the box of material the rays cross, how many views see each voxel, and
how far a detector can be binned for a coarse solve. Decided from the views and their projections alone (no
knowledge of the patient), for the engine's initial solve and the RTK baselines alike."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .geometry import View
from .rtk import check_views
from .volume import Grid

__all__ = ["coarse_binning", "detector_pixels", "view_counts", "material_inside", "default_solve_grid",
           "covers"]


def coarse_binning(views: Sequence[View], solve_grid: Grid, min_pixels: int = 32) -> int:
    """The largest integer detector binning whose pixels, back-projected to the solve grid's centre, are still
    no larger than its voxels (1 when the detector is not finer than the grid), keeping at least
    ``min_pixels`` pixels per detector side. A SART solve on a grid coarser than the detector sampling loses
    nothing by binning the projections to it and forward-projects fewer rays (docs/findings.md)."""
    c = solve_grid.index_to_world((np.asarray(solve_grid.shape, dtype=np.float64) - 1.0) / 2.0)
    pitch = 0.0
    for v in views:
        depth = float(v.world_to_camera(c[None])[0, 2])
        pitch = max(pitch, depth / float(v.K[0, 0]), depth / float(v.K[1, 1]))
    b = int(np.floor(float(solve_grid.spacing.min()) / pitch + 1e-9)) if pitch > 0 else 1
    b = min(b, min(min(v.width, v.height) for v in views) // int(min_pixels))
    return max(1, b)


def detector_pixels(view: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(on_detector, column, row)`` of world ``points`` [N, 3] in ``view``: the nearest pixel centre (rounded,
    float) and whether the point lies in front of the source and that pixel on the detector."""
    uv, z = view.project(points)
    u, r = np.rint(uv[:, 0]), np.rint(uv[:, 1])
    return _on_detector(view, u, r, z), u, r


def _on_detector(view: View, u, r, z):
    """Whether rounded pixel ``(u, r)`` at depth ``z`` lies in front of the source and on ``view``'s detector."""
    with np.errstate(invalid="ignore"):
        return (z > 0) & (u >= 0) & (u < view.width) & (r >= 0) & (r < view.height)


def view_counts(views: Sequence[View], grid: Grid) -> np.ndarray:
    """For each voxel of ``grid``, how many of ``views`` see it: its centre lies in front of the source and
    its nearest pixel centre on the detector (as :func:`default_solve_grid` decides it). float32,
    ``grid.shape``. Voxels few views see are those a truncated scan leaves to the prior (see :func:`sart_tv`'s
    ``tv_weight_map``).

    The grid's voxel centres are an affine image of their indices, so a view's homogeneous pixel coordinates
    and depth are sums of one term per index axis: they are built by broadcasting three 1D terms instead of
    projecting every centre, several times faster on a full-body solve grid."""
    views = check_views(views)
    shape = tuple(int(s) for s in grid.shape)
    A = np.asarray(grid.affine, dtype=np.float64)
    idx = [np.arange(n, dtype=np.float64) for n in shape]
    counts = np.zeros(shape, dtype=np.float32)
    for v in views:
        # (h0, h1, h2) = K (R^T (X - s)) and depth = the camera z, each linear in the voxel index
        M = np.vstack([v.K @ v.R.T, v.R.T[2:3]])                      # 4 x 3: world offset -> (h, depth)
        lin, off = M @ A[:3, :3], M @ (A[:3, 3] - v.T_world_source[:3, 3])
        terms = [[(lin[c, a] * idx[a]).reshape([-1 if b == a else 1 for b in range(3)])
                  for a in range(3)] for c in range(4)]
        h0, h1, h2, z = (off[c] + terms[c][0] + terms[c][1] + terms[c][2] for c in range(4))
        with np.errstate(divide="ignore", invalid="ignore"):
            u, r = np.rint(h0 / h2), np.rint(h1 / h2)
        counts += _on_detector(v, u, r, z)
    return counts


def _truncated(p: np.ndarray, thr: float, border: int = 2, frac: float = 0.01) -> bool:
    """Whether a projection has material on its border (the object sticks out of that view's frustum)."""
    edge = np.concatenate([p[:border].ravel(), p[-border:].ravel(), p[:, :border].ravel(), p[:, -border:].ravel()])
    return bool(np.mean(edge > thr) > frac)


def material_inside(views: Sequence[View], projections: np.ndarray, grid: Grid, air_threshold: float = 1e-3,
                    tolerance: float = 1e-3) -> bool:
    """Whether the projections are consistent with all material lying inside ``grid``'s box.

    True when no view is truncated and, in every view, at most ``tolerance`` of the material pixels (above
    ``air_threshold`` times the maximum) fall outside the box's shadow (the convex hull of its projected
    corners, one pixel of slack).
    """
    from scipy.ndimage import binary_dilation
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon

    proj = np.asarray(projections, dtype=np.float32)
    thr = air_threshold * float(proj.max())
    corners = grid.corners()
    for v, p in zip(views, proj):
        if _truncated(p, thr):
            return False
        uv, z = v.project(corners)
        if np.any(~(z > 0)):
            return False
        hull = uv[ConvexHull(uv).vertices]
        shadow = np.zeros(p.shape, dtype=bool)
        rr, cc = polygon(hull[:, 1], hull[:, 0], shape=p.shape)
        shadow[rr, cc] = True
        shadow = binary_dilation(shadow, iterations=1)
        material = p > thr
        n = int(material.sum())
        if n and np.count_nonzero(material & ~shadow) > tolerance * n:
            return False
    return True


def default_solve_grid(views: Sequence[View], roi_grid: Grid, body_extent=None, projections=None, *,
                       spacing: float | None = None, max_voxels: int = 160 ** 3, radius: float = 250.0,
                       air_threshold: float = 1e-3, margin_mm: float = 6.0) -> Grid:
    """An axis-aligned world grid holding all material the rays can cross, for the iterative RTK solvers.

    Candidate points lie within ``radius`` mm of the ROI centre (capped at 0.8 times the smallest
    source distance) and are seen by at least one view. They are then restricted to

    * ``body_extent`` when given: a :class:`Grid` (its bounds) or a ``(lo, hi)`` pair of world corners of a box
      holding the patient;
    * with ``projections`` ([N, H, W] line integrals): when they show that all material lies inside the ROI
      (:func:`material_inside`, e.g. an ROI-only scan), the ROI grid grown by one voxel is returned: the
      tightest support, with the ROI's voxels. (Joseph's projector integrates only between the outermost
      voxel centres; without that voxel of slack the model misses half a border voxel per ray and SART
      diverges at the border.)
      Otherwise the visual hull of the material. A point that projects
      onto an air pixel (below ``air_threshold`` times the projections' maximum) is dropped; a point outside
      the frustum of a view whose projection has air all around its border (not truncated: the object lies
      inside that frustum) is dropped too. For an ROI-only scan this leaves about the ROI; for a full-body
      scan (truncated views) the part of the body the views cross.

    The grid is the bounding box of the remaining points and of the ROI, padded by ``margin_mm``. Its spacing
    is the ROI's finest when the box fits in ``max_voxels`` voxels, else the smallest (at least 2 mm) that
    does; ``spacing`` forces one.
    """
    views = check_views(views)
    if projections is not None and body_extent is None and spacing is None and \
            material_inside(views, projections, roi_grid, air_threshold):
        return roi_grid.padded(1)
    center = roi_grid.center
    lo_roi, hi_roi = roi_grid.bounds()
    d = min(float(np.linalg.norm(v.source - center)) for v in views)
    radius = min(float(radius), 0.8 * d)
    step = max(5.0, 2 * radius / 90.0)  # candidate lattice: about 5-6 mm
    ax = np.arange(-radius, radius + 1e-6, step)
    P = (np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1) + center).reshape(-1, 3)
    P = P[np.linalg.norm(P - center, axis=-1) <= radius]
    if body_extent is not None:
        if isinstance(body_extent, Grid):
            blo, bhi = body_extent.bounds()
        else:
            blo, bhi = (np.asarray(b, dtype=np.float64).reshape(3) for b in body_extent)
        P = P[np.all((P >= blo) & (P <= bhi), axis=-1)]
    proj = None
    if projections is not None:
        from scipy.ndimage import maximum_filter

        proj = np.asarray(projections, dtype=np.float32)
        if proj.shape != (len(views), views[0].height, views[0].width):
            raise ValueError(f"projections have shape {proj.shape}, expected "
                             f"{(len(views), views[0].height, views[0].width)}")
        thr = air_threshold * float(proj.max())
    seen = np.zeros(len(P), dtype=bool)
    for i, v in enumerate(views):
        inside, u, r = detector_pixels(v, P)
        seen |= inside
        if proj is not None:  # carve: drop points on air pixels, and outside untruncated views
            material = maximum_filter(proj[i] > thr, size=3)  # a pixel of slack for voxel-sized objects
            ok = np.zeros(len(P), dtype=bool)
            ok[inside] = material[r[inside].astype(int), u[inside].astype(int)]
            if _truncated(proj[i], thr):
                ok[~inside] = True
            P, seen = P[ok], seen[ok]
    P = P[seen]
    if len(P):
        lo = np.minimum(P.min(0) - step / 2, lo_roi)
        hi = np.maximum(P.max(0) + step / 2, hi_roi)
    else:
        lo, hi = lo_roi, hi_roi
    lo, hi = lo - margin_mm, hi + margin_mm
    ext = hi - lo
    if spacing is None:
        sp = float(np.min(roi_grid.spacing))
        if np.prod(np.ceil(ext / sp)) > max_voxels:
            sp = max(2.0, float((np.prod(ext) / max_voxels) ** (1 / 3)))
            sp = math.ceil(sp * 4) / 4  # round up to 0.25 mm
    else:
        sp = float(spacing)
    size = np.maximum(np.ceil(ext / sp).astype(int), 1)
    return Grid.centered(size, sp, (lo + hi) / 2)


def covers(solve: Grid, roi: Grid) -> bool:
    lo, hi = solve.bounds()
    rlo, rhi = roi.bounds()
    return bool(np.all(rlo >= lo - 1e-6) and np.all(rhi <= hi + 1e-6))

"""The classical baselines ixgs is compared with, on RTK: FDK, SART/OS-SART, SIRT and CG on exactly the same
arbitrarily posed scans (:mod:`ixgs_ros.core.rtk` converts views and grids).

* ``fdk``: RTK's Feldkamp filter (ramp filter with a Hann window, cut frequency :data:`DEFAULT_HANN`). FDK is
  a filtered backprojection (a voxel's value does not depend on the grid extent), so it runs directly on a box
  aligned with the requested grid. FDK is derived for a circular orbit about RTK's ``y`` axis: the views are
  first expressed in a frame whose ``y`` is the trajectory's rotation axis and whose origin is the isocentre
  (:func:`trajectory_frame`), because RTK derives each view's angular weight from its source angle in that
  frame; for an arc shorter than 360 degrees those weights are corrected (:func:`_fdk_angular_weights`). With
  arbitrary per-view poses RTK's cosine and distance weights are still applied per view, so FDK is only
  approximately valid here: limited or non-planar arcs give shading, scaling and streak errors. No short-scan
  (Parker) weights are applied: they need a circular arc of at least 180 degrees plus the fan.
* ``sart`` (OS-SART with ``subset_size`` views per subset, 1 = classical SART), ``sirt`` (SART with all views
  in one subset) and ``cg`` (conjugate gradient on the least-squares problem) are iterative and need a volume
  that contains *all* material the rays cross, else that mass is forced onto the border voxels and the
  solution blows up there. They run on a solve grid (:func:`~ixgs_ros.core.solve_grid.default_solve_grid`)
  and the solution is resampled (trilinear) onto the requested grid.
* Negative attenuation is kept in the returned volume (no clipping), except that SART/SIRT enforce positivity
  during the iterations by default; pass ``clip_negative=True`` to clip the returned copy.

The defaults (:data:`DEFAULT_ITERATIONS`, :data:`DEFAULT_LAMBDA`, :data:`DEFAULT_HANN`) are the best settings
of sweeps on the benchmark scans (``benchmarks/bench_rtk.py``; docs/findings.md): the baseline ixgs is
compared with is the strongest RTK found.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..core.geometry import View, views_bounding_sphere
from ..core.rtk import (CanonicalFrame, RTKGeometry, canonical_frame, check_projections, constant_image,
                        image_to_np, image_type, import_rtk, sart_filter, set_threads, to_rtk_geometry)
from ..core.solve_grid import covers, default_solve_grid
from ..core.volume import Grid, resample

__all__ = ["METHODS", "DEFAULT_ITERATIONS", "DEFAULT_LAMBDA", "DEFAULT_HANN", "reconstruct", "fdk",
           "trajectory_frame", "solved_coarser", "unpack_scan"]

METHODS = ("fdk", "sart", "sirt", "cg")
#: Default iterations (SART/SIRT count passes over all views).
DEFAULT_ITERATIONS = {"fdk": 1, "sart": 10, "sirt": 30, "cg": 20}
#: Default SART / SIRT relaxation (RTK's own default is 0.3).
DEFAULT_LAMBDA = {"sart": 1.3, "sirt": 0.9}
#: Default Hann cut frequency of FDK's ramp filter (0 = plain ramp).
DEFAULT_HANN = 0.5

def trajectory_frame(views: Sequence[View], grid: Grid | None = None, snap_deg: float = 10.0) -> np.ndarray:
    """A rigid world-to-frame transform in which the views look like an RTK circular scan.

    RTK's FDK assumes the rotation axis is ``y`` and the isocentre is at the origin: it derives each view's
    angular weight from the source angle in the ``xz`` plane. The frame's origin is the least-squares
    intersection of the principal rays, ``y`` the direction most orthogonal to all of them (the rotation axis
    of an arc), ``z`` points toward the mean source. When ``grid`` is given and its axes are within
    ``snap_deg`` of the frame's (up to order and sign), the frame is snapped onto them so that a grid-aligned
    volume in the frame has exactly the grid's voxel centres.
    """
    views = list(views)
    c, _ = views_bounding_sphere(views)
    D = np.array([v.principal_axis for v in views])
    _, V = np.linalg.eigh(D.T @ D)
    y = V[:, 0]  # eigenvector of the smallest eigenvalue
    S = np.array([v.source for v in views]) - c
    S = S - np.outer(S @ y, y)
    z = S.mean(axis=0)
    if np.linalg.norm(z) < 1e-3 * np.linalg.norm(S, axis=1).max():  # full circle: any perpendicular axis
        z = S[0]
    z = z / np.linalg.norm(z)
    x = np.cross(y, z)
    R = np.stack([x, y, z])  # rows: frame axes in world
    if grid is not None:
        G = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
        G = G / np.linalg.norm(G, axis=0)
        M = R @ G  # frame axis k vs grid axis j
        perm = np.argmax(np.abs(M), axis=1)
        if len(set(perm.tolist())) == 3:
            cosines = np.abs(M[np.arange(3), perm])
            if np.all(cosines >= np.cos(np.deg2rad(snap_deg))):
                Rs = np.stack([np.sign(M[k, perm[k]]) * G[:, perm[k]] for k in range(3)])
                if np.linalg.det(Rs) < 0:  # mirrored grid: flip x, keeping y (the axis) and z
                    Rs[0] = -Rs[0]
                R = Rs
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ c
    return T


def _fdk_angular_weights(geometry) -> np.ndarray:
    """Per-view factors turning RTK's angular weights into ones valid for arcs shorter than 360 degrees.

    RTK weights view ``i`` by half the angular distance between its neighbours, wrapping around the circle; for
    an arc that gives the two end views half of the empty part of the circle. When the largest gap is more than
    three times the median (and over 45 degrees), the views are treated as an arc of ``A`` degrees: end views get
    their neighbour's gap, and all weights are scaled so that singly measured directions are weighted right
    (x2 for ``A <= 180``, ``360 / A`` beyond: the average redundancy of an arc without short-scan weights).
    """
    ang = np.asarray(geometry.GetSourceAngles(), dtype=np.float64)
    rtk_w = np.asarray(geometry.GetAngularGaps(geometry.GetSourceAngles()), dtype=np.float64)
    n = len(ang)
    if n < 3:
        return np.ones(n)
    order = np.argsort(ang)
    a = ang[order]
    gaps = np.diff(np.concatenate([a, [a[0] + 2 * np.pi]]))  # gaps[i]: from a[i] to the next
    big = int(np.argmax(gaps))
    if not (gaps[big] > 3 * np.median(gaps) and gaps[big] > np.pi / 4):
        return np.ones(n)
    # unwrap so that the arc starts after the big gap
    start = (big + 1) % n
    idx = np.roll(order, -start)
    arc = np.unwrap(ang[idx])  # increasing, without the 2 pi jump
    g = np.empty(n)
    g[1:-1] = 0.5 * (arc[2:] - arc[:-2])
    g[0] = arc[1] - arc[0]
    g[-1] = arc[-1] - arc[-2]
    A = float(g.sum())
    c = 2.0 if A <= np.pi else 2.0 * np.pi / A
    want = np.empty(n)
    want[idx] = c * g
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(rtk_w > 0, want / rtk_w, 0.0)
    return f


def solved_coarser(solve_spacing_mm: float, out_spacing_mm: float) -> bool:
    """Whether an RTK solve grid of voxel size ``solve_spacing_mm`` is coarser than the output grid's
    ``out_spacing_mm`` (beyond rounding): the baseline is then weaker than RTK on a finer grid can be (on the
    full-body scans, docs/findings.md), which ``ixgs bench``'s margins and ``ixgs demo`` say."""
    return float(solve_spacing_mm) > float(out_spacing_mm) * (1 + 1e-6)


def _run_fdk(g: RTKGeometry, projections, size, spacing, origin, hann: float = 0.0,
             truncation_correction: float = 0.0) -> np.ndarray:
    _, rtk = import_rtk()
    IT = image_type()
    fdk = rtk.FDKConeBeamReconstructionFilter[IT].New()
    fdk.SetInput(0, constant_image(size, spacing, origin))
    fdk.SetInput(1, g.stack_image(projections))
    fdk.SetGeometry(g.geometry)
    fdk.GetRampFilter().SetTruncationCorrection(float(truncation_correction))
    fdk.GetRampFilter().SetHannCutFrequency(float(hann))
    fdk.Update()
    return image_to_np(fdk.GetOutput())


def fdk(views: Sequence[View], projections: np.ndarray, grid: Grid, hann: float = DEFAULT_HANN,
        truncation_correction: float = 0.0, arc_weights: bool = True) -> tuple[np.ndarray, dict]:
    """RTK FDK of ``projections`` onto ``grid`` (see the module docstring for its validity).

    The views are expressed in :func:`trajectory_frame`; FDK runs on a grid-aligned box of that frame (the
    grid's own voxel centres when the frame snaps to the grid, else a box covering it at the grid's finest
    spacing) and the result is resampled onto ``grid``. ``arc_weights`` applies
    :func:`_fdk_angular_weights`. ``hann`` is RTK's Hann cut frequency (0: plain ramp; default :data:`DEFAULT_HANN`);
    ``truncation_correction`` RTK's ramp-filter extrapolation of truncated projections (fraction of the width).
    """
    T = trajectory_frame(views, grid)
    R = T[:3, :3]
    n = np.array(grid.shape) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], dtype=np.float64)
    pf = grid.index_to_world(corners) @ R.T + T[:3, 3]
    lo, hi = pf.min(axis=0), pf.max(axis=0)
    G = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
    M = R @ (G / np.linalg.norm(G, axis=0))
    best = np.argmax(np.abs(M), axis=1)
    aligned = len(set(best.tolist())) == 3 and np.allclose(np.abs(M[np.arange(3), best]), 1.0, atol=1e-9)
    sp = grid.spacing[best] if aligned else np.full(3, float(np.min(grid.spacing)))
    size = np.maximum(np.rint((hi - lo) / sp).astype(int) + 1, 1)
    A = np.eye(4)
    A[:3, :3] = np.diag(sp)
    A[:3, 3] = lo
    fgrid = Grid(tuple(int(x) for x in size), np.linalg.inv(T) @ A)
    g = to_rtk_geometry(views, T)
    p = np.asarray(projections, dtype=np.float32)
    f = _fdk_angular_weights(g.geometry) if arc_weights else np.ones(len(p))
    p = p * f[:, None, None].astype(np.float32)
    vol = _run_fdk(g, p, size, sp, lo, hann=hann, truncation_correction=truncation_correction)
    out = resample(vol, fgrid, grid)
    return out, {"fdk_grid": fgrid.to_dict(), "frame_aligned": bool(aligned),
                 "arc_weighting": bool(arc_weights and not np.allclose(f, 1.0))}


def _run_iterative(method: str, g: RTKGeometry, projections, frame: CanonicalFrame, iterations: int,
                   lam: float | None = None, subset_size: int | None = None, positivity: bool = True):
    """SART/SIRT/CG from a zero volume on ``frame`` (fresh inputs; the displaced-detector weighting, which
    assumes a circular scan, is disabled)."""
    _, rtk = import_rtk()
    IT = image_type()
    vol0 = constant_image(frame.shape, frame.spacing)
    proj = g.stack_image(projections)
    if method in ("sart", "sirt"):
        n_sub = g.n if method == "sirt" else int(subset_size or 1)
        f = sart_filter(g, proj, vol0, iterations, n_sub, lam if lam is not None else DEFAULT_LAMBDA[method],
                         positivity)
    elif method == "cg":
        f = rtk.ConjugateGradientConeBeamReconstructionFilter[IT].New()
        f.SetInput(0, vol0)
        f.SetInput(1, proj)
        f.SetInput(2, g.stack_image(np.ones((g.n, g.size[1], g.size[0]), np.float32)))  # uniform weights
        f.SetGeometry(g.geometry)
        f.SetNumberOfIterations(int(iterations))
        f.SetDisableDisplacedDetectorFilter(True)
    else:  # pragma: no cover - guarded by reconstruct()
        raise ValueError(method)
    f.Update()
    return image_to_np(f.GetOutput())


def unpack_scan(scan_or_pair):
    if isinstance(scan_or_pair, tuple) and len(scan_or_pair) == 2:
        views, projections = scan_or_pair
    else:
        kind = getattr(scan_or_pair, "image_kind", "line_integral")
        if kind != "line_integral":
            raise ValueError(f"RTK reconstructs line integrals; this scan holds image_kind={kind!r}")
        views, projections = scan_or_pair.views, scan_or_pair.projections
    return check_projections(views, projections)


def reconstruct(scan, grid: Grid, method: str = "cg", iterations: int | None = None, *,
                solve_grid: Grid | None = None, body_extent=None,
                lam: float | None = None, subset_size: int | None = None, positivity: bool = True,
                hann: float = DEFAULT_HANN, truncation_correction: float = 0.0, clip_negative: bool = False,
                threads: int | None = None) -> tuple[np.ndarray, dict]:
    """Reconstruct ``scan`` (a Scan, or a ``(views, projections)`` pair) onto ``grid`` with RTK.

    ``method`` is one of :data:`METHODS`; ``iterations`` defaults to :data:`DEFAULT_ITERATIONS`.
    FDK runs directly on ``grid`` (:func:`fdk`; ``hann``, ``truncation_correction``). The iterative methods
    solve on ``solve_grid`` (default: :func:`default_solve_grid` from ``body_extent`` and the projections) and
    the solution is resampled (trilinear) onto ``grid``. ``lam`` is SART/SIRT's relaxation (default
    :data:`DEFAULT_LAMBDA`),
    ``subset_size`` OS-SART's views per subset (default 1), ``positivity`` SART/SIRT's positivity constraint.

    Returns ``(volume [I, J, K] float32 on grid, info)``; ``info`` holds ``wall_s`` (the whole call, RTK
    geometry and resampling included), the solve grid and the parameters used.
    """
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown RTK method {method!r}; choose one of {', '.join(METHODS)}")
    iterations = int(DEFAULT_ITERATIONS[method] if iterations is None else iterations)
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    views, projections = unpack_scan(scan)
    set_threads(threads)
    t0 = time.perf_counter()
    info: dict = {"method": method, "iterations": iterations, "n_views": len(views)}
    if method == "fdk":
        vol, finfo = fdk(views, projections, grid, hann=hann, truncation_correction=truncation_correction)
        info.update(finfo)
        info.update({"hann": hann, "truncation_correction": truncation_correction,
                     "solve_shape": list(grid.shape), "solve_spacing_mm": float(np.max(grid.spacing))})
    else:
        if solve_grid is None:
            solve_grid = default_solve_grid(views, grid, body_extent=body_extent, projections=projections)
        if not covers(solve_grid, grid):
            info["warning"] = "the scoring grid is not inside the solve grid: the part outside reads 0"
        frame = canonical_frame(solve_grid)
        g = to_rtk_geometry(views, frame.T_frame_world)
        sol = _run_iterative(method, g, projections, frame, iterations, lam=lam, subset_size=subset_size,
                             positivity=positivity)
        info["solve_s"] = time.perf_counter() - t0
        vol = resample(frame.from_frame_array(sol), solve_grid, grid)
        info.update({"solve_grid": solve_grid.to_dict(), "solve_shape": list(solve_grid.shape),
                     "solve_spacing_mm": float(np.max(solve_grid.spacing)), "positivity": bool(positivity)})
        if method in DEFAULT_LAMBDA:
            info["lambda"] = float(lam if lam is not None else DEFAULT_LAMBDA[method])
            info["subset_size"] = len(views) if method == "sirt" else int(subset_size or 1)
    if clip_negative:
        vol = np.maximum(vol, 0.0)
    info["clip_negative"] = bool(clip_negative)
    info["wall_s"] = time.perf_counter() - t0
    return vol.astype(np.float32, copy=False), info

"""The engine's initial solve: SART alternated with 3D total-variation denoising, on a grid that holds all the
material the rays cross, before any Gaussian exists.

R²-Gaussian starts from FDK, which assumes a circular orbit; arbitrary C-arm poses need an iterative solve. The
cascade (:func:`init_tv_sart`, then :func:`refine_inner` for full-body views):

1. Choose the solve grid from the views alone (:func:`~ixgs_ros.core.solve_grid.default_solve_grid`). When the
   views show that all material lies inside the ROI (ROI-only scans) that is the ROI plus one voxel, and the ROI
   is a support (the extra shell is held at zero). Otherwise (full-body, truncated views) it is the box of the
   body the views cross, coarser than the ROI when large: the *exterior* case.
2. :func:`sart_tv`: SART sweeps (RTK, relaxation ``init.relaxation``), each followed by 3D TV denoising
   (:func:`tv_denoise`, Chambolle-Pock on the ROF model) whose weight decays geometrically over the passes, like
   the adaptive TV step of ASD-POCS (Sidky & Pan 2008). In the exterior case the TV is stronger
   (``exterior.tv_scale``) and stronger still where few views look (``exterior.tv_unseen``), the views are
   binned to the solve grid's voxels, and the solve first runs on the grid coarsened 2x (``exterior.levels``),
   where cheap passes settle the low frequencies.
3. :func:`refine_inner` (exterior case): the ROI grown by ``exterior.refine_margin_mm`` (:func:`fine_box`) is
   re-solved at the output spacing with the coarse exterior held fixed.

With fewer training views than ``init.pass_views`` every pass count grows in proportion (:func:`init_passes`):
a pass over fewer views costs less, so the init takes about the same time and converges further.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..core.geometry import View
from ..core.radiograph import bin_view
from ..core.rtk import (back_project, canonical_frame, check_projections, check_views, forward_project, image_to_np,
                        np_to_image, sart_filter, set_threads, to_rtk_geometry)
from ..core.solve_grid import coarse_binning, default_solve_grid, view_counts
from ..core.volume import Grid, VolumeError, resample
from .tv import tv_denoise, tv_schedule

__all__ = ["Solver", "make_solver", "InitSolve", "init_tv_sart", "init_passes", "fine_box", "sart_tv", "refine_inner", "tv_denoise",
           "tv_schedule"]


def sart_tv(views: Sequence[View], projections: np.ndarray, solve_grid: Grid, passes: int, tv_weight: float, *,
            tv_weight_final: float | None = None, support: Grid | None = None, lam: float | None = None,
            tv_iterations: int = 20, tv_weight_map: np.ndarray | None = None, x0: np.ndarray | None = None,
            threads: int | None = None, on_pass: Callable[[int, int], None] | None = None,
            denoise: Callable | None = None) -> np.ndarray:
    """RTK SART passes alternated with 3D total-variation denoising (the ASD-POCS idea of Sidky & Pan 2008,
    simplified): each pass is one SART sweep over all views (positivity on, relaxation ``lam``) from the
    current volume, then TV denoising (:func:`tv_denoise`) of the volume scaled to its maximum with
    ``tv_weight``. With ``tv_weight_final`` the weight decays geometrically from ``tv_weight`` (first pass) to
    it (last pass), so the early passes suppress streaks and the late ones return towards the data, as the
    adaptive TV step of ASD-POCS does. ``support`` (a :class:`Grid`) is a box known to hold all the material
    (e.g. when :func:`~ixgs_ros.core.solve_grid.material_inside` says so): after every pass the voxels whose centres lie outside it are
    set to zero. On an ROI-only scan the solve grid is the ROI grown by one voxel, and without that constraint
    SART puts the ROI faces' material partly into the extra voxel layer (faces 0.04-0.08 x max too low).
    Returns the volume on ``solve_grid`` (float32, 1/mm). ``tv_weight=0`` is plain SART. ``on_pass(k, passes)``
    is called after pass ``k`` (1-based); an exception it raises ends the solve (e.g. a shutdown).
    ``tv_weight_map`` (>= 0, ``solve_grid.shape``, world layout) scales the TV weight voxel by voxel
    (:func:`tv_denoise`'s ``weight_map``), e.g. stronger where few views look (:func:`~ixgs_ros.core.solve_grid.view_counts`).
    ``x0`` (``solve_grid.shape``, world layout, clipped at 0) is the start volume instead of zeros, e.g. a
    solution on a coarser grid resampled to this one (the engine's two-level full-body init). ``denoise`` replaces
    :func:`tv_denoise` (same signature), e.g. by another regulariser in an experiment.
    """
    views = check_views(views)
    set_threads(threads)
    frame = canonical_frame(solve_grid)
    g = to_rtk_geometry(views, frame.T_frame_world)
    proj = g.stack_image(projections)
    lam = lam if lam is not None else 1.3
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    outside = None if support is None else frame.to_frame_array(~support.contains(solve_grid.world_coords()))
    if tv_weight_map is not None:
        tv_weight_map = np.asarray(tv_weight_map, dtype=np.float32)
        if tv_weight_map.shape != tuple(solve_grid.shape) or not (tv_weight_map >= 0).all():
            raise ValueError(f"tv_weight_map must be >= 0 with the solve grid's shape {tuple(solve_grid.shape)}, "
                             f"got shape {tv_weight_map.shape}")
        tv_weight_map = np.ascontiguousarray(frame.to_frame_array(tv_weight_map))
    if x0 is None:
        x = np.zeros(frame.shape, dtype=np.float32)  # frame array
    else:
        x0 = np.asarray(x0, dtype=np.float32)
        if x0.shape != tuple(solve_grid.shape):
            raise ValueError(f"x0 must have the solve grid's shape {tuple(solve_grid.shape)}, got {x0.shape}")
        x = np.ascontiguousarray(frame.to_frame_array(np.maximum(x0, 0.0)), dtype=np.float32)
    for k, w in enumerate(weights):
        f = sart_filter(g, proj, np_to_image(x, frame.spacing), 1, 1, lam, True)
        f.Update()
        x = (denoise or tv_denoise)(image_to_np(f.GetOutput()), w, tv_iterations, weight_map=tv_weight_map)
        if outside is not None:
            x[outside] = 0.0
        if on_pass is not None:
            on_pass(k + 1, len(weights))
    return np.ascontiguousarray(frame.from_frame_array(x), dtype=np.float32)


def check_refine_args(solve_grid: Grid, solve_volume, fine_grid: Grid, passes,
                      x0=None) -> tuple[int, np.ndarray, np.ndarray | None]:
    """``(passes, solve_volume as float32, x0 as float32 or None)`` of a fine re-solve, or an error naming what
    does not fit (``x0``, the inside's start, must have the fine grid's shape)."""
    passes = int(passes)
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    solve_volume = np.asarray(solve_volume, dtype=np.float32)
    if solve_volume.shape != tuple(solve_grid.shape):
        raise VolumeError(f"solve volume shape {solve_volume.shape} does not match its grid {tuple(solve_grid.shape)}")
    if not solve_grid.contains(fine_grid.corners(), margin_vox=-1e-3).all():
        raise ValueError("the fine grid's box must lie inside the solve grid's box")
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float32)
        if x0.shape != tuple(fine_grid.shape):
            raise ValueError(f"x0 must have the fine grid's shape {tuple(fine_grid.shape)}, got {x0.shape}")
    return passes, solve_volume, x0


def refine_inner(views: Sequence[View], projections: np.ndarray, solve_grid: Grid, solve_volume: np.ndarray,
                 fine_grid: Grid, passes: int, *, lam: float = 1.3, tv_weight: float = 0.003,
                 tv_weight_final: float | None = None, tv_iterations: int = 20,
                 threads: int | None = None, on_pass: Callable[[int, int], None] | None = None,
                 denoise: Callable | None = None, x0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve the part of a coarse solution that ``fine_grid`` covers at the fine grid's resolution, the rest
    of the solution fixed (a two-level SART).

    ``solve_volume`` (mu, 1/mm, on ``solve_grid``, e.g. from :func:`sart_tv`) is split in two: the exterior,
    its voxels whose centres lie outside ``fine_grid``'s box, stays as it is; the inside starts from the coarse
    solution resampled onto ``fine_grid``. Each pass is one SART sweep over the views (one view per update,
    positivity, then TV denoising with ``tv_weight``, or with weights decaying geometrically from it to
    ``tv_weight_final`` over the passes, as in :func:`sart_tv`) on the residual
    ``p - P_exterior - P_fine x``, where each ray's residual is divided by the ray's length through the
    *whole* solve grid's box, not through the fine box as a SART on the fine grid alone would: rays that
    graze the fine box carry residual of the exterior, and dividing it by their short chord made SART diverge
    at the box's edges and corners. The fine box must lie inside
    the solve grid's box.

    Returns ``(fine volume on fine_grid, exterior on solve_grid with zeros inside the fine box)``, float32.
    ``on_pass(k, passes)`` is called after pass ``k`` (1-based) and ``denoise`` replaces :func:`tv_denoise`, as
    in :func:`sart_tv`. ``x0`` (``fine_grid.shape``, world layout) starts the inside instead of the coarse
    solution, e.g. the fine solution of an earlier initialisation (a warm re-initialisation).
    Holds one fine-grid normaliser per view (25 views on a 148^3 box: 0.3 GB).
    """
    views, projections = check_projections(views, projections)
    passes, solve_volume, x0 = check_refine_args(solve_grid, solve_volume, fine_grid, passes, x0)
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    inside = fine_grid.contains(solve_grid.world_coords())
    exterior = np.where(inside, 0.0, solve_volume).astype(np.float32)
    x = np.maximum(resample(solve_volume, solve_grid, fine_grid, order=1) if x0 is None else x0,
                   0).astype(np.float32)
    if passes == 0:
        return x, exterior
    # per view, fixed over the passes: the rays' lengths through the solve grid's box, the residual the exterior
    # leaves, and the backprojected ray weights on the fine grid
    lengths = np.maximum(forward_project(np.ones(solve_grid.shape, np.float32), solve_grid, views, threads),
                         float(fine_grid.spacing.min()))
    residuals0 = projections - forward_project(exterior, solve_grid, views, threads)
    norms = [np.maximum(back_project(np.ones_like(lengths[:1]), [v], fine_grid, threads), 1e-6) for v in views]
    for k, w in enumerate(weights):
        for i, v in enumerate(views):
            r = (residuals0[i:i + 1] - forward_project(x, fine_grid, [v], threads)) / lengths[i:i + 1]
            x = np.maximum(x + float(lam) * back_project(r, [v], fine_grid, threads) / norms[i], 0.0)
        x = (denoise or tv_denoise)(x, w, tv_iterations)
        if on_pass is not None:
            on_pass(k + 1, passes)
    return np.ascontiguousarray(x, dtype=np.float32), exterior


# ---------------------------------------------------------------------------------------------- solvers
@dataclass(frozen=True)
class Solver:
    """The SART implementation an initialisation uses: ``sart_tv``, ``refine_inner`` and ``forward_project`` with
    the signatures of this module's (RTK) ones."""
    name: str
    sart_tv: Callable
    refine_inner: Callable
    forward_project: Callable


def rtk_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("itk") is not None


def make_solver(cfg) -> Solver:
    """The solver ``cfg.init.solver`` names (``cfg`` an EngineConfig): ``rtk`` (RTK's SART and Joseph projector,
    CPU), ``torch`` (:mod:`ixgs_ros.engine.sart_torch` on ``cfg.device``), or ``auto``: torch on a CUDA device
    or where RTK is not installed, else RTK."""
    name = cfg.init.solver
    if name == "auto":
        name = "torch" if str(cfg.device).startswith("cuda") or not rtk_available() else "rtk"
    if name == "rtk":
        return Solver("rtk", sart_tv, refine_inner, forward_project)
    import functools

    from . import sart_torch

    dev = cfg.device
    return Solver("torch", functools.partial(sart_torch.sart_tv, device=dev),
                  functools.partial(sart_torch.refine_inner, device=dev),
                  functools.partial(sart_torch.forward_project, device=dev))


# ---------------------------------------------------------------------------------------------- the cascade
@dataclass
class InitSolve:
    """The result of :func:`init_tv_sart`."""
    solve: Grid          # the grid it was solved on (holding all material the rays cross)
    volume: np.ndarray   # the solution on it, mu in 1/mm, >= 0
    exterior: bool       # whether material lies outside the ROI (the solve grid is more than a thin shell larger)
    stage: str           # its name in progress reports, e.g. "coarse TV-SART (2.75 mm)"
    warm: bool = False   # started from an earlier solution (a warm re-initialisation)


def init_passes(cfg, passes: int, n_views: int) -> int:
    """The number of init passes to run for ``passes`` (one of the config's pass counts) on ``n_views`` training
    views: ``passes`` x ``init.pass_views / n_views`` (at most ``init.pass_scale_max`` x, rounded) when there
    are fewer views than ``init.pass_views``, else ``passes``; 0 stays 0. ``cfg`` is an EngineConfig."""
    passes, n = int(passes), max(int(n_views), 1)
    pv = cfg.init.pass_views
    if passes <= 0 or not pv or n >= pv:
        return passes
    return max(passes, int(round(passes * min(pv / n, cfg.init.pass_scale_max))))


def solve_margin(grid: Grid, solve: Grid) -> np.ndarray:
    """Per axis, mm by which ``solve``'s box exceeds the ROI ``grid``'s on its wider side."""
    return np.maximum(grid.bounds()[0] - solve.bounds()[0], solve.bounds()[1] - grid.bounds()[1])


def fine_box(grid: Grid, solve: Grid, cfg, refine: bool) -> Grid:
    """The box of the fine Gaussians when the init was solved on ``solve`` with material outside the ROI
    ``grid``: the ROI grown by ``exterior.overlap`` solve voxels, or by ``exterior.refine_margin_mm`` when the
    fine re-solve runs (``refine``; whichever is more), in whole output voxels, but never into the last two
    solve voxels of the solve grid's thinnest margin. The seam between the fixed exterior and the Gaussians
    (which the projector blurs over one solve voxel) must lie where Gaussians can fill it, not on the ROI faces."""
    sp, gs = float(solve.spacing.max()), float(grid.spacing.min())
    want = cfg.exterior.overlap * sp
    if refine:
        want = max(want, cfg.exterior.refine_margin_mm)
    margin = float(solve_margin(grid, solve).min())
    pad = min(math.ceil(want / gs - 1e-6), math.floor(max(0.0, margin - 2.0 * sp) / gs + 1e-6))
    return grid.padded(pad)


def _binned(views, proj, level: Grid, binning: int):
    """The views and projections binned ``binning`` x ``binning`` (1: unchanged)."""
    if binning <= 1:
        return views, proj
    pairs = [bin_view(v, p, binning) for v, p in zip(views, proj)]
    return [q[0] for q in pairs], np.stack([q[1] for q in pairs])


def init_tv_sart(views, proj, grid: Grid, cfg, progress=None, sart: Callable | None = None,
                 warm: InitSolve | None = None, show: Callable | None = None) -> InitSolve:
    """The TV-SART solve the engine starts from (see the module docstring): ``views`` (world frame) and ``proj``
    their line integrals, ``grid`` the ROI, ``cfg`` an EngineConfig. ``progress(stage, done, total)`` as in
    :meth:`ReconstructionEngine.step`. ``sart`` replaces the configured solver's ``sart_tv`` (same signature),
    e.g. by a solve with a support mask in an experiment.

    ``warm``, an earlier solution of the same kind (exterior or not) from fewer views, makes it a warm
    re-initialisation: the solve starts from it (resampled to this solve grid), skips the 2x coarser level and
    runs ``init.warm_share`` of the pass count. Its low frequencies are already settled; the passes bring in
    the views it did not have. ``show(volume, grid, stage)`` receives the 2x coarser level's solution (a first,
    coarse look, seconds into a full-body solve)."""
    sart = sart or make_solver(cfg).sart_tv
    ini, ext = cfg.init, cfg.exterior
    solve = default_solve_grid(views, grid, projections=proj, max_voxels=ini.solve_max_voxels)
    # a solve grid that is just the ROI and a thin margin means no material outside the ROI (ROI-only views):
    # the margin then only holds SART's edge artifacts, which a fixed exterior would keep for good
    exterior = bool((solve_margin(grid, solve) > 2.0 * grid.spacing.max()).any())
    support = grid if (not exterior and ini.support) else None
    passes = ini.passes
    if exterior and ext.passes is not None:
        passes = ext.passes
    passes = init_passes(cfg, passes, len(views))
    tv0, tv1 = ini.tv_weight, ini.tv_weight_final
    if exterior:
        tv0, tv1 = tv0 * ext.tv_scale, None if tv1 is None else tv1 * ext.tv_scale
    coarse = float(solve.spacing.min()) > float(grid.spacing.max()) + 1e-6

    def weights(level: Grid, lviews):  # stronger TV where few views look
        if not (exterior and ext.tv_unseen > 0):
            return None
        return 1.0 + ext.tv_unseen * (1.0 - view_counts(lviews, level) / len(lviews))

    if coarse:
        sviews, sproj = _binned(views, proj, solve, ini.coarse_binning or coarse_binning(views, solve))
    else:
        sviews, sproj = views, proj
    report = progress or (lambda *_: None)
    x0 = None
    warm = warm if (warm is not None and ini.warm_share > 0 and warm.exterior == exterior) else None
    two_levels = exterior and coarse and ext.levels == 2
    tvm = tv0 if tv1 is None else float(np.sqrt(tv0 * tv1))  # the TV weight where the 2x coarser level ends
    if warm is not None:
        x0 = resample(warm.volume, warm.solve, solve, order=1)
        passes = max(1, int(round(passes * ini.warm_share)))
        if two_levels:  # the skipped level's work is in the start
            tv0 = tvm
    elif two_levels:  # first the low frequencies, on a 2x coarser grid
        low = solve.coarsened(2)
        lviews, lproj = _binned(views, proj, low, coarse_binning(views, low))
        stage0 = f"coarse TV-SART ({float(low.spacing.max()):.3g} mm)"
        lpasses = init_passes(cfg, ext.level_passes, len(views))
        report(stage0, 0, lpasses)
        lsol = sart(lviews, lproj, low, lpasses, tv0, tv_weight_final=tvm, lam=ini.relaxation,
                       tv_weight_map=weights(low, lviews), on_pass=lambda k, n: report(stage0, k, n))
        if show is not None:
            show(np.maximum(lsol, 0), low, stage0)
        x0 = resample(lsol, low, solve, order=1)  # sart_tv clips its start at 0
        tv0 = tvm
    stage = (f"{'coarse ' if coarse else ''}TV-SART ({float(solve.spacing.max()):.3g} mm"
             f"{', warm' if warm is not None else ''})")
    report(stage, 0, passes)
    sol = sart(sviews, sproj, solve, passes, tv0, tv_weight_final=tv1, support=support, lam=ini.relaxation,
                  tv_weight_map=weights(solve, sviews), x0=x0, on_pass=lambda k, n: report(stage, k, n))
    return InitSolve(solve, np.maximum(sol, 0), exterior, stage, warm=warm is not None)

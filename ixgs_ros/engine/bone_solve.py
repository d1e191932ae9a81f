"""The bone target's solve: a bone volume (mu in 1/mm inside bone, zero elsewhere) from bone-only line integrals.

Bone is a sparse, compact, high-contrast object; the solve uses what that allows beyond the full volume's
TV-SART (:mod:`.init_solve`):

1. *Support from the views* (:func:`bone_hull`): with bone-only projections a pixel without bone says that no
   voxel on its ray holds bone. Every voxel that projects onto a bone-free pixel (dilated by the voxel's
   footprint) in some view that sees it is held at zero: the visual hull of the bone. It removes the mass SART
   smears along the rays into the space between the bones (and outside the body, which bone-only views no
   longer tell apart from soft tissue).
2. *Sparsity*: after every pass a soft threshold (the proximal step of an L1 penalty) whose size decays with the
   TV weight, on top of SART's positivity and the TV denoising.
3. *Two grids, as the full volume's init*: bone outside the ROI (neighbouring vertebrae, ribs, scapulae) still
   crosses the views, so a coarse solve covers the box the views show bone in
   (:func:`~ixgs_ros.core.solve_grid.default_solve_grid` on the bone projections); the ROI grown by a margin is
   then re-solved at the output spacing (:func:`refine_bone`) with the coarse solution outside it held fixed.

Both solvers of the initial solve work (``init.solver``: RTK or torch): the coarse stage runs their ``sart_tv``
one pass at a time, the fine stage is a SART loop on their projector pair.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..core.geometry import View
from ..core.solve_grid import coarse_binning, default_solve_grid
from ..core.volume import Grid, resample
from .config import EngineError
from .init_solve import _binned, make_solver, solve_margin
from .tv import tv_denoise, tv_schedule

__all__ = ["BoneSolve", "bone_hull", "soft_threshold", "solve_bone", "refine_bone", "bone_fine_box"]


def _projector_pair(cfg):
    """(forward_project, back_project) of the configured init solver, with the signatures of core.rtk's."""
    solver = make_solver(cfg)
    if solver.name == "rtk":
        from ..core.rtk import back_project, forward_project

        return forward_project, back_project
    import functools

    from . import sart_torch

    return (functools.partial(sart_torch.forward_project, device=cfg.device),
            functools.partial(sart_torch.back_project, device=cfg.device))


def bone_hull(views: Sequence[View], projections: np.ndarray, grid: Grid, threshold: float,
              dilate_px: float = 1.0) -> np.ndarray:
    """The visual hull of the bone on ``grid`` (bool, ``grid.shape``): False for every voxel whose centre
    projects, in some view that sees it, onto a pixel whose bone line integral is below ``threshold`` everywhere
    within the voxel's footprint on the detector plus ``dilate_px`` pixels (a max filter). Voxels outside a
    view's detector are not judged by it (truncated views say nothing there)."""
    import torch
    from scipy.ndimage import maximum_filter

    proj = np.asarray(projections, dtype=np.float32)
    A = np.asarray(grid.affine, dtype=np.float64)
    ii = [torch.arange(n, dtype=torch.float32) for n in grid.shape]
    keep = torch.ones(tuple(grid.shape), dtype=torch.bool)
    sp = float(np.max(grid.spacing))
    for v, p in zip(views, proj):
        # camera coordinates of every voxel centre, separably: c = M i + t with M = R^T A[:3,:3]
        T = np.linalg.inv(np.asarray(v.T_world_source, dtype=np.float64))
        M = (T[:3, :3] @ A[:3, :3]).astype(np.float32)
        t = (T[:3, :3] @ A[:3, 3] + T[:3, 3]).astype(np.float32)
        cam = [ii[0][:, None, None] * float(M[r, 0]) + ii[1][None, :, None] * float(M[r, 1])
               + ii[2][None, None, :] * float(M[r, 2]) + float(t[r]) for r in range(3)]
        z = cam[2]
        K = v.K
        zs = z.clamp(min=1e-6)
        u = (float(K[0, 0]) * cam[0] + float(K[0, 1]) * cam[1]) / zs + float(K[0, 2])
        r = float(K[1, 1]) * cam[1] / zs + float(K[1, 2])
        u, r = torch.round(u), torch.round(r)
        on = (z > 0) & (u >= 0) & (u < v.width) & (r >= 0) & (r < v.height)
        depth = float(z[on].median()) if bool(on.any()) else 1.0
        half = 0.5 * sp * float(max(K[0, 0], K[1, 1])) / max(depth, 1e-6)
        size = 2 * int(math.ceil(half + dilate_px)) + 1
        bone = torch.from_numpy(maximum_filter(p >= threshold, size=size))
        flat = (r.clamp(0, v.height - 1) * v.width + u.clamp(0, v.width - 1)).long()
        keep &= ~on | bone.flatten()[flat]
    return keep.numpy()


def soft_threshold(x: np.ndarray, t: float) -> np.ndarray:
    """The proximal step of ``t * |x|_1`` on a non-negative volume: ``max(x - t, 0)``."""
    if t <= 0:
        return x
    return np.maximum(x - np.float32(t), 0.0).astype(np.float32, copy=False)


@dataclass
class BoneSolve:
    """The result of :func:`solve_bone`."""
    fine: np.ndarray               # bone mu (1/mm) on fine_grid
    fine_grid: Grid                # the ROI grown by the fine margin (the ROI itself when nothing lies outside)
    exterior: tuple | None         # (mu on the solve grid with zeros inside the fine box, solve grid) or None
    solve: Grid                    # the coarse solve grid
    info: dict = field(default_factory=dict)


def bone_fine_box(grid: Grid, solve: Grid, margin_mm: float) -> Grid:
    """The ROI grown by ``margin_mm`` in whole output voxels, kept two solve voxels inside the solve grid."""
    gs, sp = float(grid.spacing.min()), float(solve.spacing.max())
    margin = float(solve_margin(grid, solve).min())
    pad = min(math.ceil(margin_mm / gs - 1e-6), math.floor(max(0.0, margin - 2.0 * sp) / gs + 1e-6))
    return grid.padded(max(pad, 0))


def _prox(x: np.ndarray, w: float, w0: float, bc, hull: np.ndarray | None) -> np.ndarray:
    """The bone priors after a pass of TV weight ``w`` (``w0`` the first): soft threshold of size
    ``bone.sparsity * mu`` scaled like the TV weight, the hull."""
    t = bc.sparsity * (w / w0 if w0 > 0 else 1.0)
    x = soft_threshold(x, t)
    if hull is not None:
        x[~hull] = 0.0
    return x


def support_levels(passes: int, bc) -> list[float]:
    """Per pass, the fraction of the bone level (mu at 200 HU) under which a voxel away from bone is set to 0
    (0: no support step): none before ``bone.support_start`` x passes, then rising linearly from
    ``bone.support_level0`` to ``bone.support_level1`` at the last pass."""
    k0 = int(math.ceil(bc.support_start * passes))
    n = passes - k0
    if n <= 0 or bc.support_level1 <= 0:
        return [0.0] * passes
    ramp = np.linspace(bc.support_level0, bc.support_level1, n) if n > 1 else np.array([bc.support_level1])
    return [0.0] * k0 + [float(a) for a in ramp]


def refine_support(x: np.ndarray, fraction: float, bone_hu: float = 200.0) -> np.ndarray:
    """The support step (a discrete-tomography prior: a bone volume is 0 or at least the bone level): voxels
    below ``fraction`` x the bone level with no 6-neighbour at or above that are set to 0; the data then move the
    mass they held into the bone (the next SART pass), instead of a haze around it."""
    from scipy.ndimage import binary_dilation

    from ..core.volume import hu_to_mu

    t = float(fraction) * float(hu_to_mu(bone_hu))
    keep = binary_dilation(x >= t, iterations=1)
    x = x.copy()
    x[~keep] = 0.0
    return x


def refine_bone(views: Sequence[View], projections: np.ndarray, solve_grid: Grid, solve_volume: np.ndarray,
                fine_grid: Grid, passes: int, cfg, *, hull: np.ndarray | None = None, x0: np.ndarray | None = None,
                support: bool = True, on_pass: Callable[[int, int], None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve the part of ``solve_volume`` inside ``fine_grid``'s box at the fine spacing, the rest fixed
    (the two-level SART of :func:`~ixgs_ros.engine.init_solve.refine_inner`: each ray's residual divided by its
    length through the whole solve grid), with the bone priors after every pass (TV from
    ``bone.fine_tv_weight`` to ``bone.fine_tv_weight_final``, soft threshold, ``hull`` on the fine grid).
    ``x0`` (on ``fine_grid``) is the start instead of the solve volume resampled; ``support`` turns the support
    step (:func:`refine_support`) on. Returns ``(fine volume, exterior on solve_grid with zeros inside the fine
    box)``."""
    bc = cfg.bone
    fp, bp = _projector_pair(cfg)
    inside = fine_grid.contains(solve_grid.world_coords())
    exterior = np.where(inside, 0.0, solve_volume).astype(np.float32)
    if x0 is None:
        x = np.maximum(resample(solve_volume, solve_grid, fine_grid, order=1), 0).astype(np.float32)
    else:
        x = np.maximum(np.asarray(x0, dtype=np.float32), 0.0)
    if hull is not None:
        x[~hull] = 0.0
    if passes <= 0:
        return x, exterior
    weights = tv_schedule(passes, bc.fine_tv_weight, bc.fine_tv_weight_final)
    lengths = np.maximum(fp(np.ones(solve_grid.shape, np.float32), solve_grid, views),
                         float(fine_grid.spacing.min()))
    res0 = np.asarray(projections, np.float32) - fp(exterior, solve_grid, views)
    norms = [np.maximum(bp(np.ones_like(lengths[:1]), [v], fine_grid), 1e-6) for v in views]
    lam = float(bc.relaxation)
    levels = support_levels(passes, bc) if support else [0.0] * passes
    for k, w in enumerate(weights):
        for i, v in enumerate(views):
            r = (res0[i:i + 1] - fp(x, fine_grid, [v])) / lengths[i:i + 1]
            x = np.maximum(x + lam * bp(r, [v], fine_grid) / norms[i], 0.0).astype(np.float32)
        x = tv_denoise(x, w, 20)
        x = _prox(x, w, weights[0], bc, hull)
        if levels[k] > 0:
            x = refine_support(x, levels[k])
        if on_pass is not None:
            on_pass(k + 1, passes)
    return np.ascontiguousarray(x, dtype=np.float32), exterior


def solve_bone(views: Sequence[View], projections: np.ndarray, grid: Grid, cfg,
               progress: Callable[[str, int, int], None] | None = None) -> BoneSolve:
    """The bone volume from bone line integrals ``projections`` ([N, H, W], 1/mm x mm) of ``views`` (world frame)
    on the ROI ``grid`` (see the module docstring); ``cfg`` an EngineConfig (its ``bone`` section and
    ``init.solver``). ``progress(stage, done, total)`` as in :meth:`ReconstructionEngine.step`."""
    bc = cfg.bone
    report = progress or (lambda *_: None)
    proj = np.asarray(projections, dtype=np.float32)
    if proj.ndim != 3 or proj.shape[0] != len(views):
        raise EngineError(f"bone projections must be [N, H, W] with one image per view, got {proj.shape}")
    peak = float(proj.max())
    if not peak > 0:
        raise EngineError("the bone projections hold no bone (all values <= 0): nothing to reconstruct")
    info: dict = {"times_s": {}}
    t0 = time.perf_counter()
    solve = default_solve_grid(views, grid, projections=proj, max_voxels=bc.solve_max_voxels)
    exterior = bool((solve_margin(grid, solve) > 2.0 * grid.spacing.max()).any())
    thr = bc.hull_threshold * peak
    use_hull = bc.hull_threshold > 0
    info.update(solve_grid=solve.to_dict(), exterior=exterior, hull_threshold=thr)
    solver = make_solver(cfg)
    sart = solver.sart_tv
    n = len(views)
    scale = 1.0 if not bc.pass_views or n >= bc.pass_views else min(bc.pass_views / n, cfg.init.pass_scale_max)
    coarse_passes = max(1, int(round(bc.coarse_passes * scale)))
    fine_passes = int(round(bc.fine_passes * scale))
    info["times_s"]["solve_grid"] = time.perf_counter() - t0

    # ---- coarse: the whole box the views show bone in (or the ROI with one voxel, when that holds all of it)
    t0 = time.perf_counter()
    coarse = float(solve.spacing.min()) > float(grid.spacing.max()) + 1e-6
    sviews, sproj = (_binned(views, proj, solve, coarse_binning(views, solve)) if coarse else (views, proj))
    hull_c = bone_hull(sviews, sproj, solve, thr, bc.hull_dilate_px) if use_hull else None
    if hull_c is not None:
        info["hull_fraction_coarse"] = float(hull_c.mean())
    info["times_s"]["hull_coarse"] = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    weights = tv_schedule(coarse_passes, bc.tv_weight, bc.tv_weight_final)
    stage = f"bone TV-SART ({float(solve.spacing.max()):.3g} mm)"
    report(stage, 0, coarse_passes)
    support = None if exterior else grid
    x = np.zeros(solve.shape, np.float32)
    for k, w in enumerate(weights):
        x = sart(sviews, sproj, solve, 1, w, support=support, lam=bc.relaxation, x0=x)
        x = _prox(x, w, weights[0], bc, hull_c)
        report(stage, k + 1, coarse_passes)
    info["times_s"]["coarse"] = time.perf_counter() - t0
    info["cpu_s"] = {"coarse": time.process_time() - c0}
    info["coarse_passes"] = coarse_passes
    if not exterior:
        fine = resample(x, solve, grid, order=1) if solve != grid else x
        return BoneSolve(np.maximum(fine, 0).astype(np.float32), grid, None, solve, info)

    # ---- fine: the ROI grown by the margin, at the output spacing, the rest fixed
    t0 = time.perf_counter()
    fine_grid = bone_fine_box(grid, solve, bc.fine_margin_mm)
    hull_f = bone_hull(views, proj, fine_grid, thr, bc.hull_dilate_px) if (use_hull and coarse) else None
    if hull_f is not None:
        info["hull_fraction_fine"] = float(hull_f.mean())
    info["times_s"]["hull_fine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x0 = None
    if not coarse:  # solved at the output spacing already: only split into the fine box and the exterior
        fine_passes = 0
    elif bc.mid_passes > 0 and float(solve.spacing.min()) > 2.0 * float(grid.spacing.max()) + 1e-6:
        # the fine box at twice the output spacing first (binned views): its passes cost about an eighth
        t1, c1 = time.perf_counter(), time.process_time()
        mid_grid = fine_grid.coarsened(2)
        mviews, mproj = _binned(views, proj, mid_grid, coarse_binning(views, mid_grid))
        hull_m = bone_hull(mviews, mproj, mid_grid, thr, bc.hull_dilate_px) if use_hull else None
        mid_passes = max(1, int(round(bc.mid_passes * scale)))
        stage = f"bone mid TV-SART ({float(mid_grid.spacing.max()):.3g} mm)"
        report(stage, 0, mid_passes)
        mid, _ = refine_bone(mviews, mproj, solve, x, mid_grid, mid_passes, cfg, hull=hull_m, support=False,
                             on_pass=lambda k, m: report(stage, k, m))
        x0 = resample(mid, mid_grid, fine_grid, order=1)
        info["times_s"]["mid"] = time.perf_counter() - t1
        info["cpu_s"]["mid"] = time.process_time() - c1
        info["mid_passes"] = mid_passes
    stage = f"bone fine TV-SART ({float(grid.spacing.max()):.3g} mm)"
    t1, c1 = time.perf_counter(), time.process_time()
    report(stage, 0, fine_passes)
    fine, outside = refine_bone(views, proj, solve, x, fine_grid, fine_passes, cfg, hull=hull_f, x0=x0,
                                on_pass=lambda k, m: report(stage, k, m))
    info["times_s"]["fine"] = time.perf_counter() - t1
    info["cpu_s"]["fine"] = time.process_time() - c1
    info["fine_passes"] = fine_passes
    info["fine_grid"] = fine_grid.to_dict()
    return BoneSolve(fine, fine_grid, (outside, solve), solve, info)

"""The live R²-Gaussian reconstruction engine.

Designed to be driven live (by the ROS reconstruction node) as well as from files (``ixgs reconstruct``):

>>> eng = ReconstructionEngine(grid, EngineConfig(iterations=3000, seed=0))
>>> eng.add_view(view, line_integral_image)            # any time, any number
>>> eng.step(100)                                      # optimise in steps
>>> mu = eng.volume()                                  # current volume on `grid` (1/mm) at any time
>>> eng.save(state_dir); eng2 = ReconstructionEngine.load(state_dir)   # whole state, bit-exact continuation

Pipeline (reimplemented from the R²-Gaussian paper, extended to arbitrary poses and truncated views):

1. *Initialisation valid for sparse, non-circular views.* R²-Gaussian samples its first Gaussians from an FDK
   volume, but FDK assumes a circular orbit. ixgs starts from SART passes (RTK, which takes any per-view
   geometry; relaxation ``init_sart_lambda``), each followed by 3D TV denoising
   (:func:`~ixgs_ros.core.rtk_baseline.tv_denoise`, Chambolle-Pock on the ROF model) whose weight decays
   geometrically over the passes
   (``init_tv_weight`` to ``init_tv_weight_final``, like the adaptive TV step of ASD-POCS; T12, 25 views, at
   relaxation 0.6: +1.8 dB over plain SART on ROI-only and on full-body views; relaxation 1.3 adds 0.5-0.7 dB
   more), solved on a grid that holds all material
   the rays cross. When the views show all material inside the ROI box, the voxel layer that grid adds around
   the ROI is held at zero (``init_support``: +2.0 dB more on the ROI-only T12 scan, whose faces SART otherwise
   smears into that layer) (``init="rtk"``, default), or
   — without RTK — from a density-only fit of a lattice of isotropic Gaussians to the views
   (``init="lattice"``). The fine Gaussians are placed on a regular lattice over the ROI
   (``placement="lattice"``, default: ``lattice_spacing`` output voxels apart, sigma ``lattice_sigma`` x the
   spacing) and their densities are solved by conjugate gradients so that the voxelised set reproduces the
   init volume (the voxelizer is linear in the densities); CG ignores that densities are positive, so the
   Gaussians it leaves empty or negative are dropped and the others refitted (``lattice_nonneg_rounds``).
   Measured on the T12 CT: a 2-voxel lattice fitted to the ground truth reaches 35.2 dB, 200k randomly placed
   Gaussians 30.8 dB - random placement clumps and its sum is noisy. ``placement="sample"`` keeps the older
   scheme: ``n_init`` Gaussians drawn where the volume exceeds a fraction of its maximum, with probability
   growing with its value and gradient, scales from nearest-neighbour distances, densities and scales fitted in
   3D on random sub-blocks.
   When the views show that all material lies inside the ROI box (ROI-only scans), thin Gaussians on the box
   faces (``face_layer``) let the outermost voxel shell follow the step where the material ends, and each
   Gaussian is rendered with its mass inside the box only (``clip_to_roi``), as the voxelised volume ends there
   too (T12 ROI-only, 25 views: 31.82 dB instead of 31.20; unclipped, the optimiser thinned the faces to remove
   the line integral of the tails past them).
2. *Truncation.* Full-body rays cross tissue outside the ROI, and the body can be wider than the detector.
   Default (``context_mode="background"``): the SART solution outside the ROI box stays fixed and its
   projection (RTK's Joseph projector, computed once per view, also for views added later) is added to every
   rendered view, so the ROI Gaussians only explain what the exterior does not. The fine Gaussians extend
   ``exterior_overlap`` solve voxels past the ROI and the exterior starts only there, so the seam between the
   two (which the projector blurs over one solve voxel) is not on the scored ROI faces. That solve grid is
   coarse when the material box is large (full-body T12: 2.75 mm, so the init is the truth blurred by about 2
   voxels); with ``init_fine_passes`` the fine Gaussians' box (the ROI grown by ``init_fine_margin`` mm) is
   then re-solved at the output spacing by SART with the coarse exterior fixed
   (:func:`~ixgs_ros.core.rtk_baseline.refine_inner`; full-body T12, 25 views: init 26.79 -> 27.6 dB, final
   27.16 -> 27.47 dB; with tv_denoise 27.36 -> 28.25 dB; with the coarse solve's TV doubled,
   ``init_exterior_tv_scale``, and 12 fine passes whose TV decays from 0.02 to 0.004: 27.27 -> 28.92 dB).
   The coarse solve itself runs on two grids (``init_exterior_levels``): first on the solve grid coarsened 2x,
   where its many cheap passes settle the low frequencies, then on the solve grid from that solution
   (whole engine, T12 full-body 25 views: 29.10 -> 29.26 dB).
   Solves already at the output spacing are not refined. With fewer training views than ``init_pass_views``
   every init pass count grows in proportion (:func:`init_passes`; T12 10 views, full-body 25.59 -> 25.95 dB,
   ROI-only 29.69 -> 30.18 dB). Measured on the full-body T12 scan: with coarse context Gaussians instead
   (``context_mode="gaussians"``, group 1, never densified; also what ``init="lattice"`` uses) the ROI
   Gaussians absorbed the unexplained exterior mass and the 3D PSNR fell during optimisation.
3. *Optimisation.* ``views_per_step`` views per iteration, loss ``L1 + λ_ssim D-SSIM + λ_tv TV3D`` (TV on a
   random sub-volume voxelised on the output spacing), Adam with exponentially decaying learning rates. By
   default only the densities are optimised: from the TV-SART init, moving the positions, scales or rotations
   lowered the 3D PSNR within a CPU schedule (see ``lr_means``); their rates are there for long runs.
   Optional (off by default, they lowered the 3D PSNR in short CPU schedules): adaptive densification
   (clone small / split large Gaussians with high positional gradient, mass conserved), pruning of near-zero
   densities, and a coarse-to-fine schedule rendering half-resolution views early on.

All maths is done in a normalised frame (ROI half-size = 1, mu in units of ``mu_ref``), see
:class:`~ixgs_ros.core.gaussians.NormalizedFrame`; inputs and outputs are in world mm and 1/mm.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import gaussians_render as gr
from .gaussians import GaussianModel, NormalizedFrame, inverse_softplus
from .geometry import View
from .losses import ssim_2d, tv_3d
from .volume import MU_WATER, Grid

__all__ = ["EngineConfig", "ReconstructionEngine", "EngineError", "fine_box", "init_passes", "init_tv_sart"]

STATE_VERSION = 1


class EngineError(ValueError):
    """Invalid input to the reconstruction engine (bad view/image, incompatible state file...)."""


@dataclass
class EngineConfig:
    """Reconstruction parameters. Learning rates are R²-Gaussian's kind (per parameter group, in the normalised
    frame, decaying exponentially to ``lr_final_factor`` x), smaller for positions, density and scales because
    the TV-SART init is much closer to the answer than R²-Gaussian's FDK start (see ``lr_means``)."""

    iterations: int = 100           # length of the learning-rate schedule (T12 ROI-only 25 views, from the
                                    # 34.19 dB init fit of the 24-pass init, density only: 34.12 dB at 100,
                                    # 34.11 at 150)
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"           # renderer/voxelizer backend: auto | torch | cpp | cuda
    # initialisation
    init: str = "rtk"               # rtk: SART volume (RTK) | lattice: density-only blob fit (no RTK)
    init_sart_iterations: int = 48  # SART passes of the init (each followed by TV denoising, see below; T12
                                    # ROI-only 25 views, init alone: 24 passes 34.27 dB, 48 passes 34.50)
    init_exterior_sart_iterations: int | None = 24  # ... instead, when material lies outside the ROI (the
                                    # coarse full-body solve, 4x the voxels, about 4.3 s a pass on 2x2-binned
                                    # views; T12 full-body 25 views, init alone with 12 fine passes: 24 / 20
                                    # coarse passes 28.92 / 28.86 dB; whole engine with 16 fine passes, session
                                    # 15: 28.98 dB in 268 s vs 28.80 in 246 s with 20 + 12; with
                                    # init_exterior_levels=2 the passes of its second level, session 19: 24 /
                                    # 48 passes 29.31 / 29.35 dB, 97 / 142 s; None: init_sart_iterations)
    init_tv_weight: float = 0.03    # rtk_baseline.sart_tv: TV weight of the first pass; 0 = plain RTK SART
    init_tv_weight_final: float | None = 0.003  # ... decaying geometrically to this at the last (None: constant)
                                    # (T12 25 views, init alone, relaxation 0.6: ROI-only 30.94 dB, full-body
                                    # 26.16; 16 passes at a constant 0.01: 30.39 / 25.21; plain SART-16: 29.19 /
                                    # 24.37)
    init_exterior_tv_scale: float = 2.0  # both weights times this for the coarse full-body solve (no support
                                    # constraint there: stronger TV helps. T12 full-body 25 views, init alone,
                                    # coarse solve then 6 fine passes at TV 0.003: x1 28.25 dB, x2 28.62; with
                                    # the exact exterior, TV-SART on the ROI + 10 mm box: x1 28.39, x2 28.63,
                                    # x4 28.64)
    init_exterior_levels: int = 2   # the coarse full-body solve as a two-grid cascade: first this many passes
    init_exterior_level_passes: int = 48  # (init_exterior_level_passes) on the solve grid coarsened 2x (same
                                    # box; views binned to it by rtk_baseline.coarse_binning, whatever
                                    # init_coarse_binning says), its TV schedule from the first weight to
                                    # the geometric mean of first and last, then init_exterior_sart_iterations
                                    # passes from that solution, resampled, on the solve grid from the mean to
                                    # the last weight. Low frequencies converge in the cheap passes (T12
                                    # full-body 25 views, init alone after the fine re-solve, session 19,
                                    # benchmarks/coarse_sweep.py: 1 level of 24 passes 29.23 dB, coarse solve
                                    # 67 s; 2 levels 24 + 16 29.25 in 53 s, 48 + 24 29.31 in 97 s, 48 + 48
                                    # 29.35 in 142 s; session 18: 96 + 16 29.25; whole engine 29.10 -> 29.26
                                    # dB, held-out 2D +0.4 dB; 1 = one level)
    init_exterior_tv_unseen: float = 2.0  # ... and at each voxel times 1 + this x the fraction of the views that
                                    # do not see it (rtk_baseline.view_counts): truncated views leave the body's
                                    # sides few views see to the prior, and SART smears mass there (session 17:
                                    # T12 / L1 full-body 25 views, init alone 29.10 / 27.32 dB at 0, 29.23 / 27.54
                                    # at 2; T12 at 1 / 3 / 6: 29.22 / 29.22 / 29.14; whole engine T12 / L1:
                                    # 28.98 -> 29.10 / 27.27 -> 27.48 dB, held-out 2D -0.37 / -0.23 dB; 0 = off)
    init_pass_views: int = 25       # the init's pass counts (init_sart_iterations, init_exterior_sart_iterations,
    init_pass_scale_max: float = 2.5  # init_exterior_level_passes, init_fine_passes) are for this many training
                                    # views; with n fewer, each is scaled by init_pass_views / n, at most
                                    # init_pass_scale_max x (init_passes): a pass over fewer views costs less, so
                                    # the init takes about the time of init_pass_views views and converges
                                    # further (session 20, T12, 10 views: full-body 25.15 -> 25.55 dB, 145 ->
                                    # 230 s; ROI-only 29.32 -> 29.80 dB, 187 -> 262 s). More views keep the
                                    # counts (T12 full-body 50 views at half of them: 31.82 -> 31.44 dB in 212
                                    # s instead of 325). Live, an init from a few views then takes about as
                                    # long as one from init_pass_views views (0 = off: quicker, rougher first
                                    # volumes).
    init_sart_lambda: float = 1.3   # SART relaxation of the init passes (RTK's default 0.3, its baseline 0.6;
                                    # T12 25 views, init alone, 24 passes: 0.6 -> 32.97 / 26.16 dB,
                                    # 1.0 -> 33.45 / 26.67, 1.3 -> 33.69 / 26.79 ROI-only / full-body; with
                                    # rtk_baseline.tv_denoise, ROI-only 1.0 / 1.3 / 1.6: 34.16 / 34.27 / 34.21)
    init_support: bool = True       # when the views show all material inside the ROI, zero the init outside it
                                    # (T12 ROI-only, init alone: 32.97 dB instead of 30.94; at relaxation 1.3
                                    # 33.69 instead of 31.45)
    init_fit_iterations: int = 600  # direct 3D fit of the sampled Gaussians to the init volume
    init_fit_block: int = 48
    init_edge_weight: float = 2.0   # sampling weight of the field gradient (per voxel) relative to its value
    init_lattice: int = 24          # fine lattice points per axis over the ROI
    init_iterations: int = 500      # density-only lattice fit iterations (one view each)
    init_image_size: int = 64       # views are downsampled to at most this many pixels per side for the fit
    n_init: int = 50000             # fine Gaussians sampled from the fitted field (placement "sample")
    placement: str = "lattice"      # lattice: regular ROI lattice, densities by CG | sample: random, edge-weighted
    lattice_spacing: float | None = None  # in output voxels; None: 1.5 when the init volume was solved at the
                                    # output spacing (ROI-only views), else 2.0 (a full-body init is solved on a
                                    # coarser grid). T12 25 views, 1.5 vs 2.0: ROI-only 32.49 vs 31.82 dB,
                                    # full-body 26.75 vs 26.92 (and 2.4x the Gaussians)
    lattice_sigma: float = 0.6      # Gaussian sigma / lattice spacing
    lattice_cg_iterations: int = 20
    lattice_nonneg_rounds: int = 1  # after the CG fit, drop the Gaussians it left empty or negative and refit the
                                    # rest this many times (CG ignores the positivity of densities; T12 ROI-only
                                    # 25 views, fit of a 33.69 dB init: 0 rounds 32.90 dB, 1 33.57, 2 33.60)
    face_layer: bool = True         # thin Gaussians on the ROI box faces when the material ends there (ROI-only)
    face_sigma: float = 0.35        # their sigma across the face, in output voxels
    clip_to_roi: bool = True        # when the material ends at the ROI box: render each Gaussian with its mass
                                    # inside the box only (see _inside_fraction)
    init_threshold: float = 0.05    # sample where the fitted field exceeds this fraction of its max
    # truncation / context
    context: bool = True            # explain the material outside the ROI (needed for full-body views)
    context_mode: str = "background"  # background: RTK solution outside the ROI, projected once per view |
                                      # gaussians: coarse Gaussians outside the ROI (always with init="lattice")
    exterior_overlap: float = 1.5   # fine Gaussians extend this many solve voxels past the ROI (background mode)
    init_solve_max_voxels: int = 160 ** 3  # the init's solve grid is at the ROI's spacing when the box holding
                                    # the material fits in this many voxels, else coarser (full-body: 2.75 mm)
    init_coarse_binning: int = 0    # detector binning for the init's solve when it is coarser than the output
                                    # grid: 0 = auto (rtk_baseline.coarse_binning; full-body T12: 2, init
                                    # 28.86 -> 28.96 dB, coarse solve 150 -> 129 s), 1 = off, n = n x n
    init_fine_passes: int = 16      # background mode: SART passes re-solving the fine Gaussians' box at the
                                    # output spacing with the coarse exterior fixed (rtk_baseline.refine_inner;
                                    # full-body T12 25 views, init alone, session 7 (scikit-image TV) from 26.79
                                    # dB at 2.75 mm, 6 passes with the box grown by 5 / 8 / 12 mm: 27.39 / 27.58
                                    # / 27.66; session 9, from the x2-TV coarse solve (27.27 dB), box grown by
                                    # 10 mm: 6 / 10 / 16 passes at TV 0.006: 28.69 / 28.83 / 28.93; 10 / 14 / 16
                                    # passes at TV 0.02 -> 0.003: 28.87 / 28.93 / 28.95; 12 at 0.02 -> 0.004:
                                    # 28.92, about 3.5 s a pass; 16 since session 15, see
                                    # init_exterior_sart_iterations; 0 = off)
    init_fine_margin: float = 10.0  # ... that box: the ROI grown by at least this many mm (16 mm: -0.02 dB)
    init_fine_lambda: float = 1.3   # ... their relaxation
    init_fine_tv_weight: float = 0.02  # ... and TV weight of the first pass (6 passes: 0.003 / 0.006 / 0.01:
                                    # 28.62 / 28.69 / 28.63 dB)
    init_fine_tv_weight_final: float | None = 0.004  # ... decaying geometrically to this (None: constant)
    context_extent: float = 3.0     # context box half-size in ROI half-sizes
    context_lattice: int = 12       # context lattice points per axis
    # optimisation
    # R²-Gaussian's rates (means 2e-4, density 1e-2, scales 5e-3) are for a start from FDK; from the TV-SART
    # init they first pull the volume away from it. T12 25 views, 150 iterations, (5e-5, 1e-3, 1e-3) vs
    # (2e-4, 2e-3, 5e-3) over 300: ROI-only 31.20 / 0.893 vs 30.74 / 0.882, full-body 26.92 / 0.797 vs
    # 26.83 / 0.766. From the TV-SART init of rtk_baseline.tv_denoise (fit 34.19 dB, ROI-only, 25 views) every
    # move of the positions, scales or rotations lowered the 3D PSNR within a CPU schedule: after 150
    # iterations (5e-5, 1e-3, 1e-3, quats 1e-3) 33.82 dB, all x0.3 34.04, positions frozen 34.00 (at 100),
    # densities only 34.11. So by default only the densities are optimised; set these rates for long runs or
    # to let the Gaussians move (e.g. as views arrive that the init did not have).
    lr_means: float = 0.0
    lr_density: float = 1e-3
    lr_scales: float = 0.0
    lr_quats: float = 0.0
    lr_final_factor: float = 0.1
    lr_warmup: int = 50             # iterations over which the rates ramp up linearly from 1/lr_warmup of them
                                    # (Adam's first steps move every parameter by about its rate; T12 25 views:
                                    # ROI-only 33.32 dB instead of 33.25, full-body 27.62 instead of 27.59)
    views_per_step: int = 2         # views rendered and averaged per iteration
    lambda_ssim: float = 0.25
    lambda_tv: float = 0.03         # T12 25 views: 0.03 beat 0.1 (ROI-only 28.91 vs 28.63 dB, full-body 23.42 vs 23.35)
    tv_size: int = 32
    coarse_fraction: float = 0.0    # fraction of the schedule rendered at half resolution
    eps2d: float = 0.0
    # adaptive density control (off by default: in short CPU schedules every densification lowered the 3D
    # PSNR on the T12 scans, measured; enable for long runs)
    densify: bool = False
    densify_from: int = 300
    densify_until_fraction: float = 0.6
    densify_interval: int = 100
    densify_fraction: float = 0.05  # share of fine Gaussians (highest mean positional gradient) densified each time
    max_gaussians: int = 60000
    split_scale: float = 0.02       # normalised; larger Gaussians are split, smaller ones cloned
    prune_density: float = 1e-4     # normalised density below which Gaussians are removed
    # scales (normalised units)
    scale_min: float = 2e-3
    scale_max: float = 1.0
    # units
    mu_ref: float = MU_WATER

    def validate(self):
        for key, choices in (("init", ("rtk", "lattice")), ("placement", ("lattice", "sample")),
                             ("backend", ("auto", "torch", "cpp", "cuda"))):
            if getattr(self, key) not in choices:
                raise EngineError(f"{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        if self.iterations < 1:
            raise EngineError(f"iterations must be >= 1, got {self.iterations}")
        if self.lattice_spacing is not None and not self.lattice_spacing > 0:
            raise EngineError(f"lattice_spacing must be > 0 (or None for the default), got {self.lattice_spacing}")
        if self.n_init < 1 or self.init_lattice < 2:
            raise EngineError("n_init must be >= 1 and init_lattice >= 2")
        if self.init_sart_iterations < 1:
            raise EngineError(f"init_sart_iterations must be >= 1, got {self.init_sart_iterations}")
        if self.init_exterior_sart_iterations is not None and self.init_exterior_sart_iterations < 1:
            raise EngineError(f"init_exterior_sart_iterations must be >= 1 (or None), "
                              f"got {self.init_exterior_sart_iterations}")
        if not self.init_exterior_tv_unseen >= 0:
            raise EngineError(f"init_exterior_tv_unseen must be >= 0, got {self.init_exterior_tv_unseen}")
        if self.lr_warmup < 0:
            raise EngineError(f"lr_warmup must be >= 0, got {self.lr_warmup}")
        if self.lattice_nonneg_rounds < 0:
            raise EngineError(f"lattice_nonneg_rounds must be >= 0, got {self.lattice_nonneg_rounds}")
        if not 0.0 < self.init_sart_lambda < 2.0:
            raise EngineError(f"init_sart_lambda must be in (0, 2) (SART converges only there), "
                              f"got {self.init_sart_lambda}")
        if self.init_pass_views < 0 or not self.init_pass_scale_max >= 1:
            raise EngineError(f"init_pass_views must be >= 0 and init_pass_scale_max >= 1, got "
                              f"{self.init_pass_views}, {self.init_pass_scale_max}")
        if self.init_exterior_levels not in (1, 2) or self.init_exterior_level_passes < 1:
            raise EngineError(f"init_exterior_levels must be 1 or 2 and init_exterior_level_passes >= 1, got "
                              f"{self.init_exterior_levels}, {self.init_exterior_level_passes}")
        if isinstance(self.init_coarse_binning, bool) or not isinstance(self.init_coarse_binning, int) or \
                self.init_coarse_binning < 0:
            raise EngineError(f"init_coarse_binning must be an integer >= 0 (0 = auto), got "
                              f"{self.init_coarse_binning!r}")
        if self.init_solve_max_voxels < 8 ** 3:
            raise EngineError(f"init_solve_max_voxels must be >= 512, got {self.init_solve_max_voxels}")
        if self.init_fine_passes < 0 or not self.init_fine_margin >= 0 or self.init_fine_tv_weight < 0:
            raise EngineError("init_fine_passes, init_fine_margin and init_fine_tv_weight must be >= 0, got "
                              f"{self.init_fine_passes}, {self.init_fine_margin}, {self.init_fine_tv_weight}")
        if not 0.0 < self.init_fine_lambda < 2.0:
            raise EngineError(f"init_fine_lambda must be in (0, 2), got {self.init_fine_lambda}")
        from .rtk_baseline import tv_schedule

        try:
            tv_schedule(self.init_sart_iterations, self.init_tv_weight, self.init_tv_weight_final)
        except ValueError as e:
            raise EngineError(f"init_tv_weight / init_tv_weight_final: {e}") from None
        if not self.init_exterior_tv_scale >= 0:
            raise EngineError(f"init_exterior_tv_scale must be >= 0, got {self.init_exterior_tv_scale}")
        try:
            tv_schedule(self.init_fine_passes, self.init_fine_tv_weight, self.init_fine_tv_weight_final)
        except ValueError as e:
            raise EngineError(f"init_fine_tv_weight / init_fine_tv_weight_final: {e}") from None
        if self.context_mode not in ("background", "gaussians"):
            raise EngineError(f"context_mode must be 'background' or 'gaussians', got {self.context_mode!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EngineError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("device cuda requested but this torch has no CUDA device")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise EngineError(f"unknown engine config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class _ViewData:
    view: View                 # world frame
    image: torch.Tensor        # normalised line integrals [H, W]
    K: torch.Tensor
    T: torch.Tensor            # pose in the normalised frame
    holdout: bool = False
    coarse: tuple | None = None  # (K, T, image) at half resolution
    background: torch.Tensor | None = None  # fixed line integrals of the material outside the ROI (normalised)
    tiny: tuple | None = None    # for the initial lattice fit


class _Adam:
    """Adam with explicit per-parameter state, so densify/prune/save are simple tensor operations."""

    def __init__(self, eps=1e-15, betas=(0.9, 0.999)):
        self.eps, self.b1, self.b2 = eps, betas[0], betas[1]
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def step(self, params: dict[str, torch.Tensor], lrs: dict[str, float]):
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is None:
                    continue
                st = self.state.get(name)
                if st is None or st["m"].shape != p.shape:
                    st = {"m": torch.zeros_like(p), "v": torch.zeros_like(p),
                          "t": torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)}
                    self.state[name] = st
                g = p.grad
                st["t"] += 1
                st["m"].mul_(self.b1).add_(g, alpha=1 - self.b1)
                st["v"].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                shape = (-1,) + (1,) * (p.ndim - 1)
                bc1 = (1 - self.b1 ** st["t"]).view(shape)
                bc2 = (1 - self.b2 ** st["t"]).view(shape)
                p.sub_(lrs[name] * (st["m"] / bc1) / ((st["v"] / bc2).sqrt() + self.eps))
                p.grad = None

    def select(self, keep: torch.Tensor):
        for st in self.state.values():
            for k in st:
                st[k] = st[k][keep]

    def extend(self, n: int):
        for st in self.state.values():
            for k in st:
                st[k] = torch.cat([st[k], torch.zeros((n,) + st[k].shape[1:], dtype=st[k].dtype,
                                                      device=st[k].device)])


@dataclass
class InitSolve:
    """The result of :func:`init_tv_sart`."""
    solve: Grid          # the grid it was solved on (holding all material the rays cross)
    volume: np.ndarray   # the solution on it, mu in 1/mm, >= 0
    exterior: bool       # whether material lies outside the ROI (the solve grid is more than a thin shell larger)
    stage: str           # its name in progress reports, e.g. "coarse TV-SART (2.75 mm)"


def init_passes(cfg: EngineConfig, passes: int, n_views: int) -> int:
    """The number of init passes to run for ``passes`` (one of ``cfg``'s init pass counts) on ``n_views`` training
    views: ``passes`` x ``cfg.init_pass_views / n_views`` (at most ``cfg.init_pass_scale_max`` x, rounded) when
    there are fewer views than ``cfg.init_pass_views``, else ``passes``; 0 stays 0."""
    passes, n = int(passes), max(int(n_views), 1)
    if passes <= 0 or not cfg.init_pass_views or n >= cfg.init_pass_views:
        return passes
    return max(passes, int(round(passes * min(cfg.init_pass_views / n, cfg.init_pass_scale_max))))


def _solve_margin(grid: Grid, solve: Grid) -> np.ndarray:
    """Per axis, mm by which ``solve``'s box exceeds the ROI ``grid``'s on its wider side."""
    return np.maximum(grid.bounds()[0] - solve.bounds()[0], solve.bounds()[1] - grid.bounds()[1])


def fine_box(grid: Grid, solve: Grid, cfg: EngineConfig, refine: bool) -> Grid:
    """The box of the fine Gaussians when the init was solved on ``solve`` with material outside the ROI
    ``grid`` (background mode): the ROI grown by ``cfg.exterior_overlap`` solve voxels, or by
    ``cfg.init_fine_margin`` mm when the fine re-solve runs (``refine``; whichever is more), in whole output
    voxels, but never into the last two solve voxels of the solve grid's thinnest margin."""
    from . import rtk_baseline as rb

    sp, gs = float(solve.spacing.max()), float(grid.spacing.min())
    want = cfg.exterior_overlap * sp
    if refine:
        want = max(want, cfg.init_fine_margin)
    margin = float(_solve_margin(grid, solve).min())
    pad = min(math.ceil(want / gs - 1e-6), math.floor(max(0.0, margin - 2.0 * sp) / gs + 1e-6))
    return rb.pad_grid(grid, pad)


def init_tv_sart(views, proj, grid: Grid, cfg: EngineConfig, progress=None) -> InitSolve:
    """The TV-SART solve the engine's RTK init starts from (``cfg``'s init_* fields): on the grid that
    :func:`rtk_baseline.default_solve_grid` says holds all the material the training ``views`` cross (world
    frame, ``proj`` their line integrals); the ROI ``grid`` as support when all material lies inside
    it; more passes and stronger TV when it does not (the coarse full-body solve; the TV stronger still where
    few views look, ``init_exterior_tv_unseen``), on detector-binned views when
    the solve grid is coarser than ``grid``. ``progress(stage, done, total)`` as in
    :meth:`ReconstructionEngine.step`. Also used by ``benchmarks/refine_inner_sweep.py``."""
    from . import rtk_baseline as rb

    solve = rb.default_solve_grid(views, grid, projections=proj, max_voxels=cfg.init_solve_max_voxels)
    # a solve grid that is just the ROI and a thin margin means no material outside the ROI (ROI-only
    # views): the margin then only holds SART's edge artifacts (2.4 % of the projected mass on the ROI-only
    # T12 scan), which a fixed background would keep for good
    margin = _solve_margin(grid, solve)
    exterior = bool((margin > 2.0 * grid.spacing.max()).any())
    support = grid if (not exterior and cfg.init_support) else None
    passes = cfg.init_sart_iterations
    if exterior and cfg.init_exterior_sart_iterations is not None:
        passes = cfg.init_exterior_sart_iterations
    passes = init_passes(cfg, passes, len(views))
    tv0, tv1 = cfg.init_tv_weight, cfg.init_tv_weight_final
    if exterior:
        tv0, tv1 = tv0 * cfg.init_exterior_tv_scale, None if tv1 is None else tv1 * cfg.init_exterior_tv_scale
    coarse = float(solve.spacing.min()) > float(grid.spacing.max()) + 1e-6

    def binned(level: Grid, auto: bool = False):  # the views binned to the level's voxels
        b = rb.coarse_binning(views, level) if auto else (cfg.init_coarse_binning or rb.coarse_binning(views, level))
        if b <= 1:
            return views, proj
        from .radiograph import bin_view
        pairs = [bin_view(v, p, b) for v, p in zip(views, proj)]
        return [q[0] for q in pairs], np.stack([q[1] for q in pairs])

    def weights(level: Grid, lviews):  # stronger TV where few views look
        if not (exterior and cfg.init_exterior_tv_unseen > 0):
            return None
        return 1.0 + cfg.init_exterior_tv_unseen * (1.0 - rb.view_counts(lviews, level) / len(lviews))

    sviews, sproj = binned(solve) if coarse else (views, proj)
    report = progress or (lambda *_: None)
    x0 = None
    if exterior and coarse and cfg.init_exterior_levels == 2:  # first the low frequencies, on a 2x coarser grid
        from .ct import resample
        low = rb.coarsen_grid(solve, 2)
        lviews, lproj = binned(low, auto=True)
        tvm = tv0 if tv1 is None else float(np.sqrt(tv0 * tv1))
        stage0 = f"coarse TV-SART ({float(low.spacing.max()):.3g} mm)"
        lpasses = init_passes(cfg, cfg.init_exterior_level_passes, len(views))
        report(stage0, 0, lpasses)
        lsol = rb.sart_tv(lviews, lproj, low, lpasses, tv0, tv_weight_final=tvm,
                          lam=cfg.init_sart_lambda, tv_weight_map=weights(low, lviews),
                          on_pass=lambda k, n: report(stage0, k, n))
        x0 = resample(lsol, low, solve, order=1)  # sart_tv clips its start at 0
        tv0 = tvm
    stage = f"{'coarse ' if coarse else ''}TV-SART ({float(solve.spacing.max()):.3g} mm)"
    report(stage, 0, passes)
    sol = rb.sart_tv(sviews, sproj, solve, passes, tv0, tv_weight_final=tv1, support=support,
                     lam=cfg.init_sart_lambda, tv_weight_map=weights(solve, sviews), x0=x0,
                     on_pass=lambda k, n: report(stage, k, n))
    return InitSolve(solve, np.maximum(sol, 0), exterior, stage)


class ReconstructionEngine:
    """Live R²-Gaussian reconstruction onto a world-mm :class:`~ixgs_ros.core.volume.Grid`."""

    def __init__(self, grid: Grid, config: EngineConfig | None = None):
        if not isinstance(grid, Grid):
            raise EngineError("grid must be an ixgs_ros.core.volume.Grid")
        self.grid = grid
        self.config = (config or EngineConfig()).validate()
        self.device = torch.device(self.config.device)
        ext = grid.bounds()[1] - grid.bounds()[0]
        self.frame = NormalizedFrame(tuple(grid.center.tolist()), float(ext.max()) / 2.0, self.config.mu_ref)
        self.views: list[_ViewData] = []
        self.model: GaussianModel | None = None
        self.optim = _Adam()
        self.iteration = 0
        self._schedule_start = 0  # iteration at which the current learning-rate schedule began (reinitialize)
        self._init_views = 0      # training views the current model was initialised from
        self.history: list[dict] = []
        self.wall_time = 0.0
        self._gen = torch.Generator().manual_seed(self.config.seed)
        self._order: list[int] = []
        self._grad_accum = None
        self._grad_count = None
        self._last_loss = float("nan")
        self._exterior: tuple[np.ndarray, Grid] | None = None  # mu (1/mm) outside the ROI, on its own grid
        self._material_ends_at_roi = False  # set by the RTK init: no material outside the ROI (ROI-only views)
        self._init_spacing: float | None = None  # voxel size (mm) of the RTK init's solve grid
        self._progress = None  # progress(stage, done, total) during an initialisation (step / reinitialize)
        self._preview = None   # preview(volume, label) during the first initialisation (step)

    # ================================================================= views
    def add_view(self, view: View, image, *, holdout: bool = False) -> int:
        """Add a line-integral view (``image`` float [H, W], ∫mu dl with mu in 1/mm). Returns its index.

        Views can be added at any time, before or during optimisation; invalid input raises
        :class:`EngineError` and leaves the engine unchanged.
        """
        if not isinstance(view, View):
            raise EngineError("view must be an ixgs_ros.core.geometry.View")
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2:
            raise EngineError(f"image must be 2D [H, W], got shape {img.shape}")
        if img.shape != (view.height, view.width):
            raise EngineError(f"image shape {img.shape} does not match the view's detector "
                              f"(height={view.height}, width={view.width})")
        if not np.all(np.isfinite(img)):
            raise EngineError("image contains NaN or inf")
        if img.min() < -0.05 * max(float(img.max()), 1e-6):
            raise EngineError(f"image has strongly negative values (min {img.min():.3g}): expected line "
                              "integrals (-log(I/I0)), not raw intensities")
        lo, hi = self.grid.bounds()
        normals, offsets = view.frustum_planes()
        # plus the plane through the source facing the detector (the pyramid lies in front of it): the grid's
        # 8 corners all outside one of these planes means no ray of the view crosses the grid
        normals = np.vstack([normals, view.principal_axis])
        offsets = np.append(offsets, -float(view.principal_axis @ view.source))
        if ((self.grid.corners() @ normals.T + offsets) < 0).all(axis=0).any():
            raise EngineError(
                f"the view does not see the reconstruction grid (box {np.round(lo, 1).tolist()} .. "
                f"{np.round(hi, 1).tolist()} mm lies outside its viewing pyramid from the source at "
                f"{np.round(view.source, 1).tolist()} mm): check T_world_source (camera-to-world, mm) and K")
        vd = self._prepare_view(view, torch.from_numpy(img.copy()), holdout)
        self.views.append(vd)
        return len(self.views) - 1

    def _prepare_view(self, view: View, image: torch.Tensor, holdout: bool) -> _ViewData:
        dt, dev = torch.float32, self.device
        fr = self.frame
        img = (image / fr.projection_scale).to(dt).to(dev)

        def pack(v: View):
            return (torch.tensor(v.K, dtype=dt, device=dev),
                    torch.tensor(fr.pose_to_normalized(v.T_world_source), dtype=dt, device=dev))

        K, T = pack(view)
        vd = _ViewData(view, img, K, T, holdout)
        if view.width % 2 == 0 and view.height % 2 == 0 and min(view.width, view.height) >= 32:
            half = view.scaled(0.5)
            vd.coarse = pack(half) + (F.avg_pool2d(img[None, None], 2)[0, 0],)
        f = max(1, math.ceil(max(view.width, view.height) / self.config.init_image_size))
        if f > 1 and view.width % f == 0 and view.height % f == 0:
            small = view.scaled(1.0 / f)
            vd.tiny = pack(small) + (F.avg_pool2d(img[None, None], f)[0, 0],)
        else:
            vd.tiny = (K, T, img)
        return vd

    @property
    def train_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if not v.holdout]

    @property
    def holdout_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if v.holdout]

    # ================================================================= rendering helpers
    def _render(self, K, T, h, w, model=None):
        m = model or self.model
        means, scales, quats, dens = m.activated()
        if self.config.clip_to_roi and self._material_ends_at_roi:
            dens = dens * self._inside_fraction(means, scales, quats)
        return gr.render(means, scales, quats, dens, K, T, w, h, eps2d=self.config.eps2d,
                         backend=self.config.backend)

    def _inside_fraction(self, means, scales, quats) -> torch.Tensor:
        """Each Gaussian's share of its mass inside the ROI box: the product over the axes of its marginal's mass
        between the box faces (exact for axis-aligned Gaussians). When the views show that the material ends at
        the ROI box, the renderer integrates the Gaussians that straddle a face only up to it, as the
        voxelised volume does; unclipped, their tails past the faces add line integral that the data do not
        have, and the optimiser lowers the densities next to the faces to remove it."""
        lo, hi = (torch.tensor(b, dtype=means.dtype, device=means.device) for b in
                  self.frame.grid_to_normalized(self.grid).bounds())
        R = gr.quat_to_rotmat(quats)
        sd = ((R * scales[:, None, :]) ** 2).sum(-1).clamp_min(1e-20).sqrt() * math.sqrt(2.0)  # sqrt(2 Sigma_aa)
        return (0.5 * (torch.erf((hi - means) / sd) - torch.erf((lo - means) / sd))).prod(1)

    def _backgrounds(self, views: list[View]) -> list[torch.Tensor | None]:
        """Normalised line integrals of the exterior material (``context_mode="background"``) for ``views``."""
        if self._exterior is None:
            return [None] * len(views)
        from .rtk_baseline import forward_project

        vol, grid = self._exterior
        proj = forward_project(vol, grid, views) / self.frame.projection_scale
        return [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)).to(self.device) for p in proj]

    def _ensure_backgrounds(self):
        """Project the exterior for views that arrived after initialisation (live views)."""
        todo = [vd for vd in self.views if vd.background is None]
        if self._exterior is None or not todo:
            return
        for vd, bg in zip(todo, self._backgrounds([vd.view for vd in todo])):
            vd.background = bg

    def render_view(self, index_or_view) -> np.ndarray:
        """Current model's line-integral image (world units) for a stored view index or any View; with
        ``context_mode="background"`` it includes the projection of the material outside the ROI."""
        if self.model is None:
            raise EngineError("the engine is not initialised yet (no optimisation step has run)")
        if isinstance(index_or_view, View):
            v = index_or_view
            K = torch.tensor(v.K, dtype=torch.float32, device=self.device)
            T = torch.tensor(self.frame.pose_to_normalized(v.T_world_source), dtype=torch.float32,
                             device=self.device)
            h, w = v.height, v.width
            bg = self._backgrounds([v])[0]
        else:
            self._ensure_backgrounds()
            vd = self.views[index_or_view]
            K, T, (h, w), bg = vd.K, vd.T, vd.image.shape, vd.background
        with torch.no_grad():
            img = self._render(K, T, h, w)
            if bg is not None:
                img = img + bg
        return (img * self.frame.projection_scale).cpu().numpy()

    # ================================================================= initialisation
    def _lattice(self, n: int, half: float, exclude_half: float | None = None) -> torch.Tensor:
        ax = torch.linspace(-half, half, n, dtype=torch.float64)
        pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
        if exclude_half is not None:
            inside = (pts.abs() <= exclude_half).all(1)
            pts = pts[~inside]
        # keep points seen by at least one view (others are unconstrained)
        seen = np.zeros(len(pts), dtype=bool)
        world = self.frame.to_world_points(pts.numpy())
        for vd in self.views:
            seen |= vd.view.in_view(world)
        return pts[torch.from_numpy(seen)].to(torch.float32)

    def _report(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, int(done), int(total))

    def _initialise_atomic(self, progress=None, preview=None) -> None:
        """:meth:`_initialise` plus the views' exterior projections, all or nothing: on any exception (a failed
        solve, or ``progress`` raising to stop) the model, optimiser, exterior, backgrounds and random state are
        put back as they were."""
        old = (self.model, self.optim, self._exterior, [vd.background for vd in self.views],
               self._grad_accum, self._grad_count, self._material_ends_at_roi, self._init_spacing,
               self._gen.get_state())
        self._progress, self._preview = progress, preview
        try:
            self._exterior = None
            for vd in self.views:
                vd.background = None
            self._initialise()
            todo = sum(vd.background is None for vd in self.views) if self._exterior is not None else 0
            if todo:
                self._report("exterior projections", 0, todo)
            self._ensure_backgrounds()
            if todo:
                self._report("exterior projections", todo, todo)
        except BaseException:
            (self.model, self.optim, self._exterior, bgs, self._grad_accum, self._grad_count,
             self._material_ends_at_roi, self._init_spacing, rng) = old
            for vd, bg in zip(self.views, bgs):
                vd.background = bg
            self._gen.set_state(rng)
            raise
        finally:
            self._progress = self._preview = None

    def _show(self, volume: np.ndarray, grid: Grid, label: str) -> None:
        """Hand an intermediate init solution (mu on ``grid``) to the ``preview`` callback, on the output grid."""
        if self._preview is not None:
            from .ct import resample

            out = volume if grid == self.grid else resample(volume, grid, self.grid, order=1)
            self._preview(np.ascontiguousarray(np.maximum(out, 0), dtype=np.float32), label)

    def _initialise(self):
        """Place the first Gaussians (see the module docstring): from an RTK SART volume (default) or from a
        density-only lattice fit (``init="lattice"``, no RTK needed)."""
        cfg = self.config
        if not self.train_indices:
            raise EngineError("cannot initialise: no training views have been added")
        if cfg.init == "rtk":
            field, field_grid_n, ctx = self._rtk_field()
        elif cfg.init == "lattice":
            field, field_grid_n, ctx = self._lattice_field()
        else:
            raise EngineError(f"unknown init {cfg.init!r}: use 'rtk' or 'lattice'")
        if cfg.placement == "lattice":
            fine_m, fine_s, fine_d = self._lattice_from_field(field, field_grid_n)
        elif cfg.placement == "sample":
            fine_m, fine_s, fine_d = self._sample_from_field(field, field_grid_n)
        else:
            raise EngineError(f"unknown placement {cfg.placement!r}: use 'lattice' or 'sample'")
        if len(fine_m) == 0:
            raise EngineError("no Gaussian could be placed: no training view sees the reconstruction grid")
        parts_m, parts_s, parts_d, parts_g = [fine_m], [fine_s], [fine_d], [torch.zeros(len(fine_m))]
        if cfg.context and ctx is not None and len(ctx[0]):
            parts_m.append(ctx[0])
            parts_s.append(ctx[1])
            parts_d.append(ctx[2])
            parts_g.append(torch.ones(len(ctx[0])))
        smax = max(cfg.scale_max, float(torch.cat(parts_s).max()) * 1.2)
        self.model = GaussianModel(torch.cat(parts_m), torch.cat(parts_s), torch.cat(parts_d),
                                   group=torch.cat(parts_g), scale_min=cfg.scale_min, scale_max=smax,
                                   device=self.device)
        self.optim = _Adam()
        self._reset_densify_stats()

    # ----------------------------------------------------------------- init fields
    def _train_views_world(self):
        idx = self.train_indices
        views = [self.views[i].view for i in idx]
        proj = np.stack([(self.views[i].image * self.frame.projection_scale).cpu().numpy() for i in idx])
        return views, proj

    def _rtk_field(self):
        """SART (RTK; with TV denoising between passes unless ``init_tv_weight`` is 0) on a grid holding all
        material the rays cross; returns the field for the fine Gaussians
        (normalised units, on the output grid, grown past the ROI in background mode) and, in "gaussians"
        context mode, coarse context Gaussians sampled from the solution outside the ROI."""
        from . import rtk_baseline as rb
        from .ct import resample

        cfg = self.config
        views, proj = self._train_views_world()
        init = init_tv_sart(views, proj, self.grid, cfg, progress=self._report)
        solve, sol, exterior, stage = init.solve, init.volume, init.exterior, init.stage
        self._material_ends_at_roi = not exterior
        self._show(sol, solve, f"{stage} solution from {len(views)} views")
        self._init_spacing = float(solve.spacing.max())
        fine_grid = self.grid
        if cfg.context and cfg.context_mode == "background" and exterior:
            # the solution outside the fine box stays fixed; each view's projection of it is added to the render
            # (the views' projections of it are made by _ensure_backgrounds at the start of every step). The fine
            # Gaussians cover the ROI grown by exterior_overlap solve voxels: the projector interpolates the
            # exterior across one solve voxel at the seam, and the seam must lie where Gaussians can fill it, not
            # on the scored ROI faces (measured on the full-body T12 scan with the seam on the faces: the outer
            # voxel shell's squared error grew 4x during optimisation). The overlap never takes the last two solve
            # voxels of the thinnest margin: a solve grid barely larger than the ROI keeps its exterior shell.
            # With init_fine_passes the fine box is re-solved at the output spacing (rtk_baseline.refine_inner)
            # and grown to init_fine_margin mm past the ROI, where that solve's own edge errors stay.
            # Only a solve coarser than the output grid is refined: at the output spacing the passes would merely
            # continue the same SART with less TV (on the tiny truncated-sphere test of test_engine: ROI RMS
            # 0.0127 with them, 0.0119 without).
            gs = float(self.grid.spacing.min())
            fine_passes = (0 if self._init_solved_at_output_spacing()
                           else init_passes(cfg, cfg.init_fine_passes, len(views)))
            fine_grid = fine_box(self.grid, solve, cfg, refine=fine_passes > 0)
            # split into the exterior and the fine box (0 passes: just the coarse solution resampled)
            fstage = f"fine TV-SART ({gs:.3g} mm)"
            if fine_passes:
                self._report(fstage, 0, fine_passes)
            roi, outside = rb.refine_inner(views, proj, solve, sol, fine_grid, fine_passes,
                                           lam=cfg.init_fine_lambda, tv_weight=cfg.init_fine_tv_weight,
                                           tv_weight_final=cfg.init_fine_tv_weight_final,
                                           on_pass=lambda k, n: self._report(fstage, k, n))
            self._exterior = (outside, solve)
            if fine_passes:
                self._show(roi, fine_grid, f"{fstage} solution from {len(views)} views")
        else:
            roi = resample(sol, solve, fine_grid, order=1)
        field = torch.from_numpy(np.ascontiguousarray(roi / cfg.mu_ref, dtype=np.float32))
        field_grid_n = self.frame.grid_to_normalized(fine_grid)
        ctx = None
        if cfg.context and cfg.context_mode == "gaussians":
            # coarse lattice over the solve grid's box, outside the ROI box, densities from the solution
            lo, hi = solve.bounds()
            h = max(float((hi - lo).max()) / cfg.context_lattice, 2.0 * float(self.grid.spacing.max()))
            axes = [np.arange(l + h / 2, u, h) for l, u in zip(lo, hi)]
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            pts_n = self.frame.to_normalized_points(pts)
            h_n = h / self.frame.scale
            inside = (np.abs(pts_n) <= 1.0 + 0.25 * h_n).all(1)
            vals = self._sample_volume(sol, solve, pts[~inside]) / cfg.mu_ref
            keep = vals > 0.05 * max(float(vals.max(initial=0.0)), 1e-12)
            sigma = 0.6 * h_n
            rho = vals[keep] / ((2 * np.pi) ** 1.5 * (sigma / h_n) ** 3)
            ctx = (torch.tensor(pts_n[~inside][keep], dtype=torch.float32),
                   torch.full((int(keep.sum()), 3), sigma, dtype=torch.float32),
                   torch.tensor(rho, dtype=torch.float32))
        return field, field_grid_n, ctx

    @staticmethod
    def _sample_volume(vol, grid: Grid, pts) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        ijk = grid.world_to_index(pts)
        return map_coordinates(np.asarray(vol, dtype=np.float32), ijk.T, order=1, mode="constant", cval=0.0)

    def _lattice_field(self):
        """Density-only fit of a fine ROI lattice plus a coarse context lattice (blob-basis ART by Adam)."""
        cfg, dev = self.config, self.device
        n = cfg.init_lattice
        fine = self._lattice(n, 1.0)
        sp_f = 2.0 / (n - 1)
        pts, sc, grp = [fine], [torch.full((len(fine), 3), 0.6 * sp_f)], [torch.zeros(len(fine))]
        if cfg.context:
            nc = cfg.context_lattice
            sp_c = 2.0 * cfg.context_extent / (nc - 1)
            ctx = self._lattice(nc, cfg.context_extent, exclude_half=1.0 + 0.25 * sp_c)
            pts.append(ctx)
            sc.append(torch.full((len(ctx), 3), 0.6 * sp_c))
            grp.append(torch.ones(len(ctx)))
        pts, sc, grp = torch.cat(pts), torch.cat(sc), torch.cat(grp)
        lattice = GaussianModel(pts, sc, torch.full((len(pts),), 0.05), group=grp, scale_min=cfg.scale_min,
                                scale_max=max(cfg.scale_max, float(sc.max()) * 1.5), device=dev)
        opt = _Adam()
        train = self.train_indices
        self._report("density-only lattice fit", 0, cfg.init_iterations)
        for it in range(cfg.init_iterations):
            if it:
                self._report("density-only lattice fit", it, cfg.init_iterations)
            vd = self.views[train[int(torch.randint(len(train), (1,), generator=self._gen))]]
            K, T, img = vd.tiny
            means, scales, quats, dens = lattice.activated()
            pred = gr.render(means.detach(), scales.detach(), quats.detach(), dens, K, T, img.shape[1],
                             img.shape[0], backend=cfg.backend)
            (pred - img).abs().mean().backward()
            lr = 0.05 * (0.1 ** (it / max(1, cfg.init_iterations)))
            opt.step({"raw_density": lattice.raw_density}, {"raw_density": lr})
        self._report("density-only lattice fit", cfg.init_iterations, cfg.init_iterations)
        res = 48
        field_grid_n = Grid.centered(res, 2.0 / res, (0, 0, 0))
        with torch.no_grad():
            keep_f = lattice.group == 0
            fm, fs, fq, fd = (t[keep_f] for t in lattice.activated())
            field = self._voxelize_normalized(fm, fs, fq, fd, field_grid_n)
            keep_c = (lattice.group == 1) & (lattice.density > cfg.prune_density * 10)
            cm, cs, _, cd = (t[keep_c].detach().cpu() for t in lattice.activated())
        return field.cpu(), field_grid_n, (cm, cs, cd)

    def _lattice_from_field(self, field: torch.Tensor, field_grid_n: Grid):
        """Isotropic Gaussians on a regular lattice over the field's box (``lattice_spacing`` output voxels apart,
        sigma = ``lattice_sigma`` x spacing); densities by conjugate gradients on ``|V(rho) - field|^2`` (the
        voxelizer is linear in the densities). Lattice Gaussians the fit leaves (almost) empty or negative are
        dropped, and the others refitted ``lattice_nonneg_rounds`` times."""
        cfg = self.config
        lo, hi = field_grid_n.bounds()
        h = self._lattice_spacing() * float(self.grid.spacing.max()) / self.frame.scale
        axes = []
        for a, b in zip(lo, hi):
            n = max(1, int(round((b - a) / h)))
            axes.append(torch.tensor(a + (np.arange(n) + 0.5) * (b - a) / n, dtype=torch.float32))
        means = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        scales = torch.full((len(means), 3), cfg.lattice_sigma * h)
        # the lattice Gaussians come first (meshgrid order); lat_pos: their indices in the full lattice
        lat_pos = torch.arange(len(means))
        if cfg.face_layer and self._material_ends_at_roi:
            fm, fs = self._face_layer(lo, hi, axes, cfg.lattice_sigma * h)
            means, scales = torch.cat([means, fm]), torch.cat([scales, fs])
        target = field.flatten().to(torch.float64)
        x = self._sample_volume(field.numpy(), field_grid_n, means.numpy()).astype(np.float64)
        x = torch.from_numpy(x)
        rounds, n_cg = 1 + cfg.lattice_nonneg_rounds, cfg.lattice_cg_iterations
        stage = f"Gaussian lattice fit ({len(means)} Gaussians)"
        self._report(stage, 0, rounds * n_cg)
        for rnd in range(rounds):
            fwd, adj = self._density_operators(means, scales, field_grid_n,
                                               lattice=(axes, cfg.lattice_sigma * h, lat_pos))
            if rnd == 0:
                x = x * float(target.sum() / fwd(x).sum().clamp_min(1e-12))
            x = self._cg(fwd, adj, target, x, n_cg,
                         on_iteration=lambda k, r=rnd: self._report(stage, r * n_cg + k, rounds * n_cg))
            self._report(stage, (rnd + 1) * n_cg, rounds * n_cg)  # also when CG converged early
            # densities are positive (softplus): drop the Gaussians the least-squares fit made (nearly) empty or
            # negative, then refit the others, so that what they carried is not simply lost
            keep = x.to(torch.float32) > cfg.prune_density * 10
            lat_pos = lat_pos[keep[:len(lat_pos)]]
            means, scales, x = means[keep], scales[keep], x[keep]
        return means, scales, x.to(torch.float32)

    def _density_operators(self, means, scales, grid_n: Grid, lattice=None):
        """The voxelizer of isotropic Gaussians as a linear map of their densities (float64 in and out) and its
        adjoint (by autograd).

        ``lattice = (axes, sigma, lat_pos)``: the first ``len(lat_pos)`` Gaussians sit on the regular lattice
        ``meshgrid(*axes)`` (at flat positions ``lat_pos``) with the isotropic ``sigma``. On a grid whose axes
        are the frame's axes, the voxelizer restricted to them is separable (its cut-off is a per-axis 3-sigma
        box): ``V = rho x_1 G_1 x_2 G_2 x_3 G_3`` with ``G_a[v, l] = exp(-(x_v - p_l)^2 / 2 sigma^2)`` on the box,
        applied as three matrix products, the adjoint with the transposes: the same map as the voxelizer (to
        float32 rounding) at a small fraction of its cost (full-body T12, 405k Gaussians on a 148^3 box: the
        40-iteration CG fit took 120 s on 2 cores). The other Gaussians (the face layer) use the voxelizer."""
        if lattice is not None:
            ops = self._separable_lattice_operators(*lattice, grid_n)
            if ops is not None:
                n_lat = len(lattice[2])
                if n_lat == len(means):
                    return ops
                rest_f, rest_a = self._density_operators(means[n_lat:], scales[n_lat:], grid_n)
                lat_f, lat_a = ops
                return (lambda v: lat_f(v[:n_lat]) + rest_f(v[n_lat:]),
                        lambda r: torch.cat([lat_a(r), rest_a(r)]))
        quats = torch.zeros(len(means), 4)
        quats[:, 0] = 1

        def fwd(v):
            return self._voxelize_normalized(means, scales, quats, v.to(torch.float32), grid_n
                                             ).flatten().to(torch.float64)

        def adj(r):
            v = torch.zeros(len(means), requires_grad=True)
            (fwd(v) * r).sum().backward()
            return v.grad.to(torch.float64)

        return fwd, adj

    @staticmethod
    def _separable_lattice_operators(axes, sigma: float, lat_pos, grid_n: Grid):
        """Forward and adjoint of the voxelizer restricted to lattice Gaussians (see :meth:`_density_operators`),
        or None when the grid's axes are not the frame's (an oblique ``--like`` grid)."""
        from .gaussians_render import SIGMA_CUTOFF

        A = np.asarray(grid_n.affine, dtype=np.float64)
        if np.abs(A[:3, :3] - np.diag(np.diag(A[:3, :3]))).max() > 1e-12 * np.abs(A[:3, :3]).max():
            return None
        # the voxelizer's cut-off, as it computes it: float32 3 sqrt(sigma^2), |offset| <= it
        extent = float(torch.tensor(SIGMA_CUTOFF, dtype=torch.float32)
                       * torch.sqrt(torch.tensor(sigma, dtype=torch.float32) ** 2))
        mats = []
        for a in range(3):
            x = A[a, a] * np.arange(grid_n.shape[a], dtype=np.float64) + A[a, 3]
            d = (x[:, None] - axes[a].to(torch.float64).numpy()[None, :]).astype(np.float32)
            G = np.where(np.abs(d) <= extent, np.exp(-0.5 * (d.astype(np.float64) / sigma) ** 2), 0.0)
            mats.append(torch.from_numpy(G))
        n = tuple(len(ax) for ax in axes)
        size = n[0] * n[1] * n[2]
        pos = torch.as_tensor(lat_pos, dtype=torch.long)

        def fwd(v):
            full = torch.zeros(size, dtype=torch.float64)
            full[pos] = v.to(torch.float64)
            t = full.reshape(n)
            for G in mats:  # contract the leading lattice axis; the voxel axis goes last
                t = torch.tensordot(t, G, dims=([0], [1]))
            return t.flatten()

        def adj(r):
            t = r.to(torch.float64).reshape(grid_n.shape)
            for G in mats:
                t = torch.tensordot(t, G, dims=([0], [0]))
            return t.flatten()[pos]

        return fwd, adj

    @staticmethod
    def _cg(fwd, adj, target, x, iterations: int, on_iteration=None):
        """Conjugate gradients on the normal equations of ``|fwd(x) - target|^2`` from ``x``;
        ``on_iteration(k)`` after iteration k (1-based)."""
        r = adj(target - fwd(x))
        p, rs = r.clone(), float(r @ r)
        for k in range(iterations):
            if rs <= 0:
                break
            ap = fwd(p)
            alpha = rs / max(float(ap @ ap), 1e-30)
            x = x + alpha * p
            r = r - alpha * adj(ap)
            rs_new = float(r @ r)
            p = r + (rs_new / rs) * p
            rs = rs_new
            if on_iteration is not None:
                on_iteration(k + 1)
        return x

    def _lattice_spacing(self) -> float:
        """``lattice_spacing``, or its default: 1.5 output voxels when the init volume was solved at (or finer
        than) the output spacing, 2.0 when it was solved coarser (full-body views) or comes from the coarse
        density-only fit (``init="lattice"``): a basis finer than the init's resolution only adds Gaussians."""
        cfg = self.config
        if cfg.lattice_spacing is not None:
            return float(cfg.lattice_spacing)
        return 1.5 if self._init_solved_at_output_spacing() else 2.0

    def _init_solved_at_output_spacing(self) -> bool:
        """Whether the RTK init was solved at (or finer than) the output grid's spacing; False when it was
        solved coarser (full-body views) or did not come from RTK."""
        return self._init_spacing is not None and self._init_spacing <= 1.01 * float(self.grid.spacing.max())

    def _face_layer(self, lo, hi, axes, sigma_t: float):
        """Gaussians half a voxel inside each face of the box ``[lo, hi]`` (normalised frame), on the lattice's
        tangential axes, ``face_sigma`` voxels thin across the face and ``sigma_t`` wide along it.

        The lattice's own Gaussians blur a face over ~1 voxel, but where the imaged material ends at the box
        (ROI-only views) the outermost voxel shell must follow a step. Measured on the ROI-only T12 scan (25
        views, without the face layer): the outermost shell (4.6 % of the voxels) held 44 % of the squared error,
        its values 0.10 x the ground-truth maximum too low; with it, 28.70 -> 29.52 dB at 300 iterations."""
        vox = float(self.grid.spacing.max()) / self.frame.scale
        sig_n = self.config.face_sigma * vox
        means, scales = [], []
        for a in range(3):
            t1, t2 = [b for b in range(3) if b != a]
            for pos in (float(lo[a]) + 0.5 * vox, float(hi[a]) - 0.5 * vox):
                g1, g2 = torch.meshgrid(axes[t1], axes[t2], indexing="ij")
                m = torch.empty(g1.numel(), 3)
                m[:, a] = pos
                m[:, t1], m[:, t2] = g1.reshape(-1), g2.reshape(-1)
                sc = torch.full((len(m), 3), sigma_t)
                sc[:, a] = sig_n
                means.append(m)
                scales.append(sc)
        return torch.cat(means), torch.cat(scales)

    def _sample_from_field(self, field: torch.Tensor, field_grid_n: Grid):
        """``n_init`` Gaussians where ``field`` exceeds ``init_threshold`` x max, drawn with probability growing
        with the field's value and gradient (edges get more, smaller Gaussians); scales from nearest-neighbour
        distances; densities calibrated by least squares so the set reproduces the field."""
        from scipy.spatial import cKDTree

        cfg = self.config
        vals = field.flatten().to(torch.float64)
        g = torch.gradient(field.to(torch.float64))
        gmag = torch.sqrt(sum(gi ** 2 for gi in g)).flatten()
        thr = cfg.init_threshold * float(vals.max())
        ok = vals > thr
        if not bool(ok.any()):
            ok = torch.ones_like(ok)
        w = (vals.clamp_min(0) + cfg.init_edge_weight * gmag) * ok
        pick = torch.multinomial(w / w.sum(), cfg.n_init, replacement=True, generator=self._gen)
        ijk = torch.stack(torch.unravel_index(pick, field_grid_n.shape), -1).to(torch.float64)
        ijk = ijk + (torch.rand(ijk.shape, generator=self._gen, dtype=torch.float64) - 0.5)
        A = torch.tensor(field_grid_n.affine)
        means = (ijk @ A[:3, :3].T + A[:3, 3]).to(torch.float32)
        d, _ = cKDTree(means.numpy()).query(means.numpy(), k=4)
        nn = torch.from_numpy(np.sqrt((d[:, 1:] ** 2).mean(1))).to(torch.float32)
        vox = float(np.linalg.norm(field_grid_n.affine[:3, :3], axis=0).min())
        scales = nn.clamp(0.5 * vox, 8 * vox)[:, None].expand(-1, 3).contiguous()
        with torch.no_grad():
            v_at = vals[pick].to(torch.float32).clamp_min(1e-6)
            q = torch.zeros(len(means), 4)
            q[:, 0] = 1
            recon = self._voxelize_normalized(means, scales, q, v_at, field_grid_n).flatten().to(torch.float64)
            c = float((recon * vals).sum() / (recon * recon).sum().clamp_min(1e-12))
        dens = (v_at * c).clamp_min(1e-4)
        if cfg.init_fit_iterations > 0:
            dens, scales = self._fit_to_field(means, scales, dens, field, field_grid_n)
        return means, scales, dens

    def _fit_to_field(self, means, scales, dens, field, field_grid_n: Grid):
        """Fit densities and scales of fixed-position Gaussians to a volume by L2 on random sub-blocks.

        Randomly placed Gaussians clump; with point-sampled densities their sum is noisy. A short direct 3D
        fit removes that noise before the projection loss takes over."""
        from .voxelize import sub_grid

        cfg = self.config
        m = GaussianModel(means, scales, dens, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
        opt = _Adam()
        shape = np.array(field_grid_n.shape)
        size = np.minimum(shape, cfg.init_fit_block)
        self._report("Gaussian fit", 0, cfg.init_fit_iterations)
        for it in range(cfg.init_fit_iterations):
            if it:
                self._report("Gaussian fit", it, cfg.init_fit_iterations)
            start = [int(torch.randint(int(h) + 1, (1,), generator=self._gen)) for h in shape - size]
            g = sub_grid(field_grid_n, start, tuple(int(x) for x in size))
            target = field[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
            mm, sc, qq, dd = m.activated()
            pred = self._voxelize_normalized(mm.detach(), sc, qq.detach(), dd, g)
            ((pred - target.to(pred)) ** 2).mean().backward()
            f = 0.1 ** (it / cfg.init_fit_iterations)
            opt.step({"raw_density": m.raw_density, "raw_scales": m.raw_scales},
                     {"raw_density": 0.05 * f, "raw_scales": 0.02 * f})
        self._report("Gaussian fit", cfg.init_fit_iterations, cfg.init_fit_iterations)
        return m.density.detach(), m.scales.detach()

    def _voxelize_normalized(self, means, scales, quats, dens, grid_n: Grid) -> torch.Tensor:
        from .voxelize import voxelize

        return voxelize(means, scales, quats, dens, grid_n, backend=self.config.backend)

    # ================================================================= optimisation
    def _lrs(self) -> dict[str, float]:
        cfg = self.config
        it = self.iteration - self._schedule_start
        t = min(1.0, it / max(1, cfg.iterations))
        f = cfg.lr_final_factor ** t
        if cfg.lr_warmup > 0:
            f *= min(1.0, (it + 1) / cfg.lr_warmup)
        return {"means": cfg.lr_means * f, "raw_density": cfg.lr_density * f,
                "raw_scales": cfg.lr_scales * f, "raw_quats": cfg.lr_quats * f}

    def _next_view(self) -> int:
        if not self._order:
            train = self.train_indices
            perm = torch.randperm(len(train), generator=self._gen).tolist()
            self._order = [train[i] for i in perm]
        return self._order.pop()

    def _tv_grid(self) -> Grid:
        """A random tv_size^3 sub-grid of the output grid (in the normalised frame)."""
        cfg = self.config
        shape = np.array(self.grid.shape)
        size = np.minimum(cfg.tv_size, shape)
        hi = shape - size
        off = [int(torch.randint(int(h) + 1, (1,), generator=self._gen)) for h in hi]
        A = np.array(self.grid.affine, dtype=np.float64)
        A[:3, 3] = A[:3, 3] + A[:3, :3] @ np.array(off, dtype=np.float64)
        return Grid(tuple(int(s) for s in size), self.frame.affine_to_normalized(A))

    def step(self, n: int = 1, callback=None, progress=None, preview=None) -> dict:
        """Run ``n`` optimisation iterations (initialising first if needed). Returns :meth:`status`.

        ``callback(engine)`` is called after every iteration. ``progress(stage, done, total)`` is called while
        an initialisation runs (minutes on a CPU for full-body views): ``stage`` names the part (e.g. "coarse
        TV-SART"), ``done`` of ``total`` of its passes are finished (each stage is announced with ``done=0``).
        ``preview(volume, label)`` receives the initialisation's intermediate solutions on the output grid (mu
        in 1/mm; the TV-SART solution, then the fine re-solve when there is one; ``label`` says which) as soon
        as they exist, minutes before the Gaussians are fitted on a CPU (live use: a first volume to look at).
        Any of them may raise to stop (e.g. a shutdown): an initialisation stopped that way leaves the engine as
        it was before the call (views kept, not initialised, random state restored, so the next ``step`` gives
        the same result as an uninterrupted one)."""
        if not self.train_indices:
            raise EngineError("no training views: add at least one view before optimising")
        t0 = time.perf_counter()
        if self.model is None:
            self._initialise_atomic(progress, preview)
            self._init_views = len(self.train_indices)
        cfg = self.config
        self._ensure_backgrounds()
        for _ in range(int(n)):
            coarse = self.iteration - self._schedule_start < cfg.coarse_fraction * cfg.iterations
            l1 = loss = 0.0
            used = []
            for _k in range(max(1, min(cfg.views_per_step, len(self.train_indices)))):
                vi = self._next_view()
                used.append(vi)
                vd = self.views[vi]
                half = coarse and vd.coarse is not None
                K, T, target = vd.coarse if half else (vd.K, vd.T, vd.image)
                pred = self._render(K, T, target.shape[0], target.shape[1])
                if vd.background is not None:
                    pred = pred + (F.avg_pool2d(vd.background[None, None], 2)[0, 0] if half else vd.background)
                l1_v = (pred - target).abs().mean()
                loss_v = l1_v
                if cfg.lambda_ssim > 0 and min(target.shape) >= 11:
                    rng = target.max().clamp_min(1e-6)
                    loss_v = loss_v + cfg.lambda_ssim * (1 - ssim_2d(pred, target, data_range=rng))
                l1 = l1 + l1_v
                loss = loss + loss_v
            l1 = l1 / len(used)
            loss = loss / len(used)
            if cfg.lambda_tv > 0:
                means, scales, quats, dens = self.model.activated()
                vol = self._voxelize_normalized(means, scales, quats, dens, self._tv_grid())
                loss = loss + cfg.lambda_tv * tv_3d(vol)
            loss.backward()
            self._accumulate_densify_stats()
            self.optim.step(self.model.parameters(), self._lrs())
            self.iteration += 1
            self._last_loss = float(loss.detach())
            self.history.append({"iteration": self.iteration, "loss": self._last_loss, "l1": float(l1.detach()),
                                 "views": used})
            self._adaptive_density_control()
            if callback is not None:
                callback(self)
        self.wall_time += time.perf_counter() - t0
        return self.status()

    @property
    def schedule_done(self) -> bool:
        """True once the current learning-rate schedule (``config.iterations`` from its start) has run; more
        ``step`` calls keep refining at the final learning rates."""
        return self.model is not None and self.iteration - self._schedule_start >= self.config.iterations

    def reinitialize(self, progress=None) -> dict:
        """Solve the initialisation again from *all* current training views and restart the learning-rate
        schedule (live use: the first init ran on the few views present then, and views added later only join
        the loss, which on a CPU schedule barely moves the volume). The model, optimiser state, exterior and
        the views' backgrounds are replaced; views, iteration count and history are kept (the schedule now
        counts from the current iteration). Costs one initialisation. Returns :meth:`status`. ``progress`` as in
        :meth:`step`; a re-init that fails or is stopped leaves the previous model in place."""
        if not self.train_indices:
            raise EngineError("cannot reinitialise: no training views have been added")
        t0 = time.perf_counter()
        self._initialise_atomic(progress)
        self._schedule_start = self.iteration
        self._init_views = len(self.train_indices)
        self._order = []
        self.wall_time += time.perf_counter() - t0
        return self.status()

    # ----------------------------------------------------------------- adaptive density control
    def _reset_densify_stats(self):
        n = len(self.model)
        self._grad_accum = torch.zeros(n, device=self.device)
        self._grad_count = torch.zeros(n, device=self.device)

    def _accumulate_densify_stats(self):
        g = self.model.means.grad
        if g is None:
            return
        norm = g.detach().norm(dim=1)
        touched = norm > 0
        self._grad_accum += norm
        self._grad_count += touched.float()

    def _adaptive_density_control(self):
        cfg = self.config
        it = self.iteration - self._schedule_start
        until = cfg.densify_until_fraction * cfg.iterations
        if not cfg.densify or it < cfg.densify_from or it % cfg.densify_interval != 0:
            return
        m = self.model
        with torch.no_grad():
            if it <= until:
                avg = self._grad_accum / self._grad_count.clamp_min(1)
                fine = (m.group == 0) & (self._grad_count > 0)
                room = cfg.max_gaussians - len(m)
                k = min(int(cfg.densify_fraction * int((m.group == 0).sum())), room)
                if k > 0 and int(fine.sum()) > 0:
                    cand = torch.nonzero(fine).flatten()
                    k = min(k, len(cand))
                    top = cand[torch.topk(avg[cand], k).indices]
                    self._densify(top)
            dens = m.density.detach()
            keep = dens > cfg.prune_density
            if not bool(keep.all()):
                self._select(keep)
        self._reset_densify_stats()

    def _densify(self, idx: torch.Tensor):
        """Clone small / split large selected Gaussians, conserving each parent's mass (integral).

        Clone: an identical copy, parent and child each keep half the density. Split: the child is sampled
        inside the parent, both shrink by 1.6 per axis and share the parent's mass (unlike opacity in 3DGS, a
        density field must conserve the integral, or every split darkens the projections).
        """
        m, cfg = self.model, self.config
        params = {k: v.detach().clone() for k, v in m.parameters().items()}
        scales = m.scales.detach()[idx]
        dens = m.density.detach()[idx]
        big = scales.max(1).values > cfg.split_scale
        new_means = params["means"][idx].clone()
        new_dens = dens / 2
        if bool(big.any()):
            bi = idx[big]
            cov = gr.covariance_from_scale_rot(scales[big], m.quats.detach()[bi])
            L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(3, device=cov.device))
            z = torch.randn(len(bi), 3, generator=self._gen).to(cov)
            new_means[big] = params["means"][bi] + (L @ z[:, :, None])[:, :, 0]
            shrunk = (scales[big] / 1.6).clamp(m.scale_min * 1.0001, m.scale_max * 0.9999)
            lo, hi = math.log(m.scale_min), math.log(m.scale_max)
            params["raw_scales"][bi] = torch.logit(((shrunk.log() - lo) / (hi - lo)).clamp(1e-6, 1 - 1e-6))
            ratio = scales[big].prod(1) / shrunk.prod(1)
            new_dens[big] = dens[big] * ratio / 2
        raw = inverse_softplus(new_dens)
        params["raw_density"][idx] = raw
        new = {"means": new_means, "raw_scales": params["raw_scales"][idx].clone(),
               "raw_quats": params["raw_quats"][idx].clone(), "raw_density": raw.clone()}
        merged = {k: torch.cat([params[k], new[k]]) for k in params}
        m.set_parameters(merged, torch.cat([m.group, m.group[idx]]))
        self.optim.extend(len(idx))

    def _select(self, keep: torch.Tensor):
        m = self.model
        params = {k: v.detach()[keep] for k, v in m.parameters().items()}
        m.set_parameters(params, m.group[keep])
        self.optim.select(keep)

    # ================================================================= outputs
    def volume(self, grid: Grid | None = None) -> np.ndarray:
        """The current attenuation volume (float32, mu in 1/mm) on ``grid`` (default: the engine's grid)."""
        if self.model is None:
            raise EngineError("the engine is not initialised yet (no optimisation step has run)")
        grid = grid or self.grid
        gn = self.frame.grid_to_normalized(grid)
        with torch.no_grad():
            m = self.model
            fine = m.group == 0 if self.config.context else torch.ones(len(m), dtype=torch.bool)
            means, scales, quats, dens = (t.detach()[fine] for t in m.activated())
            vol = self._voxelize_normalized(means, scales, quats, dens, gn) * self.frame.mu_ref
        return vol.cpu().numpy().astype(np.float32)

    def evaluate_holdout(self) -> dict:
        """2D PSNR/SSIM of the current model on held-out views (R²-Gaussian's 2D protocol: each projection
        scaled by its ground-truth max, peak 1; see :mod:`ixgs_ros.core.metrics`)."""
        from .metrics import psnr_2d, ssim_2d

        idx = self.holdout_indices
        if self.model is None or not idx:
            return {"psnr_mean": float("nan"), "ssim_mean": float("nan"), "psnr": [], "ssim": [], "n": 0}
        pred = [self.render_view(i) for i in idx]
        gt = [(self.views[i].image * self.frame.projection_scale).cpu().numpy() for i in idx]
        p_mean, p_all = psnr_2d(np.stack(pred), np.stack(gt), return_all=True)
        s_mean, s_all = ssim_2d(np.stack(pred), np.stack(gt), return_all=True)
        return {"psnr_mean": p_mean, "ssim_mean": s_mean, "psnr": p_all, "ssim": s_all, "n": len(idx)}

    def status(self) -> dict:
        m = self.model
        return {
            "state": "waiting_for_views" if not self.train_indices else
                     ("idle" if m is None else ("converged" if self.schedule_done else "optimizing")),
            "views_used": len(self.train_indices),
            "views_holdout": len(self.holdout_indices),
            "iterations": self.iteration,
            "schedule_start": self._schedule_start,
            "init_views": self._init_views,
            "num_gaussians": 0 if m is None else len(m),
            "num_context_gaussians": 0 if m is None else int((m.group == 1).sum()),
            "loss": self._last_loss,
            "wall_time_s": self.wall_time,
        }

    # ================================================================= persistence
    def save(self, directory) -> Path:
        """Save the whole state (config, views and images, model, optimiser, RNG, history) to a directory."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        if self.model is not None:
            for k, v in self.model.state_tensors().items():
                tensors[f"model.{k}"] = v
            for name, st in self.optim.state.items():
                for k, v in st.items():
                    tensors[f"adam.{name}.{k}"] = v.detach().cpu().contiguous()
            tensors["densify.accum"] = self._grad_accum.cpu()
            tensors["densify.count"] = self._grad_count.cpu()
        for i, vd in enumerate(self.views):
            tensors[f"view.{i}.image"] = (vd.image * self.frame.projection_scale).cpu().contiguous()
            if vd.background is not None:
                tensors[f"view.{i}.background"] = vd.background.cpu().contiguous()
        if self._exterior is not None:
            tensors["exterior.volume"] = torch.from_numpy(np.ascontiguousarray(self._exterior[0]))
        tensors["rng"] = self._gen.get_state()
        meta = {
            "format": "ixgs-engine-state", "version": STATE_VERSION,
            "config": asdict(self.config), "grid": self.grid.to_dict(), "frame": self.frame.to_dict(),
            "views": [{**vd.view.to_dict(), "holdout": vd.holdout} for vd in self.views],
            "iteration": self.iteration, "history": self.history, "wall_time": self.wall_time,
            "schedule_start": self._schedule_start, "init_views": self._init_views,
            "order": self._order, "last_loss": self._last_loss,
            "model_meta": None if self.model is None else self.model.metadata(),
            "exterior_grid": None if self._exterior is None else self._exterior[1].to_dict(),
            "material_ends_at_roi": self._material_ends_at_roi,
        }
        # crash-safe: the tensors go to a new file that only the new state.json names, state.json is replaced
        # atomically, and only then is the previous tensor file removed; an interrupted save leaves the previous
        # state loadable
        old = None
        if (d / "state.json").exists():
            try:
                old = json.loads((d / "state.json").read_text()).get("tensors_file", "state.safetensors")
            except (ValueError, AttributeError):
                old = None
        name = f"state-{uuid.uuid4().hex[:12]}.safetensors"
        save_file(tensors, str(d / name))
        meta["tensors_file"] = name
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(d / "state.json")
        for stale in d.glob("state*.safetensors"):  # the previous file and any left by interrupted saves
            if stale.name != name and (stale.name == old or stale.name.startswith("state-")):
                stale.unlink(missing_ok=True)
        return d

    @classmethod
    def load(cls, directory, device: str | None = None) -> "ReconstructionEngine":
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "state.json").exists():
            raise EngineError(f"{d}: not an engine state directory (state.json missing)")
        try:
            meta = json.loads((d / "state.json").read_text())
        except ValueError as e:
            raise EngineError(f"{d}/state.json: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != "ixgs-engine-state" \
                or meta.get("version") != STATE_VERSION:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            ver = meta.get("version") if isinstance(meta, dict) else None
            raise EngineError(f"{d}: unsupported state format {fmt!r} v{ver}")
        tensors_file = d / meta.get("tensors_file", "state.safetensors")
        if not tensors_file.exists():
            raise EngineError(f"{d}: {tensors_file.name}, named by state.json, is missing")
        cfg = EngineConfig.from_dict(meta["config"])
        if device is not None:
            cfg.device = device
        eng = cls(Grid(meta["grid"]["shape"], np.array(meta["grid"]["affine"])), cfg)
        tensors = load_file(str(tensors_file))
        for i, vmeta in enumerate(meta["views"]):
            view = View(np.array(vmeta["K"]), np.array(vmeta["T_world_source"]), vmeta["width"], vmeta["height"])
            vd = eng._prepare_view(view, tensors[f"view.{i}.image"], vmeta["holdout"])
            if f"view.{i}.background" in tensors:
                vd.background = tensors[f"view.{i}.background"].to(eng.device)
            eng.views.append(vd)
        if meta.get("exterior_grid") is not None:
            eg = meta["exterior_grid"]
            eng._exterior = (tensors["exterior.volume"].numpy(), Grid(eg["shape"], np.array(eg["affine"])))
        if meta["model_meta"] is not None:
            mt = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            eng.model = GaussianModel.from_state(mt, meta["model_meta"], device=eng.device)
            for key, v in tensors.items():
                if key.startswith("adam."):
                    _, name, k = key.split(".")
                    eng.optim.state.setdefault(name, {})[k] = v.to(eng.device)
            eng._grad_accum = tensors["densify.accum"].to(eng.device)
            eng._grad_count = tensors["densify.count"].to(eng.device)
        eng._material_ends_at_roi = bool(meta.get("material_ends_at_roi", False))
        eng._gen.set_state(tensors["rng"])
        eng.iteration = meta["iteration"]
        eng._schedule_start = int(meta.get("schedule_start", 0))
        eng._init_views = int(meta.get("init_views", len(eng.train_indices) if eng.model is not None else 0))
        eng.history = meta["history"]
        eng.wall_time = meta["wall_time"]
        eng._order = list(meta["order"])
        eng._last_loss = meta["last_loss"]
        return eng

"""The R²-Gaussian reconstruction engine: views in, an attenuation volume out, driven live or from files.

>>> eng = ReconstructionEngine(grid, EngineConfig(iterations=100, seed=0))
>>> eng.add_view(view, line_integral_image)            # any time, any number
>>> eng.step(100)                                      # optimise in steps (the first one initialises)
>>> mu = eng.volume()                                  # current volume on `grid` (1/mm) at any time
>>> eng.save(state_dir); eng2 = ReconstructionEngine.load(state_dir)   # whole state, bit-exact continuation

The engine ties its parts together; each lives in its own module:

1. *Initial solve* (:mod:`.init_solve`): TV-SART on a grid holding all the material the rays cross; for
   full-body (truncated) views a coarse solve whose exterior is then held fixed and a fine re-solve of the ROI.
2. *Placement* (:mod:`.placement`): Gaussians on a regular lattice over the fine box, densities fitted to the
   init volume by CG.
3. *Exterior*: the init solution outside the fine box stays fixed; its projection into each view (RTK's Joseph
   projector, once per view, also for views added later) is added to every rendered view, so the Gaussians only
   explain what the exterior does not.
4. *Optimisation*: ``views_per_step`` views per iteration, R²-Gaussian's loss (:func:`.losses.projection_loss`
   plus 3D TV on a random sub-volume), Adam (:mod:`.optim`), densification as a strategy (:mod:`.densify`),
   splatting by :mod:`.render`, volumes by :mod:`.voxelize`.

All maths runs in a normalised frame (ROI half-size = 1, mu in units of ``mu_ref``, see
:class:`~ixgs_ros.engine.model.NormalizedFrame`); inputs and outputs are in world mm and 1/mm.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.geometry import View
from ..core.radiograph import inpaint_invalid
from ..core.volume import Grid, resample
from . import render as gr
from .config import EngineConfig, EngineError
from .densify import DensificationStrategy, make_strategy
from . import init_solve
from .calibration import PoseCalibration, calibrated_init, refinement_wanted
from .losses import projection_loss, tv_3d
from .model import GaussianModel, NormalizedFrame
from .optim import Adam, learning_rates as schedule_rates
from .placement import lattice_from_field
from .views import ViewData, check_mask, check_view, prepare_view, view_tensors
from .voxelize import voxelize

__all__ = ["ReconstructionEngine", "EngineStatus", "HoldoutScores"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStatus:
    """Where the engine stands (the result of :meth:`ReconstructionEngine.step` and ``status()``)."""
    state: str                   # waiting_for_views | idle (views, not initialised) | optimizing | converged
    views_used: int              # training views
    views_holdout: int
    iterations: int
    schedule_start: int          # iteration at which the current learning-rate schedule began
    init_views: int              # training views the current model was initialised from
    num_gaussians: int
    num_context_gaussians: int   # Gaussians outside the fine group (kept for the report's schema)
    loss: float
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HoldoutScores:
    """2D PSNR/SSIM on held-out views (R²-Gaussian's 2D protocol)."""
    psnr_mean: float
    ssim_mean: float
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    n: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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
        self.views: list[ViewData] = []
        self.model: GaussianModel | None = None
        self.optim = Adam()
        self.densifier: DensificationStrategy = make_strategy(self.config.densification)
        self.iteration = 0
        self._schedule_start = 0  # iteration at which the current learning-rate schedule began (reinitialize)
        self._init_views = 0      # training views the current model was initialised from
        self.history: list[dict] = []
        self.wall_time = 0.0
        self._gen = torch.Generator().manual_seed(self.config.seed)
        self._order: list[int] = []
        self._last_loss = float("nan")
        self._exterior: tuple[np.ndarray, Grid] | None = None  # mu (1/mm) outside the fine box, on its own grid
        self._material_ends_at_roi = False  # set by the init: no material outside the ROI (ROI-only views)
        self._init_spacing: float | None = None  # voxel size (mm) of the init's solve grid
        self._progress = None  # progress(stage, done, total) during an initialisation (step / reinitialize)
        self._preview = None   # preview(volume, label) during the first initialisation (step)
        self.calibration = PoseCalibration()  # pose self-calibration: given poses, corrections, flags
        # the last init's solutions (InitSolve, fine grid, fine solution or None), in memory only: a
        # re-initialisation from more views starts from them (init.warm_share); after a restart it starts cold
        self._last_init: tuple | None = None
        self._warm = False      # set by reinitialize: the next init may start from _last_init

    # ================================================================= views
    def add_view(self, view: View, image, *, holdout: bool = False, mask=None) -> int:
        """Add a line-integral view (``image`` float [H, W], ∫mu dl with mu in 1/mm). Returns its index.

        ``mask`` (optional, [H, W] of 0/1 or bool, 1 = valid): pixels marked 0 carry no information (collimator
        shutters, saturation, metal, overlays); whatever they hold (also NaN) is ignored: they are excluded
        from the loss and inpainted from their valid neighbours for the initial solve.
        Views can be added at any time, before or during optimisation; invalid input raises
        :class:`EngineError` and leaves the engine unchanged (see :func:`.views.check_view`).
        """
        m = check_mask(mask, np.shape(image))
        if m is not None:  # masked pixels carry nothing: zero them before the checks (NaN there is fine)
            image = np.where(m, np.asarray(image, dtype=np.float32), np.float32(0.0))
        img = check_view(view, image, self.grid)
        self.views.append(prepare_view(view, torch.from_numpy(img.copy()), holdout, self.frame, self.device,
                                       mask=None if m is None else torch.from_numpy(m)))
        return len(self.views) - 1

    @property
    def train_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if not v.holdout]

    @property
    def holdout_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.views) if v.holdout]

    # ================================================================= rendering
    def _render(self, K, T, h, w):
        means, scales, quats, dens = self.model.activated()
        if self.config.lattice.clip_to_roi and self._material_ends_at_roi:
            dens = dens * self._inside_fraction(means, scales, quats)
        return gr.render(means, scales, quats, dens, K, T, w, h, eps2d=self.config.optimiser.eps2d,
                         backend=self.config.backend)

    def _inside_fraction(self, means, scales, quats) -> torch.Tensor:
        """Each Gaussian's share of its mass inside the ROI box: the product over the axes of its marginal's mass
        between the box faces (exact for axis-aligned Gaussians). When the views show that the material ends at
        the ROI box, the renderer integrates the Gaussians that straddle a face only up to it, as the voxelised
        volume does; unclipped, their tails past the faces add line integral that the data do not have."""
        lo, hi = (torch.tensor(b, dtype=means.dtype, device=means.device) for b in
                  self.frame.grid_to_normalized(self.grid).bounds())
        R = gr.quat_to_rotmat(quats)
        sd = ((R * scales[:, None, :]) ** 2).sum(-1).clamp_min(1e-20).sqrt() * math.sqrt(2.0)  # sqrt(2 Sigma_aa)
        return (0.5 * (torch.erf((hi - means) / sd) - torch.erf((lo - means) / sd))).prod(1)

    def _backgrounds(self, views: list[View]) -> list[torch.Tensor | None]:
        """Normalised line integrals of the fixed exterior for ``views``."""
        if self._exterior is None:
            return [None] * len(views)
        vol, grid = self._exterior
        proj = init_solve.make_solver(self.config).forward_project(vol, grid, views) / self.frame.projection_scale
        return [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)).to(self.device) for p in proj]

    def _ensure_backgrounds(self):
        """Project the exterior for views that arrived after initialisation (live views)."""
        todo = [vd for vd in self.views if vd.background is None]
        if self._exterior is None or not todo:
            return
        for vd, bg in zip(todo, self._backgrounds([vd.view for vd in todo])):
            vd.background = bg

    def render_view(self, index_or_view) -> np.ndarray:
        """Current model's line-integral image (world units) for a stored view index or any View, the projection
        of the fixed exterior included."""
        if self.model is None:
            raise EngineError("the engine is not initialised yet (no optimisation step has run)")
        if isinstance(index_or_view, View):
            v = index_or_view
            K, T = view_tensors(v, self.frame, self.device)
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

    def _voxelize_normalized(self, means, scales, quats, dens, grid_n: Grid) -> torch.Tensor:
        return voxelize(means, scales, quats, dens, grid_n, backend=self.config.backend)

    # ================================================================= initialisation
    def _report(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, int(done), int(total))

    def _initialise_atomic(self, progress=None, preview=None) -> None:
        """:meth:`_initialise` plus the views' exterior projections, all or nothing: on any exception (a failed
        solve, or ``progress`` raising to stop) the model, optimiser, exterior, backgrounds and random state are
        put back as they were."""
        old = (self.model, self.optim, self.densifier, self._exterior, [vd.background for vd in self.views],
               self._material_ends_at_roi, self._init_spacing, self._gen.get_state(), self._last_init)
        calibration = self.calibration.snapshot(self)  # corrected poses are rolled back too
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
            (self.model, self.optim, self.densifier, self._exterior, bgs, self._material_ends_at_roi,
             self._init_spacing, rng, self._last_init) = old
            for vd, bg in zip(self.views, bgs):
                vd.background = bg
            self._gen.set_state(rng)
            self.calibration.restore(self, calibration)
            raise
        finally:
            self._progress = self._preview = None

    def _show(self, volume: np.ndarray, grid: Grid, label: str) -> None:
        """Hand an intermediate init solution (mu on ``grid``) to the ``preview`` callback, on the output grid."""
        if self._preview is not None:
            out = volume if grid == self.grid else resample(volume, grid, self.grid, order=1)
            self._preview(np.ascontiguousarray(np.maximum(out, 0), dtype=np.float32), label)

    def _initialise(self):
        """Initial solve, exterior, placement (see the module docstring); a fresh optimiser and densifier."""
        cfg = self.config
        if not self.train_indices:
            raise EngineError("cannot initialise: no training views have been added")
        field_, fine_grid = self._init_field()
        gs = float(self.grid.spacing.max())
        spacing = cfg.lattice.spacing
        if spacing is None:  # a basis finer than the init's resolution only adds Gaussians
            spacing = 1.5 if self._init_solved_at_output_spacing() else 2.0
        vox_n = gs / self.frame.scale
        faces = vox_n if (cfg.lattice.face_layer and self._material_ends_at_roi) else None
        p = lattice_from_field(field_, self.frame.grid_to_normalized(fine_grid), spacing * gs / self.frame.scale,
                               cfg.lattice,
                               faces_voxel_n=faces, backend=cfg.backend, report=self._report)
        if len(p.means) == 0:
            raise EngineError("no Gaussian could be placed: no training view sees the reconstruction grid")
        o = cfg.optimiser
        smax = max(o.scale_max, float(p.scales.max()) * 1.2)
        self.model = GaussianModel(p.means, p.scales, p.density, group=torch.zeros(len(p.means)),
                                   scale_min=o.scale_min, scale_max=smax, device=self.device)
        self.optim = Adam()
        self.densifier = make_strategy(cfg.densification)
        self.densifier.reset(self.model)

    def _train_views_world(self):
        """Training views, their line integrals (world units) for the initial solve and their validity masks
        (bool, None where every pixel counts); masked pixels are inpainted from their valid neighbours
        (:func:`~ixgs_ros.core.radiograph.inpaint_invalid`), so that SART does not trust them."""
        idx = self.train_indices
        views = [self.views[i].view for i in idx]
        proj = np.stack([(self.views[i].image * self.frame.projection_scale).cpu().numpy() for i in idx])
        masks = [None if self.views[i].mask is None else self.views[i].mask.cpu().numpy() > 0.5 for i in idx]
        for k, m in enumerate(masks):
            if m is not None:
                proj[k] = inpaint_invalid(proj[k], m)
        return views, proj, masks

    def _init_field(self) -> tuple[torch.Tensor, Grid]:
        """The init volume the Gaussians are fitted to (normalised units) and its grid (the fine box); sets the
        fixed exterior when material lies outside the ROI."""
        cfg = self.config
        views, proj, masks = self._train_views_world()
        n = len(self.train_indices)
        show = lambda vol, grid, stage: self._show(vol, grid, f"{stage} solution from {n} views")  # noqa: E731
        last = self._last_init if (self._warm and cfg.init.warm_share > 0) else None
        warm = last[0] if last is not None else None
        if refinement_wanted(cfg, len(views)):  # pose self-calibration (engine/calibration.py) corrects the views
            init, views = calibrated_init(self, views, proj, masks, warm=warm, show=show)
        else:
            init = init_solve.init_tv_sart(views, proj, self.grid, cfg, progress=self._report, warm=warm, show=show)
        solve, sol = init.solve, init.volume
        self._material_ends_at_roi = not init.exterior
        self._show(sol, solve, f"{init.stage} solution from {len(views)} views")
        self._init_spacing = float(solve.spacing.max())
        if init.exterior:
            # the solution outside the fine box stays fixed and is projected into every view (_ensure_backgrounds);
            # the fine box is re-solved at the output spacing only when the solve was coarser than the output
            gs = float(self.grid.spacing.min())
            passes = (0 if self._init_solved_at_output_spacing()
                      else init_solve.init_passes(cfg, cfg.exterior.refine_passes, len(views)))
            fine_grid = init_solve.fine_box(self.grid, solve, cfg, refine=passes > 0)
            # warm: the fine box starts from the last fine solution when it is the same box
            x0 = last[2] if (init.warm and passes and last[1] == fine_grid and last[2] is not None) else None
            if x0 is not None:
                passes = max(1, int(round(passes * cfg.init.warm_share)))
            stage = f"fine TV-SART ({gs:.3g} mm{', warm' if x0 is not None else ''})"
            if passes:
                self._report(stage, 0, passes)
            e = cfg.exterior
            refine = init_solve.make_solver(cfg).refine_inner
            roi, outside = refine(views, proj, solve, sol, fine_grid, passes, lam=e.refine_relaxation,
                                  tv_weight=e.refine_tv_weight, tv_weight_final=e.refine_tv_weight_final,
                                  on_pass=lambda k, n: self._report(stage, k, n), x0=x0)
            self._exterior = (outside, solve)
            if passes:
                self._show(roi, fine_grid, f"{stage} solution from {len(views)} views")
            keep = (init, fine_grid, roi if passes else None)
        else:
            fine_grid = self.grid
            roi = resample(sol, solve, fine_grid, order=1)
            keep = (init, fine_grid, None)
        self._last_init = keep if cfg.init.warm_share > 0 else None  # held only for a warm re-init
        return torch.from_numpy(np.ascontiguousarray(roi / cfg.mu_ref, dtype=np.float32)), fine_grid

    def _init_solved_at_output_spacing(self) -> bool:
        """Whether the init was solved at (or finer than) the output grid's spacing."""
        return self._init_spacing is not None and self._init_spacing <= 1.01 * float(self.grid.spacing.max())

    # ================================================================= optimisation
    def _next_view(self) -> int:
        if not self._order:
            train = self.train_indices
            perm = torch.randperm(len(train), generator=self._gen).tolist()
            self._order = [train[i] for i in perm]
        return self._order.pop()

    def _tv_grid(self) -> Grid:
        """A random tv_size^3 sub-grid of the output grid (in the normalised frame)."""
        shape = np.array(self.grid.shape)
        size = np.minimum(self.config.optimiser.tv_size, shape)
        off = [int(torch.randint(int(h) + 1, (1,), generator=self._gen)) for h in shape - size]
        A = np.array(self.grid.affine, dtype=np.float64)
        A[:3, 3] = A[:3, 3] + A[:3, :3] @ np.array(off, dtype=np.float64)
        return Grid(tuple(int(s) for s in size), self.frame.affine_to_normalized(A))

    def step(self, n: int = 1, callback=None, progress=None, preview=None) -> EngineStatus:
        """Run ``n`` optimisation iterations (initialising first if needed). Returns :meth:`status`.

        ``callback(engine)`` is called after every iteration. ``progress(stage, done, total)`` is called while
        an initialisation runs (minutes on a CPU for full-body views): ``stage`` names the part (e.g. "coarse
        TV-SART"), ``done`` of ``total`` of its passes are finished (each stage is announced with ``done=0``).
        ``preview(volume, label)`` receives the initialisation's intermediate solutions on the output grid (mu
        in 1/mm; ``label`` says which) as soon as they exist. Any of them may raise to stop (e.g. a shutdown):
        an initialisation stopped that way leaves the engine as it was before the call (views kept, not
        initialised, random state restored, so the next ``step`` gives the same result as an uninterrupted
        one)."""
        if not self.train_indices:
            raise EngineError("no training views: add at least one view before optimising")
        t0 = time.perf_counter()
        if self.model is None:
            self._initialise_atomic(progress, preview)
            self._init_views = len(self.train_indices)
        cfg, o = self.config, self.config.optimiser
        self._ensure_backgrounds()
        for _ in range(int(n)):
            l1 = loss = 0.0
            used = []
            for _k in range(max(1, min(o.views_per_step, len(self.train_indices)))):
                vi = self._next_view()
                used.append(vi)
                vd = self.views[vi]
                pred = self._render(vd.K, vd.T, vd.image.shape[0], vd.image.shape[1])
                if vd.background is not None:
                    pred = pred + vd.background
                l1_v, loss_v = projection_loss(pred, vd.image, o.lambda_ssim, mask=vd.mask)
                l1 = l1 + l1_v
                loss = loss + loss_v
            l1 = l1 / len(used)
            loss = loss / len(used)
            if o.lambda_tv > 0:
                means, scales, quats, dens = self.model.activated()
                vol = self._voxelize_normalized(means, scales, quats, dens, self._tv_grid())
                loss = loss + o.lambda_tv * tv_3d(vol)
            loss.backward()
            self.densifier.after_backward(self.model)
            self.optim.step(self.model.parameters(), self.learning_rates())
            self.iteration += 1
            self._last_loss = float(loss.detach())
            self.history.append({"iteration": self.iteration, "loss": self._last_loss, "l1": float(l1.detach()),
                                 "views": used})
            self.densifier.step(self.model, self.optim, self.iteration - self._schedule_start, cfg.iterations,
                                self._gen)
            if callback is not None:
                callback(self)
        self.wall_time += time.perf_counter() - t0
        return self.status()

    def learning_rates(self) -> dict[str, float]:
        """The optimiser's per-parameter-group rates at the current iteration of the schedule."""
        return schedule_rates(self.config, self.iteration - self._schedule_start)

    @property
    def schedule_done(self) -> bool:
        """True once the current learning-rate schedule (``config.iterations`` from its start) has run; more
        ``step`` calls keep refining at the final learning rates."""
        return self.model is not None and self.iteration - self._schedule_start >= self.config.iterations

    def reinitialize(self, progress=None) -> EngineStatus:
        """Solve the initialisation again from *all* current training views and restart the learning-rate
        schedule (live use: the first init ran on the few views present then, and views added later only join
        the loss). Model, optimiser, exterior and the views' backgrounds are replaced; views, iteration count
        and history are kept. With ``init.warm_share`` > 0 the solve starts from the last initialisation's
        solution (kept in memory since then) and runs that share of its passes. ``progress`` as in
        :meth:`step`; a re-init that fails or is stopped leaves the previous model in place."""
        if not self.train_indices:
            raise EngineError("cannot reinitialise: no training views have been added")
        t0 = time.perf_counter()
        self._warm = True  # start from the last init's solution (init.warm_share)
        try:
            self._initialise_atomic(progress)
        finally:
            self._warm = False
        self._schedule_start = self.iteration
        self._init_views = len(self.train_indices)
        self._order = []
        self.wall_time += time.perf_counter() - t0
        return self.status()

    # ================================================================= outputs
    def volume(self, grid: Grid | None = None) -> np.ndarray:
        """The current attenuation volume (float32, mu in 1/mm) on ``grid`` (default: the engine's grid)."""
        if self.model is None:
            raise EngineError("the engine is not initialised yet (no optimisation step has run)")
        gn = self.frame.grid_to_normalized(grid or self.grid)
        with torch.no_grad():
            fine = self.model.group == 0
            means, scales, quats, dens = (t.detach()[fine] for t in self.model.activated())
            vol = self._voxelize_normalized(means, scales, quats, dens, gn) * self.frame.mu_ref
        return vol.cpu().numpy().astype(np.float32)

    def evaluate_holdout(self) -> HoldoutScores:
        """2D PSNR/SSIM of the current model on held-out views (each projection scaled by its ground-truth max,
        peak 1; see :mod:`ixgs_ros.evaluation.metrics`)."""
        from ..evaluation.metrics import psnr_2d, ssim_2d

        idx = self.holdout_indices
        if self.model is None or not idx:
            return HoldoutScores(float("nan"), float("nan"))
        pred = np.stack([self.render_view(i) for i in idx])
        gt = np.stack([(self.views[i].image * self.frame.projection_scale).cpu().numpy() for i in idx])
        p_mean, p_all = psnr_2d(pred, gt, return_all=True)
        s_mean, s_all = ssim_2d(pred, gt, return_all=True)
        return HoldoutScores(p_mean, s_mean, list(p_all), list(s_all), len(idx))

    def status(self) -> EngineStatus:
        m = self.model
        state = ("waiting_for_views" if not self.train_indices else
                 ("idle" if m is None else ("converged" if self.schedule_done else "optimizing")))
        return EngineStatus(state=state, views_used=len(self.train_indices), views_holdout=len(self.holdout_indices),
                            iterations=self.iteration, schedule_start=self._schedule_start,
                            init_views=self._init_views, num_gaussians=0 if m is None else len(m),
                            num_context_gaussians=0 if m is None else int((m.group != 0).sum()),
                            loss=self._last_loss, wall_time_s=self.wall_time)

    # ================================================================= persistence
    def save(self, directory):
        """Save the whole state (config, views and images, model, optimiser, RNG, history) to a directory;
        crash-safe (see :mod:`.state`)."""
        from .state import save_state

        return save_state(self, directory)

    @classmethod
    def load(cls, directory, device: str | None = None) -> "ReconstructionEngine":
        """An engine restored from :meth:`save`'s directory (also states of the first engine version)."""
        from .state import load_state

        return load_state(cls, directory, device)

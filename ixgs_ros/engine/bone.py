"""The bone target of the engine: views and their bone-only line integrals in, a bone volume out.

>>> rec = BoneReconstruction(grid, EngineConfig())
>>> rec.add_view(view, bone_image)                 # bone line integrals (1/mm x mm); holdout=True for the gate
>>> rec.run(progress=None)                         # the bone solve (and, with bone.gaussians, the Gaussian stage)
>>> bone = rec.volume()                            # mu (1/mm) inside bone, zero elsewhere, on ``grid``
>>> pred = rec.render_view(view)                   # its bone line integrals in any view (held-out checks)

The solve (:mod:`.bone_solve`) is TV-SART with the priors of a sparse compact object; with ``bone.gaussians``
the engine's Gaussian stage (lattice fit, density optimisation, the configured densification strategy) starts
from it (:class:`BoneGaussianEngine`, a :class:`~.engine.ReconstructionEngine` whose initial field is the bone
solve), the exterior bone held fixed as the full volume's exterior is. :func:`finish_bone` makes the output a
bone volume: zero wherever no voxel nearby reaches the bone level.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..core.anatomy import BONE_HU
from ..core.geometry import View
from ..core.volume import Grid, hu_to_mu, resample
from .config import EngineConfig, EngineError
from .engine import ReconstructionEngine
from .bone_solve import BoneSolve, solve_bone
from .views import check_view

__all__ = ["BoneReconstruction", "BoneGaussianEngine", "finish_bone"]


def finish_bone(volume: np.ndarray, floor: float = 0.25, bone_hu: float = BONE_HU) -> np.ndarray:
    """A bone volume from a reconstruction of bone line integrals: negative values and voxels below
    ``floor`` x the bone level (mu at ``bone_hu``) whose 3x3x3 neighbourhood never reaches that level are set to
    0 (the faint haze a few-view solve leaves between bones). Voxels next to bone keep their values, so the
    iso-surfaces at and above the bone level are unchanged."""
    from scipy.ndimage import maximum_filter

    v = np.maximum(np.asarray(volume, dtype=np.float32), 0.0)
    level = float(hu_to_mu(bone_hu))
    near = maximum_filter(v, size=3) >= level
    return np.where(near | (v >= floor * level), v, np.float32(0.0)).astype(np.float32)


class BoneGaussianEngine(ReconstructionEngine):
    """The engine's Gaussian stage started from a given bone solve instead of its own TV-SART init."""

    def __init__(self, grid: Grid, config: EngineConfig, solve: BoneSolve):
        super().__init__(grid, config)
        self._bone_solve = solve

    def _init_field(self):
        s = self._bone_solve
        self._material_ends_at_roi = s.exterior is None and s.fine_grid == self.grid
        self._init_spacing = float(self.grid.spacing.max())  # solved at the output spacing
        if s.exterior is not None:
            self._exterior = s.exterior
        field = torch.from_numpy(np.ascontiguousarray(s.fine / self.config.mu_ref, dtype=np.float32))
        return field, s.fine_grid


class BoneReconstruction:
    """The bone target (see the module docstring). Views are checked as the engine checks them
    (:func:`~.views.check_view`; bad input raises :class:`EngineError` and leaves the views as they were)."""

    def __init__(self, grid: Grid, config: EngineConfig | None = None):
        if not isinstance(grid, Grid):
            raise EngineError("grid must be an ixgs_ros.core.volume.Grid")
        self.grid = grid
        self.config = (config or EngineConfig()).validate()
        self.views: list[View] = []
        self.images: list[np.ndarray] = []
        self.holdout: list[bool] = []
        self.solve: BoneSolve | None = None
        self.engine: BoneGaussianEngine | None = None
        self.info: dict = {}
        self._volume: np.ndarray | None = None

    def add_view(self, view: View, image, *, holdout: bool = False) -> int:
        """Add a view and its bone line integrals (float [H, W]); returns its index. A view added after
        :meth:`run` joins the next run."""
        img = check_view(view, image, self.grid)
        if self.views and (view.width, view.height) != (self.views[0].width, self.views[0].height):
            raise EngineError(f"the bone target needs one detector size: this view is {view.width}x{view.height}, "
                              f"the first {self.views[0].width}x{self.views[0].height}")
        self.views.append(view)
        self.images.append(img.copy())
        self.holdout.append(bool(holdout))
        return len(self.views) - 1

    @property
    def train_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.holdout) if not h]

    @property
    def holdout_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.holdout) if h]

    def run(self, progress=None, iterations: int | None = None) -> dict:
        """Solve from all training views (again, when views were added); with ``bone.gaussians`` then optimise
        ``iterations`` (default ``config.iterations``) Gaussian steps. ``progress(stage, done, total)`` as in
        :meth:`ReconstructionEngine.step`. Returns :attr:`info` (stage times, grids, pass counts)."""
        idx = self.train_indices
        if not idx:
            raise EngineError("no training views: add at least one bone view before running the bone target")
        cfg = self.config
        t0 = time.perf_counter()
        views = [self.views[i] for i in idx]
        proj = np.stack([self.images[i] for i in idx])
        self.solve = solve_bone(views, proj, self.grid, cfg, progress=progress)
        info = dict(self.solve.info)
        info["solve_s"] = time.perf_counter() - t0
        self.engine = None
        if cfg.bone.gaussians:
            t1 = time.perf_counter()
            eng = BoneGaussianEngine(self.grid, cfg, self.solve)
            for i in idx:
                eng.add_view(self.views[i], self.images[i])
            eng.step(int(iterations if iterations is not None else cfg.iterations), progress=progress)
            self.engine = eng
            st = eng.status()
            info.update(gaussians_s=time.perf_counter() - t1, num_gaussians=st.num_gaussians,
                        iterations=st.iterations)
        self._volume = None
        info["wall_s"] = time.perf_counter() - t0
        info["views_train"] = len(idx)
        self.info = info
        return info

    def _raw_volume(self, grid: Grid) -> np.ndarray:
        if self.engine is not None:
            return self.engine.volume(grid)
        s = self.solve
        return resample(s.fine, s.fine_grid, grid, order=1)

    def volume(self, grid: Grid | None = None) -> np.ndarray:
        """The bone volume (mu in 1/mm inside bone, zero elsewhere; float32) on ``grid`` (default: the ROI)."""
        if self.solve is None:
            raise EngineError("the bone target has not run yet (call run())")
        if grid is None:
            if self._volume is None:
                self._volume = finish_bone(self._raw_volume(self.grid), self.config.bone.floor)
            return self._volume
        return finish_bone(self._raw_volume(grid), self.config.bone.floor)

    def render_view(self, view_or_index) -> np.ndarray:
        """Bone line integrals of the current solution (fine volume plus the fixed exterior bone) in a view."""
        if self.solve is None:
            raise EngineError("the bone target has not run yet (call run())")
        v = view_or_index if isinstance(view_or_index, View) else self.views[int(view_or_index)]
        from .bone_solve import _projector_pair

        fp, _ = _projector_pair(self.config)
        s = self.solve
        if self.engine is not None:
            fine, fine_grid = self.engine.volume(s.fine_grid), s.fine_grid
        else:
            fine, fine_grid = s.fine, s.fine_grid
        img = fp(np.ascontiguousarray(fine, dtype=np.float32), fine_grid, [v])[0]
        if s.exterior is not None:
            img = img + fp(s.exterior[0], s.exterior[1], [v])[0]
        return np.asarray(img, dtype=np.float32)

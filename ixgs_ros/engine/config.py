"""The reconstruction engine's parameters: one dataclass per component, composed in :class:`EngineConfig`.

Files, node parameters and overrides name a field by its dotted path (``init.passes``, ``optimiser.lr_density``)
or as a nested mapping (``init: {passes: 24}``). The flat names of the first engine (``init_sart_iterations``,
``lr_density``, ...) are still read and mapped (:data:`LEGACY_KEYS`); options that were removed are accepted
only with their old default value, else refused with a message saying so.

Why the defaults are what they are (the measurements behind them) is written in ``docs/findings.md``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.config import ConfigError, flatten, from_mapping, parse_overrides, read_file, set_dotted, to_mapping
from ..core.volume import MU_WATER

__all__ = ["EngineConfig", "InitConfig", "ExteriorConfig", "LatticeConfig", "OptimiserConfig",
           "DensificationConfig", "BoneConfig", "CalibrationConfig", "EngineError", "LEGACY_KEYS",
           "load_engine_config", "engine_config_from"]

_log = logging.getLogger(__name__)


class EngineError(ValueError):
    """Invalid input to the reconstruction engine (bad view or image, bad configuration, incompatible state)."""


@dataclass
class InitConfig:
    """The TV-SART solve the Gaussians start from (:mod:`ixgs_ros.engine.init_solve`)."""
    solver: Literal["auto", "rtk", "torch"] = "auto"  # SART implementation: RTK (CPU) | torch (any device) |
                                      # auto: torch on CUDA or without RTK, else RTK
    passes: int = 48                  # SART sweeps over all views, each followed by 3D TV denoising
    tv_weight: float = 0.03           # TV weight of the first pass (0 = plain SART)
    tv_weight_final: float | None = 0.003  # decays geometrically to this at the last pass (None: constant)
    relaxation: float = 1.3           # SART relaxation; SART converges for values in (0, 2)
    support: bool = True              # when the views show all material inside the ROI, zero the solution outside
    solve_max_voxels: int = 160 ** 3  # solve at the ROI's spacing when the material's box fits, else coarser
    coarse_binning: int = 0           # detector binning for a solve coarser than the output: 0 auto, 1 off, n
    pass_views: int = 25              # pass counts are for this many training views; with fewer, each count is
    pass_scale_max: float = 2.5       # scaled by pass_views / n, at most by this (0 pass_views: never scaled)
    warm_share: float = 0.0           # > 0: a re-initialisation (more views, live) starts from the previous
                                      # solution and runs this share of each pass count (faster, a little less
                                      # accurate: docs/ros.md); 0 = from scratch


@dataclass
class ExteriorConfig:
    """Full-body (truncated) views: the material outside the ROI, solved coarse and then held fixed while the
    ROI is re-solved at the output spacing."""
    passes: int | None = 24           # coarse solve passes (None: init.passes)
    tv_scale: float = 2.0             # both TV weights times this for the coarse solve
    tv_unseen: float = 2.0            # TV weight x (1 + this x fraction of views that do not see the voxel)
    levels: int = 2                   # 2: first level_passes on the grid coarsened 2x, then `passes`; 1: one grid
    level_passes: int = 48
    overlap: float = 1.5              # solve voxels the fine Gaussians reach past the ROI
    refine_passes: int = 16           # SART passes re-solving the fine box at the output spacing (0 = off)
    refine_margin_mm: float = 10.0    # that box: the ROI grown by at least this
    refine_relaxation: float = 1.3
    refine_tv_weight: float = 0.02
    refine_tv_weight_final: float | None = 0.004


@dataclass
class LatticeConfig:
    """Gaussians on a regular lattice over the ROI, densities fitted to the init volume by CG
    (:mod:`ixgs_ros.engine.placement`)."""
    spacing: float | None = None      # in output voxels; None: 1.5 when solved at the output spacing, else 2.0
    sigma: float = 0.6                # Gaussian sigma / lattice spacing
    cg_iterations: int = 20           # 0: densities sampled from the init volume, no fit
    nonneg_rounds: int = 1            # drop the Gaussians CG left empty or negative and refit the rest, N times
    drop_density: float = 1e-3        # normalised density under which a fitted Gaussian counts as empty
    face_layer: bool = True           # thin Gaussians on the ROI faces when the material ends there (ROI-only)
    face_sigma: float = 0.35          # their sigma across the face, in output voxels
    clip_to_roi: bool = True          # when the material ends at the ROI: render only each Gaussian's mass inside


@dataclass
class OptimiserConfig:
    """R²-Gaussian's loss and Adam (per-parameter-group learning rates in the normalised frame, decaying
    exponentially to ``lr_final_factor`` x). From the TV-SART start only the densities move by default."""
    lr_means: float = 0.0
    lr_density: float = 1e-3
    lr_scales: float = 0.0
    lr_quats: float = 0.0
    lr_final_factor: float = 0.1
    lr_warmup: int = 50               # rates ramp up linearly over this many iterations
    views_per_step: int = 2           # views rendered and averaged per iteration
    lambda_ssim: float = 0.25         # weight of D-SSIM beside L1
    lambda_tv: float = 0.03           # weight of 3D TV on a random sub-volume
    tv_size: int = 32                 # that sub-volume's side (voxels)
    eps2d: float = 0.0                # image-plane low-pass added to each splat (pixels^2)
    scale_min: float = 2e-3           # Gaussian scale bounds (normalised units)
    scale_max: float = 1.0


@dataclass
class DensificationConfig:
    """Adaptive density control (:mod:`ixgs_ros.engine.densify`): which Gaussians are cloned, split, pruned."""
    strategy: Literal["none", "split_clone"] = "none"
    start: int = 300                  # first iteration (of the schedule) that densifies
    stop_fraction: float = 0.6        # densify until this fraction of the schedule; pruning goes on
    interval: int = 100
    fraction: float = 0.05            # share of the Gaussians (highest mean positional gradient) densified each time
    max_gaussians: int = 60000
    split_scale: float = 0.02         # normalised; larger Gaussians are split, smaller ones cloned
    prune_density: float = 1e-4       # normalised density under which Gaussians are removed


# ---- bone target: its own section, read only by ixgs_ros.engine.bone / bone_solve ----------------
@dataclass
class BoneConfig:
    """The bone target (:mod:`ixgs_ros.engine.bone_solve`, :mod:`ixgs_ros.engine.bone`): a bone volume from
    bone-only line integrals, with the priors a sparse compact object allows."""
    solve_max_voxels: int = 64 ** 3   # the coarse solve grid over the box the views show bone in
    coarse_passes: int = 12           # SART passes on it (each followed by TV and the bone priors)
    mid_passes: int = 24              # first on the fine box at twice the output spacing (solve coarser than that)
    fine_passes: int = 16             # SART passes re-solving the ROI + fine_margin_mm at the output spacing
    fine_margin_mm: float = 6.0
    pass_views: int = 25              # pass counts are for this many views; fewer views: scaled up (init's cap)
    relaxation: float = 1.3
    tv_weight: float = 0.02           # coarse TV weight, decaying to tv_weight_final (relative to the max)
    tv_weight_final: float | None = 0.002
    fine_tv_weight: float = 0.003     # the fine stage: little TV (edges; the support step and the hull regularise)
    fine_tv_weight_final: float | None = 0.0005
    sparsity: float = 0.002           # soft threshold (mu, 1/mm) after the first pass, decaying with the TV weight
    hull_threshold: float = 0.01      # visual hull: pixels below this fraction of the max carry no bone (0: off)
    hull_dilate_px: float = 1.0       # slack around each voxel's footprint (pixels)
    support_start: float = 0.25       # fine passes after this fraction: the support step (discrete-tomography prior)
    support_level0: float = 0.2       # voxels away from bone under this x the 200 HU level are zeroed, rising to
    support_level1: float = 0.5       # this at the last pass
    gaussians: bool = False           # fit Gaussians to the solve and optimise them (the engine's stage)
    floor: float = 0.25               # output: voxels under floor x the 200 HU level with no neighbour above it: 0

    def validate(self, need) -> None:
        need(self.solve_max_voxels >= 8 ** 3, f"bone.solve_max_voxels must be >= 512, got {self.solve_max_voxels}")
        need(self.coarse_passes >= 1 and self.fine_passes >= 0 and self.pass_views >= 0 and self.mid_passes >= 0,
             f"bone.coarse_passes must be >= 1, bone.mid_passes, bone.fine_passes and bone.pass_views >= 0, got "
             f"{self.coarse_passes}, {self.mid_passes}, {self.fine_passes}, {self.pass_views}")
        need(0.0 < self.relaxation < 2.0, f"bone.relaxation must be in (0, 2), got {self.relaxation}")
        need(self.fine_margin_mm >= 0 and self.sparsity >= 0 and self.hull_dilate_px >= 0 and self.floor >= 0,
             "bone.fine_margin_mm, bone.sparsity, bone.hull_dilate_px and bone.floor must be >= 0")
        need(0.0 <= self.support_start <= 1.0 and 0.0 <= self.support_level0 <= self.support_level1 <= 1.0,
             "bone.support_start must be in [0, 1] and 0 <= bone.support_level0 <= bone.support_level1 <= 1")
        need(0.0 <= self.hull_threshold < 1.0, f"bone.hull_threshold must be in [0, 1), got {self.hull_threshold}")
        from .tv import tv_schedule

        for name, (w0, w1) in (("bone.tv_weight / bone.tv_weight_final", (self.tv_weight, self.tv_weight_final)),
                               ("bone.fine_tv_weight / bone.fine_tv_weight_final",
                                (self.fine_tv_weight, self.fine_tv_weight_final))):
            try:
                tv_schedule(2, w0, w1)
            except ValueError as exc:
                need(False, f"{name}: {exc}")


# ---- end bone target --------------------------------------------------------------------------------------------
@dataclass
class CalibrationConfig:
    """Pose self-calibration (:mod:`ixgs_ros.engine.calibration`): the training views' poses (and optionally
    principal points) are refined by rounds of a quick TV-SART solve and a 2D/3D registration of each view."""
    mode: Literal["auto", "on", "off"] = "auto"  # auto: apply the corrections only when they matter
    rounds: int = 12                  # solve-and-register rounds before the init
    acceleration: int = 3             # Anderson acceleration over this many previous rounds (0: plain rounds)
    coarsen: int = 3                  # the registration volume: the init's solve grid coarsened by this
    passes: int = 8                   # TV-SART passes per round (warm-started from the previous round)
    tv_weight: float = 0.03           # TV weight of those passes
    iterations: int = 6               # Levenberg-Marquardt iterations per view and round
    principal_point: bool = False     # also refine the principal point (nearly degenerate with the rotation)
    prior_rotation_deg: float = 5.0   # weak prior: the scale of a plausible correction, per parameter
    prior_translation_mm: float = 2.0
    prior_principal_point_px: float = 20.0
    min_views: int = 6                # fewer training views: never refined
    auto_min_shift_px: float = 0.5    # auto: applied when the RMS shift of the ROI centre reaches this (pixels)
    auto_min_gain: float = 0.1        # and when they lower the data misfit of a quick solve by this fraction
    flag_rotation_deg: float = 3.0    # flagged: rotation above max(this, flag_factor x the median)
    flag_translation_mm: float = 8.0  # or source translation above max(this, flag_factor x the median)
    flag_shift_mm: float = 20.0       # or moving the ROI centre in its view by more than max(this, flag_factor x
                                      # the median) mm: the image-space size, blind to the rotation/translation
                                      # degeneracy that can split one large error into two modest parameters
    flag_factor: float = 3.0
    flag_inconsistency: float = 5.0   # or 1 - NCC after registration this many robust deviations above the median,
    flag_ncc: float = 0.98            # twice the median and the NCC below this (exact poses stay above it)
    exclude_flagged: bool = True      # leave flagged views out of the registration volume's later rounds

    def validate(self, need) -> None:
        need(self.mode in ("auto", "on", "off"), f"calibration.mode must be auto, on or off, got {self.mode!r}")
        need(self.acceleration >= 0, f"calibration.acceleration must be >= 0, got {self.acceleration}")
        need(self.rounds >= 1 and self.coarsen >= 1 and self.passes >= 1 and self.iterations >= 1
             and self.min_views >= 2, "calibration: rounds, coarsen, passes, iterations must be >= 1 and "
             f"min_views >= 2, got {self.rounds}, {self.coarsen}, {self.passes}, {self.iterations}, {self.min_views}")
        need(min(self.prior_rotation_deg, self.prior_translation_mm, self.prior_principal_point_px) > 0,
             "calibration.prior_* must be > 0")
        need(self.tv_weight >= 0 and self.auto_min_shift_px >= 0 and 0 <= self.auto_min_gain < 1
             and self.flag_rotation_deg > 0 and self.flag_translation_mm > 0 and self.flag_shift_mm > 0
             and self.flag_factor >= 1 and self.flag_inconsistency > 0 and -1 <= self.flag_ncc <= 1,
             "calibration: tv_weight and auto_min_shift_px must be >= 0, auto_min_gain in [0, 1), flag limits > 0, "
             "flag_factor >= 1, flag_ncc in [-1, 1]")


@dataclass
class EngineConfig:
    """Everything the reconstruction engine takes; see each component's class."""
    iterations: int = 100             # length of the optimiser's learning-rate schedule
    seed: int = 0
    device: str = "cpu"               # cpu | cuda | cuda:N
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"  # splatting kernels
    mu_ref: float = MU_WATER          # attenuation unit of the normalised frame (1/mm)
    init: InitConfig = field(default_factory=InitConfig)
    exterior: ExteriorConfig = field(default_factory=ExteriorConfig)
    lattice: LatticeConfig = field(default_factory=LatticeConfig)
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    densification: DensificationConfig = field(default_factory=DensificationConfig)
    bone: BoneConfig = field(default_factory=BoneConfig)  # the bone target
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # pose self-calibration

    # ------------------------------------------------------------------ checks
    def validate(self) -> "EngineConfig":
        """Range checks across fields; raises :class:`EngineError` naming the field. Returns self."""
        from .tv import tv_schedule

        def need(ok: bool, msg: str):
            if not ok:
                raise EngineError(msg)

        i, e, la, o, d = self.init, self.exterior, self.lattice, self.optimiser, self.densification
        need(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        need(self.device in ("cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch

            need(torch.cuda.is_available(), "device cuda requested but this torch has no CUDA device")
        need(self.mu_ref > 0 and math.isfinite(self.mu_ref), f"mu_ref must be > 0, got {self.mu_ref}")
        need(i.passes >= 1, f"init.passes must be >= 1, got {i.passes}")
        need(0.0 < i.relaxation < 2.0, f"init.relaxation must be in (0, 2) (SART converges only there), got "
                                       f"{i.relaxation}")
        need(i.pass_views >= 0 and i.pass_scale_max >= 1,
             f"init.pass_views must be >= 0 and init.pass_scale_max >= 1, got {i.pass_views}, {i.pass_scale_max}")
        need(0.0 <= i.warm_share <= 1.0, f"init.warm_share must be in [0, 1], got {i.warm_share}")
        need(i.coarse_binning >= 0, f"init.coarse_binning must be >= 0 (0 = auto), got {i.coarse_binning}")
        need(i.solve_max_voxels >= 8 ** 3, f"init.solve_max_voxels must be >= 512, got {i.solve_max_voxels}")
        need(e.passes is None or e.passes >= 1, f"exterior.passes must be >= 1 (or null), got {e.passes}")
        need(e.tv_unseen >= 0 and e.tv_scale >= 0, f"exterior.tv_unseen and exterior.tv_scale must be >= 0, got "
                                                   f"{e.tv_unseen}, {e.tv_scale}")
        need(e.levels in (1, 2) and e.level_passes >= 1,
             f"exterior.levels must be 1 or 2 and exterior.level_passes >= 1, got {e.levels}, {e.level_passes}")
        need(e.overlap >= 0, f"exterior.overlap must be >= 0, got {e.overlap}")
        need(e.refine_passes >= 0 and e.refine_margin_mm >= 0 and e.refine_tv_weight >= 0,
             "exterior.refine_passes, refine_margin_mm and refine_tv_weight must be >= 0, got "
             f"{e.refine_passes}, {e.refine_margin_mm}, {e.refine_tv_weight}")
        need(0.0 < e.refine_relaxation < 2.0, f"exterior.refine_relaxation must be in (0, 2), got "
                                              f"{e.refine_relaxation}")
        for name, (w0, w1) in (("init.tv_weight / init.tv_weight_final", (i.tv_weight, i.tv_weight_final)),
                               ("exterior.refine_tv_weight / exterior.refine_tv_weight_final",
                                (e.refine_tv_weight, e.refine_tv_weight_final))):
            try:
                tv_schedule(2, w0, w1)
            except ValueError as exc:
                raise EngineError(f"{name}: {exc}") from None
        need(la.spacing is None or la.spacing > 0, f"lattice.spacing must be > 0 (or null), got {la.spacing}")
        need(la.sigma > 0 and la.face_sigma > 0, "lattice.sigma and lattice.face_sigma must be > 0")
        need(la.cg_iterations >= 0 and la.nonneg_rounds >= 0,
             f"lattice.cg_iterations and lattice.nonneg_rounds must be >= 0, got {la.cg_iterations}, "
             f"{la.nonneg_rounds}")
        need(o.lr_warmup >= 0, f"optimiser.lr_warmup must be >= 0, got {o.lr_warmup}")
        need(min(o.lr_means, o.lr_density, o.lr_scales, o.lr_quats) >= 0, "learning rates must be >= 0")
        need(0 < o.lr_final_factor <= 1, f"optimiser.lr_final_factor must be in (0, 1], got {o.lr_final_factor}")
        need(o.views_per_step >= 1 and o.tv_size >= 2, "optimiser.views_per_step must be >= 1, tv_size >= 2")
        need(o.lambda_ssim >= 0 and o.lambda_tv >= 0 and o.eps2d >= 0, "loss weights and eps2d must be >= 0")
        need(0 < o.scale_min < o.scale_max, f"need 0 < optimiser.scale_min < scale_max, got {o.scale_min}, "
                                            f"{o.scale_max}")
        need(d.interval >= 1 and d.start >= 0 and 0 <= d.stop_fraction <= 1 and 0 <= d.fraction <= 1,
             "densification: interval >= 1, start >= 0, stop_fraction and fraction in [0, 1]")
        need(d.max_gaussians >= 1 and d.split_scale > 0 and d.prune_density >= 0,
             "densification: max_gaussians >= 1, split_scale > 0, prune_density >= 0")
        self.bone.validate(need)  # the bone target's section
        self.calibration.validate(need)
        return self

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        return to_mapping(self)

    @classmethod
    def from_dict(cls, data: dict, *, warn_legacy: bool = True) -> "EngineConfig":
        """From nested mappings, dotted keys or the first engine's flat names (see the module docstring).
        Raises :class:`EngineError` (a ValueError) naming the offending key."""
        return engine_config_from(data, warn_legacy=warn_legacy)


# ---------------------------------------------------------------------------------------------- legacy keys
#: Flat names of the first engine -> dotted paths of this one.
LEGACY_KEYS = {
    "init_sart_iterations": "init.passes", "init_tv_weight": "init.tv_weight",
    "init_tv_weight_final": "init.tv_weight_final", "init_sart_lambda": "init.relaxation",
    "init_support": "init.support", "init_solve_max_voxels": "init.solve_max_voxels",
    "init_coarse_binning": "init.coarse_binning", "init_pass_views": "init.pass_views",
    "init_pass_scale_max": "init.pass_scale_max",
    "init_exterior_sart_iterations": "exterior.passes", "init_exterior_tv_scale": "exterior.tv_scale",
    "init_exterior_tv_unseen": "exterior.tv_unseen", "init_exterior_levels": "exterior.levels",
    "init_exterior_level_passes": "exterior.level_passes", "exterior_overlap": "exterior.overlap",
    "init_fine_passes": "exterior.refine_passes", "init_fine_margin": "exterior.refine_margin_mm",
    "init_fine_lambda": "exterior.refine_relaxation", "init_fine_tv_weight": "exterior.refine_tv_weight",
    "init_fine_tv_weight_final": "exterior.refine_tv_weight_final",
    "lattice_spacing": "lattice.spacing", "lattice_sigma": "lattice.sigma",
    "lattice_cg_iterations": "lattice.cg_iterations", "lattice_nonneg_rounds": "lattice.nonneg_rounds",
    "face_layer": "lattice.face_layer", "face_sigma": "lattice.face_sigma", "clip_to_roi": "lattice.clip_to_roi",
    **{k: f"optimiser.{k}" for k in ("lr_means", "lr_density", "lr_scales", "lr_quats", "lr_final_factor",
                                     "lr_warmup", "views_per_step", "lambda_ssim", "lambda_tv", "tv_size", "eps2d",
                                     "scale_min", "scale_max")},
    "densify": "densification.strategy", "densify_from": "densification.start",
    "densify_until_fraction": "densification.stop_fraction", "densify_interval": "densification.interval",
    "densify_fraction": "densification.fraction", "max_gaussians": "densification.max_gaussians",
    "split_scale": "densification.split_scale", "prune_density": "densification.prune_density",
}
#: Options of the first engine that were removed (paths that measured worse), with the only value still accepted.
REMOVED_KEYS = {
    "init": "rtk", "placement": "lattice", "context": True, "context_mode": "background", "coarse_fraction": 0.0,
    "init_fit_iterations": 600, "init_fit_block": 48, "init_edge_weight": 2.0, "init_lattice": 24,
    "init_iterations": 500, "init_image_size": 64, "n_init": 50000, "init_threshold": 0.05,
    "context_extent": 3.0, "context_lattice": 12,
}
_SECTIONS = ("init", "exterior", "lattice", "optimiser", "densification", "bone", "calibration")


def _legacy(key: str, value, warn: bool) -> tuple[str, Any] | None:
    """(dotted path, value) for a flat key of the first engine, None for a removed key at its old value."""
    if key in REMOVED_KEYS and not (key == "init" and isinstance(value, dict)):
        old = REMOVED_KEYS[key]
        if value != old:
            raise EngineError(f"engine option {key}={value!r} was removed (only {old!r} remains; the other paths "
                              "measured worse, see docs/findings.md)")
        return None
    path = LEGACY_KEYS[key]
    if key == "densify":
        if not isinstance(value, bool):
            raise EngineError(f"densify must be true or false, got {value!r}")
        value = "split_clone" if value else "none"
    if warn:
        _log.warning("engine option %s is the old flat name of %s; it still works, but use %s", key, path, path)
    return path, value


def engine_config_from(data: dict, *, warn_legacy: bool = True) -> EngineConfig:
    """:class:`EngineConfig` from a mapping with nested sections, dotted keys or legacy flat keys, type-checked
    and validated."""
    if not isinstance(data, dict):
        raise EngineError(f"engine configuration must be a mapping, got {type(data).__name__}")
    nested: dict = {}
    for key, value in data.items():
        if key in _SECTIONS and isinstance(value, dict):
            for k, v in flatten(value, key + ".").items():
                set_dotted(nested, k, v)
            continue
        if "." not in key and (key in LEGACY_KEYS or key in REMOVED_KEYS):
            mapped = _legacy(key, value, warn_legacy)
            if mapped is None:
                continue
            key, value = mapped
        set_dotted(nested, key, value)
    try:
        return from_mapping(EngineConfig, nested).validate()
    except ConfigError as exc:
        raise EngineError(str(exc)) from None


def load_engine_config(path=None, overrides=(), **values) -> EngineConfig:
    """Defaults < the file ``path`` (YAML/JSON; its ``engine:`` section when present) < ``overrides``
    (``KEY=VALUE`` strings) < ``values`` (keyword arguments, None ignored). The one loader of the CLI, the node
    and the experiments."""
    data: dict = {}
    try:
        if path:
            data.update(flatten(engine_config_from(read_file(path, section="engine")).to_dict()))
        for key, value in parse_overrides(overrides, "engine override").items():
            data[key] = value
    except ConfigError as exc:
        raise EngineError(str(exc)) from None
    data.update({k: v for k, v in values.items() if v is not None})
    return engine_config_from(data)

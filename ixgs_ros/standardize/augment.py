"""Per-epoch training samples: anatomy augmentation of cached path lengths, then a random training style.

Each sample starts from one view's path lengths (:mod:`.data`, rendered once) and is re-drawn every epoch:

1. **HU scaling**: the soft-tissue and bone channels are scaled by independent factors (path lengths are
   linear in ``1 + HU/1000``, so this is exactly a CT whose soft tissue / bone is that much denser);
2. **deformation**: a smooth random displacement field (a few pixels, a coarse random grid upsampled) warps
   all three channels of a view together;
3. **detector**: with probability ``hires_prob`` the view is styled on a detector of twice the pixels per side
   (path lengths upsampled, pitch halved), so the network's coefficient upsampling is trained too;
4. **style**: one of :data:`~ixgs_ros.simulation.styles.TRAINING_STYLES` (never a held-out style, never the
   held-out scatter family: :func:`check_training_styles`), sampled per group of views with the simulator's
   parameter sampling and rendering (tube - snapped to :data:`BEAM_GRID` so spectra are reused -, scatter,
   noise, blur, shutters, screws, processing);
5. **flips** of the styled image and its targets (exact).

Targets: the ideal line integral ``mu_water (soft + bone)``, the bone-only line integral ``mu_water bone``, the
vertebra path length (anatomy weights of the loss) and the simulator's validity mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ixgs_ros.core.geometry import View
from ixgs_ros.core.volume import MU_WATER
from ixgs_ros.simulation.pathlengths import PathLengths
from ixgs_ros.simulation.imaging import render_params
from ixgs_ros.simulation.styles import HELD_OUT_STYLES, STYLES, TRAINING_STYLES, get_style, sample_params

__all__ = ["AugmentConfig", "BEAM_GRID", "snap_beam", "held_out_scatter_families", "check_training_styles",
           "augment_group", "make_samples"]


@dataclass
class AugmentConfig:
    """Ranges of the per-sample augmentation (recorded beside the weights)."""

    styles: tuple = TRAINING_STYLES
    soft_scale: tuple = (0.85, 1.2)
    bone_scale: tuple = (0.8, 1.25)
    warp_px: tuple = (0.0, 3.0)       # displacement amplitude (pixels of the rendered detector)
    warp_grid: int = 5                # coarse control grid per side
    hires_prob: float = 0.25          # styled on a 2x detector
    views_per_style: int = 4          # views sharing one style draw

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def held_out_scatter_families() -> set[str]:
    """Scatter families that only held-out styles use (``asymmetric``)."""
    train = {STYLES[n].scatter for n in TRAINING_STYLES}
    return {STYLES[n].scatter for n in HELD_OUT_STYLES} - train


def check_training_styles(styles) -> tuple[str, ...]:
    """The style names, or ``ValueError`` for a held-out style or one using a held-out scatter family."""
    styles = tuple(styles)
    if not styles:
        raise ValueError("no training style given")
    banned = held_out_scatter_families()
    for name in styles:
        st = get_style(name)
        if st.held_out or name in HELD_OUT_STYLES:
            raise ValueError(f"style {name!r} is held out of training")
        if st.scatter in banned:
            raise ValueError(f"style {name!r} uses the held-out scatter family {st.scatter!r}")
    return styles


#: Tube settings are snapped to this grid (kV, mm Al, mm Cu) in training: each new setting costs spekpy about
#: a second, so a coarse grid of cached spectra keeps the per-epoch styling cheap.
BEAM_GRID = (5.0, 1.0, 0.1)


def snap_beam(params: dict) -> dict:
    """Round a sampled style's tube voltage and filtration to :data:`BEAM_GRID` (in place; returned)."""
    if params.get("mono_kev") is None and "kvp" in params:
        dk, da, dc = BEAM_GRID
        params["kvp"] = round(params["kvp"] / dk) * dk
        params["al_mm"] = max(0.0, round(params["al_mm"] / da) * da)
        params["cu_mm"] = max(0.0, round(params["cu_mm"] / dc) * dc)
    return params


def _warp(arrays: list[np.ndarray], rng: np.random.Generator, amp: float, grid: int) -> list[np.ndarray]:
    """The same smooth random displacement (amplitude ``amp`` px) applied to every 2D array of ``arrays``
    (bilinear, border values continued)."""
    import torch
    import torch.nn.functional as F

    H, W = arrays[0].shape
    if amp <= 0:
        return arrays
    coarse = torch.from_numpy(rng.normal(0.0, amp / 2.0, (1, 2, grid, grid)).astype(np.float32))
    d = F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=True)[0]
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    gy = (yy + d[0]) * (2.0 / max(H - 1, 1)) - 1.0
    gx = (xx + d[1]) * (2.0 / max(W - 1, 1)) - 1.0
    grid_xy = torch.stack([gx, gy], -1)[None]
    src = torch.from_numpy(np.stack(arrays).astype(np.float32))[None]
    out = F.grid_sample(src, grid_xy, mode="bilinear", padding_mode="border", align_corners=True)[0].numpy()
    return [np.ascontiguousarray(a) for a in out]


def _hires_view(v: View) -> View:
    """``v`` on a detector of twice the pixels per side (pitch halved in the trajectory meta the simulator reads)."""
    s = v.scaled(2.0)
    meta = dict(s.meta)
    tr = dict(meta.get("trajectory", {}))
    if tr.get("pixel_mm"):
        tr["pixel_mm"] = float(tr["pixel_mm"]) / 2.0
    meta["trajectory"] = tr
    return View(s.K, s.T_world_source, s.width, s.height, meta)


def augment_group(pl: PathLengths, views: list, rng: np.random.Generator, cfg: AugmentConfig,
                  hires: bool = False) -> tuple[PathLengths, list]:
    """HU scaling, deformation and (``hires``) a 2x detector for a group of views (see the module docstring)."""
    s_soft, s_bone = rng.uniform(*cfg.soft_scale), rng.uniform(*cfg.bone_scale)
    soft, bone, vert = [], [], []
    for i in range(len(pl)):
        a = [pl.soft[i] * s_soft, pl.bone[i] * s_bone, pl.vertebrae[i]]
        a = _warp(a, rng, float(rng.uniform(*cfg.warp_px)), int(cfg.warp_grid))
        if hires:
            a = [np.clip(ndimage.zoom(x, 2.0, order=1, grid_mode=True, mode="nearest"), 0, None) for x in a]
        soft.append(a[0])
        bone.append(a[1])
        vert.append(a[2])
    meta = dict(pl.meta)
    out = PathLengths(np.stack(soft), np.stack(bone), np.stack(vert), meta)
    return out, [_hires_view(v) for v in views] if hires else list(views)


def make_samples(pl: PathLengths, views: list, rng: np.random.Generator, cfg: AugmentConfig,
                 cache_dir=None, hires: bool = False, style: str | None = None) -> dict:
    """One style draw over a group of views: ``{"image", "line", "bone", "vertebrae", "mask"}`` float32 / uint8
    arrays ``[N, H, W]`` and ``"style"`` (the name). The style is random among ``cfg.styles`` unless given."""
    styles = check_training_styles(cfg.styles if style is None else (style,))
    name = styles[int(rng.integers(len(styles)))]
    apl, aviews = augment_group(pl, views, rng, cfg, hires)
    params = sample_params(name, apl, aviews, rng)
    snap_beam(params)
    images, mask = render_params(apl, aviews, params, rng, cache_dir=cache_dir)
    out = {"image": images.astype(np.float32), "line": apl.line_integrals(MU_WATER),
           "bone": apl.bone_projection(MU_WATER), "vertebrae": apl.vertebrae.astype(np.float32),
           "mask": mask.astype(np.uint8), "style": name}
    for i in range(len(images)):  # flips of image and targets together (exact)
        for axis in (0, 1):
            if rng.uniform() < 0.5:
                for k in ("image", "line", "bone", "vertebrae", "mask"):
                    out[k][i] = np.flip(out[k][i], axis)
    return out

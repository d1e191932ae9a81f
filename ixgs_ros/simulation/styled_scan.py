"""``ixgs simulate --style NAME``: a scan of realistic C-arm images with its ideal images beside it.

:func:`simulate_styled_scan` runs :func:`ixgs_ros.simulation.simulate.simulate_scan` (same ROI, trajectory, pose
noise, ground truth and files) with the line-integral renderer replaced by :func:`render_path_lengths`
(cached), then styles the images (:func:`style_images`) and rewrites the scan directory as:

* ``scan.json`` + ``projections.npy``: ``image_kind: "raw"``, float32 images holding the style's integer
  values (raw ADU or processed display values, ``0 .. 2^bits - 1``); scan.json's ``"style"`` holds the
  sampled parameters (per scan and per view), ``"ideal"`` names the files below;
* ``mask.npy`` (scan.json ``"mask"``): uint8 validity, 1 = the pixel carries information;
* ``ideal/line_integrals.npy``, ``ideal/bone.npy`` (``mu_water * bone`` path length), ``ideal/vertebrae.npy``
  (mm inside vertebra labels) and, with screws, ``ideal/metal.npy`` (mm of metal) - for evaluation only,
  images of the true poses; readers that do not know ``ideal/`` ignore it;
* ``gt.nii.gz``, ``labels.nii.gz`` as ``ixgs simulate`` writes them (of the z-cropped CT when ``z_range`` is
  given), ``preview.png`` of the styled images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ixgs_ros.core.volume import MU_WATER

from .pathlengths import BONE_HU, PathLengths, crop_ct_z, render_path_lengths
from .spectra import default_cache_dir
from .styles import get_style, style_images

__all__ = ["StyledResult", "simulate_styled_scan", "write_ideal", "IDEAL_DIR"]

IDEAL_DIR = "ideal"


@dataclass
class StyledResult:
    scan: object                 # the styled Scan (image_kind "raw", with mask)
    base: object                 # the SimulationResult of the geometry (its scan holds the ideal line integrals)
    path_lengths: PathLengths
    params: dict
    files: dict = field(default_factory=dict)

    def summary(self) -> str:
        p = self.params
        beam = (f"{p['mono_kev']:g} keV mono" if p.get("mono_kev") is not None else
                f"{p['kvp']:.0f} kVp, {p['al_mm']:.1f} mm Al, {p['cu_mm']:.2f} mm Cu")
        proc = p["processing"]
        lines = [self.base.summary(),
                 f"style     {p['style']}{' (held out of training)' if p['held_out'] else ''}: {beam}; scatter "
                 f"{p['scatter']} SPR {p['spr']:.2f}; "
                 + (f"{proc['transfer']} + {proc['lut']} LUT, {'bone bright' if proc['bone_bright'] else 'bone dark'}, "
                    if proc else "raw counts, ") + f"{p['bits']} bit"
                 + (f"; {len(p['screws'])} screw parts ({', '.join(p['screw_levels'])})" if p["screws"] else ""),
                 f"images    raw {float(self.scan.projections.min()):.0f} .. {float(self.scan.projections.max()):.0f}; "
                 f"valid pixels {100.0 * float(self.scan.mask.mean()):.1f} %"]
        return "\n".join(lines)


def write_ideal(out_dir, path_lengths: PathLengths, metal: np.ndarray | None = None,
                mu_water: float = MU_WATER) -> dict:
    """Write ``ideal/*.npy`` (float32 [N, H, W]) into ``out_dir``; returns the scan.json ``"ideal"`` entry."""
    d = Path(out_dir) / IDEAL_DIR
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"line_integrals": path_lengths.line_integrals(mu_water),
              "bone": path_lengths.bone_projection(mu_water), "vertebrae": path_lengths.vertebrae}
    if metal is not None and np.any(metal):
        arrays["metal"] = np.asarray(metal, dtype=np.float32)
    entry = {}
    for name, arr in arrays.items():
        np.save(d / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        entry[name] = f"{IDEAL_DIR}/{name}.npy"
    entry.update(units={"line_integrals": "mu (1/mm) x mm", "bone": "mu (1/mm) x mm of voxels above bone_hu",
                        "vertebrae": "mm", "metal": "mm"},
                 mu_water=float(mu_water), bone_hu=float(path_lengths.meta.get("bone_hu", BONE_HU)),
                 z_range=path_lengths.meta.get("z_range"),
                 note="ideal images of the true poses, for evaluation only")
    return entry


def simulate_styled_scan(config, style, style_seed: int | None = None, z_range=None, cache_dir="default",
                         progress: Callable[[str], None] | None = None, ct=None) -> StyledResult:
    """A styled scan (see the module docstring) of ``config`` (:class:`SimulationConfig`, full-body mode).

    ``style``: a style name or :class:`Style`; ``style_seed``: seeds the style sampling and noise (None: the
    config's seed); ``z_range``: ``(lo, hi)`` world mm of the CT kept (None: all); ``cache_dir``: path-length
    and spectrum cache (``"default"``: :func:`default_cache_dir`, None: no cache); ``ct``: a loaded CT."""
    from ixgs_ros.simulation.ct import load_ct
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.simulation.preview import make_preview
    from ixgs_ros.simulation.simulate import simulate_scan

    st = get_style(style)  # an unknown name fails before anything is rendered
    cfg = config.validate()
    if cfg.mode != "full-body":
        raise ValueError("--style renders the X-ray physics through the whole CT: use --mode full-body")
    say = progress or (lambda msg: None)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    if ct is None:
        ct = load_ct(cfg.ct_path, cfg.labels_path)
    work = crop_ct_z(ct, z_range)
    held: dict = {}

    def render(vol, grid, views, renderer, chunk_mb, progress_cb, compile="auto", log=None):
        pl = render_path_lengths(work, views, None, renderer, cache_dir, chunk_mb=chunk_mb, compile=compile,
                                 progress=log)
        if z_range is not None:
            pl.meta["z_range"] = [None if z is None else float(z) for z in z_range]
        held.update(path_lengths=pl, views=list(views))
        return pl.line_integrals(MU_WATER)

    base = simulate_scan(cfg, progress=say, ct=work, render=render)
    pl, true_views = held["path_lengths"], held["views"]
    seed = cfg.seed if style_seed is None else int(style_seed)
    rng = np.random.default_rng([seed, 33])
    parts: dict = {}
    images, mask, params = style_images(pl, true_views, st, rng, cache_dir=cache_dir, parts=parts)
    params["seed"] = seed
    params["z_range"] = pl.meta.get("z_range")
    extra = dict(base.scan.extra)
    extra["style"] = params
    scan = Scan(base.scan.views, images, "raw", extra, mask)
    result = StyledResult(scan, base, pl, params)
    if cfg.out_dir is not None:
        out = Path(cfg.out_dir)
        metal = parts.get("metal")
        extra["ideal"] = write_ideal(out, pl, metal if params["screws"] else None)
        scan.save(out)
        files = dict(base.files)
        files.update(mask=str(out / "mask.npy"), ideal=str(out / "ideal"))
        if cfg.preview:
            try:
                files["preview"] = str(make_preview(scan, base.roi, out / "preview.png", ct_grid=ct.grid))
            except ImportError as exc:  # pragma: no cover - matplotlib missing
                say(f"preview skipped: {exc}")
        result.files = files
    else:
        scan.validate()
    return result

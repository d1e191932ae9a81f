"""Named C-arm image styles: ranges of physical and processing parameters, sampled per scan and per view.

A :class:`Style` is a frozen dataclass of parameter RANGES (``(lo, hi)`` uniform unless said otherwise).
:func:`sample_params` draws one scan's parameters from a style with a seeded ``numpy.random.Generator``
(per scan: tube, detector, scatter level, processing; per view: exposure, scatter-to-primary ratio by the
view's thickness, collimator blades, implants are per scan); :func:`style_images` samples and renders
(:func:`ixgs_ros.simulation.imaging.render_params`). Units: kVp, mm, keV, detected quanta per pixel.

Styles (see ``docs/xray_physics.md``): ``flatpanel-raw16``, ``flatpanel-processed``, ``ii-8bit``,
``processed-metal`` for training, and ``heldout-vendor`` - another scatter family (thickness-dependent
anisotropic kernels), an S-curve look-up table, two-scale edge enhancement, the anode heel effect and harder
beams - to be kept out of training.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ixgs_ros.core.volume import MU_WATER

__all__ = ["Style", "STYLES", "TRAINING_STYLES", "HELD_OUT_STYLES", "get_style", "sample_params",
           "style_images", "with_ranges", "views_focus"]

Range = tuple  # (lo, hi)


@dataclass(frozen=True)
class Style:
    """Ranges of every parameter of a simulated C-arm image (see the module docstring for units)."""

    name: str
    description: str = ""
    held_out: bool = False
    # tube (per scan); mono_kev replaces the tube spectrum by a monochromatic beam (ablations, tests)
    kvp: Range = (70.0, 110.0)
    al_mm: Range = (2.5, 4.5)
    cu_mm: Range = (0.0, 0.2)
    mono_kev: float | None = None
    # detector (per scan unless said): CsI thickness; detected quanta per pixel behind the patient, the
    # automatic exposure control's target (log-uniform, None = noiseless; the flat field then gets
    # target / median transmission), times a per-view factor; readout noise (quanta equivalents); blur sigma at
    # the detector; image-intensifier veiling glare, vignetting, pincushion, circular field (radius as a
    # fraction of the half width, None = rectangular detector); anode heel (relative, across the field)
    csi_mm: Range = (0.5, 0.7)
    aec_quanta: Range | None = (1e3, 1e4)
    exposure_jitter: Range = (0.8, 1.25)
    electronic_noise: Range = (1.0, 5.0)
    blur_mm: Range = (0.1, 0.25)
    glare: Range = (0.0, 0.0)
    glare_mm: Range = (20.0, 60.0)
    vignetting: Range = (0.0, 0.0)
    pincushion: Range = (0.0, 0.0)
    circular_field: Range | None = None
    heel: Range = (0.0, 0.0)
    # scatter: family "kernel" (two isotropic Gaussians), "asymmetric" (held out) or "none"; the SPR is
    # sampled per scan and scaled per view by sqrt(view thickness / mean thickness)
    scatter: str = "kernel"
    spr: Range = (0.2, 1.5)
    scatter_narrow_mm: Range = (15.0, 40.0)
    scatter_broad_mm: Range = (60.0, 150.0)
    scatter_broad_weight: Range = (0.3, 0.7)
    asym_sigma_mm: Range = (10.0, 30.0)
    asym_growth: Range = (0.2, 0.5)
    asym_aspect: Range = (1.1, 1.8)
    asym_drift_mm: Range = (0.0, 6.0)
    asym_background: Range = (0.05, 0.3)
    # collimator (per view): probability of blades, covered fraction per side, rotation, lead transmission
    shutter_prob: float = 0.5
    shutter_frac: Range = (0.02, 0.15)
    shutter_angle_deg: Range = (-5.0, 5.0)
    shutter_transmission: Range = (0.005, 0.03)
    # pedicle screws: number of instrumented levels (int range, inclusive), steel vs titanium
    screw_levels: Range = (0, 0)
    steel_prob: float = 0.5
    screw_diameter_mm: Range = (4.5, 6.5)
    screw_length_mm: Range = (35.0, 45.0)
    # read-out: ADU converter bits, flat field as a fraction of full scale (> 1 saturates the air), offset
    adu_bits: int = 16
    flat_fraction: Range = (0.5, 1.05)
    offset_adu: Range = (0.0, 200.0)
    # processing: transfer curves to choose from (empty = raw counts out) and the power of "gamma", window
    # percentiles (of the anatomy), unsharp masking (amount, sigma mm; a second scale when its amount range is
    # non-zero), look-up table ("linear" or "sigmoid" with its slope), display gamma, probability of
    # bone-bright polarity, output bit depths to choose from, probability of burnt-in overlays per view
    transfers: tuple = ()
    gamma: Range = (0.4, 0.7)
    lut: str = "linear"
    sigmoid_slope: Range = (2.0, 5.0)
    window_lo_pct: Range = (0.5, 3.0)
    window_hi_pct: Range = (97.0, 99.8)
    unsharp_amount: Range = (0.0, 0.0)
    unsharp_mm: Range = (3.0, 15.0)
    unsharp2_amount: Range = (0.0, 0.0)
    unsharp2_mm: Range = (15.0, 40.0)
    display_gamma: Range = (1.0, 1.0)
    bone_bright_prob: float = 0.0
    bits: tuple = (16,)
    overlay_prob: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


_FLAT = dict(kvp=(70.0, 110.0), al_mm=(2.5, 4.5), cu_mm=(0.0, 0.2), csi_mm=(0.5, 0.7), aec_quanta=(1e3, 1e4),
             electronic_noise=(1.0, 5.0), blur_mm=(0.1, 0.25))
_PROCESSED = dict(transfers=("log",), window_lo_pct=(0.5, 3.0), window_hi_pct=(97.0, 99.8),
                  unsharp_amount=(0.3, 1.2), unsharp_mm=(3.0, 15.0), display_gamma=(0.8, 1.25),
                  bone_bright_prob=0.9, bits=(12, 16), spr=(0.3, 2.0))

STYLES: dict[str, Style] = {s.name: s for s in (
    Style("flatpanel-raw16", "flat-panel C-arm, offset/gain-corrected linear counts ('for processing'), "
                             "16 bit, no grid", **_FLAT, spr=(0.2, 1.5), adu_bits=16, bits=(16,)),
    Style("flatpanel-processed", "flat-panel C-arm, vendor-processed ('for presentation'): log LUT, auto "
                                 "window, unsharp masking, display gamma, mostly bone bright, 12/16 bit",
          **_FLAT, **_PROCESSED),
    Style("ii-8bit", "image-intensifier C-arm with a video camera: soft gamma LUT, veiling glare, vignetting, "
                     "pincushion, circular field, burnt-in overlays, mostly bone dark, 8 bit",
          kvp=(60.0, 100.0), al_mm=(2.5, 4.0), cu_mm=(0.0, 0.1), csi_mm=(0.3, 0.45), aec_quanta=(2e2, 2e3),
          electronic_noise=(0.5, 3.0), blur_mm=(0.3, 0.8), glare=(0.03, 0.12), glare_mm=(20.0, 60.0),
          vignetting=(0.1, 0.3), pincushion=(0.01, 0.04), circular_field=(0.92, 1.0), spr=(0.3, 1.5),
          shutter_prob=0.3, adu_bits=12, flat_fraction=(0.6, 1.1), offset_adu=(0.0, 20.0),
          transfers=("gamma",), gamma=(0.4, 0.7), unsharp_amount=(0.0, 0.5), unsharp_mm=(2.0, 8.0),
          bone_bright_prob=0.2, bits=(8,), overlay_prob=0.5),
    Style("processed-metal", "flatpanel-processed with 1-2 instrumented levels of pedicle screws (titanium or "
                             "steel, 4.5-6.5 mm)", **_FLAT, **_PROCESSED, screw_levels=(1, 2)),
    Style("heldout-vendor", "HELD OUT of training: thickness-dependent anisotropic scatter, film-like "
                            "S-curve LUT, two-scale edge enhancement, anode heel, harder Cu-filtered beams, "
                            "10/14 bit", held_out=True,
          kvp=(95.0, 125.0), al_mm=(2.5, 3.5), cu_mm=(0.1, 0.3), csi_mm=(0.4, 0.6), aec_quanta=(5e2, 5e3),
          electronic_noise=(2.0, 8.0), blur_mm=(0.15, 0.35), heel=(0.05, 0.15), scatter="asymmetric",
          spr=(0.5, 3.0), shutter_prob=0.7, shutter_angle_deg=(-15.0, 15.0), transfers=("log",),
          lut="sigmoid", sigmoid_slope=(2.0, 5.0), window_lo_pct=(0.2, 2.0), window_hi_pct=(98.0, 99.9),
          unsharp_amount=(0.5, 1.5), unsharp_mm=(1.5, 5.0), unsharp2_amount=(0.2, 0.6),
          unsharp2_mm=(15.0, 40.0), bone_bright_prob=0.5, bits=(10, 14)),
)}
TRAINING_STYLES = tuple(n for n, s in STYLES.items() if not s.held_out)
HELD_OUT_STYLES = tuple(n for n, s in STYLES.items() if s.held_out)


def get_style(style) -> Style:
    """A :class:`Style` by name (or the style itself); an unknown name raises ``ValueError`` listing them."""
    if isinstance(style, Style):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: choose one of {', '.join(STYLES)} "
                         f"(held out of training: {', '.join(HELD_OUT_STYLES)})")
    return STYLES[style]


# ================================================================================================ sampling
def _u(rng, r) -> float:
    lo, hi = (float(x) for x in r)
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def _logu(rng, r) -> float:
    lo, hi = (float(x) for x in r)
    return lo if hi <= lo else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def views_focus(views) -> np.ndarray:
    """The world point closest (least squares) to every view's principal ray: where the C-arm looks."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for v in views:
        d = np.asarray(v.principal_axis, dtype=np.float64)
        d /= np.linalg.norm(d)
        M = np.eye(3) - np.outer(d, d)
        A += M
        b += M @ np.asarray(v.source, dtype=np.float64)
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:  # parallel rays: the mean source pushed along the first ray
        return np.mean([v.source for v in views], axis=0)


def _screws(style: Style, anchors: list, views, rng) -> tuple[list, list]:
    from .metal import pedicle_screws

    lo, hi = (int(x) for x in style.screw_levels)
    n_levels = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    if n_levels == 0 or not anchors:
        return [], []
    focus = views_focus(views)
    order = np.argsort([np.linalg.norm(np.asarray(a["centroid"]) - focus) for a in anchors])
    first = anchors[int(order[0])]
    # the instrumented levels: the vertebra nearest the focus and its nearest neighbours along z
    by_z = sorted(anchors, key=lambda a: abs(a["centroid"][2] - first["centroid"][2]))
    levels = by_z[:n_levels]
    material = "steel" if rng.uniform() < style.steel_prob else "titanium"
    dia = _u(rng, style.screw_diameter_mm)
    cyls = []
    for a in levels:
        cyls += pedicle_screws(a, rng, material, dia, _u(rng, style.screw_length_mm), _u(rng, (8.0, 18.0)))
    return [c.to_dict() for c in cyls], [a["name"] for a in levels]


def sample_params(style, path_lengths, views, rng: np.random.Generator) -> dict:
    """Draw one scan's parameters (a JSON-ready dict: ``scan`` values and one dict per view in ``views``)
    from ``style``. ``path_lengths`` (:class:`PathLengths`) gives the views' thickness (per-view SPR) and
    the vertebrae to put screws in."""
    s = get_style(style)
    views = list(views)
    N = len(views)
    p: dict = {"style": s.name, "held_out": s.held_out}
    if s.mono_kev is not None:
        p.update(mono_kev=float(s.mono_kev))
    else:
        p.update(kvp=_u(rng, s.kvp), al_mm=_u(rng, s.al_mm), cu_mm=_u(rng, s.cu_mm))
    p.update(csi_mm=_u(rng, s.csi_mm), aec_quanta=_logu(rng, s.aec_quanta) if s.aec_quanta else None,
             electronic_noise=_u(rng, s.electronic_noise), blur_mm=_u(rng, s.blur_mm), glare=_u(rng, s.glare),
             glare_mm=_u(rng, s.glare_mm), vignetting=_u(rng, s.vignetting), pincushion=_u(rng, s.pincushion),
             circular_field=_u(rng, s.circular_field) if s.circular_field else None, heel=_u(rng, s.heel),
             heel_angle_deg=float(rng.uniform(0.0, 360.0)), scatter=s.scatter,
             spr=_u(rng, s.spr) if s.scatter != "none" else 0.0)
    if s.scatter == "kernel":
        p["scatter_params"] = {"narrow_mm": _u(rng, s.scatter_narrow_mm), "broad_mm": _u(rng, s.scatter_broad_mm),
                               "broad_weight": _u(rng, s.scatter_broad_weight)}
    elif s.scatter == "asymmetric":
        p["scatter_params"] = {"sigma_mm": _u(rng, s.asym_sigma_mm), "growth": _u(rng, s.asym_growth),
                               "aspect": _u(rng, s.asym_aspect), "angle_deg": float(rng.uniform(0.0, 180.0)),
                               "drift_mm": _u(rng, s.asym_drift_mm), "background": _u(rng, s.asym_background)}
    elif s.scatter != "none":
        raise ValueError(f"style {s.name}: unknown scatter family {s.scatter!r} (kernel, asymmetric, none)")
    screws, levels = _screws(s, path_lengths.anchors, views, rng)
    p.update(screws=screws, screw_levels=levels, adu_bits=int(s.adu_bits),
             flat_fraction=_u(rng, s.flat_fraction), offset_adu=_u(rng, s.offset_adu))
    if s.transfers:
        tf = str(s.transfers[int(rng.integers(len(s.transfers)))])
        un = [[_u(rng, s.unsharp_amount), _u(rng, s.unsharp_mm)]]
        if s.unsharp2_amount[1] > 0:
            un.append([_u(rng, s.unsharp2_amount), _u(rng, s.unsharp2_mm)])
        p["processing"] = {"transfer": tf, "gamma": _u(rng, s.gamma), "lut": s.lut,
                           "sigmoid_slope": _u(rng, s.sigmoid_slope),
                           "unsharp_mm": un, "display_gamma": _u(rng, s.display_gamma),
                           "bone_bright": bool(rng.uniform() < s.bone_bright_prob),
                           "bits": int(s.bits[int(rng.integers(len(s.bits)))])}
    else:
        p["processing"] = None
    p["bits"] = p["processing"]["bits"] if p["processing"] else int(s.adu_bits)
    # per view: exposure, SPR scaled by the view's thickness, window percentiles, collimator, overlays
    ideal = path_lengths.line_integrals(MU_WATER)
    thick = np.array([float(np.mean(t[t > 0.5])) if np.any(t > 0.5) else 0.0 for t in ideal])
    ref = float(np.mean(thick[thick > 0])) if np.any(thick > 0) else 1.0
    vp = []
    for i in range(N):
        d = {"aec_quanta": p["aec_quanta"] * _u(rng, s.exposure_jitter) if p["aec_quanta"] else None,
             "spr": p["spr"] * math.sqrt(max(thick[i], 1e-6) / ref) if p["spr"] > 0 else 0.0}
        if rng.uniform() < s.shutter_prob:
            d["shutters"] = {side: (_u(rng, s.shutter_frac) if rng.uniform() < 0.7 else 0.0)
                             for side in ("left", "right", "top", "bottom")}
            d["shutter_angle_deg"] = _u(rng, s.shutter_angle_deg)
            d["shutter_transmission"] = _u(rng, s.shutter_transmission)
        if p["processing"]:
            d["window_pct"] = [_u(rng, s.window_lo_pct), _u(rng, s.window_hi_pct)]
        if rng.uniform() < s.overlay_prob:
            n_boxes = int(rng.integers(1, 4))
            d["overlays"] = [[float(rng.uniform(0.0, 0.85)), float(rng.uniform(0.0, 0.85)),
                              float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.03, 0.08))]
                             for _ in range(n_boxes)]  # [u0, v0, width, height] as fractions of the image
        vp.append(d)
    p["views"] = vp
    return p


def style_images(path_lengths, views, style, rng: np.random.Generator, cache_dir=None, parts: dict | None = None):
    """Styled raw images of the path lengths: ``(images float32 [N, H, W], mask uint8 [N, H, W] (1 = valid),
    params dict)``. Parameters are drawn from ``style`` (a name or a :class:`Style`) with ``rng``, which
    then draws the noise: the same seed gives the same images. ``cache_dir`` keeps tube spectra on disk;
    ``parts`` (a dict) receives intermediate stacks (see :func:`.imaging.render_params`)."""
    from .imaging import render_params

    params = sample_params(style, path_lengths, views, rng)
    images, mask = render_params(path_lengths, views, params, rng, cache_dir=cache_dir, parts=parts)
    return images, mask, params


def with_ranges(style, **changes) -> Style:
    """A copy of a style with some ranges replaced (ablations, tests): ``with_ranges("ii-8bit", spr=(0, 0))``."""
    return replace(get_style(style), **changes)

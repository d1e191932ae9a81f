"""X-ray image formation from path lengths: polychromatic primary, scatter, noise and detector effects.

Every function works on one view's images (float ``[H, W]``, row = v, column = u) and is pure numpy/scipy.
Intensities are relative to the unattenuated, uncollimated flat field (air = 1).

* :func:`spectral_weights` / :func:`primary` - the energy-integrated transmission of a polychromatic beam:
  ``P = sum_E w1(E) exp(-A(E))`` with ``w1 = q E / sum(q E)``, ``q`` = tube spectrum x detector absorption
  (detected quanta) and ``A(E)`` the summed attenuation of the soft, bone and metal path lengths. The second
  moment ``P2 = sum_E w2(E) exp(-A(E))`` (``w2 ~ q E^2``) gives the variance of the energy-weighted counts.
  Beam hardening follows: ``-ln P`` grows less than linearly with thickness.
* scatter, two families of different form, each scaled to a requested scatter-to-primary ratio (SPR, the mean
  scatter over the mean primary behind the patient, see :func:`spr_region`):
  :func:`scatter_kernel` - the scatter potential ``P ln(1/P)`` convolved with a two-Gaussian isotropic kernel;
  :func:`scatter_asymmetric` - thickness-grouped sources, each convolved with an anisotropic Gaussian whose
  width and displacement grow with the group's thickness, plus a field-wide constant (held out of training).
* :func:`quantum_noise` - compound Poisson: counts of detected quanta (``photons`` per flat-field pixel)
  weighted by energy, matched in mean and variance by a scaled Poisson; :func:`electronic_noise` adds
  Gaussian readout noise (quanta equivalents).
* detector and image-intensifier effects: :func:`blur` (Gaussian MTF), :func:`veiling_glare`,
  :func:`vignetting`, :func:`pincushion`, :func:`heel_effect`, :func:`shutter_field` (collimator blades with a
  soft penumbra), :func:`circular_field`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["pixel_pitch_mm", "spectral_weights", "primary", "spr_region", "scatter_kernel",
           "scatter_asymmetric", "quantum_noise", "electronic_noise", "blur", "veiling_glare", "vignetting",
           "pincushion", "heel_effect", "shutter_field", "circular_field", "smooth"]


def pixel_pitch_mm(view) -> float:
    """Detector pixel pitch (mm) of a view: its trajectory meta, else ``sdd / fx`` (sdd from meta, 1000 mm
    when unknown)."""
    tr = view.meta.get("trajectory", {}) if isinstance(view.meta, dict) else {}
    if isinstance(tr, dict) and tr.get("pixel_mm"):
        return float(tr["pixel_mm"])
    sdd = view.meta.get("sdd") or (tr.get("sdd_mm") if isinstance(tr, dict) else None) or 1000.0
    return float(sdd) / float(view.K[0, 0])


# ================================================================================================ primary
def spectral_weights(energies, fluence, absorption) -> tuple[np.ndarray, np.ndarray, float]:
    """``(w1, w2, mean_energy)`` of an energy-integrating detector: detected quanta ``q = fluence *
    absorption``, normalised so that the flat field gives ``sum(w1) = 1``; ``w2 = q (E / Ebar)^2 / sum(q)`` is
    the variance per detected quantum (``sum(w2) >= 1``, the inverse Swank factor of the spectrum)."""
    e = np.asarray(energies, dtype=np.float64)
    q = np.asarray(fluence, dtype=np.float64) * np.asarray(absorption, dtype=np.float64)
    qn = q / q.sum()
    ebar = float(np.sum(qn * e))
    return qn * e / ebar, qn * (e / ebar) ** 2, ebar


def primary(lengths: dict, coeffs: dict, w1, w2=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Polychromatic transmission ``P`` (and its second moment ``P2`` when ``w2`` is given) of rays with
    path lengths ``lengths[name]`` (``[H, W]`` mm) through materials of attenuation ``coeffs[name]`` (1/mm per
    unit length at each energy of ``w1``)."""
    names = [k for k in lengths if np.any(lengths[k])]
    shape = np.shape(next(iter(lengths.values())))
    P = np.zeros(shape, np.float64)
    P2 = np.zeros(shape, np.float64) if w2 is not None else None
    Ls = [np.asarray(lengths[k], dtype=np.float64) for k in names]
    for e in range(len(w1)):
        A = np.zeros(shape, np.float64)
        for k, L in zip(names, Ls):
            A += float(coeffs[k][e]) * L
        T = np.exp(-A)
        P += float(w1[e]) * T
        if P2 is not None:
            P2 += float(w2[e]) * T
    return P, P2


# ================================================================================================ smoothing
def smooth(img, sigma_v: float, sigma_u: float | None = None, shift=(0.0, 0.0)) -> np.ndarray:
    """Gaussian smoothing with standard deviations ``(sigma_v, sigma_u)`` pixels (edges extended), optionally
    displaced by ``shift = (dv, du)`` pixels. Wide kernels run on a block-averaged copy (at least 3 samples
    per sigma) and are interpolated back: scatter and glare are smooth, so nothing is lost."""
    a = np.asarray(img, dtype=np.float64)
    sigma_u = sigma_v if sigma_u is None else sigma_u
    if sigma_v <= 0 and sigma_u <= 0 and not any(shift):
        return a.copy()
    f = int(max(1, math.floor(min(max(sigma_v, 1e-9), max(sigma_u, 1e-9)) / 3.0)))
    H, W = a.shape
    if f > 1:
        hp, wp = -(-H // f) * f, -(-W // f) * f
        pad = np.pad(a, ((0, hp - H), (0, wp - W)), mode="edge")
        small = pad.reshape(hp // f, f, wp // f, f).mean(axis=(1, 3))
    else:
        small = a
    out = ndimage.gaussian_filter(small, (sigma_v / f, sigma_u / f), mode="nearest", truncate=3.0)
    if any(shift):
        out = ndimage.shift(out, (shift[0] / f, shift[1] / f), order=1, mode="nearest")
    if f > 1:
        # block centres sit at (f - 1) / 2 + f k: sample the coarse field there
        yy = (np.arange(H) - (f - 1) / 2.0) / f
        xx = (np.arange(W) - (f - 1) / 2.0) / f
        out = ndimage.map_coordinates(out, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
    return out


# ================================================================================================ scatter
def spr_region(tau, open_field=None, min_tau: float = 0.5) -> np.ndarray:
    """Pixels over which the scatter-to-primary ratio is defined: behind the patient (ideal line integral
    above ``min_tau``, i.e. at least ~25 mm of water) and inside the collimated field; all open pixels when
    fewer than 1 % qualify."""
    tau = np.asarray(tau)
    region = tau > min_tau
    if open_field is not None:
        region &= open_field
    if region.mean() < 0.01:
        region = np.ones_like(region) if open_field is None else open_field.copy()
    return region


def _scale_to_spr(S, P, region, spr: float) -> tuple[np.ndarray, float]:
    den = float(np.mean(S[region])) if np.any(region) else 0.0
    if spr <= 0 or den <= 0:
        return np.zeros_like(P), 0.0
    k = spr * float(np.mean(P[region])) / den
    return S * k, k


def scatter_kernel(P, spr: float, region, sigmas_px=(10.0, 40.0), broad_weight: float = 0.5) -> np.ndarray:
    """Scatter of kernel form: ``S = k [(1 - b) G_s1 + b G_s2] * (P ln(1/P))``, ``k`` set so that the mean of
    ``S`` over ``region`` is ``spr`` times that of ``P``. ``P`` is the (collimated) primary: shuttered areas
    emit almost no scatter, which then still reaches them from the open field."""
    P = np.asarray(P, dtype=np.float64)
    src = P * -np.log(np.clip(P, 1e-9, 1.0))
    s1, s2 = sigmas_px
    S = (1.0 - broad_weight) * smooth(src, s1) + broad_weight * smooth(src, s2)
    return _scale_to_spr(S, P, region, spr)[0]


#: Thickness groups (edges of -ln P) of the asymmetric scatter family.
ASYM_EDGES = (0.0, 1.0, 2.0, 3.0, 4.5, np.inf)


def scatter_asymmetric(P, spr: float, region, sigma0_px: float = 15.0, growth: float = 0.35,
                       aspect: float = 1.4, angle_deg: float = 30.0, drift_px: float = 3.0,
                       background: float = 0.2) -> np.ndarray:
    """Scatter of a second form: the primary is split into thickness groups (``-ln P`` in
    :data:`ASYM_EDGES`); group ``g`` (centre thickness ``t``) emits ``P t`` through an anisotropic Gaussian of
    widths ``sigma0 (1 + growth t)`` along ``angle_deg`` and ``aspect`` times less across it, displaced by
    ``drift_px * t`` along that angle (thicker parts scatter wider and further off axis); a field-wide
    constant (``background`` of the mean) is added. Scaled to ``spr`` over ``region``."""
    P = np.asarray(P, dtype=np.float64)
    tau = -np.log(np.clip(P, 1e-9, 1.0))
    S = np.zeros_like(P)
    a = math.radians(angle_deg)
    # an anisotropic Gaussian along an arbitrary angle: rotate the image, smooth along the axes, rotate back
    for lo, hi in zip(ASYM_EDGES[:-1], ASYM_EDGES[1:]):
        sel = (tau >= lo) & (tau < hi)
        if not np.any(sel):
            continue
        t = float(np.mean(tau[sel]))
        src = np.where(sel, P * tau, 0.0)
        su = sigma0_px * (1.0 + growth * t)
        sv = su / max(aspect, 1e-3)
        rot = ndimage.rotate(src, math.degrees(a), reshape=True, order=1, mode="constant")
        sm = smooth(rot, sv, su, shift=(0.0, drift_px * t))
        back = ndimage.rotate(sm, -math.degrees(a), reshape=True, order=1, mode="constant")
        oy, ox = (np.array(back.shape) - np.array(P.shape)) // 2
        S += back[oy:oy + P.shape[0], ox:ox + P.shape[1]]
    S = np.maximum(S, 0.0)
    S += background * float(np.mean(S))
    return _scale_to_spr(S, P, region, spr)[0]


# ================================================================================================ noise
def quantum_noise(mean, second, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Energy-weighted quantum noise: a pixel of relative signal ``mean`` (flat field 1) whose energy-weighted
    counts have relative second moment ``second`` (``P2`` plus scatter) at ``photons`` detected quanta per
    flat-field pixel gets ``g Poisson(photons mean / g) / photons`` with gain ``g = second / mean``: mean
    ``mean`` and variance ``second / photons``. ``photons <= 0`` or None: no noise."""
    m = np.asarray(mean, dtype=np.float64)
    if not photons or photons <= 0:
        return m.copy()
    s = np.maximum(np.asarray(second, dtype=np.float64), 1e-30)
    g = np.where(m > 0, s / np.maximum(m, 1e-30), 1.0)
    lam = np.maximum(photons * m / g, 0.0)
    return g * rng.poisson(lam).astype(np.float64) / photons


def electronic_noise(img, sigma_quanta: float, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian readout noise of ``sigma_quanta`` detected-quanta equivalents (relative units:
    ``sigma_quanta / photons``)."""
    a = np.asarray(img, dtype=np.float64)
    if not sigma_quanta or sigma_quanta <= 0 or not photons or photons <= 0:
        return a
    return a + rng.normal(0.0, sigma_quanta / photons, a.shape)


# ================================================================================================ detector
def blur(img, sigma_px: float) -> np.ndarray:
    """Detector blur: a Gaussian point spread (MTF ``exp(-2 pi^2 sigma^2 f^2)``) of ``sigma_px`` pixels."""
    a = np.asarray(img, dtype=np.float64)
    return ndimage.gaussian_filter(a, sigma_px, mode="nearest") if sigma_px > 0.05 else a


def veiling_glare(img, fraction: float, sigma_px: float) -> np.ndarray:
    """Image-intensifier veiling glare: ``fraction`` of the light spread by a wide Gaussian."""
    a = np.asarray(img, dtype=np.float64)
    if fraction <= 0:
        return a
    return (1.0 - fraction) * a + fraction * smooth(a, sigma_px)


def _radius(shape, center=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    H, W = shape
    cy, cx = ((H - 1) / 2.0, (W - 1) / 2.0) if center is None else center
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float64) - cy, np.arange(W, dtype=np.float64) - cx,
                         indexing="ij")
    return yy, xx, np.hypot(yy, xx), 0.5 * math.hypot(H, W)


def vignetting(shape, amount: float) -> np.ndarray:
    """Multiplicative fall-off ``1 - amount (r / R)^2`` (``R`` the half diagonal): ``amount`` lost in the
    corners (image intensifiers: 0.1-0.3)."""
    _, _, r, R = _radius(shape)
    return 1.0 - amount * (r / R) ** 2


def pincushion(img, k: float, order: int = 1, cval: float | None = None) -> np.ndarray:
    """Radial pincushion distortion: a point at radius ``r_u`` (undistorted) appears at
    ``r_d = r_u (1 + k (r_u / R)^2)``, ``k`` the relative displacement at the half diagonal ``R`` (a few
    %). Each output pixel samples the undistorted image at the inverse radius (fixed-point iteration)."""
    a = np.asarray(img)
    if k == 0:
        return a.copy()
    yy, xx, rd, R = _radius(a.shape)
    ru = rd.copy()
    for _ in range(8):
        ru = rd / (1.0 + k * (ru / R) ** 2)
    s = np.where(rd > 0, ru / np.maximum(rd, 1e-12), 1.0)
    H, W = a.shape
    coords = [yy * s + (H - 1) / 2.0, xx * s + (W - 1) / 2.0]
    mode = "nearest" if cval is None else "constant"
    return ndimage.map_coordinates(a.astype(np.float64), coords, order=order, mode=mode,
                                   cval=0.0 if cval is None else cval)


def heel_effect(shape, amount: float, angle_deg: float = 90.0) -> np.ndarray:
    """Anode heel effect: incident intensity varying linearly by ``+-amount/2`` across the field along
    ``angle_deg`` (0 = along image columns u, 90 = along rows v)."""
    yy, xx, _, _ = _radius(shape)
    a = math.radians(angle_deg)
    H, W = shape
    proj = (xx * math.cos(a) + yy * math.sin(a)) / (0.5 * max(H, W))
    return 1.0 + 0.5 * amount * np.clip(proj, -1.0, 1.0)


def shutter_field(shape, blades: dict, angle_deg: float = 0.0, transmission: float = 0.01,
                  penumbra_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Collimator blades: ``blades`` gives the covered fraction of the field from each side (``left``,
    ``right``, ``top``, ``bottom``, 0..0.5) in a frame rotated by ``angle_deg``. Returns the transmission
    map (1 in the open field, ``transmission`` behind a blade, a Gaussian penumbra of ``penumbra_px``) and
    the boolean open field (pixels the blades leave fully exposed)."""
    H, W = shape
    yy, xx, _, _ = _radius(shape)
    a = math.radians(angle_deg)
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    hu, hv = 0.5 * W, 0.5 * H
    # signed distance (px) inside the open rectangle (positive inside)
    d = np.minimum.reduce([u + hu - blades.get("left", 0.0) * W, hu - blades.get("right", 0.0) * W - u,
                           v + hv - blades.get("top", 0.0) * H, hv - blades.get("bottom", 0.0) * H - v])
    if penumbra_px > 0:
        from scipy.special import erf

        edge = 0.5 * (1.0 + erf(d / (math.sqrt(2.0) * penumbra_px)))
    else:
        edge = (d > 0).astype(np.float64)
    field = transmission + (1.0 - transmission) * edge
    return field, d > 2.0 * max(penumbra_px, 0.5)


def circular_field(shape, radius_frac: float) -> np.ndarray:
    """Inside of the circular field of an image intensifier: radius ``radius_frac`` of the half width."""
    _, _, r, _ = _radius(shape)
    H, W = shape
    return r <= radius_frac * 0.5 * min(H, W)

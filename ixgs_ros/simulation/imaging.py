"""Render styled C-arm images from cached path lengths and one scan's sampled style parameters.

:func:`render_params` runs, per view (stages in the order the physics happens):

1. implants: chord lengths of the sampled screws along every ray (:mod:`.metal`);
2. polychromatic primary ``P`` and its second moment from the soft, bone and metal path lengths
   (:mod:`.spectra`, :func:`.detector.primary`): beam hardening;
3. incident-field modulation: anode heel effect and collimator blades (with penumbra);
4. scatter (kernel or asymmetric family) scaled to the view's scatter-to-primary ratio;
5. quantum noise (compound Poisson at the view's detected quanta per pixel);
6. detector blur; image-intensifier pincushion distortion, veiling glare, vignetting;
7. electronic noise; conversion to ADU (offset, flat-field level, saturation at full scale);
8. raw output (rounded counts) or vendor processing (:mod:`.processing`);
9. circular field and burnt-in overlays.

The validity mask (uint8, 1 = valid) is 0 behind collimator blades (and their penumbra), where the detector
saturates or the processing clips, on metal (dilated by the blur), outside an intensifier's circular field
and under overlays. Everything is numpy; the same ``rng`` state gives the same images.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ixgs_ros.core.volume import MU_WATER

from . import detector as det
from .metal import Cylinder, metal_path_lengths
from .processing import process, to_adu
from .spectra import Spectrum, channel_attenuation, detector_response, linear_attenuation, tube_spectrum

__all__ = ["render_params", "beam"]


def beam(params: dict, cache_dir=None, step_kev: float = 2.0) -> tuple[Spectrum, np.ndarray, np.ndarray, float]:
    """The scan's spectrum and detector weights ``(spectrum, w1, w2, mean_energy)`` (see
    :func:`.detector.spectral_weights`)."""
    if params.get("mono_kev") is not None:
        spec = Spectrum.monochromatic(params["mono_kev"])
    else:
        spec = tube_spectrum(params["kvp"], params["al_mm"], params["cu_mm"], step_kev=step_kev,
                             cache_dir=cache_dir)
    w1, w2, ebar = det.spectral_weights(spec.energies, spec.fluence,
                                        detector_response(spec.energies, params.get("csi_mm", 0.0)))
    return spec, w1, w2, ebar


def _overlay_mask(shape, boxes) -> np.ndarray:
    H, W = shape
    m = np.zeros(shape, dtype=bool)
    for u0, v0, w, h in boxes or []:
        m[int(v0 * H):int(math.ceil((v0 + h) * H)), int(u0 * W):int(math.ceil((u0 + w) * W))] = True
    return m


def render_params(path_lengths, views, params: dict, rng: np.random.Generator, cache_dir=None,
                  parts: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (float32 ``[N, H, W]``: rounded ADU for raw styles, display values ``0 .. 2^bits - 1`` for
    processed ones) and the validity mask (uint8) of ``path_lengths`` seen by ``views`` with the sampled
    ``params`` (:func:`.styles.sample_params`). ``parts``, when a dict, receives float32 stacks of the
    intermediate ``primary`` (collimated), ``scatter``, ``relative`` (detector signal over the flat field,
    before ADU conversion) and ``metal`` (total metal chord, mm). Each view's entry of ``params["views"]``
    gets what was derived while rendering: ``photons_flat`` (the exposure control's flat-field quanta per
    pixel) and, for processed styles, ``window`` (the transfer-curve values mapped to 0 and 1)."""
    views = list(views)
    N, H, W = path_lengths.shape
    if len(views) != N or views[0].shape != (H, W):
        raise ValueError(f"{len(views)} views of {views[0].shape} px do not match path lengths {path_lengths.shape}")
    spec, w1, w2, _ = beam(params, cache_dir)
    c_soft, c_bone = channel_attenuation(spec.energies, MU_WATER)
    coeffs = {"soft": c_soft, "bone": c_bone}
    implants = [Cylinder(**c) for c in params.get("screws", [])]
    metal = metal_path_lengths(views, implants)
    for m in metal:
        coeffs[m] = linear_attenuation(m, spec.energies)
    ideal = path_lengths.line_integrals(MU_WATER)
    proc = params.get("processing")
    bits = int(params["bits"])
    images = np.empty((N, H, W), np.float32)
    mask = np.empty((N, H, W), np.uint8)
    if parts is not None:
        for k in ("primary", "scatter", "relative", "metal"):
            parts[k] = np.zeros((N, H, W), np.float32)
    for i, v in enumerate(views):
        vp = params["views"][i]
        pitch = det.pixel_pitch_mm(v)
        lengths = {"soft": path_lengths.soft[i], "bone": path_lengths.bone[i]}
        metal_i = np.zeros((H, W))
        for m, arr in metal.items():
            lengths[m] = arr[i]
            metal_i += arr[i]
        P, P2 = det.primary(lengths, coeffs, w1, w2)
        # incident field: heel effect and collimator blades modulate the beam before the patient
        inc = np.ones((H, W))
        if params.get("heel", 0.0) > 0:
            inc *= det.heel_effect((H, W), params["heel"], params.get("heel_angle_deg", 90.0))
        open_field = np.ones((H, W), dtype=bool)
        if "shutters" in vp:
            field, open_field = det.shutter_field((H, W), vp["shutters"], vp["shutter_angle_deg"],
                                                  vp["shutter_transmission"], penumbra_px=1.0)
            inc *= field
        P, P2 = P * inc, P2 * inc
        # scatter, scaled to this view's SPR behind the patient inside the open field
        region = det.spr_region(ideal[i], open_field)
        sp = params.get("scatter_params", {})
        if vp["spr"] > 0 and params["scatter"] == "kernel":
            S = det.scatter_kernel(P, vp["spr"], region, (sp["narrow_mm"] / pitch, sp["broad_mm"] / pitch),
                                   sp["broad_weight"])
        elif vp["spr"] > 0 and params["scatter"] == "asymmetric":
            S = det.scatter_asymmetric(P, vp["spr"], region, sp["sigma_mm"] / pitch, sp["growth"], sp["aspect"],
                                       sp["angle_deg"], sp["drift_mm"] / pitch, sp["background"])
        else:
            S = np.zeros((H, W))
        mean = P + S
        gain = np.where(P > 1e-12, P2 / np.maximum(P, 1e-12), 1.0)
        # automatic exposure control: the flat-field dose that gives the target quanta behind the patient
        photons = None
        if vp.get("aec_quanta"):
            photons = float(vp["aec_quanta"]) / max(float(np.median(mean[region])), 1e-6)
        vp["photons_flat"] = photons
        sig = det.quantum_noise(mean, P2 + S * gain, photons, rng)
        sig = det.blur(sig, params.get("blur_mm", 0.0) / pitch)
        invalid = ~open_field
        bad_metal = metal_i > 0
        if bad_metal.any():
            grow = int(math.ceil(2.0 * params.get("blur_mm", 0.0) / pitch)) + 1
            bad_metal = ndimage.binary_dilation(bad_metal, iterations=grow)
        invalid |= bad_metal
        if params.get("pincushion", 0.0) > 0:
            k = params["pincushion"]
            sig = det.pincushion(sig, k)
            invalid = det.pincushion(invalid.astype(np.float64), k, order=1) > 0.01
        sig = det.veiling_glare(sig, params.get("glare", 0.0), params.get("glare_mm", 40.0) / pitch)
        if params.get("vignetting", 0.0) > 0:
            sig = sig * det.vignetting((H, W), params["vignetting"])
        sig = det.electronic_noise(sig, params.get("electronic_noise", 0.0), photons, rng)
        full = float(2 ** int(params["adu_bits"]) - 1)
        flat_adu = params["flat_fraction"] * full
        adu, sat = to_adu(sig, flat_adu, params["offset_adu"], params["adu_bits"])
        clipped = sat | (adu <= 0.0)
        if proc is None:
            img = np.rint(adu).astype(np.float32)
        else:
            pp = dict(proc, window_pct=vp["window_pct"],
                      unsharp=[[a, s_mm / pitch] for a, s_mm in proc.get("unsharp_mm", [])])
            # the window is set on the anatomy: valid pixels below the direct beam (all valid ones if few)
            ok = ~(invalid | clipped)
            anatomy = ok & (sig < 0.8 * float(np.percentile(sig[ok], 99))) if ok.any() else ok
            img, wclip, info = process(adu - params["offset_adu"], anatomy if anatomy.mean() > 0.05 else ok, pp)
            vp["window"] = info["window"]
            clipped |= wclip
        invalid |= clipped
        if params.get("circular_field"):
            inside = det.circular_field((H, W), params["circular_field"])
            img[~inside] = 0.0
            invalid |= ~inside
        if vp.get("overlays"):
            ov = _overlay_mask((H, W), vp["overlays"])
            img[ov] = float(2 ** bits - 1)
            invalid |= ov
        images[i] = img
        mask[i] = (~invalid).astype(np.uint8)
        if parts is not None:
            parts["primary"][i] = P
            parts["scatter"][i] = S
            parts["relative"][i] = sig
            parts["metal"][i] = metal_i
    return images, mask

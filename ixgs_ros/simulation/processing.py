"""Detector read-out and vendor image processing: ADU conversion, look-up tables, windowing, edge enhancement,
polarity and bit depth.

:func:`to_adu` turns relative intensity (flat field 1) into detector counts (``offset + flat * I``, clipped to
the converter's range: saturated pixels are reported). :func:`process` applies, in order: a transfer curve to
the offset-corrected counts (``log``, or ``gamma`` = a power law like a video chain), automatic windowing
between two percentiles of the anatomy (valid pixels below the direct beam), unsharp masking at one or two
scales, a look-up table (``linear``, or ``sigmoid`` = a film-like S-curve), a display gamma, polarity
(``bone_bright``: dense structures light, as in a radiograph; otherwise dark, as in raw fluoroscopy) and
quantisation to the output bit depth. Regions the window clips (at 0 or full scale, judged on a lightly
smoothed copy so that single noisy pixels do not count) are reported for the validity mask.
"""
from __future__ import annotations

import numpy as np

from .detector import smooth

__all__ = ["TRANSFERS", "LUTS", "to_adu", "transfer", "window", "unsharp", "lut", "quantize", "process"]

TRANSFERS = ("log", "gamma")
LUTS = ("linear", "sigmoid")


def to_adu(rel, flat_adu: float, offset_adu: float, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Detector counts ``offset + flat_adu * rel`` as float (not yet rounded), clipped to
    ``[0, 2^bits - 1]``, and the boolean map of saturated pixels (at or above full scale)."""
    full = float(2 ** int(bits) - 1)
    adu = offset_adu + flat_adu * np.asarray(rel, dtype=np.float64)
    sat = adu >= full
    return np.clip(adu, 0.0, full), sat


def transfer(counts, curve: str, gamma: float = 0.5) -> np.ndarray:
    """Transfer curve of offset-corrected counts (floored at 1): ``log`` = ln counts, ``gamma`` =
    counts^gamma."""
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    if curve == "log":
        return np.log(c)
    if curve == "gamma":
        return c ** float(gamma)
    raise ValueError(f"unknown transfer curve {curve!r}: choose one of {', '.join(TRANSFERS)}")


def window(x, region, p_lo: float, p_hi: float) -> tuple[np.ndarray, float, float]:
    """Linear window mapping the ``p_lo`` and ``p_hi`` percentiles of ``x`` over ``region`` to 0 and 1
    (not clipped). Returns ``(y, lo, hi)``."""
    x = np.asarray(x, dtype=np.float64)
    vals = x[region] if np.any(region) else x.ravel()
    lo, hi = (float(v) for v in np.percentile(vals, [p_lo, p_hi]))
    if not hi > lo:
        hi = lo + 1e-6
    return (x - lo) / (hi - lo), lo, hi


def unsharp(y, amount: float, sigma_px: float) -> np.ndarray:
    """Unsharp masking ``y + amount (y - G_sigma y)`` (edge enhancement; wide kernels compress the range)."""
    y = np.asarray(y, dtype=np.float64)
    if amount == 0 or sigma_px <= 0:
        return y
    return y + amount * (y - smooth(y, sigma_px))


def lut(y, kind: str = "linear", slope: float = 3.0) -> np.ndarray:
    """Look-up table on windowed values: ``linear`` (identity) or ``sigmoid`` (``tanh`` S-curve of ``slope``
    about 0.5, normalised so that 0 and 1 stay fixed)."""
    if kind == "linear":
        return y
    if kind == "sigmoid":
        return 0.5 + 0.5 * np.tanh(slope * (y - 0.5)) / np.tanh(0.5 * slope)
    raise ValueError(f"unknown look-up table {kind!r}: choose one of {', '.join(LUTS)}")


def quantize(y, bits: int) -> np.ndarray:
    """Round ``y`` in [0, 1] to ``bits``-bit integers (returned as float32 holding integer values)."""
    full = float(2 ** int(bits) - 1)
    return np.rint(np.clip(y, 0.0, 1.0) * full).astype(np.float32)


def process(counts, region, p: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Vendor processing of offset-corrected detector counts with the sampled parameters ``p`` (keys:
    ``transfer``, ``gamma``, ``window_pct`` [lo, hi], ``unsharp`` [[amount, sigma_px], ...], ``lut``,
    ``sigmoid_slope``, ``display_gamma``, ``bone_bright``, ``bits``); ``region`` = the pixels the window is
    computed on. Returns ``(image, clipped, info)``: the quantised image (float32 integers in
    ``[0, 2^bits - 1]``), the regions clipped at either end, and the window used."""
    x = transfer(counts, p["transfer"], p.get("gamma", 0.5))
    y, lo, hi = window(x, region, *p["window_pct"])
    for amount, sigma in p.get("unsharp", []):
        y = unsharp(y, amount, sigma)
    ys = smooth(y, 1.0)
    clipped = (ys <= 0.0) | (ys >= 1.0)
    y = lut(np.clip(y, 0.0, 1.0), p.get("lut", "linear"), p.get("sigmoid_slope", 3.0))
    dg = float(p.get("display_gamma", 1.0))
    if dg != 1.0:
        y = y ** dg
    # counts are high where little is attenuated: the windowed signal shows bone dark; invert for bone bright
    if p.get("bone_bright", False):
        y = 1.0 - y
    return quantize(y, p["bits"]), clipped, {"window": [lo, hi]}

"""The physics-informed front end of the standardization model (torch, no learned parameters).

Any C-arm image - raw counts, vendor-processed, inverted, 8 to 16 bit, with shutters, overlays or metal - is
first turned into quantities the network can map to a line integral without knowing the style:

1. **Clipped codes.** Pixels at exactly the image's lowest or highest value (a circular field's black, burnt-in
   overlays at full scale, saturation, window clipping) carry no information: they are flagged and left out of
   the statistics below.
2. **Range normalisation.** ``x = (I - lo) / (hi - lo)`` with ``lo``/``hi`` the 0.2 / 99.8 percentiles of the
   unclipped pixels, so the bit depth, gain and offset drop out (``x`` in about [0, 1]).
3. **Candidate inverse look-up tables.** Beer-Lambert says attenuation is ``-ln(I / I0)`` for linear counts;
   a log look-up table makes it linear in the display value; inverted polarity swaps both ends. The basis
   ``phi = [x, -ln x, -ln(1 - x), 1]`` (logs clipped at ``LOG_FLOOR``, divided by ``LOG_SCALE``) spans every one
   of these to first order: raw counts with the flat field at ``hi`` -> ``-ln x``; a bone-dark log LUT ->
   ``1 - x``; a bone-bright one -> ``x``; bone-bright raw-like -> ``-ln(1 - x)``. The network decides, per
   image region, which mixture applies (polarity detection, inverse LUT) and how scatter and edge
   enhancement bend it (:mod:`.model`).

The network sees ``[x, -ln x, -ln(1 - x), low, high, row, column]`` (``low``/``high`` = clipped-code flags,
``row``/``column`` = pixel coordinates in [-1, 1] for field-position effects such as vignetting and the heel).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["LOG_FLOOR", "LOG_SCALE", "N_BASIS", "N_INPUTS", "clipped_codes", "normalise", "front_end"]

#: Smallest ``x`` (and ``1 - x``) inside the logs: -ln(1e-4) = 9.2, more than any body line integral here.
LOG_FLOOR = 1e-4
#: Logs are divided by this so that every channel is of order one.
LOG_SCALE = 4.0
#: Basis functions the network's coefficients multiply (x, -ln x, -ln(1 - x), 1).
N_BASIS = 4
#: Channels of the network input.
N_INPUTS = 7
#: Percentiles of the unclipped pixels mapped to 0 and 1.
LO_PCT, HI_PCT = 0.002, 0.998


def clipped_codes(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean maps ``(low, high)`` of the pixels at exactly the lowest / highest value of each image
    ``[B, H, W]`` (an image whose values are all equal is all ``low``)."""
    flat = image.flatten(1)
    mn = flat.min(1).values[:, None, None]
    mx = flat.max(1).values[:, None, None]
    tol = 1e-6 * (mx - mn).abs() + 1e-12
    return (image - mn) <= tol, (mx - image) <= tol


def _quantiles(v: torch.Tensor, qs) -> list[float]:
    """``torch.quantile``'s values (linear interpolation between order statistics) by one partial sort."""
    a = v.detach().cpu().numpy().astype(np.float64, copy=False)
    n = a.size
    pos = [q * (n - 1) for q in qs]
    ks = sorted({int(math.floor(p)) for p in pos} | {min(n - 1, int(math.floor(p)) + 1) for p in pos})
    part = np.partition(a, ks)
    out = []
    for p in pos:
        k = int(math.floor(p))
        k1 = min(n - 1, k + 1)
        out.append(float(part[k] + (p - k) * (part[k1] - part[k])))
    return out


def normalise(image: torch.Tensor, invalid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """``(x, low, high)``: each image ``[B, H, W]`` range-normalised on its unclipped (and not ``invalid``)
    pixels, and the clipped-code flags (float 0/1)."""
    img = image.to(torch.float32)
    low, high = clipped_codes(img)
    use = ~(low | high)
    if invalid is not None:
        use &= ~invalid.bool()
    xs = []
    for b in range(img.shape[0]):
        v = img[b][use[b]]
        if v.numel() < 16:          # almost everything clipped: fall back to all pixels
            v = img[b].flatten()
        lo, hi = _quantiles(v[:: max(1, v.numel() // 65536)], (LO_PCT, HI_PCT))
        if not hi > lo:
            hi = lo + 1.0
        xs.append((img[b] - lo) / (hi - lo))
    x = torch.stack(xs).clamp(-0.5, 1.5)
    return x, low.to(torch.float32), high.to(torch.float32)


def _neg_log(t: torch.Tensor) -> torch.Tensor:
    return -torch.log(t.clamp(min=LOG_FLOOR, max=1.0)) / LOG_SCALE


def front_end(image: torch.Tensor, invalid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(basis [B, N_BASIS, H, W], inputs [B, N_INPUTS, H, W])`` of raw images ``[B, H, W]`` (see the module
    docstring). ``invalid`` (bool ``[B, H, W]``, optional) leaves known-invalid pixels out of the statistics."""
    if image.ndim != 3:
        raise ValueError(f"front_end expects images [B, H, W], got shape {tuple(image.shape)}")
    x, low, high = normalise(image, invalid)
    xc = x.clamp(0.0, 1.0)
    lx, l1x = _neg_log(xc), _neg_log(1.0 - xc)
    ones = torch.ones_like(x)
    basis = torch.stack([x, lx, l1x, ones], 1)
    B, H, W = x.shape
    rows = torch.linspace(-1.0, 1.0, H, dtype=x.dtype).view(1, H, 1).expand(B, H, W)
    cols = torch.linspace(-1.0, 1.0, W, dtype=x.dtype).view(1, 1, W).expand(B, H, W)
    inputs = torch.stack([x, lx, l1x, low, high, rows, cols], 1)
    return basis, inputs


def log_floor_value() -> float:
    """The largest value a log channel takes (for tests and docs)."""
    return -math.log(LOG_FLOOR) / LOG_SCALE

"""Classical radiograph standardization: detector intensities -> line integrals, detector binning.

What the reconstruction consumes is the line integral of mu (1/mm) along each ray, ``-ln(I / I0)``
(Beer-Lambert with a mono-energetic, scatter-free detector model). This module holds the deterministic
steps that turn a detector image into that quantity, shared by ``ixgs import`` and the standardize node:

* :func:`estimate_i0` - the unattenuated (flat-field) intensity from the image itself: the peak of the
  brightest pixels' histogram, which is the air around the patient when the field of view shows some. On an image
  with no direct-beam pixel it underestimates I0, so the line integrals come out too low; give I0 when it
  is known (the XrayView message's ``i0``, the node's ``i0`` parameter, ``ixgs import --i0``).
* :func:`to_line_integral` - ``-ln(clip(I, I0 * floor, I0) / I0)``, so the result is finite and >= 0; the
  numbers of clipped pixels are reported.
* :func:`bin_view` - integer detector binning (block mean) with the matching intrinsics, pixel centres kept
  at integer coordinates (:meth:`View.scaled`).

No scatter or beam-hardening correction happens here; that is the job of the learned standardization.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from .geometry import View

__all__ = ["RadiographError", "estimate_i0", "to_line_integral", "bin_view", "standardize", "inpaint_invalid"]

#: Lowest transmission kept by :func:`to_line_integral` (I / I0); lower values are clipped to it.
DEFAULT_FLOOR = 1e-6
#: Percentile of the positive pixels that marks the bright (direct-beam) cluster in :func:`estimate_i0`.
I0_PERCENTILE = 99.5


class RadiographError(ValueError):
    """An image or parameter that cannot be standardized (the message names the problem)."""


def _image(image, name: str = "image", stack: bool = False) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim not in ((2, 3) if stack else (2,)) or a.size == 0:
        what = "2D (rows, columns) or 3D (views, rows, columns)" if stack else "2D (rows, columns)"
        raise RadiographError(f"{name}: expected a non-empty {what} array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise RadiographError(f"{name}: expected real numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise RadiographError(f"{name}: contains {int((~np.isfinite(a)).sum())} NaN or inf value(s)")
    return a


def estimate_i0(image, percentile: float = I0_PERCENTILE) -> float:
    """Flat-field intensity of a raw detector image: the level of its direct-beam (air) pixels.

    The image is averaged over 5x5 pixels (the air is flat and wide: its level stays, photon noise drops
    5x). The brightest values (up to 10 % under the ``percentile``) hold the air around the patient and thin
    tissue; their histogram (bins of 0.25 %) peaks at the air level even when air is a small minority of
    them (a lateral view). The estimate is the median of the averaged values within 0.5 % of that peak. Without any direct-beam pixel it is the brightest tissue level, too low.
    Raises :class:`RadiographError` when no pixel is positive (nothing to estimate from)."""
    a = _image(image)
    if not 0.0 < percentile <= 100.0:
        raise RadiographError(f"percentile must be in (0, 100], got {percentile}")
    positive = a[a > 0]
    if positive.size == 0:
        raise RadiographError("cannot estimate i0: the image has no positive intensity")
    # a 5x5 mean first: the air is flat and wide, so its level survives while photon noise shrinks 5x and
    # the air peak stands out of the thin-tissue continuum even in a lateral view at a few 1000 counts
    smooth_img = uniform_filter(np.where(a > 0, a, 0).astype(np.float64), size=5, mode="nearest")
    values = smooth_img[a > 0]
    top = float(np.percentile(values, percentile))
    counts, edges = np.histogram(values, bins=88, range=(0.9 * top, 1.12 * top))  # 0.25 % bins
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    k = int(np.argmax(smooth))
    peak = 0.5 * (edges[k] + edges[k + 1])
    near = values[np.abs(values - peak) <= 0.005 * top]
    return float(np.median(near)) if near.size else peak


def to_line_integral(image, i0: float, floor: float = DEFAULT_FLOOR) -> tuple[np.ndarray, dict]:
    """``-ln(I / i0)`` as float32 with I clipped to ``[i0 * floor, i0]`` (so the result is in
    ``[0, -ln(floor)]``), and ``{"i0", "clipped_low", "clipped_high"}`` (pixel counts clipped). ``image``
    is one image or a stack of them (views, rows, columns)."""
    a = _image(image, stack=True)
    try:
        i0 = float(i0)
    except (TypeError, ValueError):
        raise RadiographError(f"i0: expected a number, got {i0!r}") from None
    if not np.isfinite(i0) or i0 <= 0:
        raise RadiographError(f"i0 must be a positive number, got {i0}")
    if not 0.0 < floor < 1.0:
        raise RadiographError(f"floor must be in (0, 1), got {floor}")
    a = a.astype(np.float64, copy=False)
    lo, hi = i0 * floor, i0
    info = {"i0": i0, "clipped_low": int((a < lo).sum()), "clipped_high": int((a > hi).sum())}
    out = (-np.log(np.clip(a, lo, hi) / i0)).astype(np.float32)
    np.maximum(out, 0.0, out=out)  # -0.0 -> 0.0
    return out, info


def bin_view(view: View, image, factor: int) -> tuple[View, np.ndarray]:
    """Bin ``image`` (rows, columns = ``view.height, view.width``) by ``factor`` x ``factor`` pixel blocks
    (mean), and return the matching view. Columns / rows beyond a multiple of ``factor`` (at the right /
    bottom) are dropped; the intrinsics keep pixel centres at integer coordinates."""
    a = _image(image)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise RadiographError(f"binning factor must be a positive integer, got {factor!r}")
    if a.shape != view.shape:
        raise RadiographError(f"image is {a.shape[0]}x{a.shape[1]} (rows x columns) but the view's detector is "
                              f"{view.height}x{view.width}")
    factor = int(factor)
    if factor == 1:
        return view, a
    h, w = a.shape[0] // factor, a.shape[1] // factor
    if h == 0 or w == 0:
        raise RadiographError(f"binning factor {factor} is larger than the {a.shape[0]}x{a.shape[1]} detector")
    blocks = a[:h * factor, :w * factor].astype(np.float64).reshape(h, factor, w, factor)
    binned = blocks.mean(axis=(1, 3)).astype(np.float32 if a.dtype != np.float64 else np.float64)
    cropped = View(view.K, view.T_world_source, w * factor, h * factor, dict(view.meta))
    return cropped.scaled(1.0 / factor), binned


def standardize(view: View, image, *, raw: bool, i0: float = 0.0, downsample: int = 1,
                floor: float = DEFAULT_FLOOR) -> tuple[View, np.ndarray, dict]:
    """One view as the reconstruction wants it: line integrals (float32) on a detector binned by
    ``downsample`` (the binning averages line integrals, after the log transform). ``raw=True``: ``image`` holds intensities, converted with ``i0`` (``<= 0``: estimated by
    :func:`estimate_i0`); ``raw=False``: ``image`` already holds line integrals (only binned).

    Returns ``(view, line_integrals, info)``; ``info`` has ``i0``, ``i0_estimated`` and the clip counts for
    raw images, and ``downsample``."""
    a = _image(image)
    info: dict = {"downsample": int(downsample) if not isinstance(downsample, bool) else downsample}
    if raw:
        estimated = not (i0 and i0 > 0)
        i0_used = estimate_i0(a) if estimated else i0
        li, conv = to_line_integral(a, i0_used, floor)
        info.update(conv, i0_estimated=estimated)
    else:
        li = a.astype(np.float32, copy=False)
    view, li = bin_view(view, li, downsample)
    return view, np.ascontiguousarray(li, dtype=np.float32), info


#: Gaussian width (pixels) that smooths :func:`inpaint_invalid`'s fill.
INPAINT_SIGMA = 2.0


def inpaint_invalid(image, mask) -> np.ndarray:
    """``image`` (2D, or a stack of images sharing the mask) with its invalid pixels (``mask`` 0 / False) replaced by a smooth continuation of the valid
    ones: each takes the value of its nearest valid pixel (Euclidean distance transform), then the filled
    pixels are smoothed among themselves (normalised Gaussian, ``INPAINT_SIGMA``; an isolated invalid pixel keeps
    its nearest valid neighbour's value, so air next to air stays air). Holes (metal) get a smooth fill from their rim, border
    regions (shutters) the values at their edge continued outwards. Valid pixels are returned unchanged
    (float32). Used so that pixels without information do not enter a solver that cannot weight rays (SART)
    as data, and so that a consumer ignoring the mask gets no garbage."""
    from scipy.ndimage import distance_transform_edt

    a = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if a.ndim not in (2, 3) or m.ndim != 2 or m.shape != a.shape[-2:]:
        raise RadiographError(f"inpaint_invalid: image {a.shape} and mask {m.shape} must share one 2D shape")
    if m.all():
        return a.astype(np.float32)
    if not m.any():
        raise RadiographError("inpaint_invalid: no valid pixel to inpaint from")
    idx = distance_transform_edt(~m, return_distances=False, return_indices=True)
    inv = (~m).astype(np.float64)  # smooth among the filled pixels only: nothing spreads from valid ones
    den = np.maximum(gaussian_filter(inv, INPAINT_SIGMA, mode="nearest"), 1e-12)
    out = []
    for img in (a if a.ndim == 3 else a[None]):
        filled = img[idx[0], idx[1]]
        smooth = gaussian_filter(filled * inv, INPAINT_SIGMA, mode="nearest") / den
        out.append(np.where(m, img, smooth))
    out = np.asarray(out, dtype=np.float32)
    return out if a.ndim == 3 else out[0]

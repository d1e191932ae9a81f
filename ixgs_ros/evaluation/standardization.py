"""Scoring standardized X-ray images against the ideal line integrals (2D), and the plain-log baseline.

2D protocol (as ixgs's 2D PSNR, restricted to the pixels that carry information): each view is scaled by the
maximum of its ideal image (peak 1), the error is averaged over the view's valid pixels only, PSNR/SSIM per view
are averaged over the views. SSIM is the mean of the SSIM map (:func:`ixgs_ros.evaluation.metrics.ssim_maps`)
over the valid pixels. The plain log is what ``ixgs import --to-line-integral`` does to a raw image:
``-ln(I / I0)`` with I0 estimated from the image (:func:`ixgs_ros.core.radiograph.estimate_i0`).
"""
from __future__ import annotations

import math

import numpy as np

from ..core.radiograph import RadiographError, estimate_i0, to_line_integral
from .metrics import ssim_maps

__all__ = ["masked_psnr_2d", "masked_ssim_2d", "mask_agreement", "plain_log"]


def _scaled(pred, ideal, mask):
    pred = np.asarray(pred, dtype=np.float64)
    ideal = np.asarray(ideal, dtype=np.float64)
    if pred.shape != ideal.shape or pred.ndim != 3:
        raise ValueError(f"expected two stacks [N, H, W] of one shape, got {pred.shape} and {ideal.shape}")
    m = np.ones(ideal.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if m.shape != ideal.shape:
        raise ValueError(f"mask shape {m.shape} does not match {ideal.shape}")
    peak = ideal.reshape(len(ideal), -1).max(axis=1)
    keep = (peak > 0) & (m.reshape(len(m), -1).sum(axis=1) > 0)
    if not keep.any():
        raise ValueError("no view has a positive ideal image and a valid pixel")
    s = 1.0 / peak[keep, None, None]
    return pred[keep] * s, ideal[keep] * s, m[keep]


def masked_psnr_2d(pred, ideal, mask=None, return_all: bool = False):
    """Mean over views of the PSNR (peak 1 = the view's ideal maximum) over its valid pixels."""
    p, g, m = _scaled(pred, ideal, mask)
    vals = []
    for pi, gi, mi in zip(p, g, m):
        mse = float(np.mean((pi[mi] - gi[mi]) ** 2))
        vals.append(10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf)
    return (float(np.mean(vals)), vals) if return_all else float(np.mean(vals))


def masked_ssim_2d(pred, ideal, mask=None, return_all: bool = False):
    """Mean over views of the SSIM map's mean over the valid pixels (images scaled as for the PSNR)."""
    p, g, m = _scaled(pred, ideal, mask)
    maps = ssim_maps(p, g)
    vals = [float(mp[mi].mean()) for mp, mi in zip(maps, m)]
    return (float(np.mean(vals)), vals) if return_all else float(np.mean(vals))


def mask_agreement(pred_mask, true_mask) -> dict:
    """How a predicted validity mask agrees with the true one: pixel accuracy, the fraction of truly invalid
    pixels predicted invalid (recall of the invalid class) and of predicted-valid pixels that are truly valid."""
    p = np.asarray(pred_mask).astype(bool)
    t = np.asarray(true_mask).astype(bool)
    inv = ~t
    return {"accuracy": float(np.mean(p == t)),
            "invalid_found": float(np.mean(~p[inv])) if inv.any() else 1.0,
            "valid_precision": float(np.mean(t[p])) if p.any() else float("nan")}


def plain_log(images) -> np.ndarray:
    """``-ln(I / I0)`` of each raw image, I0 estimated from the image (what ``ixgs import --to-line-integral``
    without ``--i0`` gives); an image without a positive pixel gives zeros."""
    out = np.zeros(np.shape(images), np.float32)
    for i, img in enumerate(np.asarray(images, dtype=np.float64)):
        try:
            out[i] = to_line_integral(img, estimate_i0(img))[0]
        except RadiographError:
            pass
    return out

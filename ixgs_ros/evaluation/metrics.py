"""Image quality metrics with R2-Gaussian's evaluation protocol (reimplemented from its description).

3D (volumes, ``[I, J, K]``):

* :func:`psnr_3d` - the ground truth is scaled to [0, 1] by its maximum and the prediction by the *same*
  factor; PSNR with peak 1 and no clipping: ``10 log10(1 / mean((pred - gt)^2))``.
* :func:`ssim_3d` - after the same scaling, 2D SSIM of every slice along each of the three axes, averaged per
  axis over the slices whose ground truth is not empty (max > 0), then the three axis means are averaged.

2D SSIM is the one of the 3D Gaussian splatting / R2-Gaussian code: an 11-tap Gaussian window with
sigma 1.5 applied with *zero padding* (output of the image's size), ``C1 = 0.01^2``, ``C2 = 0.03^2`` (data range
1) and the SSIM map averaged over the *whole* image, borders included. ``skimage.metrics.structural_similarity``
(``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``) uses the same window but
reflect-padding and drops a 5-pixel border before averaging, so it differs slightly near the edges; the
tests check that both agree on the interior.

2D (projections, ``[N, H, W]``): :func:`psnr_2d` / :func:`ssim_2d` score each view after scaling it by its
own ground-truth maximum (the prediction by the same factor) and average over the views with a non-empty
ground truth. R2-Gaussian's own script divides the prediction by *its own* maximum instead;
``normalize="each"`` reproduces that variant.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "psnr_3d", "ssim_3d", "psnr_2d", "ssim_2d", "ssim_2d_batch", "ssim_maps", "gaussian_window",
           "volume_metrics"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _as_pair(pred, gt, ndim: int | None = None):
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if ndim is not None and gt.ndim != ndim:
        raise ValueError(f"expected {ndim}D arrays, got shape {gt.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError("inputs contain NaN or inf")
    return pred, gt


def _gt_scale(gt: np.ndarray) -> float:
    m = float(gt.max())
    if not m > 0:
        raise ValueError("ground truth maximum must be positive to scale it to [0, 1]")
    return 1.0 / m


def psnr(pred, gt, peak: float = 1.0) -> float:
    """Plain PSNR ``10 log10(peak^2 / MSE)`` (inf for identical inputs)."""
    pred, gt = _as_pair(pred, gt)
    mse = float(np.mean((pred - gt) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr_3d(pred, gt) -> float:
    """R2-Gaussian 3D PSNR: ``gt`` scaled to [0, 1] by its max, ``pred`` by the same factor, peak 1, no clipping."""
    pred, gt = _as_pair(pred, gt, 3)
    s = _gt_scale(gt)
    return psnr(pred * s, gt * s, 1.0)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1D Gaussian taps centred on ``size // 2``."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim_maps(pred, gt, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM maps ``[B, H, W]`` of image pairs ``[B, H, W]`` (or ``[H, W]``), values already scaled to range 1.

    Separable Gaussian filtering with zero padding ("same" size), float64 torch convolutions.
    """
    import torch
    import torch.nn.functional as F

    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    w = torch.from_numpy(gaussian_window(window, sigma))
    wy, wx = w.view(1, 1, -1, 1), w.view(1, 1, 1, -1)
    p = window // 2

    def filt(x):
        return F.conv2d(F.conv2d(x, wy, padding=(p, 0)), wx, padding=(0, p))

    out = np.empty(pred.shape, dtype=np.float64)
    with torch.no_grad():
        for i in range(0, pred.shape[0], 64):  # chunks keep memory bounded for big volumes
            x = torch.from_numpy(pred[i:i + 64])[:, None]
            y = torch.from_numpy(gt[i:i + 64])[:, None]
            mx, my = filt(x), filt(y)
            sxx = filt(x * x) - mx * mx
            syy = filt(y * y) - my * my
            sxy = filt(x * y) - mx * my
            m = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / \
                ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))
            out[i:i + 64] = m[:, 0].numpy()
    return out


def ssim_2d_batch(pred, gt, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM of each image pair of a batch ``[B, H, W]``: the mean of its :func:`ssim_maps` map."""
    return ssim_maps(pred, gt, window, sigma).mean(axis=(-2, -1))


def ssim_3d(pred, gt, return_axes: bool = False):
    """R2-Gaussian 3D SSIM (see module docstring). ``return_axes`` also returns the three per-axis means."""
    pred, gt = _as_pair(pred, gt, 3)
    s = _gt_scale(gt)
    pred, gt = pred * s, gt * s
    axes = []
    for ax in range(3):
        p = np.moveaxis(pred, ax, 0)
        g = np.moveaxis(gt, ax, 0)
        valid = g.reshape(g.shape[0], -1).max(axis=1) > 0
        if not valid.any():
            axes.append(float("nan"))
            continue
        axes.append(float(ssim_2d_batch(p[valid], g[valid]).mean()))
    val = float(np.mean(axes))
    return (val, axes) if return_axes else val


def _per_view(pred, gt, normalize: str):
    pred, gt = _as_pair(pred, gt)
    if gt.ndim == 2:
        pred, gt = pred[None], gt[None]
    if gt.ndim != 3:
        raise ValueError(f"expected projections [N, H, W], got shape {gt.shape}")
    if normalize not in ("gt", "each"):
        raise ValueError("normalize must be 'gt' or 'each'")
    gmax = gt.reshape(len(gt), -1).max(axis=1)
    valid = gmax > 0
    if not valid.any():
        raise ValueError("every ground-truth projection is empty")
    g = gt[valid] / gmax[valid, None, None]
    if normalize == "gt":
        p = pred[valid] / gmax[valid, None, None]
    else:
        pmax = pred[valid].reshape(int(valid.sum()), -1).max(axis=1)
        p = pred[valid] / np.where(pmax > 0, pmax, 1.0)[:, None, None]
    return p, g


def psnr_2d(pred, gt, normalize: str = "gt", return_all: bool = False):
    """Mean over views of the PSNR of each projection scaled by its ground-truth max (peak 1)."""
    p, g = _per_view(pred, gt, normalize)
    mse = ((p - g) ** 2).reshape(len(g), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        vals = np.where(mse > 0, 10.0 * np.log10(1.0 / np.where(mse > 0, mse, 1.0)), np.inf)
    m = float(np.mean(vals))
    return (m, vals.tolist()) if return_all else m


def ssim_2d(pred, gt, normalize: str = "gt", return_all: bool = False):
    """Mean over views of the SSIM of each projection scaled by its ground-truth max."""
    p, g = _per_view(pred, gt, normalize)
    vals = ssim_2d_batch(p, g)
    m = float(np.mean(vals))
    return (m, vals.tolist()) if return_all else m


def volume_metrics(pred, gt) -> dict:
    """``{"psnr_3d": ..., "ssim_3d": ..., "ssim_3d_axes": [...]}`` for a prediction and ground truth."""
    ssim, axes = ssim_3d(pred, gt, return_axes=True)
    return {"psnr_3d": psnr_3d(pred, gt), "ssim_3d": ssim, "ssim_3d_axes": axes}

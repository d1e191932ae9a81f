"""Differentiable training losses of R²-Gaussian: L1 + D-SSIM per projection and 3D total variation (torch).

Evaluation metrics (numpy, the field's protocol) live in :mod:`ixgs_ros.evaluation.metrics`."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "ssim", "ssim_map", "d_ssim", "tv_3d", "projection_loss"]


@functools.lru_cache(maxsize=8)
def _window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)[None, None]


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    return _window(size, sigma, dtype)


def ssim(img: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor = 1.0, size: int = 11,
            sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two images ``[H, W]`` or ``[B, H, W]`` (Gaussian window, 'valid' borders)."""
    return ssim_map(img, ref, data_range, size, sigma).mean()


def ssim_map(img: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor = 1.0, size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """SSIM map ``[B, H - size + 1, W - size + 1]`` of two images ``[H, W]`` or ``[B, H, W]`` ('valid' borders).

    The five local moments (means, second moments, cross moment) are one grouped convolution with the Gaussian
    window, applied as its two 1D factors (the 2D window is their outer product): the same filter as one 2D
    convolution per moment, at a fraction of the cost, backward included."""
    if img.ndim == 2:
        img, ref = img[None], ref[None]
    x, y = img[:, None], ref[:, None]
    g = _window(size, sigma, img.dtype)[0, 0].sum(1).to(img.device)  # the 1D factor
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    m = F.conv2d(F.conv2d(moments, g.reshape(1, 1, size, 1).expand(5, 1, size, 1), groups=5),
                 g.reshape(1, 1, 1, size).expand(5, 1, 1, size), groups=5)
    mx, my, exx, eyy, exy = m.unbind(1)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def tv_3d(vol: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference along the three axes (anisotropic TV)."""
    return (vol[1:] - vol[:-1]).abs().mean() + (vol[:, 1:] - vol[:, :-1]).abs().mean() + \
        (vol[:, :, 1:] - vol[:, :, :-1]).abs().mean()


def d_ssim(img: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor = 1.0) -> torch.Tensor:
    """R²-Gaussian's D-SSIM term: ``1 - SSIM``."""
    return 1 - ssim(img, ref, data_range=data_range)


def projection_loss(pred: torch.Tensor, target: torch.Tensor, lambda_ssim: float,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L1, L1 + lambda_ssim D-SSIM)`` of one rendered view against its measurement; D-SSIM only where the
    image is at least as large as its 11-pixel window, with the data range of the measurement.

    ``mask`` ([H, W], 1 = valid, 0 = no information): L1 is the mean over valid pixels; for D-SSIM the invalid
    pixels of the measurement take the rendered values (detached), so the values a measurement holds there never
    change the loss, and the SSIM map is averaged over the windows centred on valid pixels."""
    if mask is None:
        l1 = (pred - target).abs().mean()
        loss = l1
        if lambda_ssim > 0 and min(target.shape) >= 11:
            loss = loss + lambda_ssim * d_ssim(pred, target, data_range=target.max().clamp_min(1e-6))
        return l1, loss
    w = mask.to(pred.dtype)
    n = w.sum().clamp_min(1.0)
    l1 = ((pred - target).abs() * w).sum() / n
    loss = l1
    if lambda_ssim > 0 and min(target.shape) >= 11:
        filled = torch.where(w > 0.5, target, pred.detach())
        rng = (filled * w).max().clamp_min(1e-6)
        smap = ssim_map(pred, filled, data_range=rng)[0]
        hr, hc = (w.shape[0] - smap.shape[0]) // 2, (w.shape[1] - smap.shape[1]) // 2
        wc = w[hr:hr + smap.shape[0], hc:hc + smap.shape[1]]
        loss = loss + lambda_ssim * (1 - (smap * wc).sum() / wc.sum().clamp_min(1.0))
    return l1, loss

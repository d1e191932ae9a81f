"""Differentiable training losses of R²-Gaussian: D-SSIM (2D) and 3D total variation (torch, autograd).

Evaluation metrics (numpy, the field's protocol) live in :mod:`ixgs_ros.core.metrics`."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "ssim_2d", "tv_3d"]


@functools.lru_cache(maxsize=8)
def _window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)[None, None]


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    return _window(size, sigma, dtype)


def ssim_2d(img: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor = 1.0, size: int = 11,
            sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two images ``[H, W]`` or ``[B, H, W]`` (Gaussian window, 'valid' borders)."""
    if img.ndim == 2:
        img, ref = img[None], ref[None]
    x, y = img[:, None], ref[:, None]
    w = gaussian_window(size, sigma, img.dtype).to(img.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def tv_3d(vol: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference along the three axes (anisotropic TV)."""
    return (vol[1:] - vol[:-1]).abs().mean() + (vol[:, 1:] - vol[:, :-1]).abs().mean() + \
        (vol[:, :, 1:] - vol[:, :, :-1]).abs().mean()

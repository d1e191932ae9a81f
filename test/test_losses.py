"""The training losses (ixgs_ros.engine.losses): the separable SSIM against the 2D-window definition."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ixgs_ros.engine import losses


def _ssim_map_2d(img, ref, data_range, size=11, sigma=1.5):
    """SSIM by its definition: every local moment one 2D convolution with the Gaussian window ('valid')."""
    x, y = img[None, None], ref[None, None]
    w = losses.gaussian_window(size, sigma, img.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2)))[:, 0]


def test_ssim_map_is_the_2d_window_definition_values_and_gradients():
    """On a smooth image and a noisy copy (float64): the SSIM map and the gradient of the D-SSIM loss equal the
    one-2D-convolution-per-moment definition to 1e-12; the map has 'valid' size; identical images give 1."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(33.0), indexing="ij")
    ref = (torch.sin(xx / 5) * torch.cos(yy / 7) + 1.5).double()
    img = (ref + 0.2 * torch.randn(ref.shape, generator=g, dtype=torch.float64)).requires_grad_()
    got = losses.ssim_map(img, ref, data_range=2.5)
    want = _ssim_map_2d(img, ref, 2.5)
    assert got.shape == (1, 30, 23) and torch.allclose(got, want, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(losses.d_ssim(img, ref, 2.5), img)[0]
    g2 = torch.autograd.grad(1 - _ssim_map_2d(img, ref, 2.5).mean(), img)[0]
    assert torch.allclose(g1, g2, rtol=0, atol=1e-12) and float(g1.abs().max()) > 0
    assert torch.allclose(losses.ssim(ref, ref, 2.5), torch.tensor(1.0, dtype=torch.float64))

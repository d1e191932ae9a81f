"""Autograd wrappers of the CUDA splatting kernels (``cuda_ext/*.cu``; built by :mod:`ixgs_ros.engine.kernels`,
kinds ``cuda`` and ``cuda-emu``): the same contract as the ``cpp`` backend of :mod:`ixgs_ros.engine.render` and
:mod:`ixgs_ros.engine.voxelize`.

STATUS: written, compiled with nvcc and tested in the CPU emulation, but not yet run on a GPU, so
``backend="auto"`` does not use them (``scripts/gpu_check.sh`` is the check to run on a GPU machine).
"""
from __future__ import annotations

from .kernels import load as _load_kind

__all__ = ["load", "load_emulated", "rasterize", "voxelize_kernel"]


def load(verbose: bool | None = None):
    """The CUDA extension module (RuntimeError when it cannot be built here)."""
    return _load_kind("cuda", verbose)


def load_emulated(verbose: bool | None = None):
    """The CPU emulation of the CUDA kernels (CPU tensors; a test aid)."""
    return _load_kind("cuda-emu", verbose)


# ----------------------------------------------------------------------------------------------- autograd
def _sigma(sigma_cutoff):
    if sigma_cutoff is None:
        from .render import SIGMA_CUTOFF

        return float(SIGMA_CUTOFF)
    return float(sigma_cutoff)


def _rasterize_function():
    import torch

    class RasterizeCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, mean2d, conic, weight, radius, width, height, sigma, mod):
            mean2d, conic, weight = mean2d.contiguous(), conic.contiguous(), weight.contiguous()
            radius = radius.detach().to(mean2d.dtype).contiguous()
            image, offsets, ids = mod.rasterize_forward(mean2d, conic, weight, radius, width, height, sigma)
            ctx.save_for_backward(mean2d, conic, weight, radius, offsets, ids)
            ctx.args = (width, height, sigma, mod)
            return image

        @staticmethod
        def backward(ctx, grad_image):
            mean2d, conic, weight, radius, offsets, ids = ctx.saved_tensors
            width, height, sigma, mod = ctx.args
            g_m, g_c, g_w = mod.rasterize_backward(mean2d, conic, weight, radius, offsets, ids,
                                                   grad_image.contiguous(), width, height, sigma)
            return g_m, g_c, g_w, None, None, None, None, None

    return RasterizeCuda


def _voxelize_function():
    import torch

    class VoxelizeCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, means, icov, density, extent, bounds, affine, shape, mod):
            means, icov, density = means.contiguous(), icov.contiguous(), density.contiguous()
            extent, bounds = extent.detach().contiguous(), bounds.contiguous()
            affine = affine.to(device=means.device, dtype=torch.float64).contiguous()
            vol, offsets, ids = mod.voxelize_forward(means, icov, density, extent, bounds, affine, *shape)
            ctx.save_for_backward(means, icov, density, extent, bounds, affine, offsets, ids)
            ctx.args = (shape, mod)
            return vol

        @staticmethod
        def backward(ctx, grad_vol):
            means, icov, density, extent, bounds, affine, offsets, ids = ctx.saved_tensors
            shape, mod = ctx.args
            g_m, g_q, g_d = mod.voxelize_backward(means, icov, density, extent, bounds, affine, offsets, ids,
                                                  grad_vol.contiguous(), *shape)
            return g_m, g_q, g_d, None, None, None, None, None

    return VoxelizeCuda


_functions: dict[str, object] = {}


def _function(kind: str):
    if kind not in _functions:
        _functions[kind] = _rasterize_function() if kind == "raster" else _voxelize_function()
    return _functions[kind]


def rasterize(mean2d, conic, weight, radius, width: int, height: int, *, sigma_cutoff: float | None = None,
              module=None):
    """Differentiable sum of 2D splats ``[height, width]`` with the CUDA kernels (``module``: a module from
    :func:`load` (default) or :func:`load_emulated`). Same contract as the ``"cpp"`` backend of
    :func:`ixgs_ros.engine.render.rasterize`."""
    mod = module if module is not None else load()
    return _function("raster").apply(mean2d, conic, weight, radius, int(width), int(height), _sigma(sigma_cutoff),
                                     mod)


def voxelize_kernel(means, icov, density, extent, bounds, affine, shape, *, module=None):
    """Differentiable voxelizer kernel ``[I, J, K]`` (inputs as the ``"cpp"`` backend of
    :func:`ixgs_ros.engine.voxelize.voxelize` passes them to its kernel)."""
    mod = module if module is not None else load()
    return _function("voxel").apply(means, icov, density, extent, bounds, affine, tuple(int(s) for s in shape), mod)

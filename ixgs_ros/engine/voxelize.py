"""Sample the Gaussian density field on any voxel grid (differentiable), e.g. to export the reconstruction or to
regularise it (3D TV on sub-volumes).

``V(x) = sum_i rho_i exp(-1/2 (x - p_i)^T Sigma_i^-1 (x - p_i))`` is evaluated at the voxel centres of a
:class:`~ixgs_ros.core.volume.Grid` (any affine: anisotropic spacing, rotated axes, oblique sub-volumes).

Cut-off: Gaussian ``i`` contributes only to voxel centres inside its axis-aligned 3-sigma *world* box,
``|x_d - p_d| <= 3 sqrt(Sigma_i[d, d])`` for d = x, y, z. The box contains the whole 3-sigma ellipsoid (97.1 % of
the Gaussian's mass, more for elongated ones); the values cut off are at most ``rho exp(-4.5) = 0.011 rho`` at the
box faces. Which voxels are candidates is found through the inverse affine: the 8 box corners are mapped to
index space and their bounding range (1e-3 voxel slack) is scanned; the world-box test decides.

Split (as the renderer): per-Gaussian parameters (inverse covariance ``(xx, xy, xz, yy, yz, zz)``, world
extent, index bounds) are computed in differentiable torch; the sampling sum is the kernel, ``"torch"``
(reference, autograd) or ``"cpp"`` (C++/OpenMP, explicit backward). ``backend="auto"`` as in
:func:`ixgs_ros.engine.render.render`.
"""
from __future__ import annotations

import numpy as np
import torch

from .render import SIGMA_CUTOFF, _native_module, quat_to_rotmat, resolve_backend
from ..core.volume import Grid

__all__ = ["voxelize", "voxelize_points", "gaussian_voxel_params", "sub_grid", "VoxelParams"]

_INDEX_SLACK = 1e-3  # voxels; the candidate index range is widened by this before the world-box test


class VoxelParams(tuple):
    """``(icov [N, 6], extent [N, 3], bounds int32 [N, 6])`` for one grid."""

    __slots__ = ()

    def __new__(cls, icov, extent, bounds):
        return super().__new__(cls, (icov, extent, bounds))

    icov = property(lambda self: self[0])
    extent = property(lambda self: self[1])
    bounds = property(lambda self: self[2])


def _inverse_covariance6(scales, quats):
    """``Sigma^-1 = R diag(1/s^2) R^T`` packed as ``(xx, xy, xz, yy, yz, zz)``, ``[N, 6]`` (differentiable)."""
    M = quat_to_rotmat(quats) / scales[:, None, :]  # rows M[:, r] ; Q[r, c] = M[:, r] . M[:, c]
    m0, m1, m2 = M[:, 0], M[:, 1], M[:, 2]
    return torch.stack([(m0 * m0).sum(-1), (m0 * m1).sum(-1), (m0 * m2).sum(-1), (m1 * m1).sum(-1),
                        (m1 * m2).sum(-1), (m2 * m2).sum(-1)], dim=-1)


def _world_extent(scales, quats):
    """Half sizes of the 3-sigma world box, ``3 sqrt(diag Sigma)``, ``[N, 3]`` (no gradient)."""
    with torch.no_grad():
        R = quat_to_rotmat(quats)
        var = (R * R * (scales * scales)[:, None, :]).sum(-1)
        return (SIGMA_CUTOFF * torch.sqrt(var)).contiguous()


def _index_bounds(means, extent, grid: Grid) -> torch.Tensor:
    """Inclusive candidate index ranges ``(i0, i1, j0, j1, k0, k1)`` (int32, clamped to the grid; empty if lo > hi)."""
    with torch.no_grad():
        Ainv = torch.as_tensor(np.linalg.inv(grid.affine), dtype=torch.float64, device=means.device)
        M, t = Ainv[:3, :3], Ainv[:3, 3]
        p = means.detach().double()
        e = extent.double()
        # the index-space bounding box of the world box p +- e: centre M p + t, half sizes |M| e
        centre = p[:, 0:1] * M[:, 0] + p[:, 1:2] * M[:, 1] + p[:, 2:3] * M[:, 2] + t
        half = e[:, 0:1] * M[:, 0].abs() + e[:, 1:2] * M[:, 1].abs() + e[:, 2:3] * M[:, 2].abs()
        lo = torch.ceil(centre - half - _INDEX_SLACK)
        hi = torch.floor(centre + half + _INDEX_SLACK)
        size = torch.tensor(grid.shape, dtype=torch.float64, device=means.device)
        lo = torch.maximum(lo, torch.zeros_like(lo))
        hi = torch.minimum(hi, size - 1)
        ok = torch.isfinite(lo).all(1) & torch.isfinite(hi).all(1) & (lo <= hi).all(1)
        lo = torch.where(ok[:, None], lo, torch.ones_like(lo))
        hi = torch.where(ok[:, None], hi, torch.zeros_like(hi))
        return torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], lo[:, 2], hi[:, 2]], dim=1).to(torch.int32)


def gaussian_voxel_params(means, scales, quats, grid: Grid) -> VoxelParams:
    """Kernel inputs for ``grid``: inverse covariances (differentiable), world extents and index bounds."""
    icov = _inverse_covariance6(scales, quats)
    extent = _world_extent(scales, quats).to(means.dtype)
    return VoxelParams(icov, extent, _index_bounds(means, extent, grid))


def _affine34(grid: Grid, device) -> torch.Tensor:
    return torch.tensor(np.array(grid.affine[:3, :4], dtype=np.float64), device=device)


def _voxel_power(icov, dx, dy, dz):
    q = [icov[:, k, None, None, None] for k in range(6)]
    return 0.5 * (q[0] * dx * dx + q[3] * dy * dy + q[5] * dz * dz) + (q[1] * dx * dy + q[2] * dx * dz + q[4] * dy * dz)


def _voxelize_torch(means, icov, density, extent, bounds, grid: Grid, chunk_elems: int = 1 << 22):
    """Reference: each Gaussian is evaluated on its (padded) index box and scatter-added (autograd)."""
    I, J, K = grid.shape
    dtype, dev = means.dtype, means.device
    A = _affine34(grid, dev)
    vol = means.new_zeros(I * J * K)
    b = bounds.long()
    size = torch.stack([b[:, 1] - b[:, 0], b[:, 3] - b[:, 2], b[:, 5] - b[:, 4]], 1) + 1
    idx = torch.nonzero((size > 0).all(1)).flatten()
    if idx.numel() == 0:
        return vol.reshape(I, J, K) + 0.0 * (means.sum() + icov.sum() + density.sum())
    vol_sz = size[idx].prod(1)
    order = torch.argsort(vol_sz)
    idx = idx[order]
    sz = size[idx]
    start, n = 0, idx.numel()
    p64 = means.double()
    while start < n:
        # boxes sorted by volume; a chunk is padded to its per-axis maxima (running maxima from its start)
        pad = torch.stack([torch.cummax(sz[start:, d], 0).values for d in range(3)], 1).prod(1)
        k = torch.arange(1, n - start + 1, device=dev)
        stop = start + max(1, int((k * pad <= chunk_elems).sum()))
        sel = idx[start:stop]
        mi, mj, mk = (int(v) for v in sz[start:stop].amax(0))
        bs = b[sel]
        ii = bs[:, 0, None, None, None] + torch.arange(mi, device=dev)[None, :, None, None]
        jj = bs[:, 2, None, None, None] + torch.arange(mj, device=dev)[None, None, :, None]
        kk = bs[:, 4, None, None, None] + torch.arange(mk, device=dev)[None, None, None, :]
        inside = (ii <= bs[:, 1, None, None, None]) & (jj <= bs[:, 3, None, None, None]) & \
            (kk <= bs[:, 5, None, None, None])
        fi, fj, fk = ii.double(), jj.double(), kk.double()
        d = []
        for r in range(3):  # same evaluation order as voxel_offset() in cuda_ext/splat_math.h
            x = ((A[r, 0] * fi + A[r, 1] * fj) + A[r, 2] * fk) + A[r, 3]
            d.append((x - p64[sel, r, None, None, None]).to(dtype))
        dx, dy, dz = d
        e = extent[sel]
        inside = inside & (dx.abs() <= e[:, 0, None, None, None]) & (dy.abs() <= e[:, 1, None, None, None]) & \
            (dz.abs() <= e[:, 2, None, None, None])
        power = _voxel_power(icov[sel], dx, dy, dz)
        val = torch.where(inside, density[sel, None, None, None] * torch.exp(-power), 0.0)
        flat = torch.where(inside, (ii * J + jj) * K + kk, torch.zeros_like(ii))
        vol = vol.index_add(0, flat.reshape(-1), val.reshape(-1))
        start = stop
    return vol.reshape(I, J, K)


class _VoxelizeCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, icov, density, extent, bounds, affine, shape):
        mod = _native_module()
        means, icov, density = means.contiguous(), icov.contiguous(), density.contiguous()
        vol, offsets, ids = mod.voxelize_forward(means, icov, density, extent, bounds, affine, *shape)
        ctx.save_for_backward(means, icov, density, extent, bounds, affine, offsets, ids)
        ctx.shape = shape
        return vol

    @staticmethod
    def backward(ctx, grad_vol):
        means, icov, density, extent, bounds, affine, offsets, ids = ctx.saved_tensors
        g_means, g_icov, g_density = _native_module().voxelize_backward(
            means, icov, density, extent, bounds, affine, offsets, ids, grad_vol.contiguous(), *ctx.shape)
        return g_means, g_icov, g_density, None, None, None, None


def voxelize(means, scales, quats, density, grid: Grid, *, backend: str = "auto") -> torch.Tensor:
    """Density field sampled at the voxel centres of ``grid``: ``[I, J, K]`` (dtype of ``means``, differentiable)."""
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be an ixgs_ros.core.volume.Grid, got {type(grid).__name__}")
    from .render import _check_inputs

    _check_inputs(means, scales, quats, density)
    be = resolve_backend(backend, means.device)
    with torch.no_grad():
        # a Gaussian's 3-sigma world box lies within 3 x its largest scale of its centre: those farther from the
        # grid's box cannot reach it, so a small (sub-)grid skips their extents and bounds
        lo, hi = (torch.as_tensor(b, dtype=means.dtype, device=means.device) for b in grid.bounds())
        r = SIGMA_CUTOFF * scales.detach().abs().amax(1, keepdim=True)
        m = means.detach()
        near = ((m + r >= lo) & (m - r <= hi)).all(1) | ~torch.isfinite(r[:, 0])
    if int(near.sum()) < 0.5 * means.shape[0]:
        sel = torch.nonzero(near).flatten()
        means, scales, quats, density = means[sel], scales[sel], quats[sel], density[sel]
    extent = _world_extent(scales, quats).to(means.dtype)
    bounds = _index_bounds(means, extent, grid)
    with torch.no_grad():
        hit = (bounds[:, 0::2] <= bounds[:, 1::2]).all(1)
        n_hit = int(hit.sum())
    if n_hit < 0.5 * means.shape[0]:
        # small (sub-)grid: only the Gaussians that reach it enter the differentiable part (gradients of the
        # others are zero) - this keeps e.g. 3D TV on random sub-volumes cheap
        sel = torch.nonzero(hit).flatten()
        means, scales, quats, density = means[sel], scales[sel], quats[sel], density[sel]
        extent, bounds = extent[sel], bounds[sel]
    icov = _inverse_covariance6(scales, quats)
    if be == "cpp":
        return _VoxelizeCpp.apply(means, icov, density, extent, bounds, _affine34(grid, means.device),
                                  tuple(int(s) for s in grid.shape))
    if be == "cuda":
        from .kernels_cuda import voxelize_kernel
        from .render import _cuda_module

        return voxelize_kernel(means, icov, density, extent, bounds, _affine34(grid, means.device),
                               tuple(int(s) for s in grid.shape), module=_cuda_module())
    return _voxelize_torch(means, icov, density, extent, bounds, grid)


def voxelize_points(points, means, scales, quats, density, *, chunk_pairs: int = 1 << 23) -> torch.Tensor:
    """Density field at arbitrary world points ``[M, 3]`` -> ``[M]`` (pure torch, differentiable).

    Same 3-sigma world-box cut-off as :func:`voxelize`. Cost is O(M x N') with N' the Gaussians whose box meets
    the points' bounding box, so it suits a few thousand probe points; for (sub-)volumes use :func:`voxelize`
    with :func:`sub_grid`, which is binned and much faster.
    """
    from .render import _check_inputs

    _check_inputs(means, scales, quats, density)
    points = torch.as_tensor(points, dtype=means.dtype, device=means.device)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [M, 3], got {tuple(points.shape)}")
    icov = _inverse_covariance6(scales, quats)
    extent = _world_extent(scales, quats).to(means.dtype)
    out = points.new_zeros(points.shape[0])
    if points.shape[0] == 0:
        return out
    with torch.no_grad():
        lo, hi = points.detach().amin(0), points.detach().amax(0)
        m = means.detach()
        near = ((m + extent >= lo) & (m - extent <= hi)).all(1)
    sel = torch.nonzero(near).flatten()
    if sel.numel() == 0:
        return out + 0.0 * (means.sum() + icov.sum() + density.sum())
    step = max(1, chunk_pairs // max(1, sel.numel()))
    parts = []
    for s in range(0, points.shape[0], step):
        d = points[s:s + step, None, :] - means[sel][None]  # [m, n, 3]
        inside = (d.abs() <= extent[sel][None]).all(-1)
        q = icov[sel]
        dx, dy, dz = d.unbind(-1)
        power = 0.5 * (q[:, 0] * dx * dx + q[:, 3] * dy * dy + q[:, 5] * dz * dz) + \
            (q[:, 1] * dx * dy + q[:, 2] * dx * dz + q[:, 4] * dy * dz)
        parts.append(torch.where(inside, density[sel][None] * torch.exp(-power), 0.0).sum(1))
    return torch.cat(parts)


def sub_grid(grid: Grid, start, shape) -> Grid:
    """The block ``grid[start : start + shape]`` as its own :class:`Grid` (same axes and spacing, shifted origin)."""
    start = np.asarray(start, dtype=np.float64).reshape(3)
    A = np.array(grid.affine, dtype=np.float64)
    A[:3, 3] = grid.index_to_world(start)
    return Grid(tuple(int(s) for s in shape), A)

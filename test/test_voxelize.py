"""Voxelizer: the Gaussian density field sampled on arbitrary (rotated, anisotropic) grids, both backends."""
from __future__ import annotations

from functools import partial

import math

import numpy as np
import pytest
import torch

from gaussian_factory import random_gaussians
from ixgs_ros.engine import render as gr
from ixgs_ros.engine import voxelize as vx
from ixgs_ros.core.geometry import rotation_x, rotation_y, rotation_z
from ixgs_ros.core.volume import Grid

F64 = torch.float64


_gaussians = partial(random_gaussians, spread=20.0)


def _rotated_grid(shape=(14, 11, 9)):
    A = np.eye(4)
    A[:3, :3] = rotation_z(0.5) @ rotation_y(-0.3) @ rotation_x(0.2) @ np.diag([1.5, 1.1, 2.0])
    A[:3, 3] = [-9.0, -7.0, -8.0]
    return Grid(shape, A)


def _brute_force(means, scales, quats, density, points):
    """sum_i rho_i exp(-1/2 d^T Sigma_i^-1 d) over Gaussians whose 3-sigma world box contains the point."""
    cov = gr.covariance_from_scale_rot(scales, quats).detach().numpy()
    icov = np.linalg.inv(cov)
    ext = 3.0 * np.sqrt(np.einsum("nii->ni", cov))
    d = points[:, None, :] - means.detach().numpy()[None]  # [M, N, 3]
    inside = (np.abs(d) <= ext[None]).all(-1)
    power = 0.5 * np.einsum("mni,nij,mnj->mn", d, icov, d)
    return (np.where(inside, density.detach().numpy()[None] * np.exp(-power), 0.0)).sum(1)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_equals_brute_force_on_rotated_anisotropic_grid(backend):
    grid = _rotated_grid()
    args = _gaussians(40)
    vol = vx.voxelize(*args, grid, backend=backend)
    assert vol.shape == grid.shape and vol.dtype == F64
    ref = _brute_force(*args, grid.world_coords().reshape(-1, 3)).reshape(grid.shape)
    assert ref.max() > 0.05
    np.testing.assert_allclose(vol.numpy(), ref, rtol=1e-12, atol=1e-15)


def test_single_gaussian_mass():
    """Axis-aligned Gaussian on a fine grid: the sum is rho (2 pi)^1.5 s1 s2 s3 times the 3-sigma box mass."""
    grid = Grid.centered((64, 64, 64), 0.5, center=(0.3, -0.2, 0.1))
    s = torch.tensor([[2.0, 3.0, 1.5]], dtype=F64)
    args = [torch.zeros(1, 3, dtype=F64), s, torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.tensor([0.02], dtype=F64)]
    vol = vx.voxelize(*args, grid, backend="torch")
    box_mass = math.erf(3 / math.sqrt(2)) ** 3
    expected = 0.02 * (2 * math.pi) ** 1.5 * float(s.prod()) * box_mass
    assert float(vol.sum()) * 0.5 ** 3 == pytest.approx(expected, rel=2e-3)


def test_sub_grid_is_a_slice_and_points_agree():
    grid = _rotated_grid((20, 18, 16))
    args = _gaussians(60, seed=2)
    full = vx.voxelize(*args, grid, backend="torch")
    sub = vx.sub_grid(grid, (3, 5, 2), (9, 8, 10))
    part = vx.voxelize(*args, sub, backend="torch")
    torch.testing.assert_close(part, full[3:12, 5:13, 2:12], rtol=1e-12, atol=1e-15)
    pts = torch.tensor(sub.world_coords().reshape(-1, 3))
    vals = vx.voxelize_points(pts, *args)
    torch.testing.assert_close(vals.reshape(sub.shape), part, rtol=1e-10, atol=1e-14)


def test_voxelize_points_gradients():
    args = [t.clone().requires_grad_() for t in _gaussians(5, seed=4, spread=6.0)]
    pts = torch.tensor(np.random.default_rng(0).uniform(-4, 4, (30, 3)))
    assert vx.voxelize_points(pts, *args).abs().sum() > 0
    assert torch.autograd.gradcheck(lambda m, s, q, d: vx.voxelize_points(pts, m, s, q, d), args, eps=1e-6,
                                    atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_voxelize(backend):
    grid = _rotated_grid((7, 6, 5))
    args = [t.clone().requires_grad_() for t in _gaussians(4, seed=1, spread=8.0, scale=2.5)]
    assert vx.voxelize(*args, grid, backend=backend).abs().sum() > 0
    assert torch.autograd.gradcheck(lambda m, s, q, d: vx.voxelize(m, s, q, d, grid, backend=backend), args,
                                    eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gaussians_outside_the_grid_and_empty_input():
    grid = Grid.centered(8, 1.0)
    means = torch.tensor([[100.0, 0, 0]], dtype=F64, requires_grad=True)
    rest = [torch.ones(1, 3, dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.ones(1, dtype=F64)]
    for backend in ("torch", "cpp"):
        vol = vx.voxelize(means, *rest, grid, backend=backend)
        assert vol.eq(0).all()
        vol.sum().backward()
        assert means.grad.eq(0).all()
        means.grad = None
        empty = [torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.zeros(0, 4, dtype=F64),
                 torch.zeros(0, dtype=F64)]
        assert vx.voxelize(*empty, grid, backend=backend).eq(0).all()


def test_rejects_non_grid():
    with pytest.raises(ValueError, match="Grid"):
        vx.voxelize(*_gaussians(2), (8, 8, 8), backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_a_small_sub_grid_skips_far_gaussians_with_the_same_values_and_gradients(backend):
    """On a 5^3 corner of a grid, most of 300 Gaussians are too far to reach it (they are skipped before their
    extents are computed): its values and the gradients of a weighted sum of them equal those of the same
    voxels of the full grid, for every Gaussian; the far ones get zero gradient."""
    grid = _rotated_grid((24, 22, 20))
    args = _gaussians(300, seed=6, spread=40.0)
    sub = vx.sub_grid(grid, (1, 2, 3), (5, 5, 5))
    w = torch.rand(5, 5, 5, generator=torch.Generator().manual_seed(0), dtype=args[0].dtype)
    grads = []
    for g, sl in ((sub, (slice(None),) * 3), (grid, (slice(1, 6), slice(2, 7), slice(3, 8)))):
        leaves = [t.clone().requires_grad_() for t in args]
        vol = vx.voxelize(*leaves, g, backend=backend)[sl]
        grads.append((vol.detach(), torch.autograd.grad((vol * w).sum(), leaves)))
    (vs, gs), (vf, gf) = grads
    assert float(vs.abs().sum()) > 0
    torch.testing.assert_close(vs, vf, rtol=1e-12, atol=1e-15)
    for a, b in zip(gs, gf):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    untouched = (gs[3] == 0)
    assert untouched.float().mean() > 0.5  # most Gaussians do not reach the corner

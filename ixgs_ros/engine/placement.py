"""Placing the first Gaussians: a regular lattice over the fine box whose densities reproduce the init volume.

Isotropic Gaussians sit ``lattice.spacing`` output voxels apart with sigma ``lattice.sigma`` x the spacing. The
voxelizer is linear in the densities, so they are solved by conjugate gradients on ``|V(rho) - field|^2``. A
regular lattice reproduces a volume far better than randomly placed Gaussians, which clump and whose sum is
noisy. CG ignores that densities are positive: the Gaussians it leaves (nearly) empty or negative are dropped
and the others refitted (``lattice.nonneg_rounds``).

When the views show that all material lies inside the ROI box (ROI-only scans), thin Gaussians on the box
faces (:func:`face_layer`) let the outermost voxel shell follow the step where the material ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.volume import Grid
from .render import SIGMA_CUTOFF
from .voxelize import voxelize

__all__ = ["Placement", "lattice_from_field", "face_layer", "density_operators", "conjugate_gradients",
           "sample_volume"]


@dataclass
class Placement:
    """Initial Gaussians in the normalised frame: positions [N, 3], isotropic scales [N, 3], densities [N]."""
    means: torch.Tensor
    scales: torch.Tensor
    density: torch.Tensor


def sample_volume(vol, grid: Grid, pts) -> np.ndarray:
    """Trilinear samples of ``vol`` (on ``grid``) at world points ``pts`` [N, 3]; 0 outside."""
    from scipy.ndimage import map_coordinates

    ijk = grid.world_to_index(pts)
    return map_coordinates(np.asarray(vol, dtype=np.float32), ijk.T, order=1, mode="constant", cval=0.0)


def lattice_from_field(field: torch.Tensor, field_grid_n: Grid, spacing_n: float, cfg, *, faces_voxel_n=None,
                       backend: str = "auto", report: Callable[[str, int, int], None] | None = None) -> Placement:
    """Lattice Gaussians over the box of ``field`` (normalised densities on ``field_grid_n``, a grid in the
    normalised frame), ``spacing_n`` apart; ``cfg`` a :class:`~ixgs_ros.engine.config.LatticeConfig`.
    ``faces_voxel_n`` (the output voxel size in the normalised frame) adds the face layer."""
    report = report or (lambda *_: None)
    lo, hi = field_grid_n.bounds()
    h = spacing_n
    axes = []
    for a, b in zip(lo, hi):
        n = max(1, int(round((b - a) / h)))
        axes.append(torch.tensor(a + (np.arange(n) + 0.5) * (b - a) / n, dtype=torch.float32))
    means = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    scales = torch.full((len(means), 3), cfg.sigma * h)
    # the lattice Gaussians come first (meshgrid order); lat_pos: their indices in the full lattice
    lat_pos = torch.arange(len(means))
    if faces_voxel_n is not None:
        fm, fs = face_layer(lo, hi, axes, cfg.sigma * h, cfg.face_sigma * faces_voxel_n, faces_voxel_n)
        means, scales = torch.cat([means, fm]), torch.cat([scales, fs])
    target = field.flatten().to(torch.float64)
    x = torch.from_numpy(sample_volume(field.numpy(), field_grid_n, means.numpy()).astype(np.float64))
    rounds, n_cg = 1 + cfg.nonneg_rounds, cfg.cg_iterations
    stage = f"Gaussian lattice fit ({len(means)} Gaussians)"
    report(stage, 0, rounds * n_cg)
    for rnd in range(rounds):
        fwd, adj = density_operators(means, scales, field_grid_n, lattice=(axes, cfg.sigma * h, lat_pos),
                                     backend=backend)
        if rnd == 0:
            x = x * float(target.sum() / fwd(x).sum().clamp_min(1e-12))
        x = conjugate_gradients(fwd, adj, target, x, n_cg,
                                on_iteration=lambda k, r=rnd: report(stage, r * n_cg + k, rounds * n_cg))
        report(stage, (rnd + 1) * n_cg, rounds * n_cg)  # also when CG converged early
        # densities are positive (softplus): drop the Gaussians the least-squares fit made (nearly) empty or
        # negative, then refit the others, so that what they carried is not simply lost
        keep = x.to(torch.float32) > cfg.drop_density
        lat_pos = lat_pos[keep[:len(lat_pos)]]
        means, scales, x = means[keep], scales[keep], x[keep]
    return Placement(means, scales, x.to(torch.float32))


def face_layer(lo, hi, axes, sigma_t: float, sigma_n: float, vox: float):
    """Gaussians half a voxel (``vox``) inside each face of the box ``[lo, hi]`` (normalised frame), on the
    lattice's tangential ``axes``, ``sigma_n`` thin across the face and ``sigma_t`` wide along it. The lattice
    blurs a face over about a voxel, but where the imaged material ends at the box the outermost voxel shell must
    follow a step."""
    means, scales = [], []
    for a in range(3):
        t1, t2 = [b for b in range(3) if b != a]
        for pos in (float(lo[a]) + 0.5 * vox, float(hi[a]) - 0.5 * vox):
            g1, g2 = torch.meshgrid(axes[t1], axes[t2], indexing="ij")
            m = torch.empty(g1.numel(), 3)
            m[:, a] = pos
            m[:, t1], m[:, t2] = g1.reshape(-1), g2.reshape(-1)
            sc = torch.full((len(m), 3), sigma_t)
            sc[:, a] = sigma_n
            means.append(m)
            scales.append(sc)
    return torch.cat(means), torch.cat(scales)


def density_operators(means, scales, grid_n: Grid, lattice=None, backend: str = "auto"):
    """The voxelizer of isotropic Gaussians as a linear map of their densities (float64 in and out) and its
    adjoint.

    ``lattice = (axes, sigma, lat_pos)``: the first ``len(lat_pos)`` Gaussians sit on the regular lattice
    ``meshgrid(*axes)`` (at flat positions ``lat_pos``) with the isotropic ``sigma``. On a grid whose axes are
    the frame's axes, the voxelizer restricted to them is separable (its cut-off is a per-axis 3-sigma box):
    ``V = rho x_1 G_1 x_2 G_2 x_3 G_3`` with ``G_a[v, l] = exp(-(x_v - p_l)^2 / 2 sigma^2)`` on the box, applied as
    three matrix products, the adjoint with the transposes: the same map as the voxelizer (to float32 rounding)
    at a small fraction of its cost. The other Gaussians (the face layer) use the voxelizer, adjoint by autograd.
    """
    if lattice is not None:
        ops = _separable_lattice_operators(*lattice, grid_n)
        if ops is not None:
            n_lat = len(lattice[2])
            if n_lat == len(means):
                return ops
            rest_f, rest_a = density_operators(means[n_lat:], scales[n_lat:], grid_n, backend=backend)
            lat_f, lat_a = ops
            return (lambda v: lat_f(v[:n_lat]) + rest_f(v[n_lat:]),
                    lambda r: torch.cat([lat_a(r), rest_a(r)]))
    quats = torch.zeros(len(means), 4)
    quats[:, 0] = 1

    def fwd(v):
        return voxelize(means, scales, quats, v.to(torch.float32), grid_n, backend=backend).flatten().to(torch.float64)

    def adj(r):
        v = torch.zeros(len(means), requires_grad=True)
        (fwd(v) * r).sum().backward()
        return v.grad.to(torch.float64)

    return fwd, adj


def _separable_lattice_operators(axes, sigma: float, lat_pos, grid_n: Grid):
    """Forward and adjoint of the voxelizer restricted to lattice Gaussians (see :func:`density_operators`), or
    None when the grid's axes are not the frame's (an oblique ``--like`` grid)."""
    A = np.asarray(grid_n.affine, dtype=np.float64)
    if np.abs(A[:3, :3] - np.diag(np.diag(A[:3, :3]))).max() > 1e-12 * np.abs(A[:3, :3]).max():
        return None
    # the voxelizer's cut-off, as it computes it: float32 3 sqrt(sigma^2), |offset| <= it
    extent = float(torch.tensor(SIGMA_CUTOFF, dtype=torch.float32)
                   * torch.sqrt(torch.tensor(sigma, dtype=torch.float32) ** 2))
    mats = []
    for a in range(3):
        x = A[a, a] * np.arange(grid_n.shape[a], dtype=np.float64) + A[a, 3]
        d = (x[:, None] - axes[a].to(torch.float64).numpy()[None, :]).astype(np.float32)
        G = np.where(np.abs(d) <= extent, np.exp(-0.5 * (d.astype(np.float64) / sigma) ** 2), 0.0)
        mats.append(torch.from_numpy(G))
    n = tuple(len(ax) for ax in axes)
    size = n[0] * n[1] * n[2]
    pos = torch.as_tensor(lat_pos, dtype=torch.long)

    def fwd(v):
        full = torch.zeros(size, dtype=torch.float64)
        full[pos] = v.to(torch.float64)
        t = full.reshape(n)
        for G in mats:  # contract the leading lattice axis; the voxel axis goes last
            t = torch.tensordot(t, G, dims=([0], [1]))
        return t.flatten()

    def adj(r):
        t = r.to(torch.float64).reshape(grid_n.shape)
        for G in mats:
            t = torch.tensordot(t, G, dims=([0], [0]))
        return t.flatten()[pos]

    return fwd, adj


def conjugate_gradients(fwd, adj, target, x, iterations: int, on_iteration=None):
    """Conjugate gradients on the normal equations of ``|fwd(x) - target|^2`` from ``x``; ``on_iteration(k)``
    after iteration k (1-based)."""
    r = adj(target - fwd(x))
    p, rs = r.clone(), float(r @ r)
    for k in range(iterations):
        if rs <= 0:
            break
        ap = fwd(p)
        alpha = rs / max(float(ap @ ap), 1e-30)
        x = x + alpha * p
        r = r - alpha * adj(ap)
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
        if on_iteration is not None:
            on_iteration(k + 1)
    return x

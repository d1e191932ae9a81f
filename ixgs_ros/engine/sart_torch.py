"""The engine's initial solve in torch, on any device: TV-regularised SART (:func:`sart_tv`), the two-level fine
re-solve (:func:`refine_inner`) and their TV denoiser (:func:`tv_denoise`).

Same signatures and semantics as :func:`ixgs_ros.engine.init_solve.sart_tv` and
:func:`~ixgs_ros.engine.init_solve.refine_inner` (read their docstrings), with ``device`` instead
of ``threads``: volumes, projections and per-view normalisers live on the device for the whole solve; the
results come back as float32 numpy arrays in world layout. Nothing here imports itk: this is the init solver of
a machine without RTK (e.g. a CUDA machine).

SART as RTK runs it (Andersen & Kak 1984; one view per update): for view ``i``,
``x <- max(0, x + lam * B_i[(p_i - A_i x) / L_i])`` with ``A_i`` the forward projector over the box of the
voxel centres (``pad = 0``: RTK's Joseph projector integrates between the outermost centres), ``L_i`` each ray's
chord through that box (rays shorter than ``1e-5`` mm get no update, as RTK's divide-or-zero does) and ``B_i``

* ``"voxel"`` (default, RTK's default back projector): the voxel-driven back projection
  (:class:`~ixgs_ros.engine.projector.VoxelBackprojector`), whose back-projected ones are 1 wherever the view
  looks, so no further normalisation;
* ``"adjoint"``: the forward operator's exact adjoint divided by its back-projected ones (classical SART's
  column sums), per view, computed once per solve.

View order: RTK's SART visits the views in a shuffled order that depends only on their number (its own
default-seeded generator; the same every pass, since the RTK version builds a fresh filter per pass). The order
matters on small scenes (SART's last updates imprint most), so :func:`sart_tv` follows RTK's by default, read
once off RTK for 1 to :data:`ORDER_TABLE_MAX` views and stored in ``rtk_sart_order.json`` beside this module
(:func:`default_order`; regenerate with ``python -m ixgs_ros.engine.sart_torch --write-order-table``), and a
fixed shuffle of its own beyond; its ``order`` takes any permutation. :func:`refine_inner` visits the views as
given, as its RTK version does.

The projector is ray marching with trilinear interpolation (:mod:`ixgs_ros.engine.projector`), not Joseph's:
results agree with RTK's to within the projectors' difference (see ``test/test_torch_sart.py``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.geometry import View
from ..core.volume import Grid
from .projector import (DEFAULT_STEP, Projector, VoxelBackprojector, _check_views, resample,
                        resolve_device)
from .init_solve import check_refine_args
from .tv import tv_denoise, tv_denoise_tensor as _tv_scaled, tv_schedule

__all__ = ["tv_denoise", "sart_tv", "refine_inner", "forward_project", "back_project", "tv_schedule",
           "shuffled_order", "default_order", "rtk_view_order", "write_order_table", "DEFAULT_SART_LAMBDA", "RAY_LENGTH_THRESHOLD"]

#: SART relaxation when ``lam`` is None (as the RTK version).
DEFAULT_SART_LAMBDA = 1.3
#: Rays shorter than this (mm) inside the box get no SART update (RTK's SART divides with this threshold).
RAY_LENGTH_THRESHOLD = 1e-5
BACKPROJECTORS = ("voxel", "adjoint")


ORDER_TABLE = Path(__file__).with_name("rtk_sart_order.json")
#: Views up to which RTK's order is stored.
ORDER_TABLE_MAX = 200


def shuffled_order(n: int, seed: int = 0) -> list[int]:
    """A fixed pseudo-random permutation of ``n`` views (the default beyond the stored table): consecutive
    updates then come from views far apart on an arc, which are less redundant than neighbours."""
    return [int(i) for i in np.random.default_rng(seed).permutation(int(n))]


@functools.lru_cache(maxsize=1)
def _order_table() -> dict[int, list[int]]:
    try:
        return {int(k): v for k, v in json.loads(ORDER_TABLE.read_text()).items()}
    except (OSError, ValueError):
        return {}


def default_order(n: int) -> list[int]:
    """The order :func:`sart_tv` visits ``n`` views in by default: RTK's (stored), else :func:`shuffled_order`."""
    return list(_order_table().get(int(n)) or shuffled_order(n))


def write_order_table(path=ORDER_TABLE, n_max: int = ORDER_TABLE_MAX) -> Path:
    """Read RTK's SART order off RTK for 1..``n_max`` views and store it (needs itk-rtk)."""
    table = {str(n): rtk_view_order(n) if n > 1 else [0] for n in range(1, int(n_max) + 1)}
    Path(path).write_text(json.dumps(table, separators=(",", ":")))
    return Path(path)


def rtk_view_order(n: int, stripe: int = 6, lam: float | None = None) -> list[int]:
    """The order in which RTK's SART (:func:`ixgs_ros.engine.init_solve.sart_tv`, a fresh filter per pass)
    visits ``n`` views, for parity checks: pass it as :func:`sart_tv`'s ``order``. Needs itk-rtk (imported
    here only). Read off a probe: ``n`` copies of one parallel-like view (source 1e7 mm away), view ``j``
    asking for 1 (times the ray length) in the ``j``-th stripe of detector columns and 0 elsewhere. From zero,
    with relaxation ``lam`` each update moves a stripe ``lam`` of the way to what the view asks, so after one
    pass the ``j``-th stripe holds ``lam * (1 - lam) ** (n - p_j)``, ``p_j`` being view ``j``'s position."""
    from ..core.rtk import forward_project as rtk_forward_project
    from .init_solve import sart_tv as rtk_sart_tv

    n = int(n)
    if lam is None:  # small enough that the first view's stripe is still well above float32 round-off
        lam = min(0.1, 2.0 / n)
    W, H = stripe * n, 4
    g = Grid.centered((W, H, 4), 1.0, (0, 0, 0))
    d = 1e7
    K = np.array([[d, 0, (W - 1) / 2], [0, d, (H - 1) / 2], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 1], T[:3, 3] = [0.0, -1.0, 0.0], [0.0, 0.0, -d]
    T[:3, 0] = np.cross(T[:3, 1], T[:3, 2])
    v = View(K, T, W, H, {"sdd": 2 * d})
    L = rtk_forward_project(np.ones(g.shape, np.float32), g, [v], pad=0)[0]
    stripes = np.arange(W) // stripe
    p = np.stack([L * (stripes == j)[None] for j in range(n)]).astype(np.float32)
    x = rtk_sart_tv([v] * n, p, g, 1, 0.0, lam=lam).reshape(-1)
    col = np.rint(v.project(g.world_coords().reshape(-1, 3))[0][:, 0]).astype(int)
    val = np.array([max(float(np.median(x[col == j * stripe + stripe // 2])), 1e-30) for j in range(n)])
    pos = n - np.log(val / lam) / np.log(1.0 - lam)
    if not (np.abs(pos - np.rint(pos)).max() < 0.25 and sorted(np.rint(pos).astype(int)) == list(range(1, n + 1))):
        raise RuntimeError(f"could not read RTK's view order off the probe (positions {pos.round(3).tolist()})")
    return [int(i) for i in np.argsort(pos)]


# ---------------------------------------------------------------------------------------------- helpers
def _check_scan(views, projections) -> tuple[list[View], list[np.ndarray]]:
    views = _check_views(views)
    if isinstance(projections, np.ndarray) and projections.ndim == 3 or torch.is_tensor(projections):
        projections = list(projections)
    projections = [np.asarray(p.cpu().numpy() if torch.is_tensor(p) else p, dtype=np.float32)
                   for p in projections]
    if len(projections) != len(views):
        raise ValueError(f"{len(projections)} projections for {len(views)} views")
    for i, (v, p) in enumerate(zip(views, projections)):
        if p.shape != (v.height, v.width):
            raise ValueError(f"projections[{i}] has shape {p.shape}, view {i} has a {(v.height, v.width)} detector")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"projections[{i}] contains NaN or inf")
    return views, projections


def _flip_axes(grid: Grid) -> list[int]:
    """Array axes RTK's canonical frame reverses (the first one for a mirrored affine): TV runs in that layout,
    so that forward differences point the same way as in the RTK solvers."""
    M = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
    return [0] if np.linalg.det(M / np.linalg.norm(M, axis=0)) < 0 else []


def _tv_world(x, weight, iterations, weight_map, flip):
    if weight == 0:
        return x
    if not flip:
        return _tv_scaled(x, weight, iterations, weight_map)
    wm = None if weight_map is None else weight_map.flip(flip)
    return _tv_scaled(x.flip(flip), weight, iterations, wm).flip(flip)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- solvers
def sart_tv(views: Sequence[View], projections, solve_grid: Grid, passes: int, tv_weight: float, *,
            tv_weight_final: float | None = None, support: Grid | None = None, lam: float | None = None,
            tv_iterations: int = 20, tv_weight_map: np.ndarray | None = None, x0: np.ndarray | None = None,
            on_pass: Callable[[int, int], None] | None = None, device=None, order: Sequence[int] | None = None,
            backprojector: str = "voxel", step: float = DEFAULT_STEP,
            max_samples: int | None = None) -> np.ndarray:
    """SART passes alternated with TV denoising, as :func:`ixgs_ros.engine.init_solve.sart_tv` (same arguments
    and result: float32 ``solve_grid.shape``, world layout), in torch on ``device`` (default CPU).

    Each pass sweeps the views, one SART update per view (module docstring; relaxation ``lam``, default 1.3,
    positivity), in ``order`` (a permutation of the view indices, the same every pass; default
    :func:`default_order`, RTK's), then TV-denoises with the pass's weight (``tv_weight``
    decaying geometrically to ``tv_weight_final``; ``tv_weight_map`` scales it per voxel), then zeroes the
    voxels whose centres lie outside ``support``; ``on_pass(k, passes)`` is called after pass ``k``. ``x0`` is
    the start (clipped at 0).
    Views may have different detector sizes. ``backprojector``: ``"voxel"`` (RTK's) or ``"adjoint"``;
    ``step`` / ``max_samples``: see :class:`~ixgs_ros.engine.projector.Projector`."""
    views, proj = _check_scan(views, projections)
    if backprojector not in BACKPROJECTORS:
        raise ValueError(f"backprojector must be one of {BACKPROJECTORS}, got {backprojector!r}")
    dev = resolve_device(device)
    lam = float(DEFAULT_SART_LAMBDA if lam is None else lam)
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    order = default_order(len(views)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(len(views))):
        raise ValueError(f"order must be a permutation of range({len(views)}), got {order}")
    shape = tuple(solve_grid.shape)
    wmap = None
    if tv_weight_map is not None:
        tv_weight_map = np.asarray(tv_weight_map, dtype=np.float32)
        if tv_weight_map.shape != shape or not (tv_weight_map >= 0).all():
            raise ValueError(f"tv_weight_map must be >= 0 with the solve grid's shape {shape}, "
                             f"got shape {tv_weight_map.shape}")
        wmap = torch.from_numpy(np.ascontiguousarray(tv_weight_map)).to(dev)
    if x0 is None:
        x = torch.zeros(shape, device=dev, dtype=torch.float32)
    else:
        x0 = np.asarray(x0, dtype=np.float32)
        if x0.shape != shape:
            raise ValueError(f"x0 must have the solve grid's shape {shape}, got {x0.shape}")
        x = torch.from_numpy(np.ascontiguousarray(np.maximum(x0, 0.0))).to(dev)
    outside = None
    if support is not None:
        outside = torch.from_numpy(~support.contains(solve_grid.world_coords())).to(dev)
    flip = _flip_axes(solve_grid)
    if not weights:
        return _to_numpy(x)
    with torch.no_grad():
        A = Projector(solve_grid, views, device=dev, pad=0, step=step, max_samples=max_samples)
        p = [torch.from_numpy(q).to(dev) for q in proj]
        inv_len = []
        for i in range(len(views)):  # 1 / ray length through the box, 0 for rays that (nearly) miss it
            L = A.chord(i)
            inv_len.append(torch.where(L > RAY_LENGTH_THRESHOLD, 1.0 / L.clamp(min=RAY_LENGTH_THRESHOLD),
                                       torch.zeros((), device=dev)))
        if backprojector == "voxel":
            B = VoxelBackprojector(solve_grid, views, device=dev, max_voxels=max_samples)
            inv_norm = None
        else:
            B = A.adjoint
            inv_norm = []
            for i, v in enumerate(views):
                n = A.adjoint(torch.ones((v.height, v.width), device=dev), i)
                inv_norm.append(torch.where(n > 1e-6, 1.0 / n.clamp(min=1e-6), torch.zeros((), device=dev)))
        for k, w in enumerate(weights):
            for i in order:
                r = (p[i] - A.forward(x, i)) * (lam * inv_len[i])
                upd = B(r, i)
                if inv_norm is not None:
                    upd = upd * inv_norm[i]
                x = (x + upd).clamp_(min=0.0)
            x = _tv_world(x, w, tv_iterations, wmap, flip)
            if outside is not None:
                x = x.masked_fill(outside, 0.0)
            if on_pass is not None:
                on_pass(k + 1, len(weights))
    return _to_numpy(x)


def refine_inner(views: Sequence[View], projections, solve_grid: Grid, solve_volume: np.ndarray,
                 fine_grid: Grid, passes: int, *, lam: float = 1.3, tv_weight: float = 0.003,
                 tv_weight_final: float | None = None, tv_iterations: int = 20,
                 on_pass: Callable[[int, int], None] | None = None, device=None,
                 step: float = DEFAULT_STEP, max_samples: int | None = None,
                 x0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-solve the part of a coarse solution inside ``fine_grid`` at its resolution with the rest fixed, as
    :func:`ixgs_ros.engine.init_solve.refine_inner` (same arguments and results: ``(fine volume, exterior on
    solve_grid with zeros inside the fine box)``, float32; ``x0`` the inside's start), in torch on ``device``.

    The exterior (solve voxels whose centres lie outside the fine box) is projected once; each SART update of
    view ``i`` is ``x <- max(0, x + lam * A_i^T[(p_i - P_ext,i - A_i x) / L_i] / A_i^T 1)`` on the fine grid
    (``A_i`` the projector with one voxel of zeros around the fine box, ``A_i^T`` its exact adjoint) where
    ``L_i`` is each ray's length through the *whole* solve grid (the projection of ones on it, at least the fine
    grid's smallest spacing). TV after every pass. One normaliser ``A_i^T 1`` per view stays on the device."""
    views, proj = _check_scan(views, projections)
    passes, solve_volume, x0 = check_refine_args(solve_grid, solve_volume, fine_grid, passes, x0)
    weights = tv_schedule(passes, tv_weight, tv_weight_final)
    dev = resolve_device(device)
    inside = fine_grid.contains(solve_grid.world_coords())
    exterior = np.where(inside, 0.0, solve_volume).astype(np.float32)
    with torch.no_grad():
        sv = torch.from_numpy(np.ascontiguousarray(solve_volume)).to(dev)
        if x0 is None:
            x = resample(sv, solve_grid, fine_grid).clamp_(min=0.0)
        else:  # a copy: the passes update x in place, the caller's start stays as it is
            x = torch.from_numpy(np.maximum(x0, 0.0)).to(dev)
        if passes == 0:
            return _to_numpy(x), exterior
        # per view, fixed over the passes: 1 / the rays' lengths through the solve grid, the residual the
        # exterior leaves, and 1 / the back-projected ones on the fine grid
        S = Projector(solve_grid, views, device=dev, pad=1, step=step, max_samples=max_samples)
        ones = torch.ones(tuple(solve_grid.shape), device=dev)
        ext = torch.from_numpy(exterior).to(dev)
        floor = float(np.min(fine_grid.spacing))
        both = torch.stack([ones, ext])
        inv_len, res0 = [], []
        for i, q in enumerate(proj):
            lengths, exterior_proj = S.forward(both, i)
            inv_len.append(1.0 / lengths.clamp(min=floor))
            res0.append(torch.from_numpy(q).to(dev) - exterior_proj)
        del S, ones, ext, both
        A = Projector(fine_grid, views, device=dev, pad=1, step=step, max_samples=max_samples)
        inv_norm = [1.0 / A.adjoint(torch.ones((v.height, v.width), device=dev), i).clamp(min=1e-6)
                    for i, v in enumerate(views)]
        for k, w in enumerate(weights):
            for i in range(len(views)):
                r = (res0[i] - A.forward(x, i)) * (float(lam) * inv_len[i])
                x = x.add_(A.adjoint(r, i).mul_(inv_norm[i])).clamp_(min=0.0)
            x = _tv_scaled(x, w, tv_iterations, None)  # in world layout, as the RTK version
            if on_pass is not None:
                on_pass(k + 1, passes)
    return _to_numpy(x), exterior


def forward_project(volume, grid: Grid, views: Sequence[View], device=None, *, pad: int = 1,
                    step: float = DEFAULT_STEP) -> np.ndarray:
    """Line integrals ``[N, H, W]`` (float32) of ``volume`` (mu, 1/mm, on ``grid``) with the semantics of
    :func:`ixgs_ros.engine.init_solve.forward_project` (``pad`` voxels of zeros around the grid), in torch on
    ``device``. A list of ``[H, W]`` arrays when the detectors differ."""
    from .projector import forward_project as fp

    return fp(volume, grid, views, device, pad=pad, step=step)


def back_project(projections, views: Sequence[View], grid: Grid, device=None, *, pad: int = 1,
                 step: float = DEFAULT_STEP) -> np.ndarray:
    """The exact adjoint of :func:`forward_project` onto ``grid`` (float32, world layout)."""
    from .projector import back_project as bp

    return bp(projections, views, grid, device, pad=pad, step=step)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write-order-table"]:
        print(f"wrote {write_order_table()}")
    else:
        print("usage: python -m ixgs_ros.engine.sart_torch --write-order-table", file=sys.stderr)
        sys.exit(2)

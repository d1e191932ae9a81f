"""Cone-beam projector for pinhole :class:`~ixgs_ros.core.geometry.View` s on a :class:`~ixgs_ros.core.volume.Grid`
in torch, on any device (CPU or CUDA; nothing in the hot path leaves the device).

Forward model (:class:`Projector`)
----------------------------------
The volume is the trilinear interpolant of the voxel values (voxel centres at integer indices, the grid's affine
maps indices to world mm), zero beyond ``pad`` voxels of zeros around the array. A pixel's value is the line
integral of that field (mu in 1/mm, so the result is dimensionless) along the ray from the source through the
pixel centre, over the part of the ray that lies in the box of the (padded) voxel centres, in front of the
source:

* the box is intersected with each ray once (slab method, in index space, so any invertible affine works:
  rotated and mirrored grids are exact); the chord is cut into ``n = ceil(chord / h)`` equal steps no longer
  than ``h = step * min(spacing)`` and sampled at the step midpoints (midpoint rule, ``step`` = 0.5 by
  default: at most half the smallest voxel);
* ``pad = 1`` (the default of :func:`forward_project`) integrates the linear ramp from the border voxels to
  the zeros around them, which is what :func:`ixgs_ros.core.rtk.forward_project` does with RTK's
  Joseph projector on a volume padded by one voxel; ``pad = 0`` integrates between the outermost voxel
  centres only, as RTK's projector does inside its SART (see :mod:`ixgs_ros.engine.sart_torch`);
* rays are not clipped at the detector: the detector is assumed to lie beyond the volume, as it does for any
  physical view.

Samples are evaluated with ``grid_sample`` (trilinear), in chunks of at most ``max_samples`` samples: the rays
of a view that meet the box are sorted by sample count once, and each chunk holds rays of similar length, so
that little work is spent on padding. The back projection (:meth:`Projector.adjoint`) is the exact adjoint of
the forward operator (the same sample points and weights, scattered by ``grid_sample``'s backward), and the
forward operator is differentiable through autograd as well.

:class:`VoxelBackprojector` is the voxel-driven back projection RTK's SART uses by default (each voxel
centre is projected onto the detector and the image is interpolated there; not the adjoint of the forward
operator).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import View, check_view_list
from ..core.volume import Grid

__all__ = ["DEFAULT_STEP", "DEFAULT_MAX_SAMPLES", "DEFAULT_MAX_SAMPLES_CUDA", "resolve_device", "default_chunk",
           "Projector", "VoxelBackprojector",
           "resample", "forward_project", "back_project"]

#: Sample spacing along the rays, as a fraction of the grid's smallest voxel size.
DEFAULT_STEP = 0.5
#: Samples evaluated at once (about 30 bytes each in temporaries): bounds the projector's memory (about 130 MB
#: on the CPU, 500 MB on CUDA, where larger launches pay off).
DEFAULT_MAX_SAMPLES = 1 << 22
DEFAULT_MAX_SAMPLES_CUDA = 1 << 24


def resolve_device(device=None) -> torch.device:
    """``None`` -> CPU; a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a :class:`torch.device` as given."""
    if device is None:
        return torch.device("cpu")
    return device if isinstance(device, torch.device) else torch.device(str(device))


def default_chunk(device: torch.device, n: int | None) -> int:
    """``n``, or the default number of samples per chunk on ``device``."""
    if n is not None:
        return int(n)
    return DEFAULT_MAX_SAMPLES_CUDA if device.type == "cuda" else DEFAULT_MAX_SAMPLES


def _check_views(views) -> list[View]:
    return check_view_list(views, ValueError)


@dataclass
class _Rays:
    """One view's rays that meet the box, sorted by sample count (ascending), and their chunks."""

    shape: tuple[int, int]       # (H, W) of the detector
    order: torch.Tensor          # [R] long: flat pixel index of each ray
    start: torch.Tensor          # [R, 3] grid_sample coordinates of the first sample
    delta: torch.Tensor          # [R, 3] grid_sample coordinates from one sample to the next
    count: torch.Tensor          # [R] int: number of samples
    length: torch.Tensor         # [R] step length (mm): the weight of each sample
    chunks: list[tuple[int, int, int]]  # (first ray, end ray, samples per ray) of each chunk
    chord: torch.Tensor          # [H, W] chord through the box (mm), 0 for rays that miss it


class Projector:
    """Forward projection and its exact adjoint for volumes on ``grid`` along the rays of ``views``.

    ``views`` may have different detector sizes. Volumes are tensors ``[I, J, K]`` (world layout, as
    ``grid.shape``), images tensors ``[H, W]`` of the view's detector. Per-view ray geometry is computed once, at
    construction (float64, on ``device``), and reused by every call.
    """

    def __init__(self, grid: Grid, views: Sequence[View], *, device=None, pad: int = 1,
                 step: float = DEFAULT_STEP, max_samples: int | None = None):
        if not isinstance(grid, Grid):
            raise TypeError("grid must be an ixgs_ros.core.volume.Grid")
        self.device = resolve_device(device)
        pad, step, max_samples = int(pad), float(step), int(default_chunk(self.device, max_samples))
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not (0 < step <= 1):
            raise ValueError(f"step must be in (0, 1] voxels, got {step}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        self.grid, self.views = grid, _check_views(views)
        self.pad, self.max_samples = pad, max_samples
        self.h = step * float(np.min(grid.spacing))  # longest step (mm)
        self.padded_shape = tuple(int(n) + 2 * pad for n in grid.shape)
        self._rays = [self._setup(v) for v in self.views]

    def __len__(self) -> int:
        return len(self.views)

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self, view: View) -> _Rays:
        dev, f64 = self.device, torch.float64
        H, W = view.height, view.width
        # pixel-centre rays in world mm (camera z toward the detector), then in padded index coordinates
        Kinv = np.linalg.inv(view.K)
        Ainv = np.linalg.inv(self.grid.affine)
        M = Ainv[:3, :3] @ view.R @ Kinv  # (u, v, 1) -> index-space direction per unit camera depth
        o = Ainv[:3, :3] @ view.source + Ainv[:3, 3] + self.pad  # source in padded index coordinates
        Mw = view.R @ Kinv               # (u, v, 1) -> world direction per unit camera depth
        vv, uu = torch.meshgrid(torch.arange(H, dtype=f64, device=dev), torch.arange(W, dtype=f64, device=dev),
                                indexing="ij")
        uv1 = torch.stack([uu.reshape(-1), vv.reshape(-1), torch.ones(H * W, dtype=f64, device=dev)], -1)
        dw = uv1 @ torch.as_tensor(Mw.T, device=dev)
        norm = dw.norm(dim=-1, keepdim=True)
        e = (uv1 @ torch.as_tensor(M.T, device=dev)) / norm  # index-space displacement per mm along the ray
        ot = torch.as_tensor(o, device=dev)
        hi = torch.as_tensor([n - 1.0 for n in self.padded_shape], dtype=f64, device=dev)
        e_safe = torch.where(e.abs() < 1e-12, torch.full_like(e, 1e-12), e)  # parallel to a slab: +-huge
        t1 = (0.0 - ot) / e_safe
        t2 = (hi - ot) / e_safe
        t_in = torch.minimum(t1, t2).amax(-1).clamp(min=0.0)  # rays start at the source
        t_out = torch.maximum(t1, t2).amin(-1)
        chord = (t_out - t_in).clamp(min=0.0)
        chord = torch.where(chord > 1e-9 * self.h, chord, torch.zeros_like(chord))
        count = torch.ceil(chord / self.h - 1e-9).clamp(min=0)
        hit = count > 0
        order = torch.nonzero(hit).reshape(-1)
        cnt = count[order]
        cnt, srt = torch.sort(cnt, stable=True)
        order = order[srt]
        length = chord[order] / cnt
        ent = ot + t_in[order, None] * e[order]  # entry point (padded index coordinates)
        ed = e[order] * length[:, None]          # one step
        # grid_sample coordinates: (x, y, z) = (k, j, i), align_corners: -1 / +1 at the first / last centre
        scale = torch.as_tensor([2.0 / (n - 1) if n > 1 else 0.0 for n in self.padded_shape], dtype=f64,
                                device=dev)
        first = ((ent + 0.5 * ed) * scale - (scale > 0).to(f64)).flip(-1)
        delta = (ed * scale).flip(-1)
        counts = cnt.to(torch.int64).cpu().numpy()  # one host copy per view, at set-up
        chunks, a, R = [], 0, len(counts)
        while a < R:  # rays sorted by count: a chunk's width is its last ray's count
            ends = np.arange(a + 1, R + 1)
            size = (ends - a) * counts[ends - 1]  # nondecreasing in the chunk's end
            b = a + max(1, int(np.searchsorted(size, self.max_samples, side="right")))
            chunks.append((a, b, int(counts[b - 1])))
            a = b
        return _Rays((H, W), order, first.float(), delta.float(), cnt.to(torch.int32), length.float(), chunks,
                     chord.float().reshape(H, W))

    # ------------------------------------------------------------------------------------------ operators
    def chord(self, i: int) -> torch.Tensor:
        """Length (mm) of each ray of view ``i`` through the box of the padded voxel centres, ``[H, W]``."""
        return self._rays[i].chord

    def _volume(self, volume: torch.Tensor) -> torch.Tensor:
        """``[1, C, ...]`` padded float32 volume(s) on the device from ``[I, J, K]`` or ``[C, I, J, K]``."""
        if tuple(volume.shape[-3:]) != tuple(self.grid.shape) or volume.ndim not in (3, 4):
            raise ValueError(f"volume has shape {tuple(volume.shape)}, expected {tuple(self.grid.shape)} "
                             "(or channels in front)")
        v = volume.to(device=self.device, dtype=torch.float32)
        if self.pad:
            v = F.pad(v, (self.pad,) * 6)
        return v[None] if v.ndim == 4 else v[None, None]

    def _samples(self, r: _Rays, a: int, b: int, S: int):
        """grid_sample coordinates ``[1, 1, b - a, S, 3]`` of a chunk and which of them are samples (``[b - a, S]``,
        float 0/1: the rays of a chunk have at most ``S`` samples); each sample weighs the ray's step length."""
        m = torch.arange(S, device=self.device, dtype=torch.float32)
        pts = torch.addcmul(r.start[a:b, None, :], m[None, :, None], r.delta[a:b, None, :])
        mask = (m[None, :] < r.count[a:b, None]).to(torch.float32)
        return pts[None, None], mask

    def forward(self, volume: torch.Tensor, i: int) -> torch.Tensor:
        """Line integrals ``[H, W]`` of ``volume`` (``[I, J, K]``, mu in 1/mm) along the rays of view ``i``, or
        ``[C, H, W]`` for ``C`` volumes ``[C, I, J, K]`` (one pass over the samples). Differentiable with respect
        to ``volume``."""
        r = self._rays[i]
        vol = self._volume(volume)
        C = vol.shape[1]
        out = torch.zeros((r.shape[0] * r.shape[1], C), device=self.device, dtype=vol.dtype)
        for a, b, S in r.chunks:
            pts, mask = self._samples(r, a, b, S)
            val = F.grid_sample(vol, pts, mode="bilinear", padding_mode="zeros", align_corners=True)[0, :, 0]
            out = out.index_put((r.order[a:b],), ((val * mask).sum(-1) * r.length[a:b]).T)
        out = out.T.reshape((C,) + r.shape)
        return out if volume.ndim == 4 else out[0]

    __call__ = forward

    def forward_all(self, volume: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`forward` for every view."""
        return [self.forward(volume, i) for i in range(len(self.views))]

    def adjoint(self, image: torch.Tensor, i: int) -> torch.Tensor:
        """The exact adjoint of :meth:`forward` for view ``i``: ``image`` ``[H, W]`` back-projected onto the grid
        (``[I, J, K]``, float32), with the forward operator's own sample points and weights."""
        r = self._rays[i]
        if tuple(image.shape) != r.shape:
            raise ValueError(f"image has shape {tuple(image.shape)}, view {i} has a {r.shape} detector")
        img = image.to(device=self.device, dtype=torch.float32).reshape(-1)
        zero = torch.zeros((1, 1) + self.padded_shape, device=self.device, dtype=torch.float32)
        acc = None
        for a, b, S in r.chunks:
            pts, mask = self._samples(r, a, b, S)
            g = (mask * (img[r.order[a:b]] * r.length[a:b])[:, None])[None, None, None]
            # the grid_sample backward with respect to its input (no gradient for the sample points)
            gi = torch.ops.aten.grid_sampler_3d_backward(g, zero, pts, 0, 0, True, [True, False])[0]
            acc = gi if acc is None else acc.add_(gi)
        out = zero[0, 0] if acc is None else acc[0, 0]
        p = self.pad
        if p:
            out = out[p:-p, p:-p, p:-p]
        return out.contiguous()


class VoxelBackprojector:
    """Voxel-driven back projection onto ``grid``: each voxel centre is projected onto view ``i``'s detector and
    the image is interpolated there (bilinear, clamped to the border pixels), for centres that project inside
    the detector's outer edges (pixel centres +-0.5) in front of the source; 0 elsewhere. This is what RTK's
    default (voxel-based) back projector does, and why its SART needs no normalisation by back-projected ones:
    a uniform image back-projects to that value wherever the view looks."""

    def __init__(self, grid: Grid, views: Sequence[View], *, device=None, max_voxels: int | None = None):
        self.grid, self.views = grid, _check_views(views)
        self.device = resolve_device(device)
        self.max_voxels = int(default_chunk(self.device, max_voxels))
        # per view: index -> (u w, v w, w) as 3x4 (w: camera depth, mm); host floats, used as scalars on device
        self._P = [v.K @ v.T_source_world[:3, :] @ np.asarray(grid.affine) for v in self.views]
        I, J, K = grid.shape
        self._j = torch.arange(J, device=self.device, dtype=torch.float32)[:, None]
        self._k = torch.arange(K, device=self.device, dtype=torch.float32)[None, :]

    def __call__(self, image: torch.Tensor, i: int) -> torch.Tensor:
        v, P = self.views[i], self._P[i]
        H, W = v.height, v.width
        if tuple(image.shape) != (H, W):
            raise ValueError(f"image has shape {tuple(image.shape)}, view {i} has a {(H, W)} detector")
        img = image.to(device=self.device, dtype=torch.float32)[None, None]
        I, J, K = self.grid.shape
        # grid_sample coordinates straight from the projection: g = (s * (u, v) - 1) = rows' / w, and the
        # detector's outer edges (pixel centres +-0.5) at |g| <= 1 + s / 2 (s = 2 / (size - 1); 0 for size 1)
        sx = 2.0 / (W - 1) if W > 1 else 0.0
        sy = 2.0 / (H - 1) if H > 1 else 0.0
        # (a one-pixel side keeps u or v itself, inside for |u| <= 0.5, and samples its only pixel)
        Q = np.stack([sx * P[0] - P[2] if W > 1 else P[0], sy * P[1] - P[2] if H > 1 else P[1], P[2]])
        lim = (1.0 + 0.5 * sx + 1e-7 if W > 1 else 0.5, 1.0 + 0.5 * sy + 1e-7 if H > 1 else 0.5)
        out = torch.empty((I, J, K), device=self.device, dtype=torch.float32)
        slab = max(1, self.max_voxels // (J * K))
        jk = [float(Q[r, 1]) * self._j + (float(Q[r, 2]) * self._k + float(Q[r, 3])) for r in range(3)]  # [J, K]
        zero = torch.zeros((), device=self.device)
        for a in range(0, I, slab):
            b = min(I, a + slab)
            ii = torch.arange(a, b, device=self.device, dtype=torch.float32)[:, None, None]
            w = torch.add(jk[2], ii, alpha=float(Q[2, 0]))
            front = w > 0
            w = torch.where(front, w, torch.ones((), device=self.device))
            g = torch.empty((b - a, J, K, 2), device=self.device, dtype=torch.float32)
            for c in range(2):
                gc = g[..., c]
                torch.add(jk[c], ii, alpha=float(Q[c, 0]), out=gc)
                gc.div_(w)
                front &= gc.abs() <= lim[c]
            if W == 1:
                g[..., 0] = 0.0
            if H == 1:
                g[..., 1] = 0.0
            val = F.grid_sample(img, g.reshape(1, b - a, J * K, 2), mode="bilinear", padding_mode="border",
                                align_corners=True)[0, 0].reshape(b - a, J, K)
            out[a:b] = torch.where(front, val, zero)
        return out


def resample(volume: torch.Tensor, src: Grid, dst: Grid) -> torch.Tensor:
    """Trilinear resampling of ``volume`` (on ``src``) onto ``dst`` through the affines, on the volume's device;
    points outside the box of ``src``'s voxel centres get 0 (as :func:`ixgs_ros.core.volume.resample` with
    ``order=1``)."""
    dev = volume.device
    M = np.linalg.inv(src.affine) @ np.asarray(dst.affine)  # dst index -> src index
    I, J, K = dst.shape
    axes = [torch.arange(n, device=dev, dtype=torch.float64) for n in (I, J, K)]
    ii, jj, kk = torch.meshgrid(*axes, indexing="ij")
    Mt = torch.as_tensor(M, device=dev)
    c = [Mt[r, 0] * ii + Mt[r, 1] * jj + Mt[r, 2] * kk + Mt[r, 3] for r in range(3)]
    tol = 1e-6
    inside = torch.ones_like(ii, dtype=torch.bool)
    for r, n in enumerate(src.shape):
        inside &= (c[r] >= -tol) & (c[r] <= n - 1 + tol)
    g = torch.stack([(2.0 * c[r] / (n - 1) - 1.0) if n > 1 else torch.zeros_like(c[r])
                     for r, n in zip((2, 1, 0), (src.shape[2], src.shape[1], src.shape[0]))], -1)
    val = F.grid_sample(volume.to(torch.float32)[None, None], g.to(torch.float32)[None], mode="bilinear",
                        padding_mode="border", align_corners=True)[0, 0]
    return torch.where(inside, val, torch.zeros((), device=dev))


# ---------------------------------------------------------------------------------------------- numpy API
def _stack(images: list[torch.Tensor]):
    arrs = [a.detach().cpu().numpy().astype(np.float32, copy=False) for a in images]
    if len({a.shape for a in arrs}) == 1:
        return np.stack(arrs)
    return arrs


def forward_project(volume, grid: Grid, views: Sequence[View], device=None, *, pad: int = 1,
                    step: float = DEFAULT_STEP, max_samples: int | None = None):
    """Line integrals of ``volume`` (mu, 1/mm, ``grid.shape``, numpy or torch) along every view's pixel rays, with
    the semantics of :func:`ixgs_ros.core.rtk.forward_project` (zero outside the grid, ``pad`` voxels of
    zeros around it): float32 numpy ``[N, H, W]``, or a list of ``[H, W]`` arrays when the detectors differ."""
    dev = resolve_device(device)
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32) if not torch.is_tensor(volume) else volume)
    if tuple(vol.shape) != tuple(grid.shape):
        raise ValueError(f"volume shape {tuple(vol.shape)} does not match grid shape {tuple(grid.shape)}")
    P = Projector(grid, views, device=dev, pad=pad, step=step, max_samples=max_samples)
    with torch.no_grad():
        vol = vol.to(dev, torch.float32)
        return _stack(P.forward_all(vol))


def back_project(projections, views: Sequence[View], grid: Grid, device=None, *, pad: int = 1,
                 step: float = DEFAULT_STEP, max_samples: int | None = None) -> np.ndarray:
    """The exact adjoint of :func:`forward_project` (same ``pad`` and ``step``): ``projections`` (``[N, H, W]`` or
    a list of ``[H, W]``) back-projected onto ``grid``, float32 numpy ``grid.shape``."""
    dev = resolve_device(device)
    views = _check_views(views)
    if len(projections) != len(views):
        raise ValueError(f"{len(projections)} projections for {len(views)} views")
    P = Projector(grid, views, device=dev, pad=pad, step=step, max_samples=max_samples)
    out = torch.zeros(tuple(grid.shape), device=dev, dtype=torch.float32)
    with torch.no_grad():
        for i, p in enumerate(projections):
            out += P.adjoint(torch.as_tensor(np.asarray(p, dtype=np.float32)) if not torch.is_tensor(p) else p, i)
    return out.cpu().numpy()

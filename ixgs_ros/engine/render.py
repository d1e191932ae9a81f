"""R²-Gaussian X-ray splatting: differentiable projections of a 3D Gaussian density field for any pinhole view.

Model
-----
Gaussian ``i`` has a position ``p_i`` (world mm), scales ``s_i`` (mm), a unit quaternion ``q_i = (w, x, y, z)``
and a density ``rho_i >= 0`` (1/mm). Its covariance is ``Sigma_i = R(q_i) S_i S_i^T R(q_i)^T`` and the volume is
the unnormalised sum ``V(x) = sum_i rho_i exp(-1/2 (x - p_i)^T Sigma_i^-1 (x - p_i))``.

A pixel holds the line integral of ``V`` along the ray from the source through the pixel centre. With the
ray-space (local affine) approximation of R²-Gaussian every Gaussian contributes an elliptical 2D Gaussian:

    I(u) = sum_i rho_i mu_i exp(-1/2 d^T Sigma_hat_i^-1 d),   d = u - u_i (pixels)

* ``t = W (p_i - source)`` with ``W = R_world_source^T`` (camera coordinates, mm), ``u_i = proj_K(t)``.
* ``J`` = Jacobian of ``x -> (u, v, l)`` at ``t``: rows 1-2 are the pinhole Jacobian for
  ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` (skew included), row 3 is the unit ray direction ``t / |t|`` so
  the third coordinate is length along the ray (mm).
* ``Sigma_tilde = J W Sigma W^T J^T`` (3x3), ``Sigma_hat`` its top-left 2x2 block (pixels²).
* ``mu_i = sqrt(2 pi |Sigma_tilde| / |Sigma_hat|)`` (mm) integrates the 3D Gaussian along the ray
  (``|Sigma_tilde| / |Sigma_hat|`` is the conditional variance of ``l`` given ``(u, v)``). We use the closed
  form ``|J| = fx fy |t| / tz^3`` (the skew cancels) so ``|Sigma_tilde| = |J|^2 (s1 s2 s3)^2``.

Approximation: the projective map is linearised at the Gaussian centre, so the ray direction is taken as
constant over the Gaussian's footprint. The error grows with the angle the Gaussian subtends at the source
(relative error ~ (sigma / |t|)^2 near the centre); for C-arm geometry (sigma of a few mm, source distance
of several hundred mm) it is far below 1 % (see test/test_render.py, which checks against numerical
quadrature of ``V`` along the exact pixel ray).

Options and conventions
-----------------------
* Additive and order independent (X-ray attenuation): no sorting and no alpha compositing.
* ``eps2d`` (pixels², default 0) is added to the diagonal of ``Sigma_hat`` as a low-pass (anti-aliasing) filter;
  the weight is scaled by ``sqrt(|Sigma_hat| / |Sigma_hat + eps2d I|)`` so each splat keeps its image-plane
  integral ``2 pi rho mu sqrt|Sigma_hat|``.
* Gaussians with camera depth ``tz <= near`` (default 1 mm) are culled (behind or at the source).
* Cut-off: a Gaussian contributes only to pixels inside its ``SIGMA_CUTOFF = 3`` sigma ellipse
  (``d^T Sigma_hat^-1 d <= 9``; 98.9 % of the 2D mass). ``radius = 3 sqrt(lambda_max(Sigma_hat))`` (pixels) is the
  bounding-box half size used to find the pixels/tiles it touches; the ellipse test is what defines the value.
* Pixel ``(u, v) = (column, row)`` has its centre at integer coordinates (see :mod:`ixgs_ros.core.geometry`).

Structure (as gsplat): :func:`project_gaussians` computes per-Gaussian ``mean2d``, ``conic`` (``Sigma_hat^-1`` as
``(a, b, c)`` for ``[[a, b], [b, c]]``), ``weight = rho mu`` and ``radius`` in differentiable torch (the reference,
used by the ``torch`` and ``cuda`` backends); the ``cpp`` backend computes the same per Gaussian in one fused C++
pass with an explicit backward (:func:`project_gaussians_cpp`); :func:`rasterize` sums the splats. Its backends
are ``"torch"`` (pure torch reference, autograd), ``"cpp"`` (C++/OpenMP kernel with explicit backward,
:mod:`ixgs_ros.engine.kernels`) and ``"cuda"`` (the CUDA kernels, :mod:`ixgs_ros.engine.kernels_cuda`);
``"auto"`` picks ``"cpp"`` for CPU tensors when the extension is available (built on first use), ``"cuda"`` for
CUDA tensors once those kernels are verified on a GPU (:data:`CUDA_VERIFIED`), and ``"torch"`` otherwise.
"""
from __future__ import annotations

import math
import os
import threading
from typing import NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "SIGMA_CUTOFF",
    "NEAR_MM",
    "BACKENDS",
    "Projected",
    "quat_to_rotmat",
    "covariance_from_scale_rot",
    "project_gaussians",
    "project_gaussians_cpp",
    "rasterize",
    "render",
    "render_batch",
    "render_view",
    "active_backend",
    "resolve_backend",
]

#: Splats are cut at this many standard deviations (Mahalanobis distance in the image plane).
SIGMA_CUTOFF = 3.0
#: Gaussians with camera depth ``tz`` at or below this (mm) are culled.
NEAR_MM = 1.0
#: Accepted ``backend=`` values.
BACKENDS = ("auto", "torch", "cpp", "cuda")

_RADIUS_SLACK = 1e-3  # pixels added to the 3-sigma radius so the box surely contains the rounded ellipse


class Projected(NamedTuple):
    """Per-Gaussian 2D splat parameters for one view (``N`` rows)."""

    mean2d: torch.Tensor  # [N, 2] pixel position (u, v) of the centre
    conic: torch.Tensor  # [N, 3] (a, b, c): inverse of the (dilated) 2D covariance [[a, b], [b, c]]
    weight: torch.Tensor  # [N] rho * mu (peak pixel value of the splat)
    radius: torch.Tensor  # [N] bounding half-size in pixels (no gradient); 0 = culled
    depth: torch.Tensor  # [N] camera z (mm)


# ----------------------------------------------------------------------------------------------- geometry
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N, 3, 3]`` from quaternions ``[N, 4]`` ``(w, x, y, z)`` (normalised here)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def covariance_from_scale_rot(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """``Sigma = R S S^T R^T`` ``[N, 3, 3]`` from scales ``[N, 3]`` (mm) and quaternions ``[N, 4]`` (w, x, y, z)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def _as_tensor(a, like: torch.Tensor, shape: tuple, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.to(dtype=like.dtype, device=like.device)
    else:
        t = torch.as_tensor(np.array(a, dtype=np.float64), device=like.device).to(like.dtype)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


def _check_inputs(means, scales, quats, density):
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    for name, t, shape in (("scales", scales, (n, 3)), ("quats", quats, (n, 4)), ("density", density, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != means.dtype or t.device != means.device:
            raise ValueError(f"{name} must have the dtype/device of means ({means.dtype}, {means.device}), "
                             f"got ({t.dtype}, {t.device})")
    if not means.is_floating_point():
        raise ValueError("means must be a floating-point tensor")


def project_gaussians(means, scales, quats, density, K, T_world_source, width: int, height: int, *,
                      eps2d: float = 0.0, near: float = NEAR_MM) -> Projected:
    """Differentiable per-Gaussian projection into one view (see the module docstring for the maths)."""
    _check_inputs(means, scales, quats, density)
    K = _as_tensor(K, means, (3, 3), "K")
    T = _as_tensor(T_world_source, means, (4, 4), "T_world_source")
    fx, sk, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    Rws, src = T[:3, :3], T[:3, 3]

    # Everything below works on per-Gaussian scalars ([N] tensors): the 3x3 algebra is written out by hand,
    # which is several times faster (forward and autograd backward) than batched matmuls, broadcasting and
    # small-axis reductions on [N, 3, 3] tensors, and avoids threaded BLAS on tiny blocks.
    R = [[Rws[m, k] for k in range(3)] for m in range(3)]  # R[m][k]; W = Rws^T so W[k][m] = R[m][k]
    px, py, pz = (means - src).unbind(-1)
    tx = px * R[0][0] + py * R[1][0] + pz * R[2][0]  # camera coordinates t = W (p - source)
    ty = px * R[0][1] + py * R[1][1] + pz * R[2][1]
    tz_raw = px * R[0][2] + py * R[1][2] + pz * R[2][2]
    visible = tz_raw > near
    # keep the culled rows finite (and their gradients zero) by evaluating them at a harmless depth
    tz = torch.where(visible, tz_raw, torch.full_like(tz_raw, max(near, 1.0) + 1.0))
    inv_z = 1.0 / tz
    u = (fx * tx + sk * ty) * inv_z + cx
    v = fy * ty * inv_z + cy
    mean2d = torch.stack([u, v], dim=-1)

    # rows 1-2 of J (J[1][0] = 0), then the rows of J2 W: JW0[m] = sum_k J[0][k] W[k][m], JW1 likewise
    j00, j01, j02 = fx * inv_z, sk * inv_z, -(fx * tx + sk * ty) * inv_z * inv_z
    j11, j12 = fy * inv_z, -fy * ty * inv_z * inv_z
    JW0 = [j00 * R[m][0] + j01 * R[m][1] + j02 * R[m][2] for m in range(3)]
    JW1 = [j11 * R[m][1] + j12 * R[m][2] for m in range(3)]
    # rotation of each Gaussian (normalised quaternion)
    qn = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = qn.unbind(-1)
    Rq = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
          [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
          [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    # rows of J2 W R S: JM_r[j] = s_j G_r[j], G_r[j] = sum_m JW_r[m] Rq[m][j]; Sigma_hat = JM JM^T
    s0, s1, s2 = scales.unbind(-1)
    sq = [s0 * s0, s1 * s1, s2 * s2]
    G0 = [JW0[0] * Rq[0][j] + JW0[1] * Rq[1][j] + JW0[2] * Rq[2][j] for j in range(3)]
    G1 = [JW1[0] * Rq[0][j] + JW1[1] * Rq[1][j] + JW1[2] * Rq[2][j] for j in range(3)]
    a = sq[0] * G0[0] * G0[0] + sq[1] * G0[1] * G0[1] + sq[2] * G0[2] * G0[2] + eps2d
    b = sq[0] * G0[0] * G1[0] + sq[1] * G0[1] * G1[1] + sq[2] * G0[2] * G1[2]
    c = sq[0] * G1[0] * G1[0] + sq[1] * G1[1] * G1[1] + sq[2] * G1[2] * G1[2] + eps2d
    det = (a * c - b * b).clamp_min(torch.finfo(means.dtype).tiny)
    inv_det = 1.0 / det
    conic = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)

    # |J| = fx fy |t| / tz^3 ; weight = rho sqrt(2 pi |Sigma_tilde| / |Sigma_hat|) * sqrt(|Sigma_hat| / |Sigma_hat+eps|)
    #                                  = rho sqrt(2 pi) |J| s1 s2 s3 / sqrt(|Sigma_hat + eps|)
    tnorm = torch.sqrt(tx * tx + ty * ty + tz * tz)
    detJ = fx * fy * tnorm * inv_z * inv_z * inv_z
    svol = (s0 * s1 * s2).abs()
    weight = density * (math.sqrt(2.0 * math.pi) * detJ * svol * torch.rsqrt(det))
    weight = torch.where(visible, weight, torch.zeros_like(weight))

    with torch.no_grad():
        half_tr = 0.5 * (a + c)
        lam_max = half_tr + torch.sqrt((0.5 * (a - c)) ** 2 + b * b)
        radius = SIGMA_CUTOFF * torch.sqrt(lam_max) + _RADIUS_SLACK
        # cull: behind the source, non-finite, or bounding box entirely off the detector
        on_image = (u + radius >= 0) & (u - radius <= width - 1) & (v + radius >= 0) & (v - radius <= height - 1)
        keep = visible & on_image & torch.isfinite(radius) & torch.isfinite(u) & torch.isfinite(v)
        radius = torch.where(keep, radius, torch.zeros_like(radius)).detach()
    return Projected(mean2d, conic, weight, radius, tz_raw)


# ----------------------------------------------------------------------------------------------- backends
_native_lock = threading.Lock()
_native_state: dict = {}


def _native_module(build: bool = True):
    """The compiled extension, or None (built on first use when ``build``; failures are remembered)."""
    with _native_lock:
        if "module" in _native_state:
            return _native_state["module"]
        if not build:
            return None
        from . import kernels as native

        try:
            mod = native.load()
        except Exception as exc:  # noqa: BLE001 - any build failure means "not available"
            _native_state["error"] = f"{type(exc).__name__}: {exc}"
            mod = None
        _native_state["module"] = mod
        return mod


#: ``backend="auto"`` picks the CUDA kernels for CUDA tensors only once they are verified on a GPU
#: (``scripts/gpu_check.sh``: parity with the torch reference and the C++ kernels, sanitizer clean); until then it
#: keeps the torch reference there. ``IXGS_CUDA_AUTO=1`` turns it on for a process (the GPU check does).
CUDA_VERIFIED = False
_cuda_state: dict = {}


def _cuda_module():
    """The CUDA kernels for ``backend="cuda"``, or None with the reason remembered: the real build on a GPU
    machine; with ``IXGS_CUDA_EMULATE=1`` their CPU emulation on CPU tensors (a test aid that exercises this
    wiring where no GPU is)."""
    with _native_lock:
        if "module" not in _cuda_state:
            from . import kernels

            emulate = os.environ.get("IXGS_CUDA_EMULATE", "0") not in ("", "0")
            try:
                _cuda_state["module"] = kernels.load("cuda-emu" if emulate else "cuda")
                _cuda_state["emulated"] = emulate
            except Exception as exc:  # noqa: BLE001 - unavailable: say why when asked
                _cuda_state["module"], _cuda_state["error"] = None, f"{type(exc).__name__}: {exc}"
        return _cuda_state["module"]


def _cuda_device_ok(dev: torch.device) -> bool:
    """CUDA tensors for the real kernels, CPU tensors for the emulated ones."""
    return dev.type == ("cpu" if _cuda_state.get("emulated") else "cuda")


def active_backend(device="cpu") -> str:
    """The backend ``backend="auto"`` uses for tensors on ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"``."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpp" if _native_module(build=True) is not None else "torch"
    auto_cuda = CUDA_VERIFIED or os.environ.get("IXGS_CUDA_AUTO", "0") not in ("", "0")
    if dev.type == "cuda" and auto_cuda and _cuda_module() is not None:
        return "cuda"
    return "torch"


def resolve_backend(backend: str, device) -> str:
    """Validate ``backend`` for tensors on ``device`` and resolve ``"auto"``. Raises ``ValueError``/``RuntimeError``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    dev = torch.device(device)
    if backend == "auto":
        return active_backend(dev)
    if backend == "cpp":
        if dev.type != "cpu":
            raise RuntimeError(f"backend='cpp' needs CPU tensors, got device {dev}")
        if _native_module(build=True) is None:
            raise RuntimeError("backend='cpp' requested but the C++ extension is unavailable: "
                               f"{_native_state.get('error', 'unknown error')}")
    if backend == "cuda":
        if _cuda_module() is None:
            raise RuntimeError(f"backend='cuda' is not available here ({_cuda_state.get('error')}); use "
                               "backend='cpp' (CPU) or 'torch'")
        if not _cuda_device_ok(dev):
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got device {dev}")
    return backend


class _ProjectCpp(torch.autograd.Function):
    """:func:`project_gaussians` by the fused C++ kernel (``cuda_ext/project_cpu.cpp``): the same expressions per
    Gaussian, with their chain rule written out as the backward."""

    @staticmethod
    def forward(ctx, means, scales, quats, density, camera, eps2d, near, width, height):
        mod = _native_module()
        means, scales, quats, density = (t.contiguous() for t in (means, scales, quats, density))
        mean2d, conic, weight, radius, depth = mod.project_forward(means, scales, quats, density, camera,
                                                                   float(eps2d), float(near), float(SIGMA_CUTOFF),
                                                                   int(width), int(height))
        ctx.save_for_backward(means, scales, quats, density, camera)
        ctx.consts = (float(eps2d), float(near))
        ctx.mark_non_differentiable(radius, depth)
        return mean2d, conic, weight, radius, depth

    @staticmethod
    def backward(ctx, g_mean2d, g_conic, g_weight, _g_radius, _g_depth):
        means, scales, quats, density, camera = ctx.saved_tensors
        grads = [torch.zeros_like(t) if g is None else g.contiguous()
                 for g, t in ((g_mean2d, means[:, :2]), (g_conic, means), (g_weight, density))]
        g = _native_module().project_backward(means, scales, quats, density, camera, *ctx.consts, *grads)
        return (*g, None, None, None, None, None)


def project_gaussians_cpp(means, scales, quats, density, K, T_world_source, width: int, height: int, *,
                          eps2d: float = 0.0, near: float = NEAR_MM) -> Projected:
    """:func:`project_gaussians` on CPU tensors by the C++ kernel (same values to float rounding, same
    gradients; ``depth`` carries none)."""
    _check_inputs(means, scales, quats, density)
    K = _as_tensor(K, means, (3, 3), "K").double()
    T = _as_tensor(T_world_source, means, (4, 4), "T_world_source").double()
    camera = torch.cat([T[:3, :3].reshape(-1), T[:3, 3], K[0, 0:3], K[1, 1:3]]).cpu().contiguous()
    mean2d, conic, weight, radius, depth = _ProjectCpp.apply(means, scales, quats, density, camera, eps2d, near,
                                                             int(width), int(height))
    return Projected(mean2d, conic, weight, radius, depth)


# ----------------------------------------------------------------------------------------------- rasterizer
def _pixel_boxes(mean2d, radius, width, height):
    """Inclusive integer pixel boxes ``(x0, x1, y0, y1)`` of each splat (empty when x0 > x1 or y0 > y1)."""
    u, v = mean2d[:, 0].detach(), mean2d[:, 1].detach()
    x0 = torch.ceil(u - radius).clamp(0, width - 1).long()
    x1 = torch.floor(u + radius).clamp(-1, width - 1).long()
    y0 = torch.ceil(v - radius).clamp(0, height - 1).long()
    y1 = torch.floor(v + radius).clamp(-1, height - 1).long()
    empty = (radius <= 0) | (x1 < x0) | (y1 < y0)
    return x0, x1, y0, y1, empty


def _rasterize_torch(mean2d, conic, weight, radius, width, height, chunk_elems: int = 1 << 22):
    """Reference rasterizer: every splat is evaluated on its (padded) pixel box and scatter-added (autograd)."""
    cut = 0.5 * SIGMA_CUTOFF * SIGMA_CUTOFF
    image = mean2d.new_zeros(height * width)
    x0, x1, y0, y1, empty = _pixel_boxes(mean2d, radius, width, height)
    idx = torch.nonzero(~empty).flatten()
    if idx.numel() == 0:
        return image.reshape(height, width) + 0.0 * (weight.sum() + mean2d.sum() + conic.sum())
    side = torch.maximum(x1 - x0 + 1, y1 - y0 + 1)[idx]
    order = torch.argsort(side)
    idx, side = idx[order], side[order]
    start, n = 0, idx.numel()
    while start < n:
        # boxes sorted by side: a chunk of k splats is padded to k * side[last]^2 pixels
        k = torch.arange(1, n - start + 1, device=side.device)
        cost = k * side[start:] * side[start:]
        stop = start + max(1, int((cost <= chunk_elems).sum()))
        sel = idx[start:stop]
        ox = torch.arange(int(side[stop - 1]), device=mean2d.device)
        oy = ox
        px = x0[sel, None, None] + ox[None, None, :]  # [n, 1, mw]
        py = y0[sel, None, None] + oy[None, :, None]  # [n, mh, 1]
        inside = (px <= x1[sel, None, None]) & (py <= y1[sel, None, None])
        m = mean2d[sel]
        q = conic[sel]
        dx = px.to(mean2d.dtype) - m[:, 0, None, None]
        dy = py.to(mean2d.dtype) - m[:, 1, None, None]
        power = 0.5 * (q[:, 0, None, None] * dx * dx + q[:, 2, None, None] * dy * dy) \
            + q[:, 1, None, None] * dx * dy
        mask = inside & (power <= cut)
        val = torch.where(mask, weight[sel, None, None] * torch.exp(-power), 0.0)
        flat = torch.where(mask, py * width + px, torch.zeros_like(px)).expand_as(val)
        image = image.index_add(0, flat.reshape(-1), val.reshape(-1))
        start = stop
    return image.reshape(height, width)


class _RasterizeCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean2d, conic, weight, radius, width, height):
        mod = _native_module()
        mean2d, conic, weight = mean2d.contiguous(), conic.contiguous(), weight.contiguous()
        radius = radius.to(mean2d.dtype).contiguous()
        image, tile_offsets, tile_ids = mod.rasterize_forward(mean2d, conic, weight, radius, int(width),
                                                              int(height), float(SIGMA_CUTOFF))
        ctx.save_for_backward(mean2d, conic, weight, radius, tile_offsets, tile_ids)
        ctx.size = (int(width), int(height))
        return image

    @staticmethod
    def backward(ctx, grad_image):
        mean2d, conic, weight, radius, tile_offsets, tile_ids = ctx.saved_tensors
        width, height = ctx.size
        g_mean2d, g_conic, g_weight = _native_module().rasterize_backward(
            mean2d, conic, weight, radius, tile_offsets, tile_ids, grad_image.contiguous(), width, height,
            float(SIGMA_CUTOFF))
        return g_mean2d, g_conic, g_weight, None, None, None


def rasterize(mean2d, conic, weight, radius, width: int, height: int, *, backend: str = "auto") -> torch.Tensor:
    """Sum of 2D splats ``[height, width]``: ``sum_i weight_i exp(-1/2 d^T conic_i d)`` inside 3 sigma."""
    be = resolve_backend(backend, mean2d.device)
    if be == "cpp":
        return _RasterizeCpp.apply(mean2d, conic, weight, radius, int(width), int(height))
    if be == "cuda":
        from .kernels_cuda import rasterize as cuda_rasterize

        return cuda_rasterize(mean2d, conic, weight, radius, int(width), int(height), module=_cuda_module())
    return _rasterize_torch(mean2d, conic, weight, radius, int(width), int(height))


# ----------------------------------------------------------------------------------------------- public API
def render(means, scales, quats, density, K, T_world_source, width: int, height: int, *,
           eps2d: float = 0.0, backend: str = "auto", near: float = NEAR_MM) -> torch.Tensor:
    """X-ray projection image ``[height, width]`` (line integrals, dtype of ``means``) of the Gaussians.

    ``means`` [N, 3] world mm, ``scales`` [N, 3] mm (already activated, > 0), ``quats`` [N, 4] (w, x, y, z),
    ``density`` [N] (>= 0, 1/mm), ``K`` [3, 3] pixels, ``T_world_source`` [4, 4] camera-to-world (mm).
    Gradients flow to means, scales, quats and density with every backend.
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    backend_resolved = resolve_backend(backend, means.device)
    project = project_gaussians_cpp if backend_resolved == "cpp" else project_gaussians
    proj = project(means, scales, quats, density, K, T_world_source, width, height, eps2d=eps2d, near=near)
    return rasterize(proj.mean2d, proj.conic, proj.weight, proj.radius, width, height, backend=backend_resolved)


def render_batch(means, scales, quats, density, K, T_world_source, width: int, height: int, *,
                 eps2d: float = 0.0, backend: str = "auto", near: float = NEAR_MM) -> torch.Tensor:
    """Images ``[B, height, width]`` for ``K`` [B, 3, 3] and ``T_world_source`` [B, 4, 4] (lists/stacks accepted)."""
    Ks = list(K) if not isinstance(K, torch.Tensor) or K.ndim == 3 else None
    Ts = list(T_world_source) if not isinstance(T_world_source, torch.Tensor) or T_world_source.ndim == 3 else None
    if Ks is None or Ts is None or len(Ks) != len(Ts):
        raise ValueError("render_batch needs K [B, 3, 3] and T_world_source [B, 4, 4] with the same B")
    if len(Ks) == 0:
        return means.new_zeros((0, int(height), int(width)))
    return torch.stack([render(means, scales, quats, density, k, t, width, height, eps2d=eps2d, backend=backend,
                               near=near) for k, t in zip(Ks, Ts)])


def render_view(means, scales, quats, density, view, *, eps2d: float = 0.0, backend: str = "auto",
                near: float = NEAR_MM) -> torch.Tensor:
    """:func:`render` for a :class:`ixgs_ros.core.geometry.View`."""
    return render(means, scales, quats, density, view.K, view.T_world_source, view.width, view.height,
                  eps2d=eps2d, backend=backend, near=near)


def render_views(means, scales, quats, density, views: Sequence, **kwargs) -> list[torch.Tensor]:
    """One image per view (views may have different detector sizes)."""
    return [render_view(means, scales, quats, density, v, **kwargs) for v in views]

"""3D total-variation denoising for the initial solves (RTK's and torch's alike): Chambolle & Pock's primal-dual
algorithm on the ROF model ``min_u 1/2 |u - f|^2 + weight * TV(u)`` (isotropic TV, forward differences, Neumann
boundary, tau = 1/4 and sigma = 1/3 so that tau * sigma * 12 = 1), from ``u = f``, on the volume scaled to its
maximum; and the schedule of TV weights over SART passes. The iterations run in torch (the reference, any
device) or, on the CPU, in a fused C++ kernel (``cuda_ext/tv_cpu.cpp``) that performs the same updates."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["tv_schedule", "tv_denoise", "tv_denoise_tensor"]


def tv_schedule(passes: int, tv_weight: float, tv_weight_final: float | None = None) -> list[float]:
    """The TV weight of each of ``passes``: constant ``tv_weight``, or decaying geometrically from it to
    ``tv_weight_final``. ValueError for a negative weight, or one that is zero at one end only."""
    final = tv_weight if tv_weight_final is None else tv_weight_final
    if tv_weight < 0 or final < 0 or (tv_weight == 0) != (final == 0):
        raise ValueError(f"TV weights must be >= 0, and zero at both ends or at neither "
                         f"(tv_weight={tv_weight}, tv_weight_final={tv_weight_final})")
    passes = int(passes)
    if final == tv_weight or passes < 2:
        return [float(tv_weight)] * passes
    return [float(w) for w in np.geomspace(tv_weight, final, passes)]


def _bound(weight: float, weight_map: torch.Tensor | None):
    """The bound of the dual variable per voxel: ``weight``, or ``weight * weight_map``."""
    # a zero bound would divide by zero; 1e-12 holds the dual variable at zero there just as well
    return weight if weight_map is None else weight_map.clamp(min=1e-12 / weight) * weight


def _rof_native(f: torch.Tensor, weight: float, iterations: int, weight_map: torch.Tensor | None = None):
    """:func:`_rof` by the C++ kernel (``cuda_ext/tv_cpu.cpp``) for a 3D CPU tensor, or None where it does not
    apply or is not built."""
    if f.device.type != "cpu" or f.ndim != 3 or f.dtype not in (torch.float32, torch.float64):
        return None
    from .render import _native_module

    mod = _native_module()
    if mod is None:
        return None
    w = _bound(weight, weight_map)
    w = torch.full((1,), float(w), dtype=f.dtype) if not torch.is_tensor(w) else w.to(f.dtype).contiguous()
    return mod.tv_rof(f.contiguous(), w, int(iterations))


def _rof(f: torch.Tensor, weight: float, iterations: int, weight_map: torch.Tensor | None = None,
         backend: str = "auto") -> torch.Tensor:
    """Chambolle-Pock on ROF for ``f`` (already scaled); ``weight_map`` (same shape, >= 0) weights the TV voxel by
    voxel. ``backend``: ``torch`` (this reference), ``cpp`` (the fused C++ kernel, same iterations, for 3D CPU
    tensors) or ``auto`` (the kernel where it applies)."""
    if backend not in ("auto", "torch", "cpp"):
        raise ValueError(f"unknown TV backend {backend!r}; choose auto, torch or cpp")
    if backend != "torch":
        out = _rof_native(f, weight, iterations, weight_map)
        if out is not None:
            return out
        if backend == "cpp":
            raise RuntimeError("the C++ TV kernel needs a 3D float CPU tensor and the built extension")
    tau, sigma = 0.25, 1.0 / 3.0
    w = _bound(weight, weight_map)
    u, ub = f.clone(), f.clone()
    nd = f.ndim
    p = torch.zeros((nd,) + tuple(f.shape), dtype=f.dtype, device=f.device)
    for _ in range(int(iterations)):
        for a in range(nd):  # dual ascent: p += sigma * grad(ub); the last difference along each axis is 0
            n = ub.shape[a]
            p[a].narrow(a, 0, n - 1).add_(ub.narrow(a, 1, n - 1) - ub.narrow(a, 0, n - 1), alpha=sigma)
        p.div_(p.square().sum(0).sqrt_().div_(w).clamp_(min=1.0))  # project each voxel onto |p| <= weight
        d = torch.zeros_like(f)  # div p (= -grad^T p)
        for a in range(nd):
            n = d.shape[a]
            pa = p[a].narrow(a, 0, n - 1)
            d.narrow(a, 0, n - 1).add_(pa)
            d.narrow(a, 1, n - 1).sub_(pa)
        u_new = (u + tau * d + tau * f) / (1.0 + tau)  # primal step, proximal of the data term
        ub = 2.0 * u_new - u
        u = u_new
    return u


def tv_denoise_tensor(x: torch.Tensor, weight: float, iterations: int, weight_map: torch.Tensor | None = None,
                      backend: str = "auto") -> torch.Tensor:
    """TV denoising of the tensor ``x`` scaled to its maximum, scaled back, on ``x``'s device (``backend`` as in
    :func:`_rof`)."""
    if weight == 0:
        return x
    scale = max(float(x.max()), 1e-12)
    return _rof(x / scale, float(weight), iterations, weight_map, backend) * scale


def tv_denoise(x, weight: float, iterations: int = 20, *, weight_map=None, device=None, backend: str = "auto"):
    """3D TV denoising of ``x`` (numpy array or tensor) scaled to its maximum; ``weight = 0`` returns ``x``.
    ``weight_map`` (>= 0, the shape of ``x``) makes the TV weighted: voxel i's term is ``weight * weight_map[i] *
    |grad u|_i`` (e.g. stronger where few views look). Runs on ``device`` (default: ``x``'s own device for a
    tensor, the CPU for an array) in float32; returns float32 numpy for numpy input, else a tensor. ``backend``:
    ``auto`` (the C++ kernel on the CPU where built, else torch), ``torch`` or ``cpp``."""
    if weight < 0:
        raise ValueError(f"TV weight must be >= 0, got {weight}")
    if weight == 0:
        return x
    is_tensor = torch.is_tensor(x)
    dev = torch.device(device) if device is not None else (x.device if is_tensor else torch.device("cpu"))
    t = (x if is_tensor else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).to(dev, torch.float32)
    wm = None
    if weight_map is not None:
        wm = (weight_map if torch.is_tensor(weight_map) else
              torch.from_numpy(np.asarray(weight_map, dtype=np.float32))).to(dev, torch.float32)
        if tuple(wm.shape) != tuple(t.shape) or bool((wm < 0).any()):
            raise ValueError(f"weight_map must be >= 0 with the shape of x {tuple(t.shape)}, got shape "
                             f"{tuple(wm.shape)}")
    out = tv_denoise_tensor(t, float(weight), int(iterations), wm, backend)
    return out if is_tensor else out.cpu().numpy().astype(np.float32, copy=False)

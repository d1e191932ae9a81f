"""Build and load the CUDA splatting kernels in ``cuda_ext/*.cu`` (rasterizer and voxelizer, forward and backward).

STATUS: BLOCKED - written and compiled with nvcc, its logic tested in the CPU emulation, but NOT YET RUN ON A
GPU (see ``cuda_ext/README.md``). Nothing imports this module by default: ``backend="auto"``/``"cuda"`` of
:mod:`ixgs_ros.core.gaussians_render` and :mod:`ixgs_ros.core.voxelize` do not use it yet, and on a machine
without CUDA nothing is built (:func:`load` raises with the reason, :func:`available` is False).

    python -m ixgs_ros.core.native_cuda --build [--verbose]    # GPU machine: nvcc + a CUDA build of torch
    python -m ixgs_ros.core.native_cuda --build --emulated     # any machine: the CPU emulation (test aid)

The extension implements the kernel ABI of ``cuda_ext/ixgs_kernels.h`` for CUDA tensors (same function names,
arguments and results as the C++ module of :mod:`ixgs_ros.core.native`). It is compiled with
:func:`torch.utils.cpp_extension.load` into ``<repo>/build/torch_ext_cuda/<name>/``; ``<name>`` carries a hash of
the sources, flags and versions, so any edit produces a fresh build.

The *emulated* module compiles the same ``.cu`` sources as plain C++ against ``cuda_ext/cuda_emu.cuh`` (blocks
run one after another, their threads are real threads) and takes CPU tensors. It exists to test the kernels'
logic where no GPU is available; it is slow and says nothing about GPU performance.

Environment: ``IXGS_NATIVE_SRC`` (kernel sources, shared with :mod:`~ixgs_ros.core.native`),
``IXGS_CUDA_BUILD`` (build root, default ``<repo>/build/torch_ext_cuda``), ``IXGS_NATIVE_VERBOSE=1``,
``IXGS_CUDA_FMAD=1`` (let nvcc fuse multiply-adds: faster, but the float32 forward is then no longer bit-identical
to the CPU kernels and the ellipse/box tests can differ from the torch reference in the last ulp),
``TORCH_CUDA_ARCH_LIST`` (default: the visible GPU's architecture, as torch chooses).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

__all__ = ["available", "unavailable_reason", "extension_name", "library_path", "load", "load_emulated",
           "rasterize", "voxelize_kernel", "main"]

from .native import REPO_ROOT, source_dir  # one place for where the kernel sources live

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_modules: dict[bool, object] = {}

# -fvisibility=hidden: this module defines the same C++ names as the CPU extension (the ABI of
# ixgs_kernels.h); hidden symbols can never be interposed by (or interpose) the other module's.
HOST_FLAGS = ["-O3", "-fvisibility=hidden"]


def _fmad() -> bool:
    return os.environ.get("IXGS_CUDA_FMAD", "0") not in ("", "0")


def nvcc_flags() -> list[str]:
    fmad = _fmad()
    return ["-O3", "-lineinfo", f"--fmad={'true' if fmad else 'false'}", f"-DIXGS_CUDA_FMAD={int(fmad)}",
            "-Xcompiler=-fvisibility=hidden"]


EMU_FLAGS = ["-O2", "-pthread", "-fvisibility=hidden"]


def build_root() -> Path:
    return Path(os.environ.get("IXGS_CUDA_BUILD", REPO_ROOT / "build" / "torch_ext_cuda"))


def _sources() -> tuple[list[Path], list[Path]]:
    src = source_dir()
    cu = sorted(src.glob("*.cu"))
    headers = sorted(src.glob("*.cuh")) + [src / "splat_math.h", src / "ixgs_kernels.h"]
    if not cu:
        raise FileNotFoundError(f"no CUDA kernel sources (*.cu) in {src}")
    return cu, [h for h in headers if h.exists()]


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def unavailable_reason() -> str | None:
    """Why the real CUDA extension cannot be built or used here, or None when it can."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if _nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def available() -> bool:
    """True when the CUDA extension can be built and used here (GPU, CUDA torch, nvcc)."""
    try:
        return unavailable_reason() is None
    except Exception:  # noqa: BLE001
        return False


def extension_name(emulated: bool = False) -> str:
    """``ixgs_cuda_<hash>`` (``ixgs_cuda_emu_<hash>``): sources, headers, flags, torch/CUDA/Python versions."""
    import torch

    cu, headers = _sources()
    h = hashlib.sha256()
    for p in cu + headers:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    flags = EMU_FLAGS if emulated else HOST_FLAGS + nvcc_flags() + [os.environ.get("TORCH_CUDA_ARCH_LIST", "")]
    h.update(" ".join(flags).encode())
    h.update(f"{torch.__version__} {torch.version.cuda} {sys.version.split()[0]}".encode())
    return f"ixgs_cuda_{'emu_' if emulated else ''}{h.hexdigest()[:16]}"


def library_path(name: str | None = None, emulated: bool = False) -> Path:
    name = name or extension_name(emulated)
    return build_root() / name / f"{name}.so"


def _import_library(name: str, path: Path):
    import torch  # noqa: F401  (the extension links against libtorch)

    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ensure_ninja_on_path():
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _build(name: str, emulated: bool, verbose: bool) -> None:
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    cu, _ = _sources()
    out = build_root() / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if verbose:
        print(f"[ixgs cuda] building {name} in {out}", file=sys.stderr)
    if emulated:
        # the .cu sources compiled as C++ (cpp_extension would hand a .cu file to nvcc)
        sources = []
        for p in cu:
            w = out / f"emu_{p.stem}.cpp"
            text = f'// generated: the CUDA source compiled against cuda_emu.cuh\n#include "{p.resolve()}"\n'
            if not w.exists() or w.read_text() != text:
                w.write_text(text)
            sources.append(str(w))
        cpp_extension.load(name=name, sources=sources, extra_include_paths=[str(source_dir())],
                           extra_cflags=EMU_FLAGS, extra_ldflags=["-pthread"], build_directory=str(out),
                           verbose=verbose, with_cuda=False, is_python_module=True)
    else:
        cpp_extension.load(name=name, sources=[str(p) for p in cu], extra_include_paths=[str(source_dir())],
                           extra_cflags=HOST_FLAGS, extra_cuda_cflags=nvcc_flags(), build_directory=str(out),
                           verbose=verbose, with_cuda=True, is_python_module=True)
    if verbose:
        print(f"[ixgs cuda] built in {time.time() - t0:.1f} s", file=sys.stderr)


def _load(emulated: bool, verbose: bool | None):
    with _lock:
        if emulated in _modules:
            return _modules[emulated]
        if verbose is None:
            verbose = os.environ.get("IXGS_NATIVE_VERBOSE", "") not in ("", "0")
        if not emulated:
            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"the CUDA kernels cannot be built here: {reason}")
        name = extension_name(emulated)
        path = library_path(name)
        if not path.exists():
            _log.warning("building the %s splatting kernels %s (one-off, a minute or two)",
                         "emulated CUDA" if emulated else "CUDA", name)
            _build(name, emulated, verbose)
        mod = _import_library(name, path)
        if bool(mod.emulated) != emulated:
            raise RuntimeError(f"{path} is {'an emulated' if mod.emulated else 'a CUDA'} build, expected the other")
        _modules[emulated] = mod
        return mod


def load(verbose: bool | None = None):
    """The CUDA extension module (built first when needed; thread safe, cached). RuntimeError when unavailable."""
    return _load(False, verbose)


def load_emulated(verbose: bool | None = None):
    """The CPU emulation of the CUDA kernels (CPU tensors; test aid, see the module docstring)."""
    return _load(True, verbose)


# ----------------------------------------------------------------------------------------------- autograd
def _sigma(sigma_cutoff):
    if sigma_cutoff is None:
        from .gaussians_render import SIGMA_CUTOFF

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
    :func:`ixgs_ros.core.gaussians_render.rasterize`."""
    mod = module if module is not None else load()
    return _function("raster").apply(mean2d, conic, weight, radius, int(width), int(height), _sigma(sigma_cutoff),
                                     mod)


def voxelize_kernel(means, icov, density, extent, bounds, affine, shape, *, module=None):
    """Differentiable voxelizer kernel ``[I, J, K]`` (inputs as the ``"cpp"`` backend of
    :func:`ixgs_ros.core.voxelize.voxelize` passes them to its kernel)."""
    mod = module if module is not None else load()
    return _function("voxel").apply(means, icov, density, extent, bounds, affine, tuple(int(s) for s in shape), mod)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ixgs_ros.core.native_cuda", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build (or reuse) the extension and print its path")
    parser.add_argument("--emulated", action="store_true", help="the CPU emulation instead of the CUDA build")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    name = extension_name(args.emulated)
    path = library_path(name)
    if not args.build:
        state = "built" if path.exists() else "not built"
        reason = None if args.emulated else unavailable_reason()
        print(f"{name}: {state} ({path})" + (f"; unavailable here: {reason}" if reason else ""))
        return 0
    try:
        mod = _load(args.emulated, args.verbose or None)
    except Exception as exc:  # noqa: BLE001
        print(f"[ixgs cuda] build failed: {exc}", file=sys.stderr)
        return 1
    print(f"[ixgs cuda] {name} ready (emulated={mod.emulated}, fmad={mod.fmad}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

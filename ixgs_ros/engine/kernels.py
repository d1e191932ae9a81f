"""Build and load the native splatting kernels of ``cuda_ext/`` (rasterizer and voxelizer, forward and backward):
one builder for their three builds.

* ``cpp``: the C++/OpenMP kernels (``*.cpp``) for CPU tensors, used by ``backend="auto"|"cpp"`` of
  :mod:`ixgs_ros.engine.render` and :mod:`ixgs_ros.engine.voxelize`.
* ``cuda``: the CUDA kernels (``*.cu``), same ABI (``cuda_ext/ixgs_kernels.h``) for CUDA tensors; needs a GPU,
  a CUDA build of torch and nvcc (:func:`unavailable_reason` says what is missing). Their autograd wrappers are
  in :mod:`ixgs_ros.engine.kernels_cuda`.
* ``cuda-emu``: the same ``.cu`` sources compiled as plain C++ against ``cuda_ext/cuda_emu.cuh`` (blocks run
  one after another, their threads are real threads), taking CPU tensors: it tests the CUDA kernels' logic
  where no GPU is available; slow, and says nothing about GPU performance.

Each build goes to ``<root>/<name>/`` where ``<name>`` carries a hash of the sources, headers, flags and the
torch / CUDA / Python versions, so any edit produces a fresh build and an up-to-date one is reused::

    python -m ixgs_ros.engine.kernels --build [--kind cpp|cuda|cuda-emu] [--verbose]

Environment: ``IXGS_NATIVE_SRC`` (sources, default ``<repo>/cuda_ext``), ``IXGS_NATIVE_BUILD`` (root of the
``cpp`` build, default ``<repo>/build/torch_ext``), ``IXGS_CUDA_BUILD`` (root of the CUDA builds, default
``<repo>/build/torch_ext_cuda``), ``IXGS_NATIVE_VERBOSE=1`` (compiler output), ``IXGS_NATIVE_SIMD=0`` (the
baseline float32 C++ kernels even where the CPU has AVX2), ``IXGS_CUDA_FMAD=1`` (let nvcc fuse multiply-adds:
faster, but the float32 forward is no longer bit-identical to the CPU kernels), ``TORCH_CUDA_ARCH_LIST``.

The C++ kernels follow ``torch.get_num_threads()`` and share torch's OpenMP runtime; on a machine whose cores
are busy with other processes, OpenMP's spin-waiting makes 2 threads much slower than 1 (the package sets
``OMP_WAIT_POLICY=PASSIVE`` unless the user set it).
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

__all__ = ["KINDS", "source_dir", "build_root", "sources", "extension_name", "library_path", "is_built", "load",
           "available", "unavailable_reason", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("cpp", "cuda", "cuda-emu")
# No -march=native (the binary must run on any x86-64/aarch64 of its kind) and no -ffast-math (bitwise-stable
# maths, parity with the torch reference). -fno-trapping-math only declares that floating-point exception
# flags are not observed, which lets GCC if-convert the masked exp() of the hot loops and vectorise them; it
# does not change any computed value.
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
# -fvisibility=hidden: the CUDA builds define the same C++ names as the CPU extension (the ABI of
# ixgs_kernels.h); hidden symbols can never be interposed by (or interpose) the other module's.
HOST_FLAGS = ["-O3", "-fvisibility=hidden"]
EMU_FLAGS = ["-O2", "-pthread", "-fvisibility=hidden"]

_lock = threading.Lock()
_modules: dict[str, object] = {}
_log = logging.getLogger(__name__)


def source_dir() -> Path:
    return Path(os.environ.get("IXGS_NATIVE_SRC", REPO_ROOT / "cuda_ext"))


def build_root(kind: str = "cpp") -> Path:
    if kind == "cpp":
        return Path(os.environ.get("IXGS_NATIVE_BUILD", REPO_ROOT / "build" / "torch_ext"))
    return Path(os.environ.get("IXGS_CUDA_BUILD", REPO_ROOT / "build" / "torch_ext_cuda"))


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kernel build {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def sources(kind: str = "cpp") -> tuple[list[Path], list[Path]]:
    """``(compiled sources, headers)`` of a build."""
    src = source_dir()
    if _check_kind(kind) == "cpp":
        main, headers = sorted(src.glob("*.cpp")), sorted(src.glob("*.h"))
    else:
        main = sorted(src.glob("*.cu"))
        headers = [h for h in sorted(src.glob("*.cuh")) + [src / "splat_math.h", src / "ixgs_kernels.h"]
                   if h.exists()]
    if not main:
        raise FileNotFoundError(f"no {'C++' if kind == 'cpp' else 'CUDA'} kernel sources in {src}")
    return main, headers


def _fmad() -> bool:
    return os.environ.get("IXGS_CUDA_FMAD", "0") not in ("", "0")


def nvcc_flags() -> list[str]:
    fmad = _fmad()
    return ["-O3", "-lineinfo", f"--fmad={'true' if fmad else 'false'}", f"-DIXGS_CUDA_FMAD={int(fmad)}",
            "-Xcompiler=-fvisibility=hidden"]


def _flags(kind: str) -> list[str]:
    if kind == "cpp":
        return CXX_FLAGS + LD_FLAGS
    if kind == "cuda-emu":
        return EMU_FLAGS
    return HOST_FLAGS + nvcc_flags() + [os.environ.get("TORCH_CUDA_ARCH_LIST", "")]


def extension_name(kind: str = "cpp") -> str:
    """``ixgs_native_<hash>`` / ``ixgs_cuda_<hash>`` / ``ixgs_cuda_emu_<hash>``."""
    import torch

    main, headers = sources(kind)
    h = hashlib.sha256()
    for p in main + headers:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    h.update(" ".join(_flags(kind)).encode())
    if kind == "cpp":
        h.update(torch.__version__.encode())
        h.update(sys.version.split()[0].encode())
    else:
        h.update(f"{torch.__version__} {torch.version.cuda} {sys.version.split()[0]}".encode())
    prefix = {"cpp": "ixgs_native", "cuda": "ixgs_cuda", "cuda-emu": "ixgs_cuda_emu"}[kind]
    return f"{prefix}_{h.hexdigest()[:16]}"


def library_path(kind: str = "cpp", name: str | None = None) -> Path:
    name = name or extension_name(kind)
    return build_root(kind) / name / f"{name}.so"


def is_built(kind: str = "cpp") -> bool:
    try:
        return library_path(kind).exists()
    except FileNotFoundError:
        return False


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def unavailable_reason() -> str | None:
    """Why the CUDA build cannot be built or used here, or None when it can."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if _nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def available(kind: str = "cuda") -> bool:
    """Whether ``kind`` can be built and used here (``cpp`` and ``cuda-emu``: always, given a compiler)."""
    if kind != "cuda":
        return True
    try:
        return unavailable_reason() is None
    except Exception:  # noqa: BLE001
        return False


def _import_library(name: str, path: Path):
    import torch  # noqa: F401  (the extension links against libtorch)

    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build(kind: str, name: str, verbose: bool) -> None:
    from torch.utils import cpp_extension

    # ninja lives in the virtual environment's bin/, which is not on PATH when python is called directly
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    main, _ = sources(kind)
    out = build_root(kind) / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if verbose:
        print(f"[ixgs kernels] building {name} in {out}", file=sys.stderr)
    common = dict(name=name, extra_include_paths=[str(source_dir())], build_directory=str(out), verbose=verbose,
                  is_python_module=True)
    if kind == "cpp":
        cpp_extension.load(sources=[str(p) for p in main], extra_cflags=CXX_FLAGS, extra_ldflags=LD_FLAGS, **common)
    elif kind == "cuda-emu":
        # the .cu sources compiled as C++ (cpp_extension would hand a .cu file to nvcc)
        wrappers = []
        for p in main:
            w = out / f"emu_{p.stem}.cpp"
            text = f'// generated: the CUDA source compiled against cuda_emu.cuh\n#include "{p.resolve()}"\n'
            if not w.exists() or w.read_text() != text:
                w.write_text(text)
            wrappers.append(str(w))
        cpp_extension.load(sources=wrappers, extra_cflags=EMU_FLAGS, extra_ldflags=["-pthread"], with_cuda=False,
                           **common)
    else:
        cpp_extension.load(sources=[str(p) for p in main], extra_cflags=HOST_FLAGS, extra_cuda_cflags=nvcc_flags(),
                           with_cuda=True, **common)
    if verbose:
        print(f"[ixgs kernels] built in {time.time() - t0:.1f} s", file=sys.stderr)


def load(kind: str = "cpp", verbose: bool | None = None):
    """The compiled extension module of ``kind``, built first when needed (thread safe, cached). RuntimeError
    when the CUDA build is unavailable here."""
    _check_kind(kind)
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if verbose is None:
            verbose = os.environ.get("IXGS_NATIVE_VERBOSE", "") not in ("", "0")
        if kind == "cuda":
            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"the CUDA kernels cannot be built here: {reason}")
        name = extension_name(kind)
        path = library_path(kind, name)
        mod = None
        if path.exists():
            try:
                mod = _import_library(name, path)
            except ImportError:  # e.g. another process is still linking it: build (waits for its lock)
                mod = None
        if mod is None:
            _log.warning("building the %s splatting kernels %s (one-off, a minute or two)", kind, name)
            _build(kind, name, verbose)
            mod = _import_library(name, path)
        if kind != "cpp" and bool(mod.emulated) != (kind == "cuda-emu"):
            raise RuntimeError(f"{path} is {'an emulated' if mod.emulated else 'a CUDA'} build, expected the other")
        _modules[kind] = mod
        return mod


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ixgs_ros.engine.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build (or reuse) the extension and print its path")
    parser.add_argument("--kind", choices=KINDS, default="cpp", help="which build (default cpp)")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    name = extension_name(args.kind)
    path = library_path(args.kind, name)
    if not args.build:
        reason = unavailable_reason() if args.kind == "cuda" else None
        print(f"{name}: {'built' if path.exists() else 'not built'} ({path})"
              + (f"; unavailable here: {reason}" if reason else ""))
        return 0
    try:
        mod = load(args.kind, verbose=args.verbose or None)
    except Exception as exc:  # noqa: BLE001
        print(f"[ixgs kernels] build failed: {exc}", file=sys.stderr)
        return 1
    if args.kind == "cpp":
        detail = f"openmp={mod.openmp}, simd={mod.simd_level()}"
    else:
        detail = f"emulated={mod.emulated}, fmad={mod.fmad}"
    print(f"[ixgs kernels] {name} ready ({detail}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

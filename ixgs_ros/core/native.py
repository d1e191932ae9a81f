"""Build and load the native C++ (OpenMP) splatting kernels in ``cuda_ext/``.

The extension is compiled with :func:`torch.utils.cpp_extension.load` (ninja) into
``<repo>/build/torch_ext/<name>/`` where ``<name>`` carries a hash of the kernel sources, the compiler flags and
the torch version, so any edit produces a fresh build and an up-to-date build is reused without compiling.

    python -m ixgs_ros.core.native --build     # build (or reuse) and print where the library is

Environment: ``IXGS_NATIVE_SRC`` (kernel sources, default ``<repo>/cuda_ext``), ``IXGS_NATIVE_BUILD``
(build root, default ``<repo>/build/torch_ext``), ``IXGS_NATIVE_VERBOSE=1`` (show the compiler output),
``IXGS_NATIVE_SIMD=0`` (use the baseline float32 kernels even where the CPU has AVX2).

The kernels follow ``torch.get_num_threads()``. They and torch share one OpenMP runtime; on a machine whose
cores are busy with other processes, OpenMP's spin-waiting makes 2 threads much slower than 1: there, use
``torch.set_num_threads(1)`` or start Python with ``OMP_WAIT_POLICY=PASSIVE``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["source_dir", "build_root", "extension_name", "library_path", "load", "is_built", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# No -march=native (the binary must run on any x86-64/aarch64 of its kind) and no -ffast-math (bitwise-stable
# maths, parity with the torch reference). -fno-trapping-math only declares that floating-point exception
# flags are not observed, which lets GCC if-convert the masked exp() of the hot loops and vectorise them; it
# does not change any computed value.
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
_lock = threading.Lock()
_module = None
_log = logging.getLogger(__name__)


def source_dir() -> Path:
    return Path(os.environ.get("IXGS_NATIVE_SRC", REPO_ROOT / "cuda_ext"))


def build_root() -> Path:
    return Path(os.environ.get("IXGS_NATIVE_BUILD", REPO_ROOT / "build" / "torch_ext"))


def _sources() -> tuple[list[Path], list[Path]]:
    src = source_dir()
    cpp = sorted(src.glob("*.cpp"))
    headers = sorted(src.glob("*.h"))
    if not cpp:
        raise FileNotFoundError(f"no C++ kernel sources (*.cpp) in {src}")
    return cpp, headers


def extension_name() -> str:
    """``ixgs_native_<hash>``: the hash covers sources, headers, flags, torch and Python versions."""
    import torch

    cpp, headers = _sources()
    h = hashlib.sha256()
    for p in cpp + headers:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    h.update(" ".join(CXX_FLAGS + LD_FLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.split()[0].encode())
    return f"ixgs_native_{h.hexdigest()[:16]}"


def library_path(name: str | None = None) -> Path:
    name = name or extension_name()
    return build_root() / name / f"{name}.so"


def is_built() -> bool:
    try:
        return library_path().exists()
    except FileNotFoundError:
        return False


def _import_library(name: str, path: Path):
    import torch  # noqa: F401  (the extension links against libtorch)

    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(verbose: bool | None = None):
    """Return the compiled extension module, building it first when needed (thread safe, cached)."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        if verbose is None:
            verbose = os.environ.get("IXGS_NATIVE_VERBOSE", "") not in ("", "0")
        name = extension_name()
        path = library_path(name)
        if path.exists():
            try:
                _module = _import_library(name, path)
                return _module
            except ImportError:  # e.g. another process is still linking it: build (waits for its lock)
                pass
        _log.warning("building the native splatting kernels %s (one-off, about a minute)", name)
        _build(name, verbose)
        _module = _import_library(name, path)
        return _module


def _build(name: str, verbose: bool) -> None:
    from torch.utils import cpp_extension

    # ninja lives in the virtual environment's bin/, which is not on PATH when python is called directly
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    cpp, _ = _sources()
    out = build_root() / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if verbose:
        print(f"[ixgs native] building {name} in {out}", file=sys.stderr)
    cpp_extension.load(
        name=name,
        sources=[str(p) for p in cpp],
        extra_include_paths=[str(source_dir())],
        extra_cflags=CXX_FLAGS,
        extra_ldflags=LD_FLAGS,
        build_directory=str(out),
        verbose=verbose,
        is_python_module=True,
    )
    if verbose:
        print(f"[ixgs native] built in {time.time() - t0:.1f} s", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ixgs_ros.core.native", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build (or reuse) the extension and print its path")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    name = extension_name()
    path = library_path(name)
    if not args.build:
        print(f"{name}: {'built' if path.exists() else 'not built'} ({path})")
        return 0
    try:
        mod = load(verbose=args.verbose or None)
    except Exception as exc:  # noqa: BLE001
        print(f"[ixgs native] build failed: {exc}", file=sys.stderr)
        return 1
    print(f"[ixgs native] {name} ready (openmp={mod.openmp}, simd={mod.simd_level()}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

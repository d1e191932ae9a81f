"""Timing of the splatting kernels: render forward/backward and voxelize forward/backward.

    python benchmarks/bench_kernels.py [--backends cpp,torch] [--quick] [--threads N] [--json out.json]

Scene: N Gaussians uniformly inside a 200 mm cube (scales ~ the mean nearest-neighbour spacing, random
rotations, as after R2-Gaussian initialisation), seen by a C-arm-like pinhole (source 600 mm from the centre,
the cube filling the detector) at 128^2 and 256^2; voxelized on a 32^3 sub-volume and on the full 128^3 grid.
Prints one JSON object (``--json`` also writes it) and a table of milliseconds (median of ``--repeat`` runs).
"""
from __future__ import annotations

import argparse
import json
import os
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ixgs_ros.engine import render as gr  # noqa: E402
from ixgs_ros.engine import voxelize as vx  # noqa: E402
from ixgs_ros.core.geometry import look_at  # noqa: E402
from ixgs_ros.core.volume import Grid  # noqa: E402

CUBE_MM = 200.0
SOURCE_MM = 600.0


def make_scene(n: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * CUBE_MM
    spacing = 0.55 * CUBE_MM / n ** (1.0 / 3.0)  # mean nearest-neighbour distance of uniform points
    scales = spacing * torch.exp(0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    density = 0.02 * torch.rand(n, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (means, scales, quats, density)]


def make_view(size: int):
    f = size / CUBE_MM * (SOURCE_MM - CUBE_MM / 2)  # the cube's near face fills the detector
    K = np.array([[f, 0.0, (size - 1) / 2 + 3.0], [0.0, f, (size - 1) / 2 - 2.0], [0.0, 0.0, 1.0]])
    T = look_at([SOURCE_MM * math.cos(0.4), SOURCE_MM * math.sin(0.4), 80.0], [0, 0, 0], [0, 0, 1])
    return K, T


def timeit(fn, repeat: int) -> dict:
    """Wall-clock median and minimum and process CPU time (all threads) per call, in ms.

    On a shared or oversubscribed machine the minimum wall time and the CPU time are the stable numbers.
    """
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median": 1e3 * statistics.median(wall), "min": 1e3 * min(wall), "cpu": 1e3 * statistics.median(cpu)}


def bench_render(n, size, backend, repeat, dtype):
    params = make_scene(n, dtype)
    K, T = make_view(size)
    out = {}

    def fwd():
        with torch.no_grad():
            return gr.render(*params, K, T, size, size, backend=backend)

    img = gr.render(*params, K, T, size, size, backend=backend)
    grad = torch.randn_like(img)

    def fwd_bwd():
        for p in params:
            p.grad = None
        gr.render(*params, K, T, size, size, backend=backend).backward(grad)

    with torch.no_grad():
        proj = gr.project_gaussians(*params, K, T, size, size)
    m2d, con, w, rad = (t.detach().requires_grad_(t is not proj.radius) for t in proj[:4])
    x0, x1, y0, y1, empty = gr._pixel_boxes(m2d, rad, size, size)

    def kern_fwd():
        with torch.no_grad():
            gr.rasterize(m2d, con, w, rad, size, size, backend=backend)

    out["forward_ms"] = timeit(fwd, repeat)
    out["forward_backward_ms"] = timeit(fwd_bwd, repeat)
    out["rasterize_only_forward_ms"] = timeit(kern_fwd, repeat)
    out["visible"] = int((~empty).sum())
    out["mean_radius_px"] = float(rad[rad > 0].mean())
    return out


def bench_voxelize(n, size, backend, repeat, dtype, sub: bool):
    params = make_scene(n, dtype)
    full = Grid.centered(128, CUBE_MM / 128)
    grid = vx.sub_grid(full, (40, 50, 60), (size,) * 3) if sub else Grid.centered(size, CUBE_MM / size)

    def fwd():
        with torch.no_grad():
            return vx.voxelize(*params, grid, backend=backend)

    vol = vx.voxelize(*params, grid, backend=backend)
    grad = torch.randn_like(vol)

    def fwd_bwd():
        for p in params:
            p.grad = None
        vx.voxelize(*params, grid, backend=backend).backward(grad)

    return {"forward_ms": timeit(fwd, repeat), "forward_backward_ms": timeit(fwd_bwd, repeat)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="cpp", help="comma list of torch,cpp")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    ap.add_argument("--quick", action="store_true", help="small cases only (20k Gaussians, 128^2, 32^3)")
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    render_cases = [(20000, 128)] if args.quick else [(20000, 128), (20000, 256), (50000, 128), (50000, 256)]
    vox_cases = [(50000, 32, True)] if args.quick else [(50000, 32, True), (50000, 128, False)]
    rows, results = [], {"render": [], "voxelize": []}
    for be in backends:
        for n, size in render_cases:
            r = bench_render(n, size, be, args.repeat, dtype)
            results["render"].append({"backend": be, "n": n, "size": size, **r})
            rows.append((be, f"render N={n} {size}x{size}", r["forward_ms"], r["forward_backward_ms"]))
        for n, size, sub in vox_cases:
            r = bench_voxelize(n, size, be, args.repeat, dtype, sub)
            results["voxelize"].append({"backend": be, "n": n, "size": size, "sub_volume": sub, **r})
            rows.append((be, f"voxelize N={n} {size}^3{' (sub-volume)' if sub else ''}", r["forward_ms"],
                         r["forward_backward_ms"]))

    mod = gr._native_module()
    results["env"] = {"threads": torch.get_num_threads(), "dtype": str(dtype), "torch": torch.__version__,
                      "machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_1min": os.getloadavg()[0],
                      "simd": mod.simd_level() if mod is not None else None,
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(results, indent=1))
    env = results["env"]
    print(f"\n{env['threads']} threads, simd {env['simd']}, load average {env['loadavg_1min']:.1f} on {env['cpus']} "
          "CPUs; ms per call: wall median / wall min / process CPU time")
    if env["loadavg_1min"] > env["cpus"] and env["threads"] > 1:
        print("note: the machine is busy; OpenMP spin-waiting makes multi-threaded timings unreliable here "
              "(try --threads 1 or OMP_WAIT_POLICY=PASSIVE)")
    print(f"{'backend':8s} {'case':38s} {'forward':>22s} {'forward+backward':>22s}")
    for be, case, f, fb in rows:
        fmt = "{median:6.1f} /{min:6.1f} /{cpu:6.1f}"
        print(f"{be:8s} {case:38s} {fmt.format(**f):>22s} {fmt.format(**fb):>22s}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

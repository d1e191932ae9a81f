"""GPU timing of the CUDA splatting kernels (ixgs_ros.engine.kernels_cuda) against the torch reference on the same GPU.

    python benchmarks/bench_cuda.py [--n 50000] [--views 25] [--size 256] [--grid 256] [--repeat 10] [--json F]
    python benchmarks/bench_cuda.py --sections recon [--iterations 500]   # a short full reconstruction
    python benchmarks/bench_cuda.py --smoke                        # one tiny call of each kernel (for sanitizers)

STATUS: written without a GPU; first run is scripts/gpu_check.sh on a GPU machine (see cuda_ext/README.md).

Cases (float32, the scene of benchmarks/bench_kernels.py: N Gaussians in a 200 mm cube):
* render: ``--views`` C-arm views of ``--size``^2 on a 200 degree arc; forward of all views, and forward+backward
  (gradients to means/scales/quats/density); the rasterizer kernels alone (forward / backward) on fixed splats.
* voxelize: the cube sampled on a ``--grid``^3 grid; forward, forward+backward; kernels alone.
Times are CUDA-event medians of ``--repeat`` runs after a warm-up. "torch" is the pure-torch reference
(gaussians_render._rasterize_torch / voxelize._voxelize_torch) running on the same GPU.

Roofline figures (kernel rows). Work models, stated so that the numbers can be judged:
* rasterizer: E = sum over visible splats of the pixels inside their 3-sigma ellipse (9 pi / sqrt(det conic));
  forward 30 flop per (pixel, splat) evaluation (offset, quadratic form, exp polynomial, accumulate), backward 45
  (plus six moments). Bytes: forward reads each (tile, splat) pair's 40 B of parameters and writes the image;
  backward reads the gradient image and the pairs' parameters, writes and re-reads 48 B of partials per pair.
* voxelizer: E = sum over Gaussians of the voxels in their index box; forward 40 flop per evaluation, backward 60;
  bytes as above with 68 B of parameters and 80 B of partials per (brick, Gaussian) pair, plus the volume.
Peaks: FP32 = SMs x FP32 lanes per SM x 2 x SM clock (the kernels are built with --fmad=false, so about half of
that is reachable); memory = memory clock x bus width x 2 (DDR), and a measured device-to-device copy.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import CUBE_MM, SOURCE_MM, make_scene  # noqa: E402
from ixgs_ros.engine import render as gr  # noqa: E402
from ixgs_ros.engine import kernels_cuda as native_cuda  # noqa: E402
from ixgs_ros.engine import voxelize as vx  # noqa: E402
from ixgs_ros.core.geometry import View, look_at  # noqa: E402
from ixgs_ros.core.volume import Grid  # noqa: E402

DEVICE = "cuda"  # the timing helpers also run on "cpu" (with the emulated module): a dry run of this script's logic
FLOP_RASTER_FWD, FLOP_RASTER_BWD = 30, 45
FLOP_VOXEL_FWD, FLOP_VOXEL_BWD = 40, 60
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64}  # others (8.6+, 9.x, 10.x, 12.x): 128


# ----------------------------------------------------------------------------------------------- device facts
def device_peaks() -> dict:
    p = torch.cuda.get_device_properties(0)
    out = {"name": p.name, "cc": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
           "memory_gib": round(p.total_memory / 2**30, 1)}
    sm_khz = getattr(p, "clock_rate", 0) or 0
    mem_khz = getattr(p, "memory_clock_rate", 0) or 0
    bus = getattr(p, "memory_bus_width", 0) or 0
    if not sm_khz or not mem_khz:
        try:  # nvidia-ml-py: maximum clocks in MHz
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            sm_khz = sm_khz or 1000 * pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            mem_khz = mem_khz or 1000 * pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
        except Exception:  # noqa: BLE001
            pass
    lanes = FP32_LANES.get((p.major, p.minor), 128)
    out["sm_clock_mhz"] = sm_khz / 1000 if sm_khz else None
    out["fp32_peak_tflops"] = p.multi_processor_count * lanes * 2 * sm_khz * 1e3 / 1e12 if sm_khz else None
    out["mem_peak_tbs"] = 2 * mem_khz * 1e3 * bus / 8 / 1e12 if (mem_khz and bus) else None
    # measured: device-to-device copy of 1 GiB (bytes read + written)
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = cuda_time(lambda: y.copy_(x), 5)
    out["copy_tbs"] = 2 * x.numel() * 4 / (ms * 1e-3) / 1e12
    del x, y
    return out


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def cuda_time(fn, repeat: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() on the GPU (CUDA events; wall clock when DEVICE is "cpu")."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        if DEVICE != "cuda":
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rates(ms: float, flops: float, nbytes: float, peaks: dict) -> dict:
    s = ms * 1e-3
    r = {"gflops": flops / s / 1e9, "gbs": nbytes / s / 1e9}
    if peaks.get("fp32_peak_tflops"):
        r["flop_pct_peak"] = 100 * r["gflops"] / (1e3 * peaks["fp32_peak_tflops"])
    bw = peaks.get("mem_peak_tbs") or peaks.get("copy_tbs")
    if bw:
        r["bw_pct_peak"] = 100 * r["gbs"] / (1e3 * bw)
    return r


# ----------------------------------------------------------------------------------------------- scenes
def arc_views(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` views on a 200 degree arc around the cube, the cube's near face filling the detector."""
    f = size / CUBE_MM * (SOURCE_MM - CUBE_MM / 2)
    K = np.array([[f, 0.0, (size - 1) / 2 + 3.0], [0.0, f, (size - 1) / 2 - 2.0], [0.0, 0.0, 1.0]])
    out = []
    for k in range(n):
        a = math.radians(-100 + 200 * k / max(1, n - 1))
        src = [SOURCE_MM * math.cos(a), SOURCE_MM * math.sin(a), 80.0 * math.cos(3 * a)]
        out.append((K, look_at(src, [0, 0, 0], [0, 0, 1])))
    return out


def cuda_scene(n: int):
    return [p.detach().to(DEVICE).requires_grad_() for p in make_scene(n, torch.float32)]


# ----------------------------------------------------------------------------------------------- render
def bench_render(mod, args, peaks) -> list[dict]:
    params = cuda_scene(args.n)
    views = arc_views(args.views, args.size)
    S = args.size
    rows = []

    def render_all(backend, grad):
        imgs = []
        for K, T in views:
            if backend == "cuda":
                proj = gr.project_gaussians(*params, K, T, S, S)
                imgs.append(native_cuda.rasterize(proj.mean2d, proj.conic, proj.weight, proj.radius, S, S, module=mod))
            else:
                imgs.append(gr.render(*params, K, T, S, S, backend="torch"))
        if grad:
            sum(img.sum() for img in imgs).backward()
            for p in params:
                p.grad = None

    for be in ("cuda", "torch"):
        rep = args.repeat if be == "cuda" else max(2, args.repeat // 4)
        with torch.no_grad():
            fwd = cuda_time(lambda: render_all(be, False), rep)
        fb = cuda_time(lambda: render_all(be, True), rep)
        rows.append({"case": f"render {args.views} views {S}^2 N={args.n}", "backend": be, "forward_ms": fwd,
                     "forward_backward_ms": fb})

    # kernels alone on fixed splats of all views
    with torch.no_grad():
        projs = [gr.project_gaussians(*params, K, T, S, S) for K, T in views]
    splats = [(p.mean2d.contiguous(), p.conic.contiguous(), p.weight.contiguous(), p.radius.contiguous())
              for p in projs]
    lists = [mod.rasterize_forward(*s, S, S, 3.0) for s in splats]
    grad = torch.rand(S, S, device=DEVICE)
    pairs = sum(int(ids.numel()) for _, _, ids in lists)
    evals = 0.0
    for m, c, w, r in splats:
        vis = r > 0
        det = (c[vis, 0] * c[vis, 2] - c[vis, 1] ** 2).clamp_min(1e-30)
        evals += float((9 * math.pi / det.sqrt()).sum())
    n_vis = sum(int((s[3] > 0).sum()) for s in splats)
    fwd_ms = cuda_time(lambda: [mod.rasterize_forward(*s, S, S, 3.0) for s in splats], args.repeat)
    bwd_ms = cuda_time(lambda: [mod.rasterize_backward(*s, off, ids, grad, S, S, 3.0)
                                for s, (_, off, ids) in zip(splats, lists)], args.repeat)
    npix = args.views * S * S
    fwd_bytes = pairs * 40 + npix * 4
    bwd_bytes = npix * 4 + pairs * (40 + 2 * 48) + n_vis * 24
    rows.append({"case": f"rasterize kernels {args.views}x{S}^2 ({pairs} pairs)", "backend": "cuda",
                 "forward_ms": fwd_ms, "backward_ms": bwd_ms, "evaluations": evals,
                 "forward_rates": rates(fwd_ms, evals * FLOP_RASTER_FWD, fwd_bytes, peaks),
                 "backward_rates": rates(bwd_ms, evals * FLOP_RASTER_BWD, bwd_bytes, peaks)})
    return rows


# ----------------------------------------------------------------------------------------------- voxelize
def bench_voxelize(mod, args, peaks) -> list[dict]:
    params = cuda_scene(args.n)
    G = args.grid
    grid = Grid.centered(G, CUBE_MM / G)
    A = torch.tensor(grid.affine[:3, :4], dtype=torch.float64, device=DEVICE)
    rows = []

    def run(backend, grad):
        if backend == "cuda":
            icov, extent, bounds = vx.gaussian_voxel_params(params[0], params[1], params[2], grid)
            vol = native_cuda.voxelize_kernel(params[0], icov, params[3], extent, bounds, A, grid.shape, module=mod)
        else:
            vol = vx.voxelize(*params, grid, backend="torch")
        if grad:
            vol.sum().backward()
            for p in params:
                p.grad = None

    for be in ("cuda", "torch"):
        if be == "torch" and args.skip_torch_voxelize:
            continue
        rep = args.repeat if be == "cuda" else 2
        with torch.no_grad():
            fwd = cuda_time(lambda: run(be, False), rep, warmup=1)
        fb = cuda_time(lambda: run(be, True), rep, warmup=1)
        rows.append({"case": f"voxelize {G}^3 N={args.n}", "backend": be, "forward_ms": fwd,
                     "forward_backward_ms": fb})

    with torch.no_grad():
        icov, extent, bounds = vx.gaussian_voxel_params(params[0], params[1], params[2], grid)
        inputs = [t.detach().contiguous() for t in (params[0], icov, params[3], extent, bounds)] + [A]
    vol, off, ids = mod.voxelize_forward(*inputs, *grid.shape)
    gvol = torch.rand_like(vol)
    b = bounds.long()
    sizes = (b[:, 1::2] - b[:, 0::2] + 1).clamp_min(0)
    evals = float(sizes.prod(1).sum())
    pairs, nvox = int(ids.numel()), G ** 3
    fwd_ms = cuda_time(lambda: mod.voxelize_forward(*inputs, *grid.shape), args.repeat)
    bwd_ms = cuda_time(lambda: mod.voxelize_backward(*inputs, off, ids, gvol, *grid.shape), args.repeat)
    rows.append({"case": f"voxelize kernels {G}^3 ({pairs} pairs)", "backend": "cuda", "forward_ms": fwd_ms,
                 "backward_ms": bwd_ms, "evaluations": evals,
                 "forward_rates": rates(fwd_ms, evals * FLOP_VOXEL_FWD, pairs * 68 + nvox * 4, peaks),
                 "backward_rates": rates(bwd_ms, evals * FLOP_VOXEL_BWD,
                                         nvox * 4 + pairs * (68 + 2 * 80) + args.n * 40, peaks)})
    return rows


# ----------------------------------------------------------------------------------------------- reconstruction
def bench_recon(mod, args, backends=("cuda", "torch"), **config) -> list[dict]:
    """Phantom scan of ``args.views`` views, reconstructed once per splatting backend (EngineConfig defaults, the
    torch initial solve on the GPU, ``args.iterations`` iterations; ``config``: further dotted-key overrides)."""
    from ixgs_ros.simulation import phantom
    from ixgs_ros.engine import EngineConfig, ReconstructionEngine
    from ixgs_ros.evaluation.metrics import psnr_3d

    S, sod, sdd = args.size, 400.0, 700.0
    ell = phantom.shepp_logan_3d(60.0)
    views = []
    for k in range(args.views):
        a = math.radians(-100 + 200 * k / max(1, args.views - 1))
        src = sod * np.array([math.sin(a), -math.cos(a), 0.15 * math.sin(3 * a)])
        f = sdd / (240.0 / S)  # 240 mm detector
        K = np.array([[f, 0.0, (S - 1) / 2 + 2.5], [0.0, f, (S - 1) / 2 - 1.5], [0.0, 0.0, 1.0]])
        views.append(View(K, look_at(src, (0, 0, 0), (0, 0, 1)), S, S, meta={"sdd": sdd}))
    images = phantom.project(ell, views)
    grid = Grid.centered(128, 1.0)
    gt = phantom.voxelize(ell, grid)
    rows = []
    for be in backends:
        with contextlib.nullcontext():
            cfg = EngineConfig.from_dict({"iterations": args.iterations, "device": DEVICE, "backend": be,
                                          "init.solver": "torch", "seed": 0, **config})
            eng = ReconstructionEngine(grid, cfg)
            for v, img in zip(views, images):
                eng.add_view(v, img)
            sync()
            t0 = time.perf_counter()
            eng.step(1)  # initialisation + first iteration
            sync()
            t1 = time.perf_counter()
            eng.step(args.iterations - 1)
            sync()
            t2 = time.perf_counter()
            vol = eng.volume()
        rows.append({"case": f"reconstruction {args.views} views {S}^2, {args.iterations} it, 128^3",
                     "backend": be, "init_s": t1 - t0, "iterations_s": t2 - t1,
                     "ms_per_iteration": 1e3 * (t2 - t1) / max(1, args.iterations - 1),
                     "gaussians": len(eng.model), "psnr_3d": psnr_3d(vol, gt)})
    return rows


def smoke(mod) -> int:
    """One small forward/backward of each kernel, checked for finiteness (to run under compute-sanitizer)."""
    params = cuda_scene(300)
    K, T = arc_views(1, 64)[0]
    proj = gr.project_gaussians(*params, K, T, 64, 48)
    img = native_cuda.rasterize(proj.mean2d, proj.conic, proj.weight, proj.radius, 64, 48, module=mod)
    img.sum().backward()
    grid = Grid.centered((20, 17, 23), CUBE_MM / 20)
    icov, extent, bounds = vx.gaussian_voxel_params(params[0], params[1], params[2], grid)
    vol = native_cuda.voxelize_kernel(params[0], icov, params[3], extent, bounds,
                                      torch.tensor(grid.affine[:3, :4], dtype=torch.float64), grid.shape, module=mod)
    vol.sum().backward()
    sync()
    ok = all(bool(torch.isfinite(t).all()) for t in [img, vol] + [p.grad for p in params])
    print(f"smoke: image sum {float(img.detach().sum()):.4g}, volume sum {float(vol.detach().sum()):.4g}, finite={ok}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------- main
def fmt_rates(r: dict | None) -> str:
    if not r:
        return ""
    s = f"{r['gflops']:8.0f} GFLOP/s {r['gbs']:7.0f} GB/s"
    if "flop_pct_peak" in r:
        s += f" ({r['flop_pct_peak']:4.1f}% FP32"
        s += f", {r['bw_pct_peak']:4.1f}% BW)" if "bw_pct_peak" in r else ")"
    return s


def print_table(results: dict) -> None:
    d = results["device"]
    num = lambda v, f: format(v, f) if v is not None else "?"  # noqa: E731
    print(f"\n{d['name']} (cc {d.get('cc')}, {d.get('sms')} SMs, SM clock {d.get('sm_clock_mhz')} MHz): FP32 peak "
          f"{num(d.get('fp32_peak_tflops'), '.1f')} TFLOP/s, memory peak {num(d.get('mem_peak_tbs'), '.2f')} TB/s, "
          f"measured copy {num(d.get('copy_tbs'), '.2f')} TB/s; kernels built with fmad={results['fmad']}")
    print(f"{'case':52s} {'backend':7s} {'forward':>10s} {'fwd+bwd':>10s} {'backward':>10s}  rates (fwd | bwd)")
    for r in results["rows"]:
        if "ms_per_iteration" in r:
            print(f"{r['case']:52s} {r['backend']:7s} init {r['init_s']:.1f} s, {r['ms_per_iteration']:.1f} ms/it, "
                  f"{r['gaussians']} Gaussians, PSNR3D {r['psnr_3d']:.2f} dB")
            continue
        f = lambda k: f"{r[k]:8.2f}ms" if k in r else " " * 10  # noqa: E731
        rt = f"{fmt_rates(r.get('forward_rates'))} | {fmt_rates(r.get('backward_rates'))}" \
            if "forward_rates" in r else ""
        times = f"{f('forward_ms')} {f('forward_backward_ms')} {f('backward_ms')}"
        print(f"{r['case']:52s} {r['backend']:7s} {times}  {rt}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000, help="Gaussians")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--size", type=int, default=256, help="detector pixels per side")
    ap.add_argument("--grid", type=int, default=256, help="voxels per side")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--skip-torch-voxelize", action="store_true", help="do not time the torch reference voxelizer")
    ap.add_argument("--sections", default="render,voxelize",
                    help="comma list of render, voxelize, recon (a full reconstruction, torch vs cuda)")
    ap.add_argument("--iterations", type=int, default=500, help="reconstruction iterations (section recon)")
    ap.add_argument("--smoke", action="store_true", help="only one tiny call of each kernel")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device", file=sys.stderr)
        return 2
    mod = native_cuda.load()
    if args.smoke:
        return smoke(mod)
    peaks = device_peaks()
    results = {"device": peaks, "torch": torch.__version__, "cuda": torch.version.cuda, "fmad": bool(mod.fmad),
               "host": platform.node(), "rows": []}
    available = {"render": lambda: bench_render(mod, args, peaks),
                 "voxelize": lambda: bench_voxelize(mod, args, peaks),
                 "recon": lambda: bench_recon(mod, args)}
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(wanted) - set(available)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {sorted(available)}")
    status = 0
    for name in wanted:
        fn = available[name]
        try:
            results["rows"] += fn()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other sections
            status = 1
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            print(f"[bench_cuda] {name} failed: {exc}", file=sys.stderr)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    print_table(results)
    return status


if __name__ == "__main__":
    sys.exit(main())

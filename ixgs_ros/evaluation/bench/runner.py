"""Running the benchmark: each method in its own process, then scoring, records, tables and plots."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import asdict
from typing import Callable

import numpy as np

from ...core.resources import peak_rss_mb, rss_now_mb
from .cases import (IXGS_METHODS, RESULTS_SCHEMA, RTK_METHODS, BenchConfig, ensure_scan, ordered_for_engine,
                    primary_angles, select_cases, training_subset)
from .machine import cpu_times, machine_info, steal_pct
from .plots import montage, plot_time, plot_views
from .report import clean_json, fmt, protocol_text, write_json, write_markdown
from .scoring import import_baseline_records, load_baseline, margins, roi_beyond_ct_mm, score


def _warm_up_rtk(grid, views) -> None:
    """Run each RTK filter once on a tiny problem so that ITK's lazy loading is not timed."""
    from ...core import rtk
    from ...core.volume import Grid
    from .. import baselines

    vs = [v.scaled(16.0 / v.width) for v in views[:3]]
    proj = np.zeros((len(vs), vs[0].height, vs[0].width), np.float32)
    proj[:, 4:-4, 4:-4] = 1.0
    tiny = Grid.centered(8, 8.0, grid.center)
    for m in ("fdk", "sart", "cg"):
        baselines.reconstruct((vs, proj), tiny, m, 1, solve_grid=tiny)
    rtk.forward_project(np.ones(tiny.shape, np.float32), tiny, vs)
    rtk.preload()  # + the Joseph back projector of the engine's fine re-solve


def run_method(job: dict) -> dict:
    """One method on one training subset (runs in the child process when isolated).

    ``job``: ``scan_dir``, ``order`` (scan indices, training and held-out interleaved), ``holdout_positions``,
    ``method``, ``iterations`` (None: default), ``engine`` (EngineConfig overrides), ``seed``,
    ``curve_every``, ``threads``, ``result_path`` (an .npz receiving ``volume`` and ``holdout_pred``).
    Returns the record's timing/memory/info part (metrics are computed by the caller)."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    from ...core import rtk
    from ...core.solve_grid import default_solve_grid
    from ...core.volume import resample
    from .. import baselines
    from ...core.scan import Scan
    from ...core.volume import load_nifti

    if job.get("threads"):
        rtk.set_threads(int(job["threads"]))
    method = job["method"]
    scan = Scan.load(job["scan_dir"]).subset(job["order"])
    gt, grid = load_nifti(Path(job["scan_dir"]) / "gt.nii.gz")
    hpos = list(job["holdout_positions"])
    tpos = [k for k in range(len(scan)) if k not in set(hpos)]
    train_views = [scan.views[k] for k in tpos]
    train_proj = scan.projections[tpos]
    held_views = [scan.views[k] for k in hpos]
    _warm_up_rtk(grid, train_views)  # also for ixgs: its initialisation runs RTK SART
    rec: dict = {"method": method}
    rss_before = rss_now_mb()
    peak_before = peak_rss_mb()
    gpu = method.endswith("-cuda")
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    if method in RTK_METHODS:
        # the grid holding the material the rays cross: SART/CG solve on it, FDK's held-out views come from it
        solve = default_solve_grid(train_views, grid, projections=train_proj, spacing=job.get("rtk_spacing"))
        t0 = time.perf_counter()
        if method == "fdk":
            vol, info = baselines.reconstruct((train_views, train_proj), grid, "fdk")
            wall = time.perf_counter() - t0
        else:
            sol, info = baselines.reconstruct((train_views, train_proj), solve, method, job.get("iterations"),
                                       solve_grid=solve)
            vol = resample(sol, solve, grid)
            wall = time.perf_counter() - t0
        peak = peak_rss_mb()
        # held-out views: forward projection of the solution on the solve grid (material outside the ROI too)
        if method == "fdk":
            sol, _ = baselines.reconstruct((train_views, train_proj), solve, "fdk")
        pred = rtk.forward_project(sol, solve, held_views)
        rec.update({"iterations": int(info["iterations"]), "wall_s": wall,
                    "info": {k: info[k] for k in ("solve_shape", "solve_spacing_mm", "lambda", "subset_size",
                                                  "hann", "positivity") if k in info},
                    "holdout_2d_source": f"forward projection (RTK Joseph) of the solution on the solve grid "
                                         f"{'x'.join(map(str, solve.shape))} @ {float(np.max(solve.spacing)):g} mm"
                                         + (" (an extra, untimed FDK on that grid)" if method == "fdk" else "")})
    else:
        from ...engine import EngineConfig
        from ..metrics import psnr_3d
        from ...pipeline import reconstruct_scan

        overrides = dict(job.get("engine") or {})
        if job.get("iterations") is not None:
            overrides["iterations"] = int(job["iterations"])
        overrides["seed"] = int(job["seed"])  # the held-out positions were chosen with this seed
        overrides["device"] = "cuda" if gpu else "cpu"
        ecfg = EngineConfig.from_dict(overrides)
        every = max(1, int(job.get("curve_every") or ecfg.iterations))
        eval_s = [0.0]

        def evaluate(engine):
            t = time.perf_counter()
            value = psnr_3d(engine.volume(), gt)
            eval_s[0] += time.perf_counter() - t
            return {"psnr_3d": value, "time_s": engine.wall_time}

        res = reconstruct_scan(scan, grid, ecfg, holdout=len(hpos), progress=False, log_every=every,
                               eval_callback=evaluate)
        if sorted(res.report["views_holdout"]) != sorted(hpos):  # pragma: no cover - guarded by construction
            raise RuntimeError("the engine held out other views than the benchmark's")
        vol = res.volume
        rep = res.report
        wall = float(rep["optimisation_time_s"] + rep["volume_time_s"])
        peak = peak_rss_mb()
        pred = np.stack([res.engine.render_view(k) for k in hpos])
        rec.update({"iterations": int(rep["iterations"]), "wall_s": wall,
                    "info": {"num_gaussians": rep["num_gaussians"],
                             "num_context_gaussians": rep["num_context_gaussians"],
                             "optimisation_s": rep["optimisation_time_s"], "volume_s": rep["volume_time_s"],
                             "init_stages_s": rep["init_stages_s"],
                             "curve_eval_s": eval_s[0], "device": ecfg.device,
                             "engine_config": rep["config"]},
                    "curve": [{"iteration": int(e["iteration"]), "time_s": float(e["time_s"]),
                               "psnr_3d": float(e["psnr_3d"]), "loss": float(e["loss"]),
                               "num_gaussians": int(e["num_gaussians"])} for e in rep["loss_curve"]],
                    "holdout_2d_source": "ixgs render of the whole model plus its exterior (the fixed "
                                         "background or the context Gaussians, per context_mode)"})
    rec["peak_rss_mb"] = peak
    rec["rss_before_mb"] = rss_before
    rec["peak_rss_before_mb"] = peak_before
    rec["peak_rss_growth_mb"] = peak - peak_before  # how far the method raised the process's high-water mark
    if gpu:
        import torch

        rec["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    np.savez(job["result_path"], volume=np.asarray(vol, np.float32), holdout_pred=np.asarray(pred, np.float32))
    return rec


def _run_isolated(job: dict) -> dict:
    """:func:`run_method` in a fresh interpreter (``python -c``; unlike ``multiprocessing``'s spawn it does not
    re-import the caller's main module). The job and the record travel as JSON files next to the result."""
    base = Path(job["result_path"]).with_suffix("")
    job_path, rec_path = base.with_suffix(".job.json"), base.with_suffix(".rec.json")
    job_path.write_text(json.dumps(job))
    rec_path.unlink(missing_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from ixgs_ros.evaluation.bench.runner import _child_main; _child_main(sys.argv[1], sys.argv[2])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(job_path), str(rec_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not rec_path.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise RuntimeError(f"method process exited with status {proc.returncode}:\n{tail}")
        return json.loads(rec_path.read_text())
    finally:
        job_path.unlink(missing_ok=True)
        rec_path.unlink(missing_ok=True)


def _child_main(job_path: str, rec_path: str) -> None:
    """Entry point of an isolated method run (see :func:`_run_isolated`)."""
    import warnings

    warnings.filterwarnings("ignore", message="builtin type")  # ITK's SWIG wrappers
    rec = run_method(json.loads(Path(job_path).read_text()))
    Path(rec_path).write_text(json.dumps(clean_json(rec)))


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described by ``cfg``; writes results.json, results.md and plots into ``out_dir``
    and returns the results dict."""
    from ...core.scan import Scan
    from ...core.volume import load_nifti, save_nifti

    cfg.validate()
    say = progress or (lambda msg: None)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    cache = Path(cfg.scan_cache) if cfg.scan_cache else out / "scans"
    cases = select_cases(cfg.cases)
    n_total = max(cfg.views) + cfg.holdout
    t_start = time.perf_counter()
    cpu_start = cpu_times()
    machine = machine_info()
    results = {"schema": RESULTS_SCHEMA, "command": cfg.command, "date": machine["date"], "machine": machine,
               "config": {k: v for k, v in asdict(cfg).items() if k not in ("command",)},
               "protocol": protocol_text(), "cases": [], "records": []}

    ct_cache = {}

    def ct_loader():
        if "ct" not in ct_cache:
            from ...simulation.ct import load_ct

            ct_cache["ct"] = load_ct()
        return ct_cache["ct"]

    jobs_total = len(cases) * len(cfg.views) * len(cfg.methods)
    say(f"[bench] {len(cases)} case(s) x {len(cfg.views)} view count(s) x {len(cfg.methods)} method(s) = "
        f"{jobs_total} runs -> {out}")
    done = 0
    for case in cases:
        scan_dir, reused = ensure_scan(case, n_total, cfg, cache, say, ct_loader)
        full = Scan.load(scan_dir)
        gt, grid = load_nifti(scan_dir / "gt.nii.gz")
        labels = np.rint(load_nifti(scan_dir / "labels.nii.gz")[0]).astype(np.int16)
        primary = primary_angles(full)
        sim = full.extra.get("simulation", {})
        from ..metrics import psnr_3d

        case_rec = {"name": case.name, "roi": case.roi, "mode": case.mode, "arc_deg": case.arc_deg,
                    "trajectory": "random-arc", "scan_dir": str(scan_dir), "scan_reused": reused,
                    "n_views_simulated": len(full), "detector": [full.width, full.height],
                    "grid": {"shape": list(grid.shape), "spacing_mm": [float(s) for s in grid.spacing]},
                    "pixel_mm": sim.get("pixel_mm"), "renderer": sim.get("renderer"),
                    "zero_psnr_3d": psnr_3d(np.zeros_like(gt), gt),
                    "roi_beyond_ct_mm": roi_beyond_ct_mm(full.extra), "subsets": {}}
        results["cases"].append(case_rec)
        if case_rec["roi_beyond_ct_mm"]:
            say(f"[bench] note: {case.name}'s ROI reaches {case_rec['roi_beyond_ct_mm']:.1f} mm beyond the CT; the "
                "ground truth is 0 there (the phantom ends)")
        for n in cfg.views:
            train, held = training_subset(primary, n, cfg.holdout, cfg.seed)
            order, hpos = ordered_for_engine(train, held, cfg.seed)
            case_rec["subsets"][str(n)] = {"train": train, "holdout": held}
            held_proj = full.projections[held]
            volumes = {}
            for method in cfg.methods:
                done += 1
                tag = f"{case.name} n={n} {method}"
                say(f"[bench] ({done}/{jobs_total}) {tag} ...")
                result_path = work / f"{case.name}-{n}v-{method}.npz"
                its = cfg.rtk_iterations.get(method) if method in RTK_METHODS else cfg.iterations
                eng_its = cfg.engine.get("iterations", cfg.iterations)
                curve_every = None
                if method in IXGS_METHODS:
                    from ...engine import EngineConfig

                    total_its = int(eng_its if eng_its is not None else EngineConfig().iterations)
                    curve_every = max(1, math.ceil(total_its / max(1, cfg.curve_points)))
                job = {"scan_dir": str(scan_dir), "order": order, "holdout_positions": hpos, "method": method,
                       "iterations": its, "rtk_spacing": cfg.rtk_spacing, "engine": cfg.engine, "seed": cfg.seed,
                       "curve_every": curve_every,
                       "threads": cfg.threads, "result_path": str(result_path)}
                rec = {"case": case.name, "roi": case.roi, "mode": case.mode, "arc_deg": case.arc_deg,
                       "n_views": n, "n_holdout": len(held), "method": method,
                       "memory_isolated": bool(cfg.isolate)}
                t0 = time.perf_counter()
                cpu0 = cpu_times()
                try:
                    rec.update(_run_isolated(job) if cfg.isolate else run_method(job))
                    rec["cpu_steal_pct"] = steal_pct(cpu0, cpu_times())
                    with np.load(result_path) as z:
                        vol, pred = z["volume"], z["holdout_pred"]
                    rec["metrics"] = score(vol, pred, gt, grid, labels, held_proj, cfg.surface)
                    volumes[method] = vol
                    if cfg.save_volumes:
                        vdir = out / "volumes"
                        vdir.mkdir(exist_ok=True)
                        save_nifti(vdir / f"{case.name}-{n}v-{method}.nii.gz", vol, grid,
                                   f"mu [1/mm] ixgs bench {method}")
                    m = rec["metrics"]
                    say(f"[bench]   {tag}: PSNR3D {m['psnr_3d']:.2f} dB, SSIM3D {m['ssim_3d']:.3f}, "
                        f"PSNR2D {m['psnr_2d']:.2f} dB, wall {rec['wall_s']:.1f} s, "
                        f"peak RSS {rec['peak_rss_mb']:.0f} MB, CPU steal {fmt(rec['cpu_steal_pct'], '.0f')} %")
                except Exception as exc:  # noqa: BLE001 - a failed method is recorded, the benchmark goes on
                    rec["error"] = f"{type(exc).__name__}: {exc}"
                    say(f"[bench]   {tag}: FAILED ({rec['error']})")
                finally:
                    result_path.unlink(missing_ok=True)
                rec["job_s"] = time.perf_counter() - t0
                results["records"].append(rec)
                write_json(out / "results.json", results)  # partial results survive an interruption
            montage(out, case, n, gt, grid, volumes, results["records"])
        plot_views(out, case, results["records"])
        for n in cfg.views:
            plot_time(out, case, n, results["records"])
    try:
        work.rmdir()
    except OSError:
        pass
    results["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["machine"]["cpu_steal_pct"] = steal_pct(cpu_start, cpu_times())
    results["total_s"] = time.perf_counter() - t_start
    results["files"] = sorted(str(p.relative_to(out)) for p in (out / "plots").glob("*.png"))
    if cfg.baseline_from:
        n_in = import_baseline_records(results, [load_baseline(p) for p in cfg.baseline_from], say)
        say(f"[bench] {n_in} RTK record(s) imported from {', '.join(map(str, cfg.baseline_from))}")
    results["margins"] = margins(results["records"], results["cases"])
    for g in results["margins"]:
        say(f"[bench] {g['case']} n={g['n_views']}: {g['method']} {g['margin_psnr_3d']:+.2f} dB over the best "
            f"RTK in the table ({g['best_rtk']}, {fmt(g['best_rtk_solve_spacing_mm'], 'g')} mm grid"
            + ("; coarser than the ROI grid: finer --rtk-spacing makes RTK stronger)" if g["rtk_grid_coarser_than_roi"]
               else ")"))
    write_json(out / "results.json", results)
    (out / "results.md").write_text(write_markdown(results))
    say(f"[bench] done in {results['total_s']:.0f} s: {out / 'results.json'}, {out / 'results.md'}")
    return results

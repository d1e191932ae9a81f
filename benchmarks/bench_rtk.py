"""RTK baselines (FDK, SART, CG; optionally SIRT) on simulated scans of the bundled chest CT.

    python benchmarks/bench_rtk.py [--out bench_out/rtk] [--scans DIR ...] [--modes roi-only,full-body]
        [--views 25] [--detector 256] [--roi T12] [--methods fdk,sart,cg] [--iterations sart=3,cg=20]
        [--body-extent ct|auto] [--threads N] [--json FILE]

Without ``--scans`` it simulates (``ixgs simulate``'s Python API) a ``--views``-view, ``--detector``-pixel,
160-degree random-arc scan of the ``--roi`` vertebra for each mode into ``OUT/scans/<mode>`` (reused when
already there with the same settings), scored on the ROI grid of ``gt.nii.gz`` (128^3 at 1 mm by default)
with R2-Gaussian's 3D PSNR / SSIM (:mod:`ixgs_ros.evaluation.metrics`).

Solve grids (see :mod:`ixgs_ros.evaluation.baselines`): FDK runs on the scoring grid. SART/CG solve on the ROI
grid plus one voxel for an ROI-only scan (the projections show all material is inside), and for a full-body
scan on a box covering the part of the patient the views cross: with ``--body-extent ct`` (default) the
bounding box of the CT's body (HU > -500) within the views' frusta, with ``auto`` the visual hull of the
projections (no knowledge of the CT). Prints one JSON object and a Markdown table; writes
``OUT/results.json``.
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

from ixgs_ros.evaluation import metrics as M  # noqa: E402
from ixgs_ros.core.resources import peak_rss_mb  # noqa: E402
from ixgs_ros.evaluation import baselines as bl  # noqa: E402
from ixgs_ros.core.scan import Scan  # noqa: E402
from ixgs_ros.core.volume import Grid, load_nifti  # noqa: E402

def body_box(ct_path: str | None, hu_threshold: float = -500.0, margin_mm: float = 5.0):
    """World bounding box ``(lo, hi)`` of the CT voxels above ``hu_threshold`` (patient and table; the faint
    attenuation of air noise outside is neglected)."""
    from ixgs_ros.simulation.ct import load_ct

    ct = load_ct(ct_path, with_labels=False)
    idx = np.argwhere(ct.hu > hu_threshold)
    if idx.size == 0:
        raise ValueError(f"no voxel above {hu_threshold} HU in {ct.path}")
    lo_i, hi_i = idx.min(0) - 0.5, idx.max(0) + 0.5
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1]) for c in (lo_i[2], hi_i[2])])
    w = ct.grid.index_to_world(corners)
    return w.min(0) - margin_mm, w.max(0) + margin_mm


def simulate(out: Path, mode: str, views: int, detector: int, roi: str, seed: int) -> Path:
    """Simulate (or reuse) one scan; returns its directory."""
    from ixgs_ros.simulation.simulate import SimulationConfig, simulate_scan
    from ixgs_ros.simulation.trajectories import TrajectoryConfig

    d = out / "scans" / mode
    settings = {"mode": mode, "views": views, "detector": detector, "roi": roi, "seed": seed}
    stamp = d / "bench_settings.json"
    if (d / "scan.json").exists() and (d / "gt.nii.gz").exists() and stamp.exists() and \
            json.loads(stamp.read_text()) == settings:
        return d
    t0 = time.perf_counter()
    traj = TrajectoryConfig(kind="random-arc", n_views=views, width=detector, seed=seed)
    simulate_scan(SimulationConfig(out_dir=str(d), roi=roi, trajectory=traj, mode=mode, seed=seed, preview=False),
                  progress=lambda msg: None)
    stamp.write_text(json.dumps(settings))
    print(f"[bench_rtk] simulated {mode} scan in {time.perf_counter() - t0:.0f} s -> {d}", file=sys.stderr)
    return d


def parse_iterations(text: str) -> dict:
    its = dict(bl.DEFAULT_ITERATIONS)
    for item in filter(None, (t.strip() for t in text.split(","))):
        k, _, v = item.partition("=")
        if k not in bl.METHODS or not v.isdigit():
            raise SystemExit(f"--iterations: expected method=N with method in {bl.METHODS}, got {item!r}")
        its[k] = int(v)
    return its


def run_case(scan_dir: Path, methods, iterations, body_extent_mode: str, threads) -> dict:
    scan = Scan.load(scan_dir)
    gt, grid = load_nifti(scan_dir / "gt.nii.gz")
    sim = scan.extra.get("simulation", {})
    mode = sim.get("mode", "unknown")
    body = None
    if body_extent_mode == "ct" and mode != "roi-only":
        body = body_box(sim.get("ct_path"))
    case = {"scan": str(scan_dir), "mode": mode, "n_views": len(scan),
            "detector": [scan.width, scan.height], "roi": scan.extra.get("roi", {}).get("name"),
            "grid_shape": list(grid.shape), "grid_spacing_mm": [float(s) for s in grid.spacing],
            "body_extent": None if body is None else [np.round(b, 1).tolist() for b in body],
            "zero_psnr_3d": M.psnr_3d(np.zeros_like(gt), gt), "results": []}
    for m in methods:
        vol, info = bl.reconstruct(scan, grid, m, iterations[m], body_extent=body, threads=threads)
        r = {"method": m, "iterations": iterations[m], "psnr_3d": M.psnr_3d(vol, gt), "ssim_3d": M.ssim_3d(vol, gt),
             "wall_s": info["wall_s"], "solve_shape": info["solve_shape"],
             "solve_spacing_mm": info["solve_spacing_mm"], "peak_rss_mb": peak_rss_mb()}
        case["results"].append(r)
        print(f"[bench_rtk] {mode:9s} {m:4s} x{iterations[m]:<3d} PSNR {r['psnr_3d']:6.2f} dB  SSIM {r['ssim_3d']:.3f}"
              f"  {r['wall_s']:6.1f} s  solve {'x'.join(map(str, r['solve_shape']))} @ {r['solve_spacing_mm']:g} mm",
              file=sys.stderr, flush=True)
    return case


def warm_up(scan_dir: Path, methods) -> None:
    """Run every method once on a tiny problem so that ITK/RTK's lazy loading is not timed."""
    scan = Scan.load(scan_dir)
    views = [v.scaled(16.0 / scan.width) for v in scan.views[:3]]
    proj = np.zeros((len(views), views[0].height, views[0].width), np.float32)
    proj[:, 4:-4, 4:-4] = 1.0
    grid = load_nifti(scan_dir / "gt.nii.gz")[1]
    tiny = Grid.centered(8, 8.0, grid.center)
    for m in methods:
        bl.reconstruct((views, proj), tiny, m, 1, solve_grid=tiny)


def table(cases) -> str:
    lines = ["| scan | views | method | iterations | 3D PSNR (dB) | 3D SSIM | wall (s) | solve grid |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for r in c["results"]:
            g = "x".join(map(str, r["solve_shape"])) + f" @ {r['solve_spacing_mm']:g} mm"
            lines.append(f"| {c['mode']} {c['roi']} | {c['n_views']} | {r['method'].upper()} | {r['iterations']} | "
                         f"{r['psnr_3d']:.2f} | {r['ssim_3d']:.3f} | {r['wall_s']:.1f} | {g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/rtk")
    ap.add_argument("--scans", nargs="*", help="existing scan directories with gt.nii.gz (skip simulation)")
    ap.add_argument("--modes", default="roi-only,full-body")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--roi", default="T12")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="fdk,sart,cg")
    ap.add_argument("--iterations", default="", help="e.g. sart=3,cg=20 (default: baselines.DEFAULT_ITERATIONS)")
    ap.add_argument("--body-extent", choices=("ct", "auto"), default="ct")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in bl.METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; choose from {', '.join(bl.METHODS)}")
    iterations = parse_iterations(args.iterations)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.scans:
        scan_dirs = [Path(s) for s in args.scans]
    else:
        scan_dirs = [simulate(out, mode.strip(), args.views, args.detector, args.roi, args.seed)
                     for mode in args.modes.split(",") if mode.strip()]
    warm_up(scan_dirs[0], methods)  # ITK/RTK load lazily (seconds): not part of any timing
    t0 = time.perf_counter()
    cases = [run_case(d, methods, iterations, args.body_extent, args.threads) for d in scan_dirs]
    result = {
        "benchmark": "rtk_baselines",
        "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "metric_protocol": "R2-Gaussian 3D PSNR/SSIM (GT scaled to [0,1] by its max)",
        "body_extent": args.body_extent,
        "cases": cases,
        "total_s": time.perf_counter() - t0,
    }
    text = json.dumps(result, indent=2)
    (out / "results.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print()
    print(table(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())

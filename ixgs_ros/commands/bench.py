"""``ixgs bench --out DIR``: ixgs vs the classical RTK baselines on the same simulated real-CT scans."""
from __future__ import annotations

import shlex
import sys


def add_parser(sub):
    p = sub.add_parser(
        "bench", help="benchmark ixgs against RTK (FDK, SART, CG) on simulated real-CT scans",
        description="Simulate (or reuse) C-arm scans of vertebra ROIs of a real CT, reconstruct each with every "
                    "method in a fresh process (wall time and peak memory per run) and score them with "
                    "R2-Gaussian's protocol: 3D PSNR/SSIM on the ROI grid, 2D PSNR/SSIM on held-out views, bone "
                    "surface distance. Writes results.json, results.md and plots (PSNR vs views, PSNR vs wall "
                    "time, slice montages) into --out.")
    p.add_argument("--out", help="output directory (required unless --list-cases)")
    p.add_argument("--quick", action="store_true",
                   help="small preset (minutes on 2 cores): T12-roi-only-arc160, 8 views, 128^2 px, 64^3 at "
                        "2 mm, fdk+sart+ixgs with 300 iterations; other options override it")
    p.add_argument("--cases", default=None,
                   help="comma-separated case names or shell patterns, or 'all' (default 'T12-*'; see "
                        "--list-cases)")
    p.add_argument("--list-cases", action="store_true", help="print the case names and exit")
    p.add_argument("--views", default=None, help="training view counts, e.g. 10,20,30,50 (default)")
    p.add_argument("--methods", default=None,
                   help="comma-separated from fdk, sart, cg, sirt, ixgs, ixgs-cuda (default fdk,sart,cg,ixgs "
                        "plus ixgs-cuda when torch sees a GPU)")
    p.add_argument("--iterations", type=int, default=None, help="ixgs iterations (default: the engine's)")
    p.add_argument("--rtk-iterations", default=None, metavar="M=N,...",
                   help="RTK iteration overrides, e.g. sart=3,cg=20 (default: ixgs_ros.evaluation.baselines')")
    p.add_argument("--rtk-spacing", type=float, default=None, metavar="MM",
                   help="voxel size of the RTK SART/CG solve grid (default: the finest keeping it under 160^3 "
                        "voxels, 2.75 mm on full-body cases)")
    p.add_argument("--baseline-from", action="append", default=[], metavar="RESULTS",
                   help="results.json (or its directory) of an earlier ixgs bench run: its RTK records on the "
                        "same scans and views join this run's table and margins (repeatable), e.g. a slow "
                        "fine-grid SART baseline")
    p.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                   help="further EngineConfig override (repeatable), e.g. --engine lattice_spacing=1.6")
    g = p.add_argument_group("scans")
    g.add_argument("--detector", type=int, default=None, help="detector pixels per side (default 256)")
    g.add_argument("--roi-size", type=int, default=None, help="ROI voxels per side (default 128)")
    g.add_argument("--roi-spacing", type=float, default=None, help="ROI voxel size in mm (default 1.0)")
    g.add_argument("--holdout", type=int, default=None, help="held-out views for 2D metrics (default 3)")
    g.add_argument("--seed", type=int, default=None, help="trajectory and engine seed (default 0)")
    g.add_argument("--renderer", choices=["siddon", "trilinear"], default=None,
                   help="simulation renderer (default siddon, exact)")
    g.add_argument("--scan-cache", default=None, help="where simulated scans are kept and reused "
                                                       "(default OUT/scans)")
    g = p.add_argument_group("run")
    g.add_argument("--threads", type=int, default=None, help="torch/ITK threads per method run")
    g.add_argument("--curve-points", type=int, default=None,
                   help="3D PSNR evaluations along the ixgs optimisation (default 15; 6 with --quick)")
    g.add_argument("--no-surface", action="store_true", help="skip the bone surface distances")
    g.add_argument("--no-isolate", action="store_true",
                   help="run the methods in this process (faster start; peak memory is then cumulative)")
    g.add_argument("--save-volumes", action="store_true", help="also write every volume to OUT/volumes")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("publishing")
    g.add_argument("--publish", metavar="PATH.md", default=None,
                   help="also write the tables to PATH.md and the results to PATH.json (e.g. docs/results.md, the "
                        "page the README links)")
    g.add_argument("--from-results", metavar="RESULTS", default=None,
                   help="run nothing: rebuild the tables from an earlier results.json (or its directory), e.g. with "
                        "--publish")
    p.set_defaults(func=run)
    return p


def _parse_rtk_iterations(text) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        k, sep, v = item.partition("=")
        if not sep or not v.strip().isdigit():
            raise ValueError(f"--rtk-iterations: expected METHOD=N, got {item!r}")
        out[k.strip().lower()] = int(v)
    return out


def _command_line() -> str:
    argv = sys.argv[1:]
    if "bench" in argv:
        argv = argv[argv.index("bench") + 1:]
    return " ".join(["ixgs", "bench"] + [shlex.quote(a) for a in argv])


def config_from_args(args):
    from ixgs_ros.core.config import parse_overrides
    from ixgs_ros.evaluation.bench import BenchConfig, quick_config

    opts = {
        "cases": args.cases, "views": args.views, "methods": args.methods, "iterations": args.iterations,
        "detector": args.detector, "roi_size": args.roi_size, "roi_spacing": args.roi_spacing,
        "holdout": args.holdout, "seed": args.seed, "renderer": args.renderer, "scan_cache": args.scan_cache,
        "threads": args.threads, "curve_points": args.curve_points, "rtk_spacing": args.rtk_spacing,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    opts.update(engine=parse_overrides(args.engine, "--engine"),
                rtk_iterations=_parse_rtk_iterations(args.rtk_iterations),
                surface=not args.no_surface, isolate=not args.no_isolate, save_volumes=args.save_volumes,
                baseline_from=list(args.baseline_from),
                command=_command_line())
    if args.quick:
        return quick_config(args.out, **opts)
    return BenchConfig(out_dir=args.out, **opts)


def run(args) -> int:
    from ixgs_ros.evaluation.bench import CASES, DEFAULT_CASES, run_bench, select_cases

    if args.list_cases:
        default = {c.name for c in select_cases(list(DEFAULT_CASES))}
        for c in CASES:
            print(f"{c.name}{'  (default)' if c.name in default else ''}")
        return 0
    from ixgs_ros.evaluation.bench import load_baseline, write_markdown

    if args.from_results:
        results = load_baseline(args.from_results)
    else:
        if not args.out:
            raise ValueError("--out is required")
        cfg = config_from_args(args).validate()
        say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        results = run_bench(cfg, progress=say)
    text = write_markdown(results)
    print(text)
    if args.publish:
        publish(results, text, args.publish)
    failed = [r for r in results["records"] if "error" in r]
    if failed:
        print(f"ixgs bench: {len(failed)} run(s) failed (see results.json)", file=sys.stderr)
        return 1
    return 0


def publish(results: dict, markdown: str, path) -> None:
    """The tables to ``path`` (Markdown, marked as generated) and the results beside it (``.json``)."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".md":
        raise ValueError(f"--publish: expected a .md path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<!-- generated by `ixgs bench --publish`; edit the benchmark, not this page -->\n" + markdown)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"ixgs bench: published {path} and {path.with_suffix('.json')}", file=sys.stderr)

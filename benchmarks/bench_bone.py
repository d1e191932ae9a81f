"""Bone target benchmark: bone-surface accuracy of the bone reconstruction on full-body scans of the
bundled CT, against the CT's own bone surface, beside the full-volume pipeline and RTK.

    python benchmarks/bench_bone.py --out DIR [--cases T6,T8,T12,L1,T12-arc90] [--views 10,15,25,40]
        [--methods bone,bone-gs,init,sart,full,standardized] [--roi-size 128] [--roi-spacing 1.0]
        [--detector 256] [--holdout 3] [--scan-cache DIR] [--engine KEY=VALUE ...] [--figure]

Cases: ``T6``, ``T8``, ``T12``, ``L1`` (random arcs of 150-180 deg, the arc, base tilt (5-12 deg either way) and a
5 deg detector-roll jitter drawn per case from its name) and ``T12-arc90`` (a limited 90 deg arc, tilted). All lie
below the slab the standardization model may train on (NIfTI z >= -95 mm). Each case is simulated once with
``max(views) + holdout`` views (:func:`ixgs_ros.simulation.bone_scan.simulate_bone_scan`: exact Siddon full
line integrals and ideal bone-only projections from the CT's own grid, cached) and ``n`` training views are taken
evenly along the arc (the held-out views are the same for every ``n``).

Methods (each in a fresh process: its own time and peak memory):

* ``bone`` (a): the bone target (``ixgs_ros.engine.bone``, default configuration) on the ideal bone projections;
* ``bone-gs``: the same with the Gaussian stage (``bone.gaussians: true``): do the Gaussians add anything?
* ``standardized`` (b): the bone target on the standardization model's bone channel of a styled scan of the same
  views (``--style``, default the held-out ``heldout-vendor``; the model sees the raw image only);
* ``full`` (c): today's full-volume pipeline (``ixgs reconstruct``'s engine, defaults) on the full line integrals,
  its 250 HU iso-surface scored;
* ``sart`` (d): RTK SART (``evaluation.baselines``, defaults, its default solve grid) on the bone projections;
* ``init`` (e): the engine's TV-SART initial solve (with its fine re-solve) on the bone projections, no bone
  priors, no Gaussians.

Scores (``ixgs_ros.evaluation.bone_accuracy``): symmetric mean surface distance and HD95 (mm) between the 250 HU
iso-surfaces of the reconstruction (on the ROI grid) and of the CT at its native resolution, overall and per
vertebra; Dice of the masks above 250 HU on the ROI grid; the floor (the CT resampled onto the ROI grid, scored
the same way). Time: wall seconds and CPU seconds of the method (CPU / 2 estimates the wall time on 2 idle cores;
this machine is shared); peak RSS of the method's process (about 1.2-1.5 GB of it is the interpreter, torch and
ITK, loaded before the method starts: ``peak_rss_growth_mb`` is what the method added).

Writes ``DIR/results.json`` and ``DIR/results.md``; ``--figure`` adds ``DIR/figures/<case>-<n>v-bone.png`` (axial
and sagittal slices through a pedicle, CT background, CT bone contour green, reconstruction red; the vertebra's
mesh over the CT's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {"T6": ("T6", "random-arc"), "T8": ("T8", "random-arc"), "T12": ("T12", "random-arc"),
         "L1": ("L1", "random-arc"), "T12-arc90": ("T12", "limited-arc")}
METHODS = ("bone", "bone-gs", "standardized", "full", "sart", "init")
DEFAULT_METHODS = ("bone", "bone-gs", "full", "sart", "init", "standardized")


# ================================================================================================ scans
def case_trajectory(name: str, n_total: int, detector: int):
    """The trajectory of a case: arc, tilt and roll drawn from the case name (stable across runs)."""
    from ixgs_ros.simulation.trajectories import TrajectoryConfig

    roi, kind = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arc = 90.0 if kind == "limited-arc" else float(rng.uniform(150.0, 180.0))
    tilt = float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 12.0))
    return TrajectoryConfig(kind=kind, n_views=n_total, arc_deg=arc, tilt_deg=tilt, roll_jitter_deg=5.0,
                            width=detector, seed=int(rng.integers(1 << 16)))


def ensure_scan(name: str, n_total: int, args, say) -> Path:
    from ixgs_ros.simulation.bone_scan import simulate_bone_scan
    from ixgs_ros.simulation.simulate import SimulationConfig

    traj = case_trajectory(name, n_total, args.detector)
    cache = Path(args.scan_cache or Path(args.out) / "scans")
    d = cache / f"{name}-{n_total}v-{args.detector}px-{args.roi_size}x{args.roi_spacing:g}mm"
    cfg = SimulationConfig(out_dir=str(d), roi=CASES[name][0], roi_size=args.roi_size, roi_spacing=args.roi_spacing,
                           trajectory=traj, mode="full-body", seed=traj.seed, preview=False)
    stamp = json.dumps({"bone_bench_scan": 1, "simulation": cfg.to_dict()}, sort_keys=True, default=str)
    sp = d / "bench_scan.json"
    if sp.exists() and sp.read_text() == stamp and (d / "ideal" / "bone.npy").exists():
        return d
    t0 = time.perf_counter()
    say(f"[bone-bench] simulating {name}: {n_total} views, arc {traj.arc_deg:.0f} deg ({traj.kind}), tilt "
        f"{traj.tilt_deg:+.1f} deg -> {d}")
    simulate_bone_scan(cfg, cache_dir=args.xray_cache)
    sp.write_text(stamp)
    say(f"[bone-bench] simulated {name} in {time.perf_counter() - t0:.0f} s")
    return d


# ================================================================================================ methods
def ensure_styled_scan(name: str, n_total: int, args, say) -> Path:
    """The styled (raw, real-style) scan of the same case and views as :func:`ensure_scan`'s, in the style
    ``args.style`` (path lengths from the same cache)."""
    from ixgs_ros.simulation.simulate import SimulationConfig
    from ixgs_ros.simulation.styled_scan import simulate_styled_scan

    traj = case_trajectory(name, n_total, args.detector)
    cache = Path(args.scan_cache or Path(args.out) / "scans")
    d = cache / f"{name}-{n_total}v-{args.detector}px-{args.roi_size}x{args.roi_spacing:g}mm-{args.style}"
    cfg = SimulationConfig(out_dir=str(d), roi=CASES[name][0], roi_size=args.roi_size, roi_spacing=args.roi_spacing,
                           trajectory=traj, mode="full-body", seed=traj.seed, preview=False)
    stamp = json.dumps({"bone_bench_styled": 1, "style": args.style, "simulation": cfg.to_dict()}, sort_keys=True,
                       default=str)
    sp = d / "bench_scan.json"
    if sp.exists() and sp.read_text() == stamp:
        return d
    say(f"[bone-bench] simulating {name} as raw images in the style {args.style!r} -> {d}")
    simulate_styled_scan(cfg, args.style, cache_dir=args.xray_cache)
    sp.write_text(stamp)
    return d


def standardized_bone(styled_dir: Path, train: list[int]):
    """(b): the bone channel the committed standardization model computes from the styled scan's raw images of
    the training views (the model sees the image only). Returns ``(bone [n, H, W], note)``."""
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.standardize.apply import Standardizer, standardize_scan

    raw = Scan.load(styled_dir).subset(train)
    std = Standardizer()
    _, bone = standardize_scan(raw, std, use_scan_mask=False)
    return bone, f"standardized {Path(styled_dir).name} with {std.weights.name}"


def _bone_solve_config(overrides: dict, gaussians: bool):
    from ixgs_ros.engine import EngineConfig

    o = dict(overrides)
    if gaussians:
        o.setdefault("bone.gaussians", True)
    return EngineConfig.from_dict(o)


def run_job(job: dict) -> dict:
    """One method on one training subset (in the child process); writes the volume to ``job['result']``."""
    import resource

    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti, resample

    method, d = job["method"], Path(job["scan_dir"])
    scan = Scan.load(d)
    gt, grid = load_nifti(d / "gt.nii.gz")
    train = job["train"]
    views = [scan.views[i] for i in train]
    bone = np.load(d / "ideal" / "bone.npy", mmap_mode="r")
    bone = np.ascontiguousarray(bone[train], dtype=np.float32)
    from ixgs_ros.core.rtk import preload

    preload()  # ITK's lazy loading is not timed
    rec: dict = {"method": method,
                 "peak_rss_before_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    c0, t0 = time.process_time(), time.perf_counter()
    if method in ("bone", "bone-gs", "standardized"):
        from ixgs_ros.engine.bone import BoneReconstruction

        if method == "standardized":
            bone, rec["note"] = standardized_bone(Path(job["styled_dir"]), train)
        rb = BoneReconstruction(grid, _bone_solve_config(job["engine"], method == "bone-gs"))
        for v, b in zip(views, bone):
            rb.add_view(v, b)
        info = rb.run()
        vol = rb.volume()
        rec["info"] = {k: info[k] for k in ("times_s", "coarse_passes", "fine_passes", "num_gaussians",
                                            "iterations") if k in info}
    elif method == "full":
        from ixgs_ros.engine import EngineConfig
        from ixgs_ros.pipeline import reconstruct_scan

        res = reconstruct_scan(scan.subset(train), grid, EngineConfig.from_dict(dict(job["full_engine"])),
                               progress=False)
        vol = res.volume
        rec["info"] = {"init_stages_s": res.report["init_stages_s"], "iterations": res.report["iterations"]}
    elif method == "sart":
        from ixgs_ros.core.solve_grid import default_solve_grid
        from ixgs_ros.evaluation import baselines

        solve = default_solve_grid(views, grid, projections=bone, spacing=job.get("rtk_spacing"))
        sol, info = baselines.reconstruct((views, bone), solve, "sart", solve_grid=solve)
        vol = resample(sol, solve, grid)
        rec["info"] = {"solve_shape": list(solve.shape), "solve_spacing_mm": float(solve.spacing.max()),
                       "iterations": info["iterations"]}
    elif method == "init":
        from ixgs_ros.engine import EngineConfig
        from ixgs_ros.engine import init_solve

        cfg = EngineConfig.from_dict(dict(job["engine_init"]))
        ini = init_solve.init_tv_sart(views, bone, grid, cfg)
        if ini.exterior:
            passes = init_solve.init_passes(cfg, cfg.exterior.refine_passes, len(views))
            coarse = float(ini.solve.spacing.min()) > float(grid.spacing.max()) + 1e-6
            fine = init_solve.fine_box(grid, ini.solve, cfg, refine=coarse and passes > 0)
            e = cfg.exterior
            roi, _ = init_solve.make_solver(cfg).refine_inner(
                views, bone, ini.solve, ini.volume, fine, passes if coarse else 0, lam=e.refine_relaxation,
                tv_weight=e.refine_tv_weight, tv_weight_final=e.refine_tv_weight_final)
            vol = resample(roi, fine, grid)
        else:
            vol = resample(ini.volume, ini.solve, grid)
        rec["info"] = {"solve_shape": list(ini.solve.shape), "solve_spacing_mm": float(ini.solve.spacing.max())}
    else:
        raise ValueError(f"unknown method {method!r}")
    rec["wall_s"] = time.perf_counter() - t0
    rec["cpu_s"] = time.process_time() - c0
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rec["peak_rss_growth_mb"] = rec["peak_rss_mb"] - rec["peak_rss_before_mb"]
    np.save(job["result"], np.asarray(vol, np.float32))
    return rec


def _run_isolated(job: dict) -> dict:
    base = Path(job["result"]).with_suffix("")
    jp, rp = base.with_suffix(".job.json"), base.with_suffix(".rec.json")
    jp.write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--job", str(jp), str(rp)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not rp.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-12:])
            raise RuntimeError(f"method process exited with status {proc.returncode}:\n{tail}")
        return json.loads(rp.read_text())
    finally:
        jp.unlink(missing_ok=True)
        rp.unlink(missing_ok=True)


# ================================================================================================ main
def _training(scan, n: int, holdout: int) -> tuple[list[int], list[int]]:
    from ixgs_ros.evaluation.bench.cases import primary_angles, training_subset

    return training_subset(primary_angles(scan), n, holdout, 0)


def _fmt(x, f=".2f"):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, f)


def markdown(results: dict) -> str:
    lines = ["# Bone target benchmark", "", f"`{results['command']}`", "",
             "Bone-surface distance (mm) between the 250 HU iso-surfaces of the reconstruction (ROI grid) and of the "
             "CT at its native resolution; Dice of the masks above 250 HU on the ROI grid. CPU s / 2 estimates the "
             "wall time on 2 idle cores (the machine was shared: wall times are inflated).", ""]
    for c in results["cases"]:
        fl = c["floor"]
        lines += [f"## {c['name']}: {c['trajectory']['kind']} {c['trajectory']['arc_deg']:.0f} deg, tilt "
                  f"{c['trajectory']['tilt_deg']:+.1f} deg", "",
                  f"Floor (CT resampled to the ROI grid): mean {_fmt(fl['mean'])} mm, HD95 {_fmt(fl['hd95'])} mm; "
                  f"bone-only floor (the CT's voxels above 200 HU resampled, soft tissue filled in): mean "
                  f"{_fmt(c['floor_bone']['mean'])} mm, HD95 {_fmt(c['floor_bone']['hd95'])} mm.", "",
                  "| views | method | mean | HD95 | Dice | worst vertebra (mean / HD95) | wall s | CPU s | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["records"]:
            if r["case"] != c["name"]:
                continue
            if "skipped" in r or "error" in r:
                lines.append(f"| {r['n_views']} | {r['method']} | {r.get('skipped') or r.get('error')} ||||||||")
                continue
            m = r["metrics"]
            pv = m.get("per_vertebra") or {}
            worst = max(pv.items(), key=lambda kv: kv[1]["mean"], default=None)
            ws = f"{worst[0]} {_fmt(worst[1]['mean'])} / {_fmt(worst[1]['hd95'])}" if worst else "-"
            lines.append(f"| {r['n_views']} | {r['method']} | {_fmt(m['mean'])} | {_fmt(m['hd95'])} | "
                         f"{_fmt(m['dice'], '.3f')} | {ws} | {_fmt(r['wall_s'], '.0f')} | {_fmt(r['cpu_s'], '.0f')} | "
                         f"{_fmt(r['peak_rss_mb'], '.0f')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=False)
    p.add_argument("--cases", default="T6,T8,T12,L1,T12-arc90")
    p.add_argument("--views", default="10,15,25,40")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--roi-size", type=int, default=128)
    p.add_argument("--roi-spacing", type=float, default=1.0)
    p.add_argument("--detector", type=int, default=256)
    p.add_argument("--holdout", type=int, default=3)
    p.add_argument("--scan-cache", default=None)
    p.add_argument("--xray-cache", default="default", help="path-length cache (default: the X-ray cache)")
    p.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE", help="bone target overrides")
    p.add_argument("--full-engine", nargs="*", default=[], metavar="KEY=VALUE", help="(c)'s engine overrides")
    p.add_argument("--rtk-spacing", type=float, default=None, help="(d)'s solve grid spacing (default: RTK's)")
    p.add_argument("--style", default="heldout-vendor", help="(b)'s image style (default: the held-out one)")
    p.add_argument("--figure", action="store_true", help="the surgeon's picture for each bone record")
    p.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        rec = run_job(json.loads(Path(args.job[0]).read_text()))
        Path(args.job[1]).write_text(json.dumps(rec, default=float))
        return 0
    if not args.out:
        p.error("--out is required")
    from ixgs_ros.core.config import parse_overrides
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti
    from ixgs_ros.evaluation.bone_accuracy import bone_floor, bone_only_floor, reference_ct, score_bone
    from ixgs_ros.outputs.bone import bone_surface_volume
    from ixgs_ros.simulation.ct import load_ct

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            p.error(f"--cases: unknown case {c!r}; known: {', '.join(CASES)}")
    views = sorted({int(v) for v in args.views.split(",") if v.strip()})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    engine = parse_overrides(args.engine, "--engine")
    full_engine = parse_overrides(args.full_engine, "--full-engine")
    out = Path(args.out)
    (out / "_work").mkdir(parents=True, exist_ok=True)

    def say(msg):
        print(msg, flush=True)

    ct = load_ct()
    results = {"schema": "ixgs-bone-bench/1", "command": " ".join(["python benchmarks/bench_bone.py"] + sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
               "load_avg_start": list(os.getloadavg()), "cases": [], "records": []}
    n_total = max(views) + args.holdout
    for name in cases:
        d = ensure_scan(name, n_total, args, say)
        styled = str(ensure_styled_scan(name, n_total, args, say)) if "standardized" in methods else None
        scan = Scan.load(d)
        _, grid = load_nifti(d / "gt.nii.gz")
        ref = reference_ct(ct, grid)
        floor = bone_floor(grid, ref)
        floor_bone = bone_only_floor(grid, ref)
        traj = scan.views[0].meta.get("trajectory", {})
        results["cases"].append({"name": name, "scan_dir": str(d), "floor": floor, "floor_bone": floor_bone,
                                 "grid": grid.to_dict(),
                                 "trajectory": {"kind": CASES[name][1], "arc_deg": case_trajectory(name, n_total, args.detector).arc_deg,
                                                "tilt_deg": case_trajectory(name, n_total, args.detector).tilt_deg,
                                                "first_view": traj}})
        say(f"[bone-bench] {name}: floor mean {floor['mean']:.2f} mm, HD95 {floor['hd95']:.2f} mm; bone-only floor "
            f"{floor_bone['mean']:.2f} / {floor_bone['hd95']:.2f} mm")
        for n in views:
            train, held = _training(scan, n, args.holdout)
            for method in methods:
                tag = f"{name}-{n}v-{method}"
                job = {"method": method, "scan_dir": str(d), "train": train, "engine": engine,
                       "full_engine": full_engine, "engine_init": {}, "rtk_spacing": args.rtk_spacing, "styled_dir": styled,
                       "result": str(out / "_work" / f"{tag}.npy")}
                rec = {"case": name, "n_views": n, "method": method}
                say(f"[bone-bench] {tag} ...")
                try:
                    rec.update(_run_isolated(job))
                    if "skipped" not in rec:
                        vol = np.load(job["result"])
                        if method == "full":  # a full volume has its soft tissue
                            rec["metrics"] = score_bone(vol, grid, ref)
                        else:  # bone volumes are surfaced with soft tissue filled in (what the meshes use)
                            rec["metrics"] = score_bone(bone_surface_volume(vol), grid, ref)
                            raw = score_bone(vol, grid, ref)
                            rec["metrics_unfilled"] = {k: raw[k] for k in ("mean", "hd95", "dice")}
                        m = rec["metrics"]
                        say(f"[bone-bench]   {tag}: mean {m['mean']:.2f} mm, HD95 {m['hd95']:.2f} mm, Dice "
                            f"{m['dice']:.3f}, wall {rec['wall_s']:.0f} s, CPU {rec['cpu_s']:.0f} s, peak "
                            f"{rec['peak_rss_mb']:.0f} MB")
                        if args.figure and method == "bone":
                            _figure(vol, grid, d, ref, ct, out / "figures" / f"{tag}.png", tag)
                    else:
                        say(f"[bone-bench]   {tag}: skipped ({rec['skipped']})")
                except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the benchmark goes on
                    rec["error"] = f"{type(exc).__name__}: {exc}"
                    say(f"[bone-bench]   {tag}: FAILED {rec['error']}")
                finally:
                    Path(job["result"]).unlink(missing_ok=True)
                results["records"].append(rec)
                (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    results["load_avg_end"] = list(os.getloadavg())
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "results.md").write_text(markdown(results))
    say(f"[bone-bench] wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _figure(vol, grid, scan_dir: Path, ref, ct, path: Path, title: str) -> None:
    """The surgeon's picture: slices through a pedicle and the vertebra's mesh over the CT's."""
    from ixgs_ros.core.volume import load_nifti
    from ixgs_ros.outputs.bone import bone_pieces
    from ixgs_ros.outputs.bone_figure import bone_slices_figure
    from ixgs_ros.outputs.mesh import bone_surface

    gt, _ = load_nifti(scan_dir / "gt.nii.gz")
    labels = np.rint(load_nifti(scan_dir / "labels.nii.gz")[0]).astype(np.int32)
    pieces = bone_pieces(vol, grid, labels=labels)
    ref_mesh = bone_surface(ref.mu, ref.grid, smooth_iterations=0, target_faces=60_000, min_component_fraction=0.0)
    bone_slices_figure(vol, grid, path, background=gt, reference=gt, pieces=pieces, reference_mesh=ref_mesh,
                       title=title)


if __name__ == "__main__":
    sys.exit(main())

"""Pose self-calibration alone (no Gaussian stage): how close each round of the engine's calibration brings the
poses to the truth, for engine settings, on a scan with simulated pose errors (``bench_selfcal.perturbed_views``).
Optionally the registration volume is replaced: ``--oracle ct`` registers against the bundled CT the scan was
simulated from (the floor with a perfect volume), ``--oracle exact-poses`` against the quick solve from the true
poses (the floor with a volume of this many views).

    python selfcal_oracle.py SCAN_DIR [SETTING ...] --views 12 --noise 0.5/1 [--seeds 1,2] \
        [--oracle ct|exact-poses] [--consistency COARSEN] [--json F]
    # SETTING: `default` or KEY=VALUE,... EngineConfig overrides (mode `on` unless a setting names it)

Prints per setting and seed the gauge-aligned mean reprojection error of ROI points (detector pixels) as given
and after every round, the same after a general affine alignment, the decision, the error per view split into a
whole-image shift, an in-plane linear part and the rest, and the per-view shift pattern of the given and the
refined poses. ``--consistency`` adds how well a quick solve from the true, given and refined poses fits the
data. The engine's init after the calibration is not run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


class _Done(Exception):
    pass


def run(scan_dir: Path, n: int, noise: tuple[float, float], seed: int, overrides: dict, oracle: str,
        check_consistency: int = 0) -> dict:
    from bench_selfcal import perturbed_views

    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import Grid, resample
    from ixgs_ros.engine import ReconstructionEngine, calibration, load_engine_config
    from ixgs_ros.engine.registration import corrected_view
    from ixgs_ros.evaluation.pose_accuracy import reprojection_error, roi_points

    scan = Scan.load(scan_dir)
    roi = scan.extra["roi"]
    grid = Grid(tuple(roi["shape"]), np.array(roi["affine"]))
    sel = np.round(np.linspace(0, len(scan.views) - 1, n)).astype(int)
    true = [scan.views[i] for i in sel]
    given, _ = perturbed_views(true, noise[0], noise[1], seed)
    pts = roi_points(grid)
    rounds: list[float] = []
    last: list = []  # the views as corrected by the latest round (the engine restores its own on the stop)

    orig_anderson, orig_init, orig_solver = calibration._anderson, calibration.init_solve.init_tv_sart, \
        calibration.init_solve.make_solver

    def anderson(hist, trusted=None):
        p = orig_anderson(hist, trusted)
        last[:] = [corrected_view(g, q) for g, q in zip(given, p)]
        rounds.append(reprojection_error(last, true, pts)["mean_px"])
        return p

    summary: dict = {}

    def stop(*a, **k):
        summary.update(eng.calibration.summary)  # the engine puts its record back when the init stops
        raise _Done

    def exact_pose_solver(cfg):
        from ixgs_ros.core.radiograph import bin_view

        inner = orig_solver(cfg)

        class S:
            def sart_tv(self, views, proj, rgrid, passes, tv, lam=None, x0=None):
                b = true[0].width // views[0].width
                tv_views = [bin_view(t, np.zeros((t.height, t.width), np.float32), b)[0] for t in true]
                return inner.sart_tv(tv_views, proj, rgrid, passes, tv, lam=lam, x0=x0)
        return S()

    def ct_solver(cfg):
        from ixgs_ros.core.volume import hu_to_mu
        from ixgs_ros.simulation.ct import load_ct

        ct = load_ct(with_labels=False)  # the bundled CT the demo's scans are simulated from (world frame)
        gt, gt_grid = hu_to_mu(ct.hu), ct.grid

        class S:
            def sart_tv(self, views, proj, rgrid, passes, tv, lam=None, x0=None):
                return resample(gt, gt_grid, rgrid, order=1).astype(np.float32)
        return S()

    cfg = load_engine_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    eng = ReconstructionEngine(grid, cfg)
    for v, p in zip(given, scan.projections[sel]):
        eng.add_view(v, p)
    calibration._anderson, calibration.init_solve.init_tv_sart = anderson, stop
    if oracle:
        calibration.init_solve.make_solver = {"ct": ct_solver, "exact-poses": exact_pose_solver}[oracle]
    t0 = time.perf_counter()
    try:
        eng.step(1)
    except _Done:
        pass
    finally:
        calibration._anderson, calibration.init_solve.init_tv_sart, calibration.init_solve.make_solver = \
            orig_anderson, orig_init, orig_solver
    final = last if last and summary.get("applied", True) else given
    rep = reprojection_error(final, true, pts)
    consistency = {}
    if check_consistency:
        # how well a quick solve from each set of poses fits the data: a flat valley of the joint problem when
        # the refined poses fit about as well as the true ones
        import copy

        from ixgs_ros.engine import init_solve

        ccfg = copy.deepcopy(cfg)
        ccfg.calibration.coarsen = check_consistency
        rgrid = calibration._registration_grid(true, scan.projections[sel], grid, ccfg)
        b = calibration.coarse_binning(true, rgrid)
        solver = init_solve.make_solver(cfg)
        for name, vs in (("true", true), ("given", given), ("refined", final)):
            bv, bp = init_solve._binned(vs, scan.projections[sel], rgrid, b)
            xv = solver.sart_tv(bv, bp, rgrid, 32, cfg.calibration.tv_weight, lam=cfg.init.relaxation)
            fp = solver.forward_project(xv, rgrid, bv)
            consistency[name] = float(np.sqrt(np.mean((np.asarray(fp) - bp) ** 2)))
        print("    data misfit of a 32-pass solve (RMS line integral):",
              {k: round(v, 4) for k, v in consistency.items()}, flush=True)
    return {"given_px": reprojection_error(given, true, pts)["mean_px"], "rounds_px": rounds,
            "consistency": consistency,
            "modes_px": image_modes(final, true, pts), "given_shifts": image_shifts(given, true, pts),
            "final_shifts": image_shifts(final, true, pts),
            "per_view_px": rep["per_view_px"], "affine_aligned_px": affine_aligned_error(final, true, pts),
            "time_s": time.perf_counter() - t0, "summary": summary}


def _aligned_points(est, true, pts):
    """``pts`` carried by the similarity that maps the true scene into the ``est`` views' frame (the gauge)."""
    from ixgs_ros.engine.registration import similarity_matrix
    from ixgs_ros.evaluation.pose_accuracy import align_gauge

    M = similarity_matrix(align_gauge(est, true, pts), pts.mean(0))
    return pts @ M[:3, :3].T + M[:3, 3]


def image_shifts(est, true, pts) -> list:
    """Per view: the mean image displacement (u, v) of the ROI points against the truth, after the gauge."""
    y = _aligned_points(est, true, pts)
    return [(e.project(y)[0] - t.project(pts)[0]).mean(0).round(2).tolist() for e, t in zip(est, true)]


def image_modes(est, true, pts) -> list:
    """Per view, after the gauge: the displacement field of the ROI points fitted as ``a + B uv``; returns
    ``(a, |a|, mean |B uv|, mean |rest|)``: a whole-image shift, an in-plane linear part (rotation,
    magnification, shear) and what neither explains."""
    y = _aligned_points(est, true, pts)
    out = []
    for e, t in zip(est, true):
        uv_t = t.project(pts)[0]
        d = e.project(y)[0] - uv_t
        uv = uv_t - uv_t.mean(0)
        X = np.c_[np.ones(len(uv)), uv]
        coef, *_ = np.linalg.lstsq(X, d, rcond=None)
        out.append((coef[0].round(2).tolist(), float(np.linalg.norm(coef[0])),
                    float(np.linalg.norm(uv @ coef[1:], axis=1).mean()),
                    float(np.linalg.norm(d - X @ coef, axis=1).mean())))
    return out


def affine_aligned_error(est, true, points) -> float:
    """Mean reprojection error after the general affine map of the world (12 parameters) that best maps the
    true scene into the estimated views' frame: how much of the error is a global affine distortion (a mode
    the images of few views barely constrain) rather than per-view scatter."""
    from scipy.optimize import least_squares

    c = points.mean(0)
    ref = [t.project(points)[0] for t in true]

    def res(x):
        y = (points - c) @ (np.eye(3) + x[:9].reshape(3, 3)).T + c + x[9:]
        return np.concatenate([(e.project(y)[0] - uv).ravel() for e, uv in zip(est, ref)])

    r = res(least_squares(res, np.zeros(12), method="lm").x).reshape(len(est), -1, 2)
    return float(np.linalg.norm(r, axis=-1).mean())


def describe(setting: str, seed: int, r: dict) -> str:
    """A run's lines: the error per round, then the decision, per view, and the image-shift pattern."""
    sm = r["summary"]
    return "\n".join([
        f"{setting:<50} seed {seed}  given {r['given_px']:5.2f} px  rounds "
        + " ".join(f"{x:5.2f}" for x in r["rounds_px"])
        + f"  affine-aligned {r['affine_aligned_px']:5.2f}  {r['time_s']:6.1f} s",
        f"    {sm.get('decision')}  {sm.get('consistency', '')}",
        "    per view " + " ".join(f"{x:4.1f}" for x in r["per_view_px"]),
        "    shift / linear / rest " + " ".join(f"{a:.1f}/{b:.1f}/{c:.1f}" for _, a, b, c in r["modes_px"]),
        "    given shifts " + str(r["given_shifts"]),
        "    final shifts " + str(r["final_shifts"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan")
    ap.add_argument("settings", nargs="*", default=["default"])
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--noise", default="0.5/1")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--oracle", choices=["ct", "exact-poses"], default=None,
                    help="register against the CT itself, or against the quick solve from the true poses")
    ap.add_argument("--consistency", type=int, default=0, metavar="COARSEN",
                    help="also: how well a quick solve from the true, given and refined poses fits the data, on the "
                         "init's solve grid coarsened this many times")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from ixgs_ros.core.config import parse_overrides

    noise = tuple(float(x) for x in a.noise.split("/"))
    out = []
    for s in a.settings:
        ov = {"calibration.mode": "on"}
        if s != "default":
            ov.update(parse_overrides(s.split(","), "setting"))
        for seed in [int(x) for x in a.seeds.split(",")]:
            r = run(Path(a.scan), a.views, noise, seed, ov, a.oracle, a.consistency)
            out.append({"setting": s, "seed": seed, **r})
            print(describe(s, seed, r), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

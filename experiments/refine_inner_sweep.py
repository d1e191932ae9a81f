"""The full-body init alone: the engine's coarse TV-SART solve, then ``init_solve.refine_inner`` re-solving the
ROI grown by a margin at the output spacing, for several (margin, passes, relaxation, TV weights) settings and
orders of the views within each pass.

    python benchmarks/refine_inner_sweep.py SCAN_DIR [--views 25] [--order sequential,reverse,random:1,golden]
           [--average] MARGIN_VOX,PASSES,LAMBDA,TV[,TV_FINAL] ...

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses, in its order (ascending primary angle on the T12 arcs). The coarse solution is computed once,
by the engine's own ``init_tv_sart`` with the default ``EngineConfig``. Each setting re-solves the ROI grown by
MARGIN_VOX output voxels with PASSES SART passes at relaxation LAMBDA, TV weight decaying geometrically from TV to TV_FINAL (constant without it); the engine's
defaults are ``10,16,1.3,0.02,0.004``. ``--order`` repeats every setting with the views visited in each given
order: ``sequential`` (as given), ``reverse``, ``random:SEED`` (a permutation), ``golden`` (the k-th update
takes view ``argsort(frac(k * 0.618))``, spreading consecutive updates over the arc). ``--average`` also scores
the mean of each setting's volumes over the orders. Prints the 3D PSNR/SSIM over the ROI of the coarse
solution and of each re-solve, and each re-solve's time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def view_order(spec: str, n: int) -> list[int]:
    """The permutation of ``range(n)`` that ``--order`` names."""
    if spec == "sequential":
        return list(range(n))
    if spec == "reverse":
        return list(range(n))[::-1]
    if spec == "golden":
        return [int(i) for i in np.argsort((np.arange(n) * 0.6180339887) % 1.0, kind="stable")]
    if spec.startswith("random:"):
        return [int(i) for i in np.random.default_rng(int(spec.split(":", 1)[1])).permutation(n)]
    raise ValueError(f"unknown order {spec!r}: use sequential, reverse, golden or random:SEED")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("settings", nargs="+", metavar="MARGIN_VOX,PASSES,LAMBDA,TV[,TV_FINAL]")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--order", default="sequential", help="comma-separated view orders (see above)")
    ap.add_argument("--average", action="store_true", help="also score each setting's mean over the orders")
    a = ap.parse_args(argv)

    from bench_scan import load_training
    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core.volume import resample
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.engine.init_solve import init_tv_sart
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d

    specs = []
    for spec in a.settings:
        f = spec.split(",")
        if len(f) not in (4, 5):
            ap.error(f"setting {spec!r}: expected MARGIN_VOX,PASSES,LAMBDA,TV[,TV_FINAL]")
        specs.append((int(f[0]), int(f[1]), float(f[2]), float(f[3]), float(f[4]) if len(f) == 5 else None))
    grid, gt, views, proj = load_training(a.scan_dir, a.views, a.holdout)
    try:
        orders = [(o, view_order(o, len(views))) for o in a.order.split(",")]
    except ValueError as e:
        ap.error(str(e))
    t = time.perf_counter()
    init = init_tv_sart(views, proj, grid, EngineConfig())
    solve, coarse = init.solve, init.volume
    v = resample(coarse, solve, grid)
    print(f"coarse TV-SART on {solve.shape} at {solve.spacing[0]:.2f} mm: {psnr_3d(v, gt):.3f} dB / "
          f"{ssim_3d(v, gt):.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
    for pad, passes, lam, tv, tv1 in specs:
        fine = grid.padded(pad)
        vols = []
        for name, order in orders:
            t = time.perf_counter()
            x, _ = isv.refine_inner([views[i] for i in order], proj[order], solve, coarse, fine, passes, lam=lam,
                                   tv_weight=tv, tv_weight_final=tv1)
            vol = resample(x, fine, grid)
            vols.append(vol)
            tvs = f"{tv} -> {tv1}" if tv1 is not None else f"{tv}"
            print(f"refine margin {pad} vox, {passes} passes, lambda {lam}, TV {tvs}, order {name}: "
                  f"{psnr_3d(vol, gt):.3f} dB / {ssim_3d(vol, gt):.4f} ({time.perf_counter() - t:.1f} s)",
                  flush=True)
        if a.average and len(vols) > 1:
            mean = np.mean(vols, axis=0)
            print(f"  mean over the {len(vols)} orders: {psnr_3d(mean, gt):.3f} dB / {ssim_3d(mean, gt):.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

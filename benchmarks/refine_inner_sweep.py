"""The full-body init alone: TV-SART on the coarse solve grid, then ``rtk_baseline.refine_inner`` re-solving the
ROI grown by a margin at the output spacing, for several (margin, passes, relaxation, TV weight) settings.

    python benchmarks/refine_inner_sweep.py SCAN_DIR [--views 25] MARGIN_VOX,PASSES,LAMBDA,TV ...

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses. The coarse solution (24 TV-SART passes at relaxation 1.3, the engine's init) is computed once.
Prints the 3D PSNR/SSIM over the ROI of the coarse solution and of each refinement, and each refinement's time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("settings", nargs="+", metavar="MARGIN_VOX,PASSES,LAMBDA,TV")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    a = ap.parse_args(argv)

    from bench_scan import load_training
    from ixgs_ros.core import rtk_baseline as rb
    from ixgs_ros.core.metrics import psnr_3d, ssim_3d

    grid, gt, views, proj = load_training(a.scan_dir, a.views, a.holdout)
    solve = rb.default_solve_grid(views, grid, projections=proj)
    t = time.perf_counter()
    coarse = np.maximum(rb.sart_tv(views, proj, solve, 24, 0.03, tv_weight_final=0.003, lam=1.3), 0)
    v = rb.resample_volume(coarse, solve, grid)
    print(f"coarse TV-SART on {solve.shape} at {solve.spacing[0]:.2f} mm: {psnr_3d(v, gt):.3f} dB / "
          f"{ssim_3d(v, gt):.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
    for spec in a.settings:
        pad, passes, lam, tv = spec.split(",")
        fine = rb.pad_grid(grid, int(pad))
        t = time.perf_counter()
        x, _ = rb.refine_inner(views, proj, solve, coarse, fine, int(passes), lam=float(lam), tv_weight=float(tv))
        v = rb.resample_volume(x, fine, grid)
        print(f"refine margin {pad} vox, {passes} passes, lambda {lam}, TV {tv}: {psnr_3d(v, gt):.3f} dB / "
              f"{ssim_3d(v, gt):.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stronger priors for the full-body fine re-solve (``init_solve.refine_inner``): iteratively reweighted TV in
place of its TV denoiser, and non-local means on its result. Session 12's experiment (docs/history.md); neither
was taken into the engine.

    python benchmarks/fine_prior_sweep.py SCAN_DIR [--views 25] [--coarse-cache F.npy] [--nlm H,...] \\
        PASSES,TV0,TV1,DELTA ...

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``). The coarse solve is the engine's (20
TV-SART passes, weights 0.06 -> 0.006, relaxation 1.3, on ``default_solve_grid``), then each setting re-solves
the ROI grown by 10 mm at the output spacing: PASSES SART passes, TV weight decaying TV0 -> TV1, and DELTA > 0
replaces the denoiser by a reweighted one whose per-voxel bound is ``weight / (1 + |grad f| / DELTA)`` (f the
volume scaled to its maximum: its edges are smoothed less); DELTA = 0 is the engine's denoiser. ``--nlm``
applies scikit-image's non-local means (3^3 patches, search distance 4) to the first setting's result with
h = each factor times a noise estimate (median absolute Laplacian). Prints the 3D PSNR / SSIM over the ROI.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ixgs_ros.engine.init_solve import tv_denoise


def reweighted_tv(x: np.ndarray, weight: float, iterations: int, delta: float) -> np.ndarray:
    """``init_solve.tv_denoise`` with the per-voxel weight ``1 / (1 + |grad f| / delta)``, f the input scaled to
    its maximum (forward differences, zero on the last layer of each axis)."""
    f = np.asarray(x, dtype=np.float32) / max(float(np.max(x)), 1e-12)
    g2 = np.zeros_like(f)
    for a in range(f.ndim):
        g2[(slice(None),) * a + (slice(0, -1),)] += np.diff(f, axis=a) ** 2
    return tv_denoise(x, weight, iterations, weight_map=1.0 / (1.0 + np.sqrt(g2) / float(delta)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("settings", nargs="+", metavar="PASSES,TV0,TV1,DELTA")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--coarse-cache", default=None, help="a .npy file holding (or to hold) the coarse solve")
    ap.add_argument("--nlm", default="", help="comma-separated h factors for non-local means")
    a = ap.parse_args(argv)

    from bench_scan import load_training
    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core.volume import resample
    from ixgs_ros.core import solve_grid as sg
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d

    grid, gt, views, proj = load_training(a.scan_dir, a.views, a.holdout)
    solve = sg.default_solve_grid(views, grid, projections=proj)
    t = time.perf_counter()
    if a.coarse_cache and Path(a.coarse_cache).exists():
        coarse = np.load(a.coarse_cache)
    else:
        coarse = np.maximum(isv.sart_tv(views, proj, solve, 20, 0.06, tv_weight_final=0.006, lam=1.3), 0)
        if a.coarse_cache:
            np.save(a.coarse_cache, coarse)
    fine = grid.padded(int(np.ceil(10.0 / float(grid.spacing.min()) - 1e-6)))

    def report(x, g, name, t0):
        v = resample(x, g, grid)
        print(f"{name}: {psnr_3d(v, gt):.3f} dB / {ssim_3d(v, gt):.4f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    report(coarse, solve, f"coarse TV-SART on {solve.shape} at {solve.spacing[0]:.2f} mm", t)
    first = None
    for spec in a.settings:
        passes, tv0, tv1, delta = spec.split(",")
        d = float(delta)
        denoise = None if d == 0 else (lambda x, w, it=20, _d=d: reweighted_tv(x, w, it, _d))
        t = time.perf_counter()
        x, _ = isv.refine_inner(views, proj, solve, coarse, fine, int(passes), lam=1.3, tv_weight=float(tv0),
                                tv_weight_final=float(tv1), denoise=denoise)
        report(x, fine, f"refine {passes} passes, TV {tv0} -> {tv1}, delta {delta}", t)
        first = x if first is None else first
    if a.nlm:
        from scipy.ndimage import laplace
        from skimage.restoration import denoise_nl_means

        s = max(float(first.max()), 1e-12)
        xn = first / s
        sig = float(np.median(np.abs(laplace(xn))) / 0.6745 / np.sqrt(42.0))
        for h in (float(v) for v in a.nlm.split(",")):
            t = time.perf_counter()
            y = denoise_nl_means(xn, patch_size=3, patch_distance=4, h=h * sig, sigma=sig, fast_mode=True) * s
            report(y.astype(np.float32), fine, f"  + non-local means, h = {h} x {sig:.2e}", t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

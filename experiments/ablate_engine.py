"""Engine ablation on a cached ``ixgs bench`` scan: 3D PSNR/SSIM every few iterations for one engine config,
with the error split by distance from the ROI faces (which is how the face layer and the exterior overlap were
found), next to plain RTK SART on the same training views.

    python benchmarks/ablate_engine.py SCAN_DIR --views 25 --iterations 300 [--every 100] [--stop K]
           [--engine KEY=VALUE ...] [--sart-passes 8] [--json OUT.json] [--save-volume OUT.nii.gz]

``SCAN_DIR`` is a scan simulated by ``ixgs bench`` (it holds ``bench_scan.json`` and ``gt.nii.gz``), e.g.
``bench_out/scans/T12-roi-only-arc160-28v-256px-128x1mm-siddon-s0`` (the 28-view scan of a `--views 25` bench;
`--views 10,50` simulates a 53-view scan). The training views are exactly those
``ixgs bench`` uses for ``--views`` (3 held out). Prints a table and, with ``--json``, writes the numbers.
Quality numbers only: run nothing else beside it if you read the times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def shell_index(shape) -> np.ndarray:
    """Per voxel: its distance in voxels from the nearest face of the array (0 = outermost shell)."""
    ii = [np.minimum(np.arange(n), n - 1 - np.arange(n)) for n in shape]
    return np.minimum(np.minimum(ii[0][:, None, None], ii[1][None, :, None]), ii[2][None, None, :])


def error_profile(vol, gt, shells=3) -> dict:
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d

    e2 = ((vol - gt) / float(gt.max())) ** 2
    layer = shell_index(gt.shape)
    out = {"psnr": round(psnr_3d(vol, gt), 3), "ssim": round(ssim_3d(vol, gt), 4),
           "mse_interior": float(e2[layer >= shells].mean())}
    for k in range(shells):
        out[f"mse_shell{k}"] = float(e2[layer == k].mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=None, help="schedule length (default: the engine's)")
    ap.add_argument("--stop", type=int, default=None, help="stop after this many iterations")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sart-passes", type=int, default=8, help="RTK SART passes of the reference row (0: no row)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-volume", default=None, metavar="OUT.nii.gz",
                    help="write the final volume (on the ground truth's grid) for inspection")
    a = ap.parse_args(argv)

    from bench_scan import load_training
    from ixgs_ros.engine import load_engine_config
    from ixgs_ros.evaluation import baselines as bl
    from ixgs_ros.engine import ReconstructionEngine

    d = Path(a.scan_dir)
    grid, gt, views, proj = load_training(d, a.views, a.holdout)
    cfg = load_engine_config(None, a.engine, iterations=a.iterations)
    rows = []
    if a.sart_passes < 0:
        ap.error(f"--sart-passes must be >= 0, got {a.sart_passes}")
    if a.sart_passes > 0:
        sart, _ = bl.reconstruct((views, proj), grid, "sart", a.sart_passes)
        rows.append({"what": f"RTK SART-{a.sart_passes}", "iteration": None, "wall_s": None,
                     **error_profile(sart, gt)})
    eng = ReconstructionEngine(grid, cfg)
    for v, p in zip(views, proj):
        eng.add_view(v, p)
    stop = a.stop or cfg.iterations
    t0 = time.perf_counter()
    eng.step(1)
    rows.append({"what": "ixgs", "iteration": 1, "wall_s": round(time.perf_counter() - t0, 1),
                 "gaussians": len(eng.model), **error_profile(eng.volume(), gt)})
    while eng.iteration < stop:
        eng.step(min(a.every, stop - eng.iteration))
        rows.append({"what": "ixgs", "iteration": eng.iteration, "wall_s": round(time.perf_counter() - t0, 1),
                     **error_profile(eng.volume(), gt)})
    print(f"{'what':14s} {'iter':>5s} {'wall s':>7s} {'PSNR':>6s} {'SSIM':>6s} {'shell0':>8s} {'shell1':>8s} "
          f"{'shell2':>8s} {'interior':>8s}")
    for r in rows:
        print(f"{r['what']:14s} {str(r['iteration'] or '-'):>5s} {str(r['wall_s'] or '-'):>7s} {r['psnr']:6.2f} "
              f"{r['ssim']:6.3f} {r['mse_shell0']:8.2e} {r['mse_shell1']:8.2e} {r['mse_shell2']:8.2e} "
              f"{r['mse_interior']:8.2e}")
    if a.save_volume:
        from ixgs_ros.core.volume import save_nifti

        save_nifti(a.save_volume, eng.volume(), grid)
    if a.json:
        Path(a.json).write_text(json.dumps({"scan": str(d), "views": a.views, "engine": cfg.to_dict(), "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

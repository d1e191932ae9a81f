"""How much of the full-body loss is the exterior's: the engine's fine re-solve of the ROI with the exterior it
estimates (the coarse TV-SART solution outside the fine box) and with the ground truth's exterior instead.

    python benchmarks/exterior_oracle.py SCAN_DIR [--views 25] [--split-mm 30] [--coarse-cache F.npz]
           [--json OUT.json]

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` from the bundled CT (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses. The coarse solve is the engine's (``engine.init_tv_sart``, default ``EngineConfig``); the "true"
exterior is the CT the scan was simulated from, resampled (trilinear) onto the coarse solve grid. Each row
re-solves the fine box (the ROI grown by the engine's ``init_fine_margin``, its passes, relaxation and TV
schedule) with the exterior

* ``engine``: the coarse solution, as the engine does;
* ``true``: the CT's;
* ``true-near`` / ``true-far``: the CT's within / beyond ``--split-mm`` of the fine box, the coarse solution
  elsewhere (mixing the two is not consistent with the data, so these two do not add up to ``true``).

In every row the fine box starts from the coarse solution. Prints a table (3D PSNR / SSIM over the ROI, the
exterior's relative L2 error against the CT's) and writes JSON with ``--json``. Not an ixgs method: an upper
bound on what a better exterior estimate could give the engine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROWS = ("engine", "true", "true-near", "true-far")


def mix_exterior(coarse: np.ndarray, true: np.ndarray, inside: np.ndarray, dist_mm: np.ndarray, row: str,
                 split_mm: float) -> np.ndarray:
    """The solve-grid volume handed to the fine re-solve for ``row`` (see the module docstring): the coarse
    solution inside the fine box (``inside``), the coarse or true exterior outside it by ``row``, where
    ``dist_mm`` is each voxel's distance to the fine box."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}: use one of {', '.join(ROWS)}")
    coarse = np.asarray(coarse, dtype=np.float32)
    true = np.asarray(true, dtype=np.float32)
    if not (coarse.shape == true.shape == inside.shape == dist_mm.shape):
        raise ValueError(f"shapes differ: coarse {coarse.shape}, true {true.shape}, inside {inside.shape}, "
                         f"distance {dist_mm.shape}")
    take = {"engine": np.zeros(coarse.shape, bool), "true": ~inside,
            "true-near": ~inside & (dist_mm < split_mm), "true-far": ~inside & (dist_mm >= split_mm)}[row]
    return np.where(take, true, coarse).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--split-mm", type=float, default=30.0)
    ap.add_argument("--coarse-cache", help="npz holding the coarse solve (written when missing)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)

    from bench_scan import fine_resolve, load_full_body
    from scipy.ndimage import distance_transform_edt

    from ixgs_ros.core.volume import resample
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.engine.init_solve import fine_box, init_tv_sart
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.core.volume import Grid

    try:
        grid, gt, views, proj, ct = load_full_body(a.scan_dir, a.views, a.holdout)
    except ValueError as e:
        ap.error(str(e))
    cfg = EngineConfig()
    t = time.perf_counter()
    cache = Path(a.coarse_cache) if a.coarse_cache else None
    if cache is not None and cache.exists():
        z = np.load(cache)
        solve, coarse = Grid(tuple(int(s) for s in z["shape"]), z["affine"]), z["volume"]
    else:
        init = init_tv_sart(views, proj, grid, cfg)
        solve, coarse = init.solve, init.volume
        if cache is not None:
            np.savez(cache, shape=np.array(solve.shape), affine=solve.affine, volume=coarse)
    print(f"coarse TV-SART on {solve.shape} at {solve.spacing[0]:.2f} mm ({time.perf_counter() - t:.0f} s)",
          flush=True)
    true = resample(ct.mu(), ct.grid, solve, order=1).astype(np.float32)
    fine = fine_box(grid, solve, cfg, refine=cfg.exterior.refine_passes > 0)
    inside = fine.contains(solve.world_coords()).reshape(solve.shape)
    dist = distance_transform_edt(~inside) * float(solve.spacing[0])
    out = []
    for row in ROWS:
        vol_in = mix_exterior(coarse, true, inside, dist, row, a.split_mm)
        e = ~inside
        rel = float(np.sqrt(((vol_in - true)[e] ** 2).sum() / max((true[e] ** 2).sum(), 1e-12)))
        t = time.perf_counter()
        v = fine_resolve(views, proj, grid, solve, vol_in, cfg)
        out.append({"exterior": row, "psnr_3d": psnr_3d(v, gt), "ssim_3d": ssim_3d(v, gt),
                    "exterior_rel_error": rel, "seconds": time.perf_counter() - t})
        r = out[-1]
        print(f"{row}: {r['psnr_3d']:.3f} dB / {r['ssim_3d']:.4f}, exterior rel. error {rel:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)
    print("\n| exterior | PSNR 3D | SSIM 3D | exterior rel. L2 error |\n|---|---|---|---|")
    for r in out:
        print(f"| {r['exterior']} | {r['psnr_3d']:.3f} | {r['ssim_3d']:.4f} | {r['exterior_rel_error']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"scan": str(a.scan_dir), "views": a.views, "split_mm": a.split_mm,
                                            "fine_box_shape": list(fine.shape), "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

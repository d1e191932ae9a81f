"""The full-body init alone, for several settings of its coarse solve: each setting is a set of ``EngineConfig``
overrides; the engine's own ``init_tv_sart`` solves the coarse full-body grid with them, then
``init_solve.refine_inner`` re-solves the ROI grown by ``init_fine_margin`` at the output spacing with that
exterior fixed, as the engine does before fitting its Gaussians.

    python benchmarks/coarse_sweep.py SCAN_DIR [--views 25] [--json OUT.json] SETTING ...

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses. A SETTING is ``default`` or comma-separated ``KEY=VALUE`` overrides of ``EngineConfig`` (values
are Python literals), e.g. ``init_exterior_levels=1`` or ``init_exterior_sart_iterations=48``. Prints a table
(coarse and fine solve times, the coarse solution's mass and relative L2 error against the CT resampled onto
its grid, the share of its mass where the CT is air, 3D PSNR / SSIM over the ROI after the fine re-solve) and
writes the rows as JSON with ``--json``. The engine's Gaussian stage is not run: on the full-body scans it
moves the 3D PSNR by a few hundredths of a dB (docs/history.md).
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np


def parse_setting(spec: str) -> dict:
    """``default`` -> {}; ``a=1,b=None`` -> {"a": 1, "b": None}; ValueError naming a bad item."""
    if spec == "default":
        return {}
    out = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"setting item {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"setting item {item!r}: value is not a Python literal") from e
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("settings", nargs="+", metavar="SETTING")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)

    from bench_scan import fine_resolve, load_full_body

    from ixgs_ros.core.volume import resample
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.engine.init_solve import init_tv_sart
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d

    try:
        configs = [(s, EngineConfig.from_dict(parse_setting(s))) for s in a.settings]
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    try:
        grid, gt, views, proj, ct = load_full_body(a.scan_dir, a.views, a.holdout)
    except ValueError as e:
        ap.error(str(e))
    truth = {}  # the CT on each solve grid met so far
    rows = []
    for spec, cfg in configs:
        t = time.perf_counter()
        init = init_tv_sart(views, proj, grid, cfg)
        t_coarse = time.perf_counter() - t
        solve, coarse = init.solve, init.volume
        key = (solve.shape, solve.affine.tobytes())
        if key not in truth:
            truth[key] = resample(ct.mu(), ct.grid, solve, order=1).astype(np.float32)
        true = truth[key]
        air = true < 0.004  # below 20 % of water's mu: air (and the lungs' emptiest parts)
        t = time.perf_counter()
        v = fine_resolve(views, proj, grid, solve, coarse, cfg)
        t_fine = time.perf_counter() - t
        rows.append({"setting": spec, "coarse_s": t_coarse, "fine_s": t_fine,
                     "mass_ratio": float(coarse.sum() / true.sum()),
                     "mass_in_air": float(coarse[air].sum() / coarse.sum()),
                     "rel_l2_error": float(np.sqrt(((coarse - true) ** 2).sum() / (true ** 2).sum())),
                     "psnr_3d": psnr_3d(v, gt), "ssim_3d": ssim_3d(v, gt)})
        r = rows[-1]
        print(f"{spec}: {r['psnr_3d']:.3f} dB / {r['ssim_3d']:.4f} (coarse {t_coarse:.0f} s, fine {t_fine:.0f} s)",
              flush=True)
    print("\n| setting | coarse (s) | fine (s) | coarse mass / CT | coarse mass in air | coarse rel. L2 error "
          "| PSNR 3D | SSIM 3D |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['coarse_s']:.0f} | {r['fine_s']:.0f} | {r['mass_ratio']:.3f} | "
              f"{r['mass_in_air']:.3f} | {r['rel_l2_error']:.3f} | {r['psnr_3d']:.3f} | {r['ssim_3d']:.4f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"scan": str(a.scan_dir), "views": a.views, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the full-body init remember where it starts? The engine's coarse solve and a joint two-resolution solve,
each started from zeros (as the engine does) and from the CT itself.

    python benchmarks/start_oracle.py SCAN_DIR [ROW ...] [--views 25] [--joint-passes 24] [--json OUT.json]

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` from the bundled CT (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses. Rows (default: all):

* ``cascade-zero``: the engine's coarse solve (``engine.init_tv_sart``'s two levels, default ``EngineConfig``,
  its first level from zeros), then its fine re-solve (``bench_scan.fine_resolve``): the engine's init;
* ``cascade-ct``: the same with the first level started from the CT, resampled (trilinear) to its grid;
* ``joint-level1``: the engine's first level, then ``--joint-passes`` passes of :func:`joint_tv_sart` (the fine
  box at 1 mm and the exterior at the solve grid's spacing updated together, view by view) instead of the second
  level and the fine re-solve;
* ``joint-ct``: :func:`joint_tv_sart` started from the CT (fine box and exterior).

Prints one line per row (3D PSNR / SSIM over the ROI, the exterior's relative L2 error against the CT's, time)
and, for the joint rows, the PSNR every 4 passes; writes JSON with ``--json``. Not an ixgs method: the rows
started from the CT are oracles. Session 23 (2026-12-06) measured with it that the solves forget their start.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROWS = ("cascade-zero", "cascade-ct", "joint-level1", "joint-ct")


def joint_tv_sart(views, proj, solve, fine, exterior0, fine0, passes: int, *, lam: float = 1.3,
                  exterior_tv=(0.019, 0.006), fine_tv=(0.02, 0.004), tv_weight_map=None, tv_iterations: int = 20,
                  on_pass=None):
    """A two-resolution TV-SART: the box ``fine`` (a :class:`Grid` inside ``solve``'s box) on its own voxels and
    the rest of ``solve`` on its voxels, both corrected after every view from the same residual ``p - P_solve e -
    P_fine x``, divided by the ray's length through ``solve``'s box (as ``init_solve.refine_inner`` does), each
    part normalised by its own back-projected ray weights; positivity after every view. After every pass the
    exterior is TV-denoised with the fine box's solution (resampled) filling its hole, so the box's faces are no
    edges, with weights decaying geometrically over ``exterior_tv`` (and ``tv_weight_map``), and the fine box
    with ``fine_tv``. ``exterior0`` (on ``solve``; its voxels inside the fine box are ignored) and ``fine0`` (on
    ``fine``) are the start. ``on_pass(k, exterior, x)`` after pass ``k`` (1-based). Returns ``(exterior with
    zeros inside the fine box, x)``, float32."""
    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core.volume import resample
    from ixgs_ros.core import rtk

    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    exterior0, fine0 = np.asarray(exterior0, np.float32), np.asarray(fine0, np.float32)
    if exterior0.shape != tuple(solve.shape) or fine0.shape != tuple(fine.shape):
        raise ValueError(f"start volumes of shapes {exterior0.shape} / {fine0.shape} do not match the grids "
                         f"{tuple(solve.shape)} / {tuple(fine.shape)}")
    if not solve.contains(fine.corners(), margin_vox=-1e-3).all():
        raise ValueError("the fine grid's box must lie inside the solve grid's box")
    inside = fine.contains(solve.world_coords())
    e = np.where(inside, 0.0, np.maximum(exterior0, 0)).astype(np.float32)
    x = np.maximum(fine0, 0).astype(np.float32)
    if passes == 0:
        return e, x
    lengths = np.maximum(rtk.forward_project(np.ones(solve.shape, np.float32), solve, views),
                         float(fine.spacing.min()))
    ones = np.ones_like(lengths[:1])
    norm_f = [np.maximum(rtk.back_project(ones, [v], fine), 1e-6) for v in views]
    norm_e = [np.maximum(rtk.back_project(ones, [v], solve), 1e-6) for v in views]
    w_ext, w_fine = isv.tv_schedule(passes, *exterior_tv), isv.tv_schedule(passes, *fine_tv)
    for k in range(passes):
        for i, v in enumerate(views):
            r = (proj[i:i + 1] - rtk.forward_project(e, solve, [v]) - rtk.forward_project(x, fine, [v])) \
                / lengths[i:i + 1]
            x = np.maximum(x + lam * rtk.back_project(r, [v], fine) / norm_f[i], 0).astype(np.float32)
            e = np.maximum(e + lam * rtk.back_project(r, [v], solve) / norm_e[i], 0)
            e = np.where(inside, 0, e).astype(np.float32)
        filled = np.where(inside, resample(x, fine, solve, order=1), e).astype(np.float32)
        filled = isv.tv_denoise(filled, w_ext[k], tv_iterations, weight_map=tv_weight_map)
        e = np.where(inside, 0, filled).astype(np.float32)
        x = isv.tv_denoise(x, w_fine[k], tv_iterations)
        if on_pass is not None:
            on_pass(k + 1, e, x)
    return e, x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("rows", nargs="*", metavar="ROW", help=f"from {', '.join(ROWS)} (default: all)")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--joint-passes", type=int, default=24)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = a.rows or list(ROWS)
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown row(s) {', '.join(bad)}: use {', '.join(ROWS)}")

    from bench_scan import fine_resolve, load_full_body

    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core.volume import resample
    from ixgs_ros.core import solve_grid as sg
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.engine.init_solve import fine_box, init_passes
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.core.radiograph import bin_view

    cfg = EngineConfig()
    try:
        grid, gt, views, proj, ct = load_full_body(a.scan_dir, a.views, a.holdout)
    except ValueError as e:
        ap.error(str(e))
    solve = sg.default_solve_grid(views, grid, projections=proj, max_voxels=cfg.init.solve_max_voxels)
    low = solve.coarsened(2)
    fine = fine_box(grid, solve, cfg, refine=True)
    inside = fine.contains(solve.world_coords())
    mu = ct.mu()
    true_s = np.where(inside, 0, resample(mu, ct.grid, solve, order=1)).astype(np.float32)
    # the engine's coarse settings (engine.init_tv_sart with exterior material and two levels)
    n = len(views)
    tv0 = cfg.init.tv_weight * cfg.exterior.tv_scale
    tv1 = cfg.init.tv_weight_final * cfg.exterior.tv_scale
    tvm = float(np.sqrt(tv0 * tv1))

    def binned(level):
        b = sg.coarse_binning(views, level)
        pairs = [bin_view(v, p, b) for v, p in zip(views, proj)] if b > 1 else list(zip(views, proj))
        return [q[0] for q in pairs], np.stack([q[1] for q in pairs])

    def unseen_map(level, lviews):
        return 1.0 + cfg.exterior.tv_unseen * (1.0 - sg.view_counts(lviews, level) / len(lviews))

    def level1(x0):
        lv, lp = binned(low)
        return isv.sart_tv(lv, lp, low, init_passes(cfg, cfg.exterior.level_passes, n), tv0,
                          tv_weight_final=tvm, lam=cfg.init.relaxation, tv_weight_map=unseen_map(low, lv), x0=x0)

    def level2(x0):
        sv, sp = binned(solve)
        return np.maximum(isv.sart_tv(sv, sp, solve, init_passes(cfg, cfg.exterior.passes, n), tvm,
                                     tv_weight_final=tv1, lam=cfg.init.relaxation,
                                     tv_weight_map=unseen_map(solve, sv), x0=x0), 0)

    def ext_error(e):
        e = np.where(inside, 0, e)
        return float(np.sqrt(((e - true_s) ** 2).sum() / (true_s ** 2).sum()))

    out = []
    for row in rows:
        t0 = time.perf_counter()
        curve = []
        if row.startswith("cascade"):
            x0 = resample(mu, ct.grid, low, order=1).astype(np.float32) if row == "cascade-ct" else None
            coarse = level2(resample(level1(x0), low, solve, order=1))
            e = coarse
            v = fine_resolve(views, proj, grid, solve, coarse, cfg)
        else:
            if row == "joint-ct":
                e0 = resample(mu, ct.grid, solve, order=1)
                f0 = resample(mu, ct.grid, fine, order=1)
            else:
                l1 = level1(None)
                e0, f0 = resample(l1, low, solve, order=1), resample(l1, low, fine, order=1)

            def on_pass(k, e, x):
                if k % 4 == 0 or k == a.joint_passes:
                    p = psnr_3d(resample(x, fine, grid), gt)
                    curve.append({"pass": k, "psnr_3d": p, "exterior_rel_l2": ext_error(e)})
                    print(f"  {row} pass {k}: {p:.3f} dB, exterior rel. L2 {curve[-1]['exterior_rel_l2']:.3f}",
                          flush=True)

            e, x = joint_tv_sart(views, proj, solve, fine, e0, f0, a.joint_passes, lam=cfg.init.relaxation,
                                 exterior_tv=(tvm, tv1), fine_tv=(cfg.exterior.refine_tv_weight,
                                                                  cfg.exterior.refine_tv_weight_final),
                                 tv_weight_map=unseen_map(solve, views), on_pass=on_pass)
            v = resample(x, fine, grid)
        r = {"row": row, "psnr_3d": psnr_3d(v, gt), "ssim_3d": ssim_3d(v, gt), "exterior_rel_l2": ext_error(e),
             "seconds": time.perf_counter() - t0, "curve": curve}
        out.append(r)
        print(f"{row}: {r['psnr_3d']:.3f} dB / {r['ssim_3d']:.4f}, exterior rel. L2 {r['exterior_rel_l2']:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"scan": str(a.scan_dir), "views": a.views, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

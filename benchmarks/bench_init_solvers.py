"""The engine's init solvers side by side: RTK (``ixgs_ros.engine.init_solve`` on RTK, CPU) and torch
(``ixgs_ros.engine.sart_torch``, CPU or CUDA) on one simulated scan: time per SART pass, per TV denoising call
and per fine re-solve pass, and how far the two solutions are apart.

    python benchmarks/bench_init_solvers.py [--views 25] [--detector 128] [--grid 128] [--spacing 1.0]
        [--passes 3] [--tv-iterations 20] [--refine-passes 2] [--device cpu] [--threads 1] [--step 0.5]
        [--no-rtk] [--json FILE]

The scan: a Shepp-Logan-style head of ellipsoids (analytic line integrals, so no projector is favoured) filling
most of a ``--grid``^3 box at ``--spacing`` mm, seen by ``--views`` views of ``--detector``^2 pixels on a
160-degree arc with per-view tilt, detector roll, off-centre principal points and source distance jitter.

* SART: ``--passes`` passes of plain SART (no TV) from zeros, relaxation 1.3; torch visits the views in RTK's
  order (``sart_torch.rtk_view_order``) so that the solutions are comparable. Reported: the mean time per
  pass (torch's set-up, the per-view ray geometry, is counted in it, and shown on its own), the relative RMS
  difference between the two volumes, each one's data residual (relative, against the analytic projections,
  forward-projected by RTK's Joseph projector for both) and its 3D PSNR against the voxelised phantom.
* TV: one ``tv_denoise`` call (``--tv-iterations`` Chambolle-Pock steps on the SART volume), RTK module
  version (torch on the CPU) against ``sart_torch.tv_denoise`` on ``--device``; max abs difference.
* Fine re-solve: ``refine_inner`` of the central half of the box at ``--spacing`` from a SART solution on the
  box at twice the spacing, ``--refine-passes`` passes (0 skips it); time per pass and set-up (the per-view
  normalisers), relative difference and 3D PSNR.

``--threads`` sets torch's and ITK's CPU threads. Prints a Markdown table and writes ``--json`` (default
``bench_init_solvers.json`` in the current directory).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_scan(n_views: int, det: int, grid_n: int, spacing: float, seed: int = 0):
    from ixgs_ros.core.geometry import View, look_at, rotation_z
    from ixgs_ros.simulation.phantom import project, shepp_logan_3d
    from ixgs_ros.core.volume import Grid

    grid = Grid.centered(grid_n, spacing, (0.0, 0.0, 0.0))
    half = 0.5 * grid_n * spacing
    ell = shepp_logan_3d(radius_mm=0.95 * half)
    rng = np.random.default_rng(seed)
    sod, sdd = 6.0 * half, 10.0 * half
    f = sdd / (2.2 * half * sdd / sod / det)  # the box's shadow fills about 1/1.1 of the detector
    views = []
    for i, a in enumerate(np.deg2rad(np.linspace(-80, 80, n_views))):
        tilt = np.deg2rad(rng.uniform(-10, 10))
        d = np.array([np.sin(a) * np.cos(tilt), -np.cos(a) * np.cos(tilt), np.sin(tilt)])
        src = sod * (1 + rng.uniform(-0.05, 0.05)) * d
        T = look_at(src, rng.uniform(-0.03, 0.03, 3) * half, [0.0, 0.0, 1.0])
        T[:3, :3] = T[:3, :3] @ rotation_z(np.deg2rad(rng.uniform(-5, 5)))
        c = (det - 1) / 2 + rng.uniform(-0.04, 0.04, 2) * det
        K = np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]])
        views.append(View(K, T, det, det, {"sdd": sdd}))
    return ell, grid, views, project(ell, views)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--grid", type=int, default=128, help="voxels per side of the SART box")
    ap.add_argument("--spacing", type=float, default=1.0, help="mm")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--tv-iterations", type=int, default=20)
    ap.add_argument("--refine-passes", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step", type=float, default=0.5, help="torch projector step, fraction of a voxel")
    ap.add_argument("--no-rtk", action="store_true", help="torch only (e.g. on a machine without RTK)")
    ap.add_argument("--json", default="bench_init_solvers.json")
    a = ap.parse_args(argv)

    import torch

    from ixgs_ros.evaluation import metrics as M
    from ixgs_ros.simulation.phantom import voxelize
    from ixgs_ros.core.volume import Grid
    from ixgs_ros.engine import sart_torch as st

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rb = None
    if not a.no_rtk:
        from types import SimpleNamespace

        from ixgs_ros.core import rtk
        from ixgs_ros.engine import init_solve

        rb = SimpleNamespace(forward_project=rtk.forward_project, sart_tv=init_solve.sart_tv,
                             tv_denoise=init_solve.tv_denoise, refine_inner=init_solve.refine_inner)
        rtk.set_threads(a.threads)
        t0 = time.perf_counter()
        rtk.preload()
        print(f"RTK loaded in {time.perf_counter() - t0:.1f} s", flush=True)

    ell, grid, views, proj = make_scan(a.views, a.detector, a.grid, a.spacing)
    gt = voxelize(ell, grid, supersample=2)
    res = {"config": vars(a), "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                          "torch": torch.__version__, "device": str(dev)}}
    if dev.type == "cuda":
        res["machine"]["gpu"] = torch.cuda.get_device_name(dev)
    rows = []

    def residual(x):
        fp = rb.forward_project(x, grid, views) if rb is not None else st.forward_project(x, grid, views, dev)
        return float(np.linalg.norm(fp - proj) / np.linalg.norm(proj))

    def rel(x, y):
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))

    def timed(fn, *args, **kw):
        """``fn(*args, on_pass=..., **kw)``, its result and (set-up s, s per pass): the fastest of the passes
        after the first (robust to other load on a shared machine), and what the first took beyond that (all
        of it, as the per-pass time, when there is one pass)."""
        stamps = [time.perf_counter()]

        def tick(k, n):
            sync()
            stamps.append(time.perf_counter())

        out = fn(*args, on_pass=tick, **kw)
        d = np.diff(stamps)
        per = float(d[1:].min()) if len(d) > 1 else float(d[0])
        return out, (float(d[0]) - per if len(d) > 1 else float("nan"), per)

    # ---------------------------------------------------------------- SART passes
    order = st.rtk_view_order(len(views)) if rb is not None else None
    xt, (setup_t, t_torch) = timed(st.sart_tv, views, proj, grid, a.passes, 0.0, device=dev, order=order,
                                   step=a.step)
    sart = {"torch_s_per_pass": t_torch, "torch_setup_s": setup_t, "torch_residual": residual(xt),
            "torch_psnr": M.psnr_3d(xt, gt)}
    if rb is not None:
        xr, (setup_r, t_rtk) = timed(rb.sart_tv, views, proj, grid, a.passes, 0.0)
        sart.update({"rtk_s_per_pass": t_rtk, "rtk_setup_s": setup_r, "rtk_residual": residual(xr),
                     "rtk_psnr": M.psnr_3d(xr, gt), "rel_diff": rel(xt, xr)})
    res["sart"] = sart
    rows.append(("SART pass", sart.get("rtk_s_per_pass"), t_torch,
                 f"rel diff {sart.get('rel_diff', float('nan')):.4f}; residual RTK "
                 f"{sart.get('rtk_residual', float('nan')):.4f} / torch {sart['torch_residual']:.4f}; PSNR RTK "
                 f"{sart.get('rtk_psnr', float('nan')):.2f} / torch {sart['torch_psnr']:.2f} dB; set-up RTK "
                 f"{sart.get('rtk_setup_s', float('nan')):.2f} / torch {setup_t:.2f} s"))

    # ---------------------------------------------------------------- TV
    w = 0.01
    x = xt
    t0 = time.perf_counter()
    yt = st.tv_denoise(x, w, a.tv_iterations, device=dev)
    sync()
    tv = {"torch_s": time.perf_counter() - t0}
    if rb is not None:
        t0 = time.perf_counter()
        yr = rb.tv_denoise(x, w, a.tv_iterations)
        tv.update({"rtk_s": time.perf_counter() - t0,
                   "max_abs_diff_rel": float(np.abs(yt - yr).max() / max(float(np.abs(yr).max()), 1e-12))})
    res["tv"] = tv
    rows.append((f"TV denoise ({a.tv_iterations} it.)", tv.get("rtk_s"), tv["torch_s"],
                 f"max |diff| / max {tv.get('max_abs_diff_rel', float('nan')):.2g}"))

    # ---------------------------------------------------------------- fine re-solve
    if a.refine_passes > 0:
        coarse = Grid.centered(max(2, a.grid // 2), 2 * a.spacing, (0.0, 0.0, 0.0))
        fine = Grid.centered(max(2, a.grid // 2), a.spacing, (0.0, 0.0, 0.0))
        sol = st.sart_tv(views, proj, coarse, 2, 0.01, device=dev)
        (ft, _), (setup_t, per_t) = timed(st.refine_inner, views, proj, coarse, sol, fine, a.refine_passes,
                                          device=dev, step=a.step)
        ref = {"torch_s_per_pass": per_t, "torch_setup_s": setup_t,
               "torch_psnr": M.psnr_3d(ft, voxelize(ell, fine, supersample=2))}
        if rb is not None:
            (fr, _), (setup_r, per_r) = timed(rb.refine_inner, views, proj, coarse, sol, fine, a.refine_passes)
            ref.update({"rtk_s_per_pass": per_r, "rtk_setup_s": setup_r, "rel_diff": rel(ft, fr),
                        "rtk_psnr": M.psnr_3d(fr, voxelize(ell, fine, supersample=2))})
        res["refine_inner"] = ref
        rows.append((f"fine re-solve pass ({fine.shape[0]}^3)", ref.get("rtk_s_per_pass"), ref["torch_s_per_pass"],
                     f"rel diff {ref.get('rel_diff', float('nan')):.4f}; PSNR RTK "
                     f"{ref.get('rtk_psnr', float('nan')):.2f} / torch {ref['torch_psnr']:.2f} dB; set-up RTK "
                     f"{ref.get('rtk_setup_s', float('nan')):.2f} / torch {setup_t:.2f} s"))

    print(f"\n{a.views} views of {a.detector}^2 px, {a.grid}^3 grid at {a.spacing} mm, torch on {dev}, "
          f"{a.threads} thread(s), step {a.step} voxel\n")
    print("| stage | RTK (s) | torch (s) | torch / RTK | agreement |")
    print("|---|---|---|---|---|")
    for name, tr, tt, note in rows:
        ratio = f"{tt / tr:.2f}" if tr else "-"
        print(f"| {name} | {tr:.3f} | {tt:.3f} | {ratio} | {note} |" if tr is not None
              else f"| {name} | - | {tt:.3f} | - | {note} |")
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

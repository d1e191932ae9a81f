"""Would knowing the patient's outline (e.g. from a surface scan) close the full-body gap? The engine's full-body
init with the CT's own body outline as a support mask of its coarse solve.

    python benchmarks/outline_oracle.py SCAN_DIR [ROW ...] [--views 25] [--json OUT.json]

``SCAN_DIR`` is a full-body scan simulated by ``ixgs bench`` from the bundled CT (e.g.
``bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0``); the training views are those ``ixgs
bench`` uses. A ROW is

* ``engine``: the engine's init as it is (``engine.init_tv_sart``, default ``EngineConfig``, then
  ``bench_scan.fine_resolve``);
* ``outline:MM``: the same, with every voxel of both coarse levels outside the CT's body outline grown by ``MM``
  set to zero after every pass (:func:`masked_sart_tv`); the outline (:func:`body_outline`) is the CT's material
  above 0.004/mm in every connected piece of at least 10000 CT voxels (body, arms, table), holes filled;
* ``largest:MM``: the same with the largest piece only (what a silhouette-based estimate would give);
* ``box``: the mask is the CT's whole box (material may lie anywhere the CT has voxels, nowhere beyond them: the
  phantom's ends, which a real patient does not have);
* ``carve:T``: not an oracle, the views' own evidence (:func:`air_hull`): a voxel whose centre projects onto an
  air pixel (line integral below ``T``) of any view is air.

Default rows: ``engine outline:3 largest:3``. Prints one line per row (3D PSNR / SSIM over the ROI after the fine
re-solve, the coarse solution's relative L2 error against the CT's, the share of the solve grid the mask keeps and
of the CT's mass inside it (for ``carve`` rows, of the CT resampled onto the solve grid), time) and a table;
writes JSON with ``--json``. Not an ixgs method: the scans carry no outline, so the ``outline``, ``largest`` and
``box`` rows are oracles. Session 24 (2026-12-06) measured with it that the true outline barely helps on T12, and
that what it gives on L1 is the CT's end, which the views' air pixels do not reveal.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

AIR_MU = 0.004  # 1/mm, a fifth of water's: below it, air (and the emptiest lung)


def parse_row(row: str) -> tuple[str, float]:
    """``engine`` -> ("engine", 0); ``box`` -> ("box", 0); ``outline:3`` -> ("outline", 3.0); ``carve:0.02`` ->
    ("carve", 0.02); ValueError naming a bad row."""
    if row in ("engine", "box"):
        return row, 0.0
    kind, sep, mm = row.partition(":")
    if kind not in ("outline", "largest", "carve") or not sep:
        raise ValueError(f"unknown row {row!r}: use engine, box, outline:MM, largest:MM or carve:T")
    what = "an air threshold" if kind == "carve" else "a growth in mm"
    try:
        value = float(mm)
    except ValueError:
        raise ValueError(f"row {row!r}: {mm!r} is not {what}") from None
    if not (value > 0 if kind == "carve" else value >= 0):
        raise ValueError(f"row {row!r}: {what} must be {'> 0' if kind == 'carve' else '>= 0 mm'}")
    return kind, value


def body_outline(mu: np.ndarray, spacing, grow_mm: float = 0.0, *, min_voxels: int = 10000,
                 largest_only: bool = False, air_mu: float = AIR_MU) -> np.ndarray:
    """The body outline of the volume ``mu`` (1/mm, voxel sizes ``spacing`` in mm) as a boolean mask: voxels above
    ``air_mu`` in connected pieces of at least ``min_voxels`` voxels (or the largest piece only), holes filled
    in 3D and in every slice of the last axis, grown by ``grow_mm`` (Euclidean, in mm)."""
    from scipy import ndimage

    mu = np.asarray(mu)
    material = mu > air_mu
    labels, n = ndimage.label(material)
    if n == 0:
        return np.zeros(mu.shape, bool)
    sizes = np.asarray(ndimage.sum(material, labels, range(1, n + 1)))
    keep = [int(np.argmax(sizes)) + 1] if largest_only else [int(i) + 1 for i in np.nonzero(sizes >= min_voxels)[0]]
    mask = ndimage.binary_fill_holes(np.isin(labels, keep))
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    if grow_mm > 0:
        mask = ndimage.distance_transform_edt(~mask, sampling=np.asarray(spacing, float)) <= grow_mm
    return mask


def air_hull(views, projections, grid, threshold: float) -> np.ndarray:
    """Space carving from the views: attenuation is never negative, so a ray whose line integral is below
    ``threshold`` crosses no material, and a voxel of ``grid`` whose centre projects onto such a pixel (its nearest
    pixel centre, the air region eroded by one pixel) in any view is air. The kept region is grown by one voxel,
    so a voxel straddling the body's edge stays; voxels no view sees are kept. Bool, ``grid.shape``, True where
    material may lie."""
    from scipy.ndimage import binary_dilation, binary_erosion

    X = grid.world_coords().reshape(-1, 3)
    keep = np.ones(len(X), bool)
    for v, p in zip(views, np.asarray(projections)):
        air = binary_erosion(p < threshold, iterations=1, border_value=1)
        uv, z = v.project(X)
        with np.errstate(invalid="ignore"):
            u, r = np.rint(uv[:, 0]), np.rint(uv[:, 1])
            seen = np.nonzero((z > 0) & (u >= 0) & (u < p.shape[1]) & (r >= 0) & (r < p.shape[0]))[0]
        keep[seen[air[r[seen].astype(np.intp), u[seen].astype(np.intp)]]] = False
    return binary_dilation(keep.reshape(grid.shape), iterations=1)


def masked_sart_tv(mask_on, views, projections, solve_grid, passes, tv_weight, *, tv_weight_final=None,
                   x0=None, on_pass=None, solver=None, **kw):
    """``init_solve.sart_tv`` with the voxels where ``mask_on(solve_grid)`` (a boolean array of the grid's
    shape, world layout) is False held at zero: the start and the result of every pass (one ``sart_tv`` pass
    each, with that pass's TV weight of the same schedule). With an all-True mask it is ``sart_tv``. ``solver``
    is the ``sart_tv`` to call (default: the engine's). Passed to ``init_tv_sart(..., sart=...)``."""
    from ixgs_ros.engine import init_solve as isv

    solver = solver or isv.sart_tv

    keep = np.asarray(mask_on(solve_grid), bool)
    if keep.shape != tuple(solve_grid.shape):
        raise ValueError(f"mask of shape {keep.shape} for a solve grid of shape {tuple(solve_grid.shape)}")
    x = np.zeros(solve_grid.shape, np.float32) if x0 is None else np.maximum(np.asarray(x0, np.float32), 0)
    x = np.where(keep, x, 0).astype(np.float32)
    weights = isv.tv_schedule(passes, tv_weight, tv_weight_final)
    for k, w in enumerate(weights):
        x = solver(views, projections, solve_grid, 1, w, x0=x, **kw)
        x[~keep] = 0
        if on_pass is not None:
            on_pass(k + 1, len(weights))
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan_dir")
    ap.add_argument("rows", nargs="*", metavar="ROW", help="engine, box, outline:MM, largest:MM, carve:T "
                                                          "(default: engine outline:3 largest:3)")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--holdout", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = a.rows or ["engine", "outline:3", "largest:3"]
    try:
        parsed = [parse_row(r) for r in rows]
    except ValueError as e:
        ap.error(str(e))

    from bench_scan import fine_resolve, load_full_body

    from ixgs_ros.core.volume import resample
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.engine.init_solve import init_tv_sart
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d

    cfg = EngineConfig()
    try:
        grid, gt, views, proj, ct = load_full_body(a.scan_dir, a.views, a.holdout)
    except ValueError as e:
        ap.error(str(e))
    mu = ct.mu()
    out = []
    for row, (kind, value) in zip(rows, parsed):
        outline = {"engine": lambda: None, "carve": lambda: None, "box": lambda: np.ones(mu.shape, bool)}.get(
            kind, lambda: body_outline(mu, ct.grid.spacing, value, largest_only=kind == "largest"))()
        masks = {}

        def mask_on(g, outline=outline, masks=masks, kind=kind, value=value):
            key = (tuple(g.shape), g.affine.tobytes())
            if key not in masks:  # a solve voxel is kept when any of the outline reaches its centre
                masks[key] = air_hull(views, proj, g, value) if kind == "carve" else \
                    resample(outline.astype(np.float32), ct.grid, g, order=1) > 0.01
            return masks[key]

        t = time.perf_counter()
        sart = None if kind == "engine" else (lambda *args, _m=mask_on, **kw: masked_sart_tv(_m, *args, **kw))
        init = init_tv_sart(views, proj, grid, cfg, sart=sart)
        t_coarse = time.perf_counter() - t
        true = resample(mu, ct.grid, init.solve, order=1).astype(np.float32)
        v = fine_resolve(views, proj, grid, init.solve, init.volume, cfg)
        keep = np.ones(init.solve.shape, bool) if kind == "engine" else mask_on(init.solve)
        out.append({"row": row, "psnr_3d": psnr_3d(v, gt), "ssim_3d": ssim_3d(v, gt),
                    "exterior_rel_error": float(np.sqrt(((init.volume - true) ** 2).sum() / (true ** 2).sum())),
                    "grid_kept": float(keep.mean()),
                    "ct_mass_kept": 1.0 if kind == "engine" else float(true[keep].sum() / true.sum()) if
                    kind == "carve" else float(mu[outline].sum() / mu.sum()),
                    "coarse_s": t_coarse, "seconds": time.perf_counter() - t})
        r = out[-1]
        print(f"{row}: {r['psnr_3d']:.3f} dB / {r['ssim_3d']:.4f}, coarse rel. error {r['exterior_rel_error']:.3f}, "
              f"mask keeps {r['grid_kept']:.3f} of the grid and {r['ct_mass_kept']:.3f} of the CT's mass "
              f"({r['seconds']:.0f} s)", flush=True)
    print("\n| row | PSNR 3D | SSIM 3D | coarse rel. L2 error | grid kept | CT mass kept |\n|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['row']} | {r['psnr_3d']:.3f} | {r['ssim_3d']:.4f} | {r['exterior_rel_error']:.3f} | "
              f"{r['grid_kept']:.3f} | {r['ct_mass_kept']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"scan": str(a.scan_dir), "views": a.views, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

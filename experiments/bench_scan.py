"""Shared by the benchmark scripts: the training views of a cached ``ixgs bench`` scan, exactly as ``ixgs bench``
picks them, with the scan's output grid and ground truth; the engine's fine re-solve of a full-body init."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_training(scan_dir, n_views: int, holdout: int = 3):
    """``(grid, gt, views, projections)`` for ``n_views`` training views of the bench scan in ``scan_dir``
    (``holdout`` views held out, as ``ixgs bench --views n_views`` does)."""
    from ixgs_ros.evaluation.bench import primary_angles, training_subset
    from ixgs_ros.pipeline import choose_grid
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti

    d = Path(scan_dir)
    scan = Scan.load(d)
    gt, _ = load_nifti(d / "gt.nii.gz")
    train, _ = training_subset(primary_angles(scan), n_views, holdout, 0)
    views = [scan.views[i] for i in train]
    return choose_grid(scan), gt, views, np.stack([scan.projections[i] for i in train])


def load_full_body(scan_dir, n_views: int, holdout: int = 3):
    """``(grid, gt, views, projections, ct)``: :func:`load_training` of a full-body bench scan and the CT it was
    simulated from (``ixgs_ros.simulation.ct.load_ct``, no labels). ValueError naming the scan when it is not a
    full-body scan (only those have material outside the ROI)."""
    import json

    from ixgs_ros.simulation.ct import load_ct

    sim = json.loads((Path(scan_dir) / "bench_scan.json").read_text())["simulation"]
    if sim.get("mode") != "full-body":
        raise ValueError(f"{scan_dir} is a {sim.get('mode')!r} scan; the exterior only exists on full-body scans")
    return (*load_training(scan_dir, n_views, holdout),
            load_ct(sim.get("ct_path"), sim.get("labels_path"), with_labels=False))


def fine_resolve(views, proj, grid, solve, volume, cfg) -> np.ndarray:
    """The engine's fine re-solve of a coarse full-body solution (``volume`` on ``solve``) with ``cfg``'s
    init_fine_* settings over the engine's fine box (``engine.fine_box``), the rest held fixed; returns the
    result on the ROI ``grid``."""
    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core.volume import resample
    from ixgs_ros.engine.init_solve import fine_box, init_passes

    passes = init_passes(cfg, cfg.exterior.refine_passes, len(views))
    fine = fine_box(grid, solve, cfg, refine=passes > 0)
    x, _ = isv.refine_inner(views, proj, solve, volume, fine, passes, lam=cfg.exterior.refine_relaxation,
                           tv_weight=cfg.exterior.refine_tv_weight, tv_weight_final=cfg.exterior.refine_tv_weight_final)
    return resample(x, fine, grid)

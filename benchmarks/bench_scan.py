"""Shared by the benchmark scripts: the training views of a cached ``ixgs bench`` scan, exactly as ``ixgs bench``
picks them, with the scan's output grid and ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_training(scan_dir, n_views: int, holdout: int = 3):
    """``(grid, gt, views, projections)`` for ``n_views`` training views of the bench scan in ``scan_dir``
    (``holdout`` views held out, as ``ixgs bench --views n_views`` does)."""
    from ixgs_ros.core.bench import primary_angles, training_subset
    from ixgs_ros.core.reconstruct import choose_grid
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti

    d = Path(scan_dir)
    scan = Scan.load(d)
    gt, _ = load_nifti(d / "gt.nii.gz")
    train, _ = training_subset(primary_angles(scan), n_views, holdout, 0)
    views = [scan.views[i] for i in train]
    return choose_grid(scan), gt, views, np.stack([scan.projections[i] for i in train])

"""How far estimated view poses are from the true ones, measured where it matters: the reprojection error of
points in the ROI, after aligning the gauge.

Pose parameters themselves are a poor measure: a small rotation about the source looks almost exactly like a
principal-point shift, and a rigid motion or scaling of the whole scene (the gauge) changes no image. So the
estimated views are first aligned to the true ones by the one similarity transform of the world that best
explains the difference (:func:`align_gauge`), and then each point's pixel distance between its projection by
the estimated view and by the true view is measured (:func:`reprojection_error`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.geometry import View
from ..core.volume import Grid
from ..engine.registration import fit_similarity, similarity_matrix

__all__ = ["roi_points", "align_gauge", "reprojection_error", "gauge_aligned"]


def roi_points(grid: Grid, n: int = 5) -> np.ndarray:
    """``[n**3, 3]`` world points on a regular lattice filling ``grid``'s box (its voxel-centre span)."""
    lo = grid.index_to_world(np.zeros(3))
    hi = grid.index_to_world(np.asarray(grid.shape, dtype=np.float64) - 1.0)
    ax = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)


def align_gauge(est: Sequence[View], true: Sequence[View], points) -> np.ndarray:
    """The similarity ``y = s R (x - c) + c + t`` (``c`` the points' centroid) that minimises the squared
    reprojection error ``|est_i(y) - true_i(x)|`` over the views and ``points``: returns ``[rotvec (3), t (3),
    log s]`` (:func:`~ixgs_ros.engine.registration.fit_similarity`). It maps the true scene into the frame of
    the estimated poses (which the reconstruction shares)."""
    return fit_similarity(est, true, points)


def reprojection_error(est: Sequence[View], true: Sequence[View], points, *, align: bool = True) -> dict:
    """Reprojection error of world ``points`` between estimated and true views (same detector), after
    aligning the gauge (:func:`align_gauge`) unless ``align`` is False: ``mean_px``, ``rms_px``, ``max_px`` over
    all views and points, ``mean_mm`` (each pixel error times the point's depth over the focal length: mm at the
    point), ``per_view_px`` (mean per view) and the ``gauge`` found (rotation deg, translation mm, scale)."""
    est, true = list(est), list(true)
    if len(est) != len(true) or not est:
        raise ValueError(f"need the same number of estimated and true views, got {len(est)} and {len(true)}")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    x = align_gauge(est, true, points) if align else np.zeros(7)
    y = (np.c_[points, np.ones(len(points))] @ similarity_matrix(x, points.mean(0)).T)[:, :3]
    px, mm = [], []
    for e, t in zip(est, true):
        uv_t, z = t.project(points)
        d = np.linalg.norm(e.project(y)[0] - uv_t, axis=-1)
        px.append(d)
        mm.append(d * z / (0.5 * (t.K[0, 0] + t.K[1, 1])))
    px, mm = np.stack(px), np.stack(mm)
    return {"mean_px": float(px.mean()), "rms_px": float(np.sqrt((px ** 2).mean())), "max_px": float(px.max()),
            "mean_mm": float(mm.mean()), "per_view_px": px.mean(1).tolist(),
            "gauge": {"rotation_deg": float(np.degrees(np.linalg.norm(x[:3]))),
                      "translation_mm": float(np.linalg.norm(x[3:6])), "scale": float(np.exp(x[6])),
                      "similarity": x.tolist(), "center": points.mean(0).tolist()}}


def gauge_aligned(volume, grid: Grid, gauge: dict) -> np.ndarray:
    """``volume`` (on ``grid``, reconstructed with estimated poses) resampled into the frame of the true poses:
    at each voxel ``x`` of ``grid`` its value at ``M x``, ``M`` the similarity :func:`reprojection_error` found
    (its ``gauge``), so that it can be compared voxel by voxel with the ground truth whatever the gauge."""
    from scipy.ndimage import map_coordinates

    M = similarity_matrix(gauge["similarity"], gauge["center"])
    x = grid.world_coords().reshape(-1, 3)
    ijk = grid.world_to_index(x @ M[:3, :3].T + M[:3, 3])
    # nearest beyond the faces: full-body volumes have material there, which a zero fill would count as error
    out = map_coordinates(np.asarray(volume, dtype=np.float32), ijk.T, order=1, mode="nearest")
    return out.reshape(grid.shape).astype(np.float32)

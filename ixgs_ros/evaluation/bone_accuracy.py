"""Scoring a bone reconstruction against the CT it was simulated from: the symmetric bone-surface distance
(mean, HD95; overall and per vertebra) between the 250 HU iso-surfaces of the reconstruction and of the CT at
its native resolution, the Dice of the bone masks on the scoring grid, and the floor: the same scores of the CT
itself resampled onto the scoring grid (the best a volume on that grid can do; the bundled CT's slices are 2.5 mm
apart)."""
from __future__ import annotations

import numpy as np

from ..core.volume import Grid, resample
from ..outputs.mesh import threshold_to_mu
from .accuracy import bone_surface_distance, crop_to_box

__all__ = ["ReferenceCT", "reference_ct", "dice", "score_bone", "bone_floor", "bone_only_floor"]


class ReferenceCT:
    """The CT's mu and labels cropped to a box around a scoring grid (a CT is much larger than an ROI)."""

    def __init__(self, mu: np.ndarray, grid: Grid, labels: np.ndarray | None):
        self.mu, self.grid, self.labels = mu, grid, labels


def reference_ct(ct, roi_grid: Grid, margin_mm: float = 12.0) -> ReferenceCT:
    """``ct`` (:class:`~ixgs_ros.simulation.ct.CT`) cropped to ``roi_grid``'s box plus ``margin_mm``: mu (1/mm)
    and labels on the CT's own (native) grid."""
    lo, hi = roi_grid.bounds()
    hu, grid = crop_to_box(ct.hu, ct.grid, lo, hi, margin_mm)
    if hu is None:
        raise ValueError("the scoring grid does not overlap the CT")
    from ..core.volume import hu_to_mu

    labels = None
    if ct.labels is not None:
        labels, _ = crop_to_box(ct.labels, ct.grid, lo, hi, margin_mm)
    return ReferenceCT(np.asarray(hu_to_mu(hu), np.float32), grid, labels)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def score_bone(volume: np.ndarray, grid: Grid, ref: ReferenceCT, *, threshold: float = 250.0,
               n_points: int = 50_000, seed: int = 0) -> dict:
    """Bone scores of ``volume`` (mu, 1/mm, on the scoring ``grid``) against ``ref``: ``mean``, ``hd95`` (mm),
    ``per_vertebra`` (mean / hd95 per vertebra label), ``dice`` of the masks above ``threshold`` HU on ``grid``
    (the CT resampled trilinearly onto it). A volume without any surface scores NaN distances."""
    level = threshold_to_mu(threshold, "hu")
    ref_on_grid = resample(ref.mu, ref.grid, grid, order=1)
    out = {"dice": dice(np.asarray(volume) >= level, ref_on_grid >= level)}
    try:
        d = bone_surface_distance(volume, grid, ref.mu, ref.grid, threshold=threshold, labels=ref.labels,
                                  labels_grid=ref.grid, n_points=n_points, seed=seed)
    except Exception as exc:  # noqa: BLE001 - no surface at all is a result (NaN), not a crash
        out.update(mean=float("nan"), hd95=float("nan"), error=f"{type(exc).__name__}: {exc}", per_vertebra={})
        return out
    out.update(mean=d["mean"], hd95=d["hd95"], hausdorff=d["hausdorff"],
               per_vertebra={k: {"mean": v["mean"], "hd95": v["hd95"]} for k, v in d["per_vertebra"].items()})
    return out


def bone_floor(grid: Grid, ref: ReferenceCT, **kwargs) -> dict:
    """:func:`score_bone` of the CT itself resampled (trilinear) onto ``grid``: the floor of that grid."""
    return score_bone(resample(ref.mu, ref.grid, grid, order=1), grid, ref, **kwargs)


def bone_only_floor(grid: Grid, ref: ReferenceCT, fill: bool = True, **kwargs) -> dict:
    """:func:`score_bone` of the CT's bone part (voxels above 200 HU with their mu, zero elsewhere, at the CT's
    resolution: what the bone projections are the line integrals of) resampled onto ``grid``, with soft tissue
    filled in around it (:func:`~ixgs_ros.outputs.bone.bone_surface_volume`) when ``fill``: the floor of a perfect
    bone reconstruction on that grid."""
    from ..outputs.bone import bone_surface_volume
    from ..simulation.bone_scan import bone_volume

    vol = resample(bone_volume(ref.mu), ref.grid, grid, order=1)
    return score_bone(bone_surface_volume(vol) if fill else vol, grid, ref, **kwargs)

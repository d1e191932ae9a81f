"""Training data of the standardization model: path lengths of the training slab only, rendered once and cached.

The bundled CT is split by world z (its NIfTI frame, mm): the slab ``z >= TRAIN_Z_MIN`` (-95 mm: T4 and
above, the top of T5) is the only anatomy the model may ever see; everything below (T6 to L3) is reserved for
evaluation. :func:`training_ct` enforces it:

1. the CT is cropped with the simulator's :func:`~ixgs_ros.simulation.pathlengths.crop_ct_z` at
   ``z_range=(z_min, None)``; a ``z_min`` below ``TRAIN_Z_MIN`` is refused (:class:`TrainingDataError`);
2. (default) every slice below the cut is then *filled with a mirror image of the slab* (reflected about the
   cut, and again periodically), so a training view sees a torso over its whole field as the evaluation views
   do, instead of a body that ends half-way. Only voxels at ``z >= z_min`` are ever read: the synthetic torso
   holds no voxel of the evaluation anatomy (tested by changing those voxels: the training data stay the same).

:func:`training_views` draws C-arm trajectories around the synthetic torso's spine (random isocentres along it,
arcs, tilts, zoom); :func:`render_training_set` renders their per-material path lengths with the simulator's
exact Siddon renderer (:func:`~ixgs_ros.simulation.pathlengths.render_path_lengths`, cached on disk by a hash of
the CT, crop and views: seconds per view the first time, nothing after). Styling happens per epoch in numpy
(:mod:`.augment`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ixgs_ros.simulation.ct import CT, VERTEBRA_LABELS, label_bbox, label_centroid, label_name
from ixgs_ros.simulation.pathlengths import PathLengths, crop_ct_z, render_path_lengths
from ixgs_ros.simulation.trajectories import TrajectoryConfig, make_trajectory

__all__ = ["TRAIN_Z_MIN", "TrainingDataError", "DataConfig", "check_training_crop", "training_ct",
           "training_views", "render_training_set", "TrainingSet"]

#: Lowest world z (mm, the bundled CT's NIfTI frame) of the training slab ("z >= 80 mm" in centred coordinates).
TRAIN_Z_MIN = -95.0


class TrainingDataError(ValueError):
    """A training-data request that would use anatomy reserved for evaluation (or is malformed)."""


@dataclass
class DataConfig:
    """What the training set is rendered from (recorded beside the weights)."""

    z_min: float = TRAIN_Z_MIN       # training slab: world z >= z_min (never below TRAIN_Z_MIN)
    mirror: bool = True              # fill the slices below the cut with mirror images of the slab
    groups: int = 12                 # trajectories
    views_per_group: int = 8
    detector: int = 128              # pixels per side
    roi_radius_mm: tuple = (85.0, 135.0)   # sets the pitch (zoom), as the ROI radius of ixgs simulate does
    tilt_deg: tuple = (-20.0, 20.0)
    arc_deg: tuple = (120.0, 360.0)
    iso_x_mm: tuple = (-15.0, 15.0)  # isocentre around the spine (world mm)
    iso_y_mm: tuple = (-90.0, -20.0)
    iso_z_mm: tuple = (-230.0, -30.0)
    seed: int = 0

    def validate(self) -> "DataConfig":
        check_training_crop((self.z_min, None))
        for k in ("groups", "views_per_group", "detector"):
            if int(getattr(self, k)) < 1:
                raise TrainingDataError(f"{k} must be >= 1, got {getattr(self, k)}")
        return self

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def check_training_crop(z_range) -> tuple[float, float | None]:
    """``(lo, hi)`` of a training crop, or :class:`TrainingDataError` when it would reach below
    :data:`TRAIN_Z_MIN` (an open lower end included): the anatomy there is evaluation only."""
    try:
        lo, hi = z_range
    except (TypeError, ValueError):
        raise TrainingDataError(f"z_range must be (lo, hi) in world mm, got {z_range!r}") from None
    if lo is None or not np.isfinite(float(lo)) or float(lo) < TRAIN_Z_MIN - 1e-6:
        raise TrainingDataError(f"training crop z >= {lo} mm reaches below z = {TRAIN_Z_MIN:g} mm: the anatomy "
                                "there (T6 to L3) is reserved for evaluation")
    if hi is not None and not float(hi) > float(lo):
        raise TrainingDataError(f"training crop: upper bound {hi} mm must exceed the lower bound {lo} mm")
    return float(lo), None if hi is None else float(hi)


def _axial_z(ct: CT) -> np.ndarray:
    A = np.asarray(ct.grid.affine, dtype=np.float64)
    if abs(A[2, 0]) > 1e-9 or abs(A[2, 1]) > 1e-9 or abs(A[0, 2]) > 1e-9 or abs(A[1, 2]) > 1e-9:
        raise TrainingDataError("the training CT must be axial (its third index along world z)")
    return A[2, 2] * np.arange(ct.grid.shape[2]) + A[2, 3]


def mirror_source_slices(z: np.ndarray, z_min: float) -> np.ndarray:
    """For every slice of world z ``z``, the index of the slab slice (``z >= z_min``) it takes its voxels from:
    itself inside the slab, a reflection about the cut below it (periodic, period twice the slab)."""
    order = np.argsort(z)                 # ascending z
    zs = z[order]
    k0 = int(np.searchsorted(zs, z_min - 1e-6))   # first slab slice in ascending order
    n = len(zs) - k0
    if n < 1:
        raise TrainingDataError(f"the CT has no slice at z >= {z_min:g} mm")
    src = np.arange(len(zs))
    d = k0 - 1 - np.arange(k0)            # 0 for the slice just below the cut
    m = d % (2 * n)
    src[:k0] = np.where(m < n, k0 + m, k0 + (2 * n - 1 - m))
    out = np.empty(len(z), dtype=np.int64)
    out[order] = order[src]
    return out


def training_ct(ct: CT, z_min: float = TRAIN_Z_MIN, mirror: bool = True) -> CT:
    """The CT the model trains on: ``ct`` cropped at ``z >= z_min`` (refused below :data:`TRAIN_Z_MIN`) and,
    with ``mirror``, the slices below the cut filled with mirror images of the slab (see the module docstring).
    Only voxels at ``z >= z_min`` are read."""
    lo, hi = check_training_crop((z_min, None))
    crop = crop_ct_z(ct, (lo, hi))
    if not mirror:
        return crop
    src = mirror_source_slices(_axial_z(ct), lo)
    hu = np.ascontiguousarray(crop.hu[:, :, src])
    labels = np.ascontiguousarray(crop.labels[:, :, src]) if crop.labels is not None else None
    return CT(hu, ct.grid, labels, ct.path, ct.labels_path)


def _anchors(ct: CT, z_min: float, mirror: bool) -> list[dict]:
    """Screw anchors (as :class:`PathLengths` meta) of the slab's vertebrae and of their mirror copies."""
    crop = crop_ct_z(ct, (z_min, None))
    if crop.labels is None:
        return []
    z = _axial_z(ct)
    lo_z = z.min() - 0.5 * abs(ct.grid.affine[2, 2])
    top = z.max() + 0.5 * abs(ct.grid.affine[2, 2])
    cut = z_min - 0.5 * abs(ct.grid.affine[2, 2])
    period = 2.0 * (top - cut)
    out = []
    for lab in crop.present_labels():
        if lab not in set(VERTEBRA_LABELS.values()):
            continue
        c = label_centroid(crop, lab)
        a, b = label_bbox(crop, lab)
        copies = [(1.0, 0.0)]
        if mirror:
            k = 0
            while True:  # reflections about the cut and their periodic shifts, inside the grid
                added = False
                for sign, off in ((-1.0, 2.0 * cut - k * period), (1.0, -(k + 1) * period)):
                    if sign * c[2] + off >= lo_z:
                        copies.append((sign, off))
                        added = True
                k += 1
                if not added or k > 20:
                    break
        for sign, off in copies:
            cz = sign * c[2] + off
            za, zb = sorted((sign * a[2] + off, sign * b[2] + off))
            out.append({"name": label_name(lab), "label": int(lab), "centroid": [float(c[0]), float(c[1]), float(cz)],
                        "bbox": [[float(a[0]), float(a[1]), float(za)], [float(b[0]), float(b[1]), float(zb)]]})
    return out


def training_views(cfg: DataConfig) -> list[list]:
    """``cfg.groups`` trajectories of ``cfg.views_per_group`` views each (lists of View), around random points of
    the synthetic torso's spine: random primary arc (centre and length), tilt, isocentre and zoom."""
    cfg.validate()
    rng = np.random.default_rng([int(cfg.seed), 331])
    groups = []
    for g in range(int(cfg.groups)):
        iso = np.array([rng.uniform(*cfg.iso_x_mm), rng.uniform(*cfg.iso_y_mm), rng.uniform(*cfg.iso_z_mm)])
        kind = "random-arc" if g % 3 else "two-orbit"
        tc = TrajectoryConfig(kind=kind, n_views=int(cfg.views_per_group), width=int(cfg.detector),
                              arc_deg=float(rng.uniform(*cfg.arc_deg)),
                              arc_center_deg=float(rng.uniform(-180.0, 180.0)),
                              tilt_deg=float(rng.uniform(*cfg.tilt_deg)), seed=int(rng.integers(1 << 30)))
        groups.append(make_trajectory(tc, iso, float(rng.uniform(*cfg.roi_radius_mm))))
    return groups


@dataclass
class TrainingSet:
    """Path lengths per trajectory group (each a :class:`PathLengths` with its views)."""

    groups: list        # [(views, PathLengths)]
    config: DataConfig

    @property
    def n_views(self) -> int:
        return sum(len(v) for v, _ in self.groups)


def render_training_set(ct: CT, cfg: DataConfig, cache_dir=None,
                        progress: Callable[[str], None] | None = None) -> TrainingSet:
    """Render (or read from ``cache_dir``) the path lengths of :func:`training_views` through
    :func:`training_ct` of ``ct``. ``progress(message)`` receives a line per view rendered."""
    cfg.validate()
    say = progress or (lambda m: None)
    work = training_ct(ct, cfg.z_min, cfg.mirror)
    anchors = _anchors(ct, cfg.z_min, cfg.mirror)
    out = []
    groups = training_views(cfg)
    for g, views in enumerate(groups):
        pl = render_path_lengths(work, views, None, "siddon", cache_dir,
                                 progress=lambda m, g=g: say(f"group {g + 1}/{len(groups)}: {m.strip()}"))
        pl.meta["anchors"] = anchors
        pl.meta["z_range"] = [float(cfg.z_min), None]
        out.append((views, pl))
    return TrainingSet(out, cfg)


def slab_fraction(pl: PathLengths) -> float:
    """Fraction of pixels with any material (a sanity figure for logs)."""
    return float(np.mean((pl.soft + pl.bone) > 0))

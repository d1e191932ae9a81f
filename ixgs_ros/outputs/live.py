"""What a live reconstruction shows a robot and a viewer, computed from each published volume (ROS-free).

From a volume (mu in 1/mm on a grid) :func:`compute_live_outputs` makes

* the bone surface as separate pieces (:class:`BonePiece`: each connected piece of the iso-surface at
  ``mesh_threshold_hu``, smoothed and decimated to a face budget shared by area, with its centroid, bounding box,
  area and enclosed volume; world mm);
* a point cloud of the voxels above ``cloud_threshold_hu`` (world mm, their mu and HU), thinned by a regular
  stride to at most ``cloud_max_points``;
* axial, coronal and sagittal slices through a point (default: the grid centre), as :mod:`.mpr` computes them
  (radiological orientation, square pixels, NaN outside the grid).

:func:`write_snapshot` writes a volume, its outputs and a report into a folder. The ROS node converts these to
messages; everything here works without ROS.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.volume import Grid, VolumeError, hu_to_mu, mu_to_hu
from . import mesh as meshmod
from . import mpr

__all__ = ["LiveOutputConfig", "BonePiece", "LiveOutputs", "bone_pieces", "bone_cloud", "mpr_slices",
           "compute_live_outputs", "write_snapshot", "OUTPUT_KINDS"]

OUTPUT_KINDS = ("mesh", "cloud", "mpr")


@dataclass
class LiveOutputConfig:
    mesh_threshold_hu: float = 250.0       # bone iso-surface level
    mesh_min_piece_fraction: float = 0.02  # pieces smaller (area) than this share of the largest are dropped
    mesh_max_pieces: int = 32
    mesh_max_faces: int = 60_000           # decimation budget over all pieces (shared by area)
    mesh_smooth_iterations: int = 5        # Taubin smoothing (no shrinkage)
    cloud_threshold_hu: float = 200.0
    cloud_max_points: int = 100_000
    mpr_point_mm: tuple | None = None      # None: the grid centre
    mpr_max_size: int = 256                # pixels a side at most
    outputs_max_share: float = 0.1         # the outputs of intermediate (Gaussian-stage) volumes take at most this
                                           # share of the time; previews and the final volume get theirs at once

    def validate(self) -> "LiveOutputConfig":
        for name in ("mesh_threshold_hu", "cloud_threshold_hu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and -1000.0 <= v <= 5000.0):
                raise ValueError(f"{name} must be a number of HU in [-1000, 5000], got {v!r}")
        if not 0.0 <= self.mesh_min_piece_fraction < 1.0:
            raise ValueError(f"mesh_min_piece_fraction must be in [0, 1), got {self.mesh_min_piece_fraction}")
        for name, low in (("mesh_max_pieces", 1), ("mesh_max_faces", 100), ("mesh_smooth_iterations", 0),
                          ("cloud_max_points", 1), ("mpr_max_size", 8)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        share = self.outputs_max_share
        if not (isinstance(share, (int, float)) and 0.0 < share <= 1.0):
            raise ValueError(f"outputs_max_share must be in (0, 1], got {share!r}")
        if self.mpr_point_mm is not None:
            p = np.asarray(self.mpr_point_mm, dtype=np.float64)
            if p.shape != (3,) or not np.all(np.isfinite(p)):
                raise ValueError(f"mpr_point_mm must be 3 finite numbers (mm), got {list(self.mpr_point_mm)}")
        return self


@dataclass
class BonePiece:
    """One connected piece of the bone surface (world mm)."""
    id: int
    label: str
    mesh: meshmod.Mesh
    centroid: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    area_mm2: float
    volume_mm3: float


@dataclass
class LiveOutputs:
    """The outputs of one volume; fields of kinds not computed stay empty."""
    pieces: list = field(default_factory=list)                  # [BonePiece]
    cloud_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))   # world mm
    cloud_mu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cloud_hu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cloud_total: int = 0                                        # voxels above the threshold before thinning
    slices: dict = field(default_factory=dict)                  # name -> (image float32 mu, mpr.SlicePlane)
    seconds: dict = field(default_factory=dict)                 # kind -> compute time

    @property
    def n_vertices(self) -> int:
        return sum(p.mesh.n_vertices for p in self.pieces)

    @property
    def n_faces(self) -> int:
        return sum(p.mesh.n_faces for p in self.pieces)


def _piece(i: int, m: meshmod.Mesh, label: str) -> BonePiece:
    areas = m.face_areas()
    centres = m.triangles().mean(axis=1)
    centroid = (areas[:, None] * centres).sum(0) / max(float(areas.sum()), 1e-30)
    lo, hi = m.bounds()
    return BonePiece(i, label, m, centroid, lo, hi, float(areas.sum()), max(m.signed_volume(), 0.0))


def bone_pieces(mu, grid: Grid, cfg: LiveOutputConfig) -> list[BonePiece]:
    """The bone surface at ``cfg.mesh_threshold_hu`` as pieces, largest first (empty when no voxel is above)."""
    surface = meshmod.iso_surface(mu, grid, float(hu_to_mu(cfg.mesh_threshold_hu)))
    parts = meshmod.split_components(surface)
    if not parts:
        return []
    areas = np.array([p.area() for p in parts])
    keep = [p for p, a in zip(parts, areas) if a >= cfg.mesh_min_piece_fraction * areas[0]][: cfg.mesh_max_pieces]
    total = float(sum(p.area() for p in keep))
    pieces = []
    for p in keep:
        budget = max(50, int(cfg.mesh_max_faces * p.area() / max(total, 1e-30)))
        m = meshmod.clean_mesh(p, min_component_fraction=0.0, smooth_iterations=cfg.mesh_smooth_iterations,
                               target_faces=budget)
        if not m.is_empty:
            pieces.append(m)
    pieces.sort(key=lambda m: -m.area())
    return [_piece(i, m, f"piece_{i}") for i, m in enumerate(pieces)]


def bone_cloud(mu, grid: Grid, threshold_hu: float, max_points: int):
    """``(xyz mm [N, 3], mu [N], hu [N], total)`` of the voxels above ``threshold_hu`` (float32), every k-th in
    C order when more than ``max_points`` (``total`` counts them all)."""
    vol = np.asarray(mu, dtype=np.float32)
    if vol.shape != grid.shape:
        raise VolumeError(f"volume shape {vol.shape} does not match the grid {grid.shape}")
    idx = np.flatnonzero(np.nan_to_num(vol, nan=-np.inf) > float(hu_to_mu(threshold_hu)))
    total = int(idx.size)
    if idx.size > max_points:
        idx = idx[:: int(math.ceil(idx.size / max_points))]
    ijk = np.stack(np.unravel_index(idx, vol.shape), axis=1).astype(np.float64)
    xyz = grid.index_to_world(ijk).astype(np.float32)
    vals = vol.ravel()[idx]
    return xyz.reshape(-1, 3), vals, mu_to_hu(vals).astype(np.float32), total


def mpr_slices(mu, grid: Grid, point=None, max_size: int = 256) -> dict:
    """``{"axial" | "coronal" | "sagittal": (image [H, W] float32 mu, SlicePlane)}`` through ``point``."""
    return mpr.compute_mpr(mu, grid, point, max_size=max_size)


def compute_live_outputs(mu, grid: Grid, cfg: LiveOutputConfig, kinds=OUTPUT_KINDS) -> LiveOutputs:
    """The outputs of ``kinds`` (among :data:`OUTPUT_KINDS`) for the volume ``mu`` on ``grid``."""
    unknown = set(kinds) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; known: {list(OUTPUT_KINDS)}")
    out = LiveOutputs()
    if "mpr" in kinds:
        t0 = time.perf_counter()
        out.slices = mpr_slices(mu, grid, cfg.mpr_point_mm, cfg.mpr_max_size)
        out.seconds["mpr"] = time.perf_counter() - t0
    if "cloud" in kinds:
        t0 = time.perf_counter()
        out.cloud_xyz, out.cloud_mu, out.cloud_hu, out.cloud_total = bone_cloud(mu, grid, cfg.cloud_threshold_hu,
                                                                                cfg.cloud_max_points)
        out.seconds["cloud"] = time.perf_counter() - t0
    if "mesh" in kinds:
        t0 = time.perf_counter()
        out.pieces = bone_pieces(mu, grid, cfg)
        out.seconds["mesh"] = time.perf_counter() - t0
    return out


def merged_mesh(pieces) -> meshmod.Mesh:
    """All pieces in one mesh (for a single PLY)."""
    if not pieces:
        return meshmod.Mesh.empty()
    verts, faces, base = [], [], 0
    for p in pieces:
        verts.append(p.mesh.vertices)
        faces.append(p.mesh.faces + base)
        base += p.mesh.n_vertices
    return meshmod.Mesh(np.concatenate(verts), np.concatenate(faces))


def write_snapshot(directory, mu, grid: Grid, outputs: LiveOutputs, report: dict) -> list[Path]:
    """Write ``volume.nii.gz`` (mu), ``bone.ply`` (all pieces) and ``bone_<label>.ply`` per piece, one PNG per
    slice and ``report.json`` (``report`` plus the grid and an outputs summary) into ``directory``; returns the
    files written (``report.json`` last)."""
    from .export import export_nifti

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = [export_nifti(d / "volume.nii.gz", mu, grid)]
    if outputs.pieces:
        files.append(meshmod.write_mesh(merged_mesh(outputs.pieces), d / "bone.ply"))
        files += [meshmod.write_mesh(p.mesh, d / f"bone_{p.label}.ply") for p in outputs.pieces]
    for name, (image, plane) in outputs.slices.items():
        files.append(mpr.save_slice_png(image, plane, d / f"mpr_{name}.png"))
    summary = {"grid": grid.to_dict(), "pieces": [{"id": p.id, "label": p.label, "vertices": p.mesh.n_vertices,
                                                   "faces": p.mesh.n_faces, "area_mm2": p.area_mm2,
                                                   "volume_mm3": p.volume_mm3,
                                                   "centroid_mm": p.centroid.tolist()} for p in outputs.pieces],
               "cloud_points": int(len(outputs.cloud_xyz)), "cloud_total": outputs.cloud_total,
               "slices": {n: list(im.shape) for n, (im, _) in outputs.slices.items()},
               "files": [f.name for f in files] + ["report.json"]}
    path = d / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**report, "outputs": summary}, indent=1, default=_json_default))
    tmp.replace(path)
    return files + [path]


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, tuple, Path)):
        return list(o) if not isinstance(o, Path) else str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

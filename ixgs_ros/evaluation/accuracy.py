"""Bone-surface accuracy of a reconstruction against a reference CT.

Both volumes are turned into bone iso-surfaces (:mod:`ixgs_ros.outputs.mesh`), points are sampled uniformly on
each surface and their distance to the other surface is measured (KD-tree candidates, then the exact
point-to-triangle distance). Reported in mm:

* ``mean``: symmetric mean surface distance (mean over the union of both directed distance sets, "ASSD"),
* ``hd95``: 95th-percentile Hausdorff distance, ``max(P95(d_ab), P95(d_ba))``,
* ``hausdorff``: the maximum, plus each direction separately,

overall and per vertebra when a TotalSegmentator label map is given (points are attributed to the nearest
vertebra label within a few mm).
"""
from __future__ import annotations

import numpy as np

from ..outputs.mesh import VERTEBRA_NAMES, Mesh, iso_surface, keep_large_components, label_partition, threshold_to_mu
from ..core.volume import Grid, VolumeError

__all__ = [
    "sample_surface",
    "closest_points_on_triangles",
    "point_to_mesh_distance",
    "distance_stats",
    "surface_distance",
    "crop_to_box",
    "bone_surface_distance",
]


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed (by area) over the mesh surface, and the face of each point."""
    if mesh.is_empty or n <= 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    areas = mesh.face_areas()
    total = areas.sum()
    if total <= 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    face = rng.choice(mesh.n_faces, size=int(n), p=areas / total)
    r1, r2 = rng.random(int(n)), rng.random(int(n))
    s = np.sqrt(r1)
    t = mesh.triangles()[face]
    pts = (1 - s)[:, None] * t[:, 0] + (s * (1 - r2))[:, None] * t[:, 1] + (s * r2)[:, None] * t[:, 2]
    return pts, face


def closest_points_on_triangles(p, a, b, c) -> np.ndarray:
    """Closest point to each ``p`` on triangle ``(a, b, c)`` (all ``[..., 3]``), by Voronoi regions."""
    p, a, b, c = (np.asarray(x, dtype=np.float64) for x in (p, a, b, c))

    def dot(x, y):
        return np.einsum("...i,...i->...", x, y)

    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        out = a + v[..., None] * ab + w[..., None] * ac  # interior
        # edge BC
        e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
        wbc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        out = np.where(e_bc[..., None], b + np.nan_to_num(wbc)[..., None] * (c - b), out)
        # edge AC
        e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        wac = d2 / (d2 - d6)
        out = np.where(e_ac[..., None], a + np.nan_to_num(wac)[..., None] * ac, out)
        # vertex C
        out = np.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
        # edge AB
        e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        vab = d1 / (d1 - d3)
        out = np.where(e_ab[..., None], a + np.nan_to_num(vab)[..., None] * ab, out)
        # vertex B, vertex A
        out = np.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
        out = np.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)
    return out


class _MeshDistance:
    """Unsigned distance from points to a mesh: KD-tree over dense surface samples gives candidate faces,
    the exact point-to-triangle distance is taken over the candidates."""

    def __init__(self, mesh: Mesh, density_per_mm2: float = 4.0, k: int = 24, seed: int = 1):
        from scipy.spatial import cKDTree

        if mesh.is_empty:
            raise VolumeError("cannot measure distances to an empty surface")
        self.tri = mesh.triangles()
        centroids = self.tri.mean(1)
        n_extra = int(min(max(mesh.area() * density_per_mm2 - mesh.n_faces, 0), 4_000_000))
        extra, face = sample_surface(mesh, n_extra, seed=seed)
        self.pts_face = np.concatenate([np.arange(mesh.n_faces), face])
        self.tree = cKDTree(np.concatenate([centroids, extra]))
        self.k = int(min(k, len(self.pts_face)))

    def __call__(self, points, chunk: int = 100_000) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.empty(len(points))
        for s in range(0, len(points), chunk):
            p = points[s:s + chunk]
            _, idx = self.tree.query(p, k=self.k)
            idx = idx.reshape(len(p), -1)
            t = self.tri[self.pts_face[idx]]  # [n, k, 3, 3]
            q = closest_points_on_triangles(p[:, None, :], t[..., 0, :], t[..., 1, :], t[..., 2, :])
            out[s:s + chunk] = np.linalg.norm(q - p[:, None, :], axis=-1).min(1)
        return out


def point_to_mesh_distance(points, mesh: Mesh) -> np.ndarray:
    """Distance (mm) from each point to the surface of ``mesh``."""
    return _MeshDistance(mesh)(points)


def distance_stats(d_ab, d_ba) -> dict:
    """Summary of two directed distance sets (A->B, B->A), in mm."""
    d_ab, d_ba = np.asarray(d_ab, dtype=np.float64), np.asarray(d_ba, dtype=np.float64)
    if len(d_ab) == 0 or len(d_ba) == 0:
        return {"mean": float("nan"), "hd95": float("nan"), "hausdorff": float("nan"),
                "mean_a_to_b": float("nan"), "mean_b_to_a": float("nan"), "hd95_a_to_b": float("nan"),
                "hd95_b_to_a": float("nan"), "n_a": int(len(d_ab)), "n_b": int(len(d_ba))}
    p_ab, p_ba = float(np.percentile(d_ab, 95)), float(np.percentile(d_ba, 95))
    return {
        "mean": float(np.concatenate([d_ab, d_ba]).mean()),
        "hd95": max(p_ab, p_ba),
        "hausdorff": float(max(d_ab.max(), d_ba.max())),
        "mean_a_to_b": float(d_ab.mean()),
        "mean_b_to_a": float(d_ba.mean()),
        "hd95_a_to_b": p_ab,
        "hd95_b_to_a": p_ba,
        "n_a": int(len(d_ab)),
        "n_b": int(len(d_ba)),
    }


def surface_distance(mesh_a: Mesh, mesh_b: Mesh, n_points: int = 50_000, seed: int = 0) -> dict:
    """Symmetric surface distance between two meshes (see :func:`distance_stats`)."""
    pa, _ = sample_surface(mesh_a, n_points, seed=seed)
    pb, _ = sample_surface(mesh_b, n_points, seed=seed + 1)
    return distance_stats(_MeshDistance(mesh_b)(pa), _MeshDistance(mesh_a)(pb))


def crop_to_box(volume, grid: Grid, lo, hi, margin_mm: float = 0.0):
    """The part of ``volume`` covering the world box ``[lo, hi]`` (+ ``margin_mm``): ``(array, Grid)``, or
    ``(None, None)`` if they do not overlap."""
    lo = np.asarray(lo, dtype=np.float64) - margin_mm
    hi = np.asarray(hi, dtype=np.float64) + margin_mm
    box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = grid.world_to_index(box)
    a = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
    b = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, np.array(grid.shape))
    if np.any(b - a < 2):
        return None, None
    A = grid.affine.copy()
    A[:3, 3] = grid.index_to_world(a.astype(np.float64))
    sub = np.asarray(volume)[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
    return sub, Grid(sub.shape, A)


def _nearest_label(points, labels: np.ndarray, grid: Grid) -> np.ndarray:
    ijk = np.rint(grid.world_to_index(points)).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
    out = np.zeros(len(points), dtype=np.int32)
    out[ok] = labels[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
    return out


def bone_surface_distance(recon_mu, recon_grid: Grid, ref_mu, ref_grid: Grid, *, threshold: float = 250.0,
                          unit: str = "hu", labels=None, labels_grid: Grid | None = None,
                          label_margin_mm: float = 3.0, n_points: int = 50_000,
                          min_component_fraction: float = 0.0, boundary_margin_vox: float = 2.0,
                          seed: int = 0) -> dict:
    """Bone surface distance between a reconstruction and a reference CT (both mu volumes, 1/mm).

    Only surface points inside both grids (``boundary_margin_vox`` voxels from either edge) are compared,
    so a smaller reconstruction field of view is not penalised for anatomy it never covered. ``labels``
    (TotalSegmentator numbering, on ``labels_grid``, default ``ref_grid``) adds ``per_vertebra`` results:
    each point counts for the vertebra label nearest to it (within ``label_margin_mm``).

    Returns ``{"mean", "hd95", "hausdorff", ..., "threshold_mu", "per_vertebra": {name: {...}}}``;
    "a" is the reconstruction, "b" the reference.
    """
    level = threshold_to_mu(threshold, unit)
    # work on the overlap of the two grids only (a CT is usually much larger than the reconstruction ROI)
    margin = 3.0 * float(max(recon_grid.spacing.max(), ref_grid.spacing.max()))
    lo = np.maximum(recon_grid.bounds()[0], ref_grid.bounds()[0])
    hi = np.minimum(recon_grid.bounds()[1], ref_grid.bounds()[1])
    if np.any(hi <= lo):
        raise VolumeError("the reconstruction and reference grids do not overlap")
    surfaces = []
    for vol, grid in ((recon_mu, recon_grid), (ref_mu, ref_grid)):
        vol, grid = crop_to_box(vol, grid, lo, hi, margin)
        if vol is None:
            raise VolumeError("the reconstruction and reference grids do not overlap")
        m = iso_surface(vol, grid, level, close_boundary=False)
        if min_component_fraction > 0:
            m = keep_large_components(m, min_component_fraction)
        surfaces.append(m)
    mesh_a, mesh_b = surfaces
    result = {"threshold_mu": level, "per_vertebra": {}}
    if mesh_a.is_empty or mesh_b.is_empty:
        which = "reconstruction" if mesh_a.is_empty else "reference"
        raise VolumeError(f"the {which} volume has no bone surface at threshold {threshold} {unit}")
    pa, _ = sample_surface(mesh_a, n_points, seed=seed)
    pb, _ = sample_surface(mesh_b, n_points, seed=seed + 1)

    def in_both(p):
        return recon_grid.contains(p, boundary_margin_vox) & ref_grid.contains(p, boundary_margin_vox)

    pa, pb = pa[in_both(pa)], pb[in_both(pb)]
    if len(pa) == 0 or len(pb) == 0:
        raise VolumeError("the reconstruction and reference bone surfaces do not overlap")
    d_ab = _MeshDistance(mesh_b)(pa)
    d_ba = _MeshDistance(mesh_a)(pb)
    result.update(distance_stats(d_ab, d_ba))
    if labels is not None:
        lgrid = labels_grid if labels_grid is not None else ref_grid
        lab, lgrid = crop_to_box(labels, lgrid, lo, hi, margin + label_margin_mm)
        if lab is None:
            return result
        part = label_partition(lab, lgrid, max_distance_mm=label_margin_mm)
        la, lb = _nearest_label(pa, part, lgrid), _nearest_label(pb, part, lgrid)
        for value in sorted(set(np.unique(la)) | set(np.unique(lb))):
            if value == 0:
                continue
            sa, sb = la == value, lb == value
            if sa.sum() < 10 or sb.sum() < 10:
                continue
            result["per_vertebra"][VERTEBRA_NAMES[int(value)]] = distance_stats(d_ab[sa], d_ba[sb])
    return result

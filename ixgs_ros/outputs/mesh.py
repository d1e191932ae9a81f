"""Bone surfaces: iso-surfaces of an attenuation volume as triangle meshes in world mm.

* :func:`iso_surface` runs marching cubes in voxel-index space and maps the vertices through the grid affine
  (anisotropic, rotated and mirrored affines alike). Faces are always wound counter-clockwise seen from
  outside, i.e. face normals point from bone (high values) toward soft tissue (low values).
* :func:`clean_mesh` keeps the large connected components, smooths (Taubin, no shrinkage) and decimates
  (quadric error metric) with open3d's geometry routines.
* :func:`bone_surface` / :func:`vertebra_surfaces` put these together for a threshold in HU or mu.
* :func:`write_mesh` writes PLY / STL / OBJ.

Label maps use the TotalSegmentator vertebra numbering of :mod:`ixgs_ros.core.anatomy` (:data:`VERTEBRA_NAMES`
here is label -> name).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.anatomy import VERTEBRA_NAMES
from ..core.volume import Grid, VolumeError, hu_to_mu

__all__ = [
    "VERTEBRA_NAMES",
    "vertebra_name",
    "Mesh",
    "threshold_to_mu",
    "iso_surface",
    "keep_large_components",
    "split_components",
    "clean_mesh",
    "bone_surface",
    "label_partition",
    "vertebra_surfaces",
    "write_mesh",
    "read_mesh",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- label names
#: TotalSegmentator (v2) label value -> short vertebra name (31 -> "L1", 32 -> "T12", 25 -> "sacrum"). The
#: table itself lives in :mod:`ixgs_ros.simulation.ct` (name -> label); this is its inverse.


def vertebra_name(label: int) -> str | None:
    """Short name of a TotalSegmentator vertebra label (``31 -> "L1"``); None for non-vertebra labels."""
    return VERTEBRA_NAMES.get(int(label))


# --------------------------------------------------------------------------------------------- mesh type
@dataclass
class Mesh:
    """Triangle mesh in world mm: ``vertices`` [N, 3] float64, ``faces`` [M, 3] int64 (outward winding)."""

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self):
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)

    @classmethod
    def empty(cls) -> "Mesh":
        return cls(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def is_empty(self) -> bool:
        return self.n_faces == 0

    def triangles(self) -> np.ndarray:
        """Vertex positions per face, ``[M, 3, 3]``."""
        return self.vertices[self.faces]

    def face_areas(self) -> np.ndarray:
        t = self.triangles()
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)

    def face_normals(self) -> np.ndarray:
        t = self.triangles()
        n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals."""
        t = self.triangles()
        fn = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])  # length = 2 * area
        vn = np.zeros_like(self.vertices)
        for c in range(3):
            np.add.at(vn, self.faces[:, c], fn)
        return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-30)

    def area(self) -> float:
        return float(self.face_areas().sum())

    def signed_volume(self) -> float:
        """Enclosed volume (mm^3) of a closed mesh; positive for outward winding."""
        t = self.triangles()
        return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)

    def compact(self) -> "Mesh":
        """Drop unreferenced vertices and degenerate (repeated-index) faces."""
        f = self.faces
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
        used, inv = np.unique(f.ravel(), return_inverse=True)
        return Mesh(self.vertices[used], inv.reshape(-1, 3))

    def flipped(self) -> "Mesh":
        return Mesh(self.vertices, self.faces[:, ::-1].copy())

    def to_open3d(self):
        import open3d as o3d

        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(self.vertices),
                                      o3d.utility.Vector3iVector(self.faces.astype(np.int32)))
        return m

    @classmethod
    def from_open3d(cls, m) -> "Mesh":
        return cls(np.asarray(m.vertices), np.asarray(m.triangles))


# --------------------------------------------------------------------------------------------- iso-surface
def threshold_to_mu(threshold: float, unit: str = "hu") -> float:
    """An iso-level for a mu volume from a threshold given in ``"hu"`` or ``"mu"`` (1/mm)."""
    unit = unit.lower()
    if unit == "hu":
        return float(hu_to_mu(float(threshold)))
    if unit == "mu":
        return float(threshold)
    raise VolumeError(f"threshold unit must be 'hu' or 'mu', got {unit!r}")


def iso_surface(volume, grid: Grid, level: float, *, mask=None, close_boundary: bool = True,
                step_size: int = 1) -> Mesh:
    """Iso-surface of ``volume`` at ``level`` as a world-mm mesh (empty if the level is never crossed).

    ``mask`` (bool, same shape) restricts the surface to voxels inside it (values outside are treated as
    below the level). With ``close_boundary`` the volume is padded with a low border so that surfaces cut by
    the grid edge are closed (watertight meshes); without it they stay open there.
    """
    from skimage.measure import marching_cubes

    vol = np.asarray(volume, dtype=np.float32)
    if vol.shape != grid.shape:
        raise VolumeError(f"volume shape {vol.shape} does not match grid shape {grid.shape}")
    if not np.isfinite(level):
        raise VolumeError(f"iso-level must be finite, got {level}")
    finite = np.isfinite(vol)
    low = np.float32(min(float(np.nanmin(vol[finite])) if finite.any() else 0.0, level) - 1.0)
    if not finite.all() or mask is not None:
        vol = np.where(finite if mask is None else (finite & np.asarray(mask, dtype=bool)), vol, low)
    # crop to the region where the level is crossed (plus one voxel) to save time on large grids
    above = vol >= level
    if not above.any() or above.all() and not close_boundary:
        return Mesh.empty()
    idx = np.nonzero(above)
    lo = np.maximum(np.array([i.min() for i in idx]) - 1, 0)
    hi = np.minimum(np.array([i.max() for i in idx]) + 2, np.array(vol.shape))
    sub = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    offset = lo.astype(np.float64)
    if close_boundary:
        sub = np.pad(sub, 1, mode="constant", constant_values=low)
        offset = offset - 1.0
    if min(sub.shape) < 2:
        return Mesh.empty()
    verts, faces, normals, _ = marching_cubes(sub, level=float(level), step_size=int(step_size),
                                              allow_degenerate=False, gradient_direction="descent")
    if len(faces) == 0:
        return Mesh.empty()
    verts = verts.astype(np.float64) + offset
    A = grid.affine[:3, :3]
    world = verts @ A.T + grid.affine[:3, 3]
    mesh = Mesh(world, faces)
    # orientation: marching-cubes normals ("descent") point toward lower values; as covectors they map to
    # world space through A^-T. Wind the faces so that their right-hand normals agree with them.
    n_world = normals.astype(np.float64) @ np.linalg.inv(A)
    fn = np.cross(world[faces[:, 1]] - world[faces[:, 0]], world[faces[:, 2]] - world[faces[:, 0]])
    agree = np.einsum("ij,ij->i", fn, n_world[faces].sum(1))
    if np.sum(agree) < 0:
        mesh = mesh.flipped()
    return mesh


# --------------------------------------------------------------------------------------------- cleaning
def _component_labels(mesh: Mesh) -> tuple[np.ndarray, int]:
    """Connected component of every face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = mesh.faces
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n = mesh.n_vertices
    adj = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    n_comp, vlab = connected_components(adj, directed=False)
    return vlab[f[:, 0]], n_comp


def keep_large_components(mesh: Mesh, min_fraction: float = 0.02, max_components: int | None = None,
                          min_area_mm2: float = 0.0) -> Mesh:
    """Keep the connected components whose area is at least ``min_fraction`` of the largest one (and
    ``min_area_mm2``), at most ``max_components`` of them, largest first."""
    if mesh.is_empty:
        return mesh
    flab, n_comp = _component_labels(mesh)
    if n_comp == 1:
        return mesh
    areas = np.bincount(flab, weights=mesh.face_areas(), minlength=n_comp)
    order = np.argsort(-areas)
    keep = [c for c in order if areas[c] >= max(min_fraction * areas[order[0]], min_area_mm2)]
    if max_components is not None:
        keep = keep[:max(1, int(max_components))]
    sel = np.isin(flab, keep)
    return Mesh(mesh.vertices, mesh.faces[sel]).compact()


def split_components(mesh: Mesh) -> list[Mesh]:
    """The connected components of ``mesh`` (faces sharing a vertex are connected) as separate meshes, largest
    surface area first."""
    if mesh.is_empty:
        return []
    flab, n_comp = _component_labels(mesh)
    areas = np.bincount(flab, weights=mesh.face_areas(), minlength=n_comp)
    return [Mesh(mesh.vertices, mesh.faces[flab == c]).compact() for c in np.argsort(-areas, kind="stable")]


def _have_open3d() -> bool:
    try:
        import open3d  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def clean_mesh(mesh: Mesh, *, min_component_fraction: float = 0.02, max_components: int | None = None,
               min_component_area_mm2: float = 0.0, smooth_iterations: int = 10, smoothing: str = "taubin",
               target_faces: int | None = 200_000) -> Mesh:
    """Largest components, then smoothing (``"taubin"``, ``"laplacian"`` or ``"none"``) and quadric decimation
    to at most ``target_faces`` triangles (None: no decimation), with open3d.

    Without open3d only the component filtering is done (with a warning).
    """
    mesh = keep_large_components(mesh, min_component_fraction, max_components, min_component_area_mm2)
    if mesh.is_empty:
        return mesh
    want_smooth = smooth_iterations > 0 and smoothing != "none"
    want_decimate = target_faces is not None and mesh.n_faces > target_faces
    if not (want_smooth or want_decimate):
        return mesh
    if not _have_open3d():
        log.warning("open3d is not available: mesh smoothing and decimation skipped")
        return mesh
    m = mesh.to_open3d()
    m.remove_duplicated_vertices()
    m.remove_degenerate_triangles()
    if want_smooth:
        if smoothing == "taubin":
            m = m.filter_smooth_taubin(number_of_iterations=int(smooth_iterations))
        elif smoothing == "laplacian":
            m = m.filter_smooth_laplacian(number_of_iterations=int(smooth_iterations), lambda_filter=0.5)
        else:
            raise ValueError(f"smoothing must be 'taubin', 'laplacian' or 'none', got {smoothing!r}")
    if want_decimate:
        m = m.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
        m.remove_degenerate_triangles()
        m.remove_unreferenced_vertices()
    return Mesh.from_open3d(m).compact()


# --------------------------------------------------------------------------------------------- high level
def bone_surface(volume_mu, grid: Grid, *, threshold: float = 250.0, unit: str = "hu", mask=None,
                 close_boundary: bool = True, min_component_fraction: float = 0.02,
                 max_components: int | None = None, smooth_iterations: int = 10, smoothing: str = "taubin",
                 target_faces: int | None = 200_000) -> Mesh:
    """Cleaned bone iso-surface of a mu volume at ``threshold`` (HU by default: 250 HU)."""
    level = threshold_to_mu(threshold, unit)
    mesh = iso_surface(volume_mu, grid, level, mask=mask, close_boundary=close_boundary)
    return clean_mesh(mesh, min_component_fraction=min_component_fraction, max_components=max_components,
                      smooth_iterations=smooth_iterations, smoothing=smoothing, target_faces=target_faces)


def label_partition(labels, grid: Grid, values=None, max_distance_mm: float = 3.0) -> np.ndarray:
    """Grow the given label ``values`` (default: all vertebra labels present) by up to ``max_distance_mm``,
    each voxel taking its nearest label (a Voronoi split between neighbours). Other voxels become 0."""
    from scipy.ndimage import distance_transform_edt

    lab = np.asarray(labels)
    if lab.shape != grid.shape:
        raise VolumeError(f"label map shape {lab.shape} does not match grid shape {grid.shape}")
    lab = np.rint(lab).astype(np.int32)
    if values is None:
        values = [v for v in np.unique(lab) if int(v) in VERTEBRA_NAMES]
    values = np.asarray(list(values), dtype=np.int32)
    sel = np.isin(lab, values)
    out = np.where(sel, lab, 0).astype(np.int32)
    if not sel.any() or max_distance_mm <= 0:
        return out
    dist, (ii, jj, kk) = distance_transform_edt(~sel, sampling=grid.spacing, return_indices=True)
    grow = (~sel) & (dist <= max_distance_mm)
    out[grow] = lab[ii[grow], jj[grow], kk[grow]]
    return out


def vertebra_surfaces(volume_mu, grid: Grid, labels, *, threshold: float = 250.0, unit: str = "hu",
                      source: str = "intensity", margin_mm: float = 3.0, smooth_iterations: int = 10,
                      target_faces: int | None = 20_000, min_component_fraction: float = 0.05) -> dict[str, Mesh]:
    """One mesh per vertebra label present in ``labels`` (TotalSegmentator numbering, same grid).

    ``source="intensity"``: the bone iso-surface of ``volume_mu`` inside the vertebra's region (its label
    grown by ``margin_mm``, split between neighbours by nearest label). ``source="label"``: the surface of
    the label mask itself (e.g. of a reference segmentation).
    """
    if source not in ("intensity", "label"):
        raise ValueError(f"source must be 'intensity' or 'label', got {source!r}")
    part = label_partition(labels, grid, max_distance_mm=margin_mm if source == "intensity" else 0.0)
    vol = np.asarray(volume_mu, dtype=np.float32)
    level = threshold_to_mu(threshold, unit)
    out: dict[str, Mesh] = {}
    for value in sorted(int(v) for v in np.unique(part) if v != 0):
        region = part == value
        idx = np.nonzero(region)
        lo = np.maximum(np.array([i.min() for i in idx]) - 1, 0)
        hi = np.minimum(np.array([i.max() for i in idx]) + 2, np.array(grid.shape))
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        A = grid.affine.copy()
        A[:3, 3] = grid.index_to_world(lo.astype(np.float64))
        sub_grid = Grid(tuple(int(b - a) for a, b in zip(lo, hi)), A)
        if source == "label":
            mesh = iso_surface(region[sl].astype(np.float32), sub_grid, 0.5)
        else:
            mesh = iso_surface(vol[sl], sub_grid, level, mask=region[sl])
        mesh = clean_mesh(mesh, min_component_fraction=min_component_fraction,
                          smooth_iterations=smooth_iterations, target_faces=target_faces)
        if not mesh.is_empty:
            out[VERTEBRA_NAMES[value]] = mesh
    return out


# --------------------------------------------------------------------------------------------- I/O
def _write_binary_ply(path: Path, mesh: Mesh, normals: np.ndarray) -> None:
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {mesh.n_vertices}\nproperty double x\nproperty double y\nproperty double z\n"
              "property double nx\nproperty double ny\nproperty double nz\n"
              f"element face {mesh.n_faces}\nproperty list uchar int vertex_indices\nend_header\n")
    vdata = np.concatenate([mesh.vertices, normals], axis=1).astype("<f8")
    fdata = np.empty(mesh.n_faces, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    fdata["n"] = 3
    fdata["i"] = mesh.faces
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vdata.tobytes())
        fh.write(fdata.tobytes())


def _write_binary_stl(path: Path, mesh: Mesh) -> None:
    rec = np.zeros(mesh.n_faces, dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"] = mesh.face_normals()
    rec["v"] = mesh.triangles()
    with open(path, "wb") as fh:
        fh.write(b"ixgs_ros bone surface (mm)".ljust(80, b" "))
        fh.write(np.uint32(mesh.n_faces).tobytes())
        fh.write(rec.tobytes())


def write_mesh(mesh: Mesh, path) -> Path:
    """Write ``mesh`` as binary PLY (with vertex normals), STL or OBJ, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".stl", ".obj"):
        raise ValueError(f"unsupported mesh format {suffix!r} (use .ply, .stl or .obj)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if _have_open3d() and not mesh.is_empty:
        m = mesh.to_open3d()
        m.vertex_normals = __import__("open3d").utility.Vector3dVector(mesh.vertex_normals())
        m.compute_triangle_normals()
        if not __import__("open3d").io.write_triangle_mesh(str(path), m, write_ascii=False,
                                                           write_triangle_uvs=False):
            raise OSError(f"open3d could not write {path}")
        return path
    if suffix == ".ply":
        _write_binary_ply(path, mesh, mesh.vertex_normals())
    elif suffix == ".stl":
        _write_binary_stl(path, mesh)
    else:
        with open(path, "w") as fh:
            np.savetxt(fh, mesh.vertices, fmt="v %.6f %.6f %.6f")
            np.savetxt(fh, mesh.faces + 1, fmt="f %d %d %d")
    return path


def read_mesh(path) -> Mesh:
    """Read a PLY / STL / OBJ triangle mesh (open3d). STL vertices are merged."""
    import open3d as o3d

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file not found: {path}")
    m = o3d.io.read_triangle_mesh(str(path))
    m.remove_duplicated_vertices()
    return Mesh.from_open3d(m)

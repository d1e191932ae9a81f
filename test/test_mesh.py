"""Bone iso-surfaces: position and scale in world mm for any affine, winding, cleaning, I/O, per-vertebra meshes."""
import numpy as np
import pytest

from ixgs_ros.core.geometry import rotation_x, rotation_z
from ixgs_ros.outputs.mesh import (VERTEBRA_NAMES, Mesh, bone_surface, clean_mesh, iso_surface, keep_large_components,
                                label_partition, read_mesh, threshold_to_mu, vertebra_name, vertebra_surfaces,
                                write_mesh)
from ixgs_ros.core.volume import Grid, hu_to_mu


def ball(grid, center, radius, inside=1.0, outside=0.0):
    """Sphere with a one-voxel linear partial-volume edge: the ``(inside + outside) / 2`` level is at ``radius``."""
    d = np.linalg.norm(grid.world_coords() - np.asarray(center, dtype=float), axis=-1)
    h = float(grid.spacing.min())
    w = np.clip((radius - d) / h + 0.5, 0.0, 1.0)
    return (outside + (inside - outside) * w).astype(np.float32)


def grid_with(diag, rot=np.eye(3), shape=(48, 44, 36), centre=(12.0, -30.0, 55.0)):
    A = np.eye(4)
    A[:3, :3] = rot @ np.diag(diag)
    g = Grid(shape, A)
    A[:3, 3] = np.asarray(centre) - g.center  # translate so the grid centre is at ``centre``
    return Grid(shape, A)


AFFINES = {
    "anisotropic": ([0.8, 1.1, 1.4], np.eye(3)),
    "rotated": ([0.9, 1.0, 1.2], rotation_z(0.5) @ rotation_x(-0.3)),
    "mirrored_x": ([-0.8, 1.1, 1.4], np.eye(3)),  # det < 0, as a LAS NIfTI
    "mirrored_rotated": ([1.0, -0.9, 1.3], rotation_z(-0.7)),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sphere_at_right_radius_and_position(name):
    diag, rot = AFFINES[name]
    g = grid_with(diag, rot)
    c = g.center + np.array([2.3, -1.7, 3.1])
    r = 13.0
    m = iso_surface(ball(g, c, r), g, 0.5)
    assert m.n_faces > 500
    half_voxel = 0.5 * float(g.spacing.min())
    dist = np.linalg.norm(m.vertices - c, axis=1)
    assert np.abs(dist - r).max() < half_voxel, (dist.min(), dist.max())
    # centroid of the surface (area weighted) at the sphere centre
    cen = (m.triangles().mean(1) * m.face_areas()[:, None]).sum(0) / m.area()
    assert np.linalg.norm(cen - c) < 0.1
    # outward winding whatever the affine's handedness: positive enclosed volume close to 4/3 pi r^3
    vol = m.signed_volume()
    assert vol == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.03)
    # face normals point away from the centre
    out = np.einsum("ij,ij->i", m.face_normals(), m.triangles().mean(1) - c)
    assert (out > 0).mean() > 0.99


def test_threshold_in_hu_and_mu():
    assert threshold_to_mu(250, "hu") == pytest.approx(hu_to_mu(250.0))
    assert threshold_to_mu(0.03, "mu") == 0.03
    with pytest.raises(ValueError):
        threshold_to_mu(1, "kelvin")


def test_bone_surface_hu_threshold_and_cleaning():
    g = Grid.centered((56, 48, 40), (1.0, 1.0, 1.25), center=(5.0, -4.0, 20.0))
    hu = np.full(g.shape, -1000.0, np.float32)
    mu = hu_to_mu(hu)
    c1, c2 = g.center + [-12, 0, 0], g.center + [12, 0, 0]
    mu = np.maximum(mu, ball(g, c1, 8.0, hu_to_mu(1000.0), hu_to_mu(-500.0)))
    mu = np.maximum(mu, ball(g, c2, 6.0, hu_to_mu(1000.0), hu_to_mu(-500.0)))
    # a one-voxel speck of "bone" (noise) far from both
    speck = np.round(g.world_to_index(g.center + [0, 18, 15])).astype(int)
    mu[tuple(speck)] = hu_to_mu(1500.0)
    raw = iso_surface(mu, g, threshold_to_mu(250))
    cleaned = bone_surface(mu, g, threshold=250, smooth_iterations=0, target_faces=None)
    assert cleaned.n_faces < raw.n_faces
    # both spheres kept, the speck gone
    d1 = np.linalg.norm(cleaned.vertices - c1, axis=1)
    d2 = np.linalg.norm(cleaned.vertices - c2, axis=1)
    assert np.all(np.minimum(d1, d2) < 10.0)
    assert (d1 < 10).any() and (d2 < 8).any()
    # with a higher threshold the level moves inward (the partial-volume ramp is 1 voxel wide)
    tighter = bone_surface(mu, g, threshold=800, smooth_iterations=0, target_faces=None)
    t1 = np.linalg.norm(tighter.vertices - c1, axis=1)
    assert t1[t1 < 10].mean() < d1[d1 < 10].mean() - 0.3


def test_smoothing_and_decimation_keep_the_shape():
    g = Grid.centered(40, 1.0)
    m = iso_surface(ball(g, g.center, 12.0), g, 0.5)
    out = clean_mesh(m, smooth_iterations=10, target_faces=1000)
    assert 0 < out.n_faces <= 1000
    d = np.linalg.norm(out.vertices - g.center, axis=1)
    assert np.abs(d - 12.0).max() < 0.6
    assert out.signed_volume() > 0


def test_keep_large_components_limits():
    g = Grid.centered(40, 1.0)
    vol = np.maximum(ball(g, g.center + [-9, 0, 0], 7.0), ball(g, g.center + [10, 0, 0], 4.0))
    m = iso_surface(vol, g, 0.5)
    one = keep_large_components(m, min_fraction=0.0, max_components=1)
    assert np.all(one.vertices[:, 0] < g.center[0])
    both = keep_large_components(m, min_fraction=0.1)
    assert both.n_faces == m.n_faces


def test_empty_and_full_volumes():
    g = Grid.centered(8, 1.0)
    assert iso_surface(np.zeros(g.shape), g, 0.5).is_empty
    closed = iso_surface(np.ones(g.shape), g, 0.5, close_boundary=True)
    assert not closed.is_empty and closed.signed_volume() > 0
    with pytest.raises(ValueError):
        iso_surface(np.zeros((3, 3, 3)), g, 0.5)


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".obj"])
def test_write_and_read_mesh(tmp_path, suffix):
    g = grid_with([0.9, 1.0, 1.2], rotation_z(0.3), shape=(30, 30, 30))
    m = iso_surface(ball(g, g.center, 9.0), g, 0.5)
    p = write_mesh(m, tmp_path / f"bone{suffix}")
    assert p.stat().st_size > 1000
    back = read_mesh(p)
    assert back.n_faces == m.n_faces
    np.testing.assert_allclose(back.bounds()[0], m.bounds()[0], atol=1e-4)
    np.testing.assert_allclose(back.bounds()[1], m.bounds()[1], atol=1e-4)
    assert back.signed_volume() == pytest.approx(m.signed_volume(), rel=1e-4)


def test_write_mesh_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        write_mesh(Mesh.empty(), tmp_path / "x.vtk")


def test_vertebra_names_follow_totalsegmentator():
    assert vertebra_name(25) == "sacrum" and vertebra_name(26) == "S1" and vertebra_name(27) == "L5"
    assert vertebra_name(31) == "L1" and vertebra_name(32) == "T12" and vertebra_name(43) == "T1"
    assert vertebra_name(44) == "C7" and vertebra_name(50) == "C1"
    assert vertebra_name(5) is None
    assert len(VERTEBRA_NAMES) == 26


def test_per_vertebra_surfaces():
    g = Grid.centered((40, 40, 60), (1.0, 1.0, 1.0))
    top, bottom = g.center + [0, 0, 14], g.center + [0, 0, -14]
    mu = np.maximum(ball(g, top, 9.0, hu_to_mu(900.0), 0.0), ball(g, bottom, 9.0, hu_to_mu(900.0), 0.0))
    labels = np.zeros(g.shape, np.int16)
    w = g.world_coords()
    labels[np.linalg.norm(w - top, axis=-1) <= 8.0] = 32  # T12 (label slightly smaller than the bone)
    labels[np.linalg.norm(w - bottom, axis=-1) <= 8.0] = 31  # L1
    labels[0, 0, 0] = 5  # not a vertebra: ignored
    part = label_partition(labels, g, max_distance_mm=3.0)
    assert set(np.unique(part)) == {0, 31, 32}
    meshes = vertebra_surfaces(mu, g, labels, smooth_iterations=0, target_faces=None)
    assert sorted(meshes) == ["L1", "T12"]
    level_r = 9.0 + 0.5 - (threshold_to_mu(250) / hu_to_mu(900.0))  # where the ramp crosses the level
    for name, c in (("T12", top), ("L1", bottom)):
        d = np.linalg.norm(meshes[name].vertices - c, axis=1)
        assert np.abs(d - level_r).max() < 0.5, (name, d.min(), d.max())
    from_labels = vertebra_surfaces(mu, g, labels, source="label", smooth_iterations=0, target_faces=None)
    d = np.linalg.norm(from_labels["L1"].vertices - bottom, axis=1)
    assert np.abs(d - 8.0).max() < 1.0

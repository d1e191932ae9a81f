"""Analytic ellipsoid phantom: closed-form chords against numerical integration, voxelisation."""
import numpy as np
import pytest

from ixgs_ros.core.geometry import GeometryError, View, rotation_x, rotation_z
from ixgs_ros.simulation.phantom import Ellipsoid, line_integral, make_scan, project, shepp_logan_3d, voxelize
from ixgs_ros.core.scan import Scan
from ixgs_ros.core.volume import MU_WATER, Grid


def numeric_integral(ellipsoids, origin, direction, t_max, t_min=0.0, n=40000):
    """Midpoint rule on [t_min, t_max] (the phantom must lie inside that segment)."""
    direction = direction / np.linalg.norm(direction)
    dt = (t_max - t_min) / n
    t = t_min + (np.arange(n) + 0.5) * dt
    pts = origin + t[:, None] * direction
    return sum(e.mu * e.contains(pts).sum() * dt for e in ellipsoids)


def test_chord_matches_numerical_integration():
    rng = np.random.default_rng(0)
    R = rotation_z(0.7) @ rotation_x(-0.4)
    e = Ellipsoid([10, -5, 3], [40, 25, 15], R, 0.02)
    hits = 0
    for _ in range(40):
        origin = rng.normal(size=3) * 20 + [0, 0, -300]
        target = e.center + rng.normal(size=3) * 20
        d = target - origin
        exact = e.chord(origin, d, 600.0)
        approx = e.contains(origin + np.linspace(0, 600, 60001)[:, None] * d / np.linalg.norm(d)).sum() * 0.01
        assert exact == pytest.approx(approx, abs=0.03)
        hits += exact > 0
    assert hits > 20


def test_chord_clipping_and_misses():
    e = Ellipsoid([0, 0, 0], [10, 10, 10], None, 1.0)
    o, d = np.array([0.0, 0, -50]), np.array([0.0, 0, 2])
    assert e.chord(o, d) == pytest.approx(20.0)
    assert e.chord(o, d, 45.0) == pytest.approx(5.0)  # detector inside the sphere
    assert e.chord(o, d, 30.0) == 0.0
    assert e.chord([0.0, 0, 0], d) == pytest.approx(10.0)  # source inside
    assert e.chord(o, -d) == 0.0  # sphere behind the source
    assert e.chord([0.0, 10.5, -50], d) == 0.0  # miss
    many = e.chord(np.zeros((4, 5, 3)) + o, np.zeros((4, 5, 3)) + d)
    assert many.shape == (4, 5) and np.allclose(many, 20.0)


def test_view_line_integrals_vs_numeric():
    rng = np.random.default_rng(1)
    ells = shepp_logan_3d(80.0)
    v = View.from_carm(25.0, -10.0, 1000.0, 600.0, 2.0, 48, 40)
    img = line_integral(ells, v)
    assert img.shape == (40, 48) and img.dtype == np.float32
    for _ in range(8):
        uv = rng.uniform([10, 8], [38, 32])
        d = v.ray_directions(uv)
        num = numeric_integral(ells, v.source, d, 700.0, 500.0)  # the head spans 600 +- 80 mm
        assert line_integral(ells, v, uv=uv) == pytest.approx(num, abs=1e-3)
    # the central ray through the centred sphere: 2 r mu
    s = Ellipsoid([0, 0, 0], [50, 50, 50], None, MU_WATER)
    v2 = View.from_carm(0, 0, 1000.0, 600.0, 1.0, 33, 33)
    assert line_integral(s, v2)[16, 16] == pytest.approx(100 * MU_WATER, rel=1e-6)


def test_detector_clipping_uses_meta_sdd():
    s = Ellipsoid([0, 0, 0], [50, 50, 50], None, 1.0)
    v = View.from_carm(0, 0, 620.0, 600.0, 1.0, 9, 9)  # detector 20 mm past the centre
    assert line_integral(s, v)[4, 4] == pytest.approx(70.0, rel=1e-6)
    assert line_integral(s, v, sdd=1e9)[4, 4] == pytest.approx(100.0, rel=1e-6)


def test_project_and_make_scan(tmp_path):
    ells = shepp_logan_3d(60.0)
    views = [View.from_carm(a, 0, 1000.0, 600.0, 2.0, 24, 20) for a in (0, 60, 120)]
    p = project(ells, views)
    assert p.shape == (3, 20, 24) and p.dtype == np.float32 and p.min() >= 0 and p.max() > 0
    scan = make_scan(ells, views, extra={"phantom": "shepp_logan_3d"})
    scan.save(tmp_path)
    np.testing.assert_array_equal(Scan.load(tmp_path).projections, p)
    with pytest.raises(GeometryError, match="different detector sizes"):
        project(ells, views + [View.from_carm(0, 0, 1000.0, 600.0, 2.0, 10, 10)])


def test_voxelize():
    R = rotation_z(0.5) @ rotation_x(0.3)
    e = Ellipsoid([3, -2, 1], [20, 12, 8], R, 0.05)
    grid = Grid.centered(40, 1.25)
    vol = voxelize([e], grid, supersample=3)
    assert vol.shape == (40, 40, 40) and vol.dtype == np.float32
    total = vol.sum() * 1.25 ** 3
    assert total == pytest.approx(e.volume * e.mu, rel=0.01)
    centre = np.round(grid.world_to_index(e.center)).astype(int)
    assert vol[tuple(centre)] == pytest.approx(0.05)
    assert vol[0, 0, 0] == 0
    # supersample=1 samples voxel centres exactly
    v1 = voxelize([e], grid)
    np.testing.assert_array_equal(v1 > 0, e.contains(grid.world_coords()))
    # additive ellipsoids and a rotated, anisotropic grid
    A = np.eye(4)
    A[:3, :3] = rotation_z(0.3) @ np.diag([1.0, 1.5, 2.0])
    A[:3, 3] = [-20, -30, -40]
    g2 = Grid((40, 40, 40), A)
    ells = shepp_logan_3d(30.0)
    vol2 = voxelize(ells, g2, supersample=2)
    pts = g2.world_coords()
    ref = sum(el.mu * el.contains(pts) for el in ells)
    close = np.isclose(vol2, ref, atol=1e-6)
    assert close.mean() > 0.9  # differences only at partial-volume edges
    with pytest.raises(GeometryError):
        voxelize(ells, grid, supersample=0)


def test_shepp_logan_values_and_validation():
    ells = shepp_logan_3d(100.0, center=(5, 0, 0))
    assert len(ells) == 10
    mu = sum(e.mu * e.contains([5.0, 0, 0]) for e in ells)
    assert mu == pytest.approx(MU_WATER)  # brain
    mu_skull = sum(e.mu * e.contains([5.0, 89.0, 0]) for e in ells)
    assert mu_skull == pytest.approx(5 * MU_WATER)
    with pytest.raises(GeometryError, match="semi_axes"):
        Ellipsoid([0, 0, 0], [1, 0, 1])
    with pytest.raises(GeometryError, match="rotation"):
        Ellipsoid([0, 0, 0], [1, 1, 1], np.diag([1, 1, -1]))
    with pytest.raises(GeometryError, match="center"):
        Ellipsoid([0, np.nan, 0], [1, 1, 1])
    with pytest.raises(GeometryError, match="mu"):
        Ellipsoid([0, 0, 0], [1, 1, 1], None, float("inf"))

"""3D renderings: MIP / DRR equal numpy reductions for axis-aligned views, iso-surface silhouettes and depths."""
import numpy as np
import pytest

from ixgs_ros.outputs.render3d import (make_camera, render_drr, render_iso, render_mip, view_axes, viewpoint_name,
                                    write_renders)
from ixgs_ros.core.volume import Grid


def sphere(grid, center, radius):
    d = np.linalg.norm(grid.world_coords() - np.asarray(center, dtype=float), axis=-1)
    return np.clip((radius - d) / float(grid.spacing.min()) + 0.5, 0.0, 1.0).astype(np.float32)


def test_view_axes_are_a_right_handed_screen_frame():
    for az, el in [(0, 0), (90, 0), (45, 20), (-30, -50), (200, 89)]:
        d, right, down = view_axes(az, el)
        np.testing.assert_allclose(np.cross(right, down), d, atol=1e-12)
        np.testing.assert_allclose([np.linalg.norm(d), np.linalg.norm(right), np.linalg.norm(down)], 1.0)
    d, right, down = view_axes(0, 0)  # from the front: looking posterior, patient left on the image right
    np.testing.assert_allclose(d, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(right, [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(down, [0, 0, -1], atol=1e-12)
    d, right, down = view_axes(90, 0)  # from the patient's left: anterior on the image left
    np.testing.assert_allclose(d, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(right, [0, -1, 0], atol=1e-12)
    assert viewpoint_name(0, 0) == "anterior" and viewpoint_name(90, 0) == "left"
    assert viewpoint_name(-90, 0) == "right" and viewpoint_name(0, 90) == "superior"
    assert viewpoint_name(45, 20) == "az45_el20"


@pytest.fixture(scope="module")
def random_volume():
    # isotropic in x and z, 2 mm along y: an anterior view marches along j in voxel-centre steps
    A = np.diag([1.0, 2.0, 1.0, 1.0])
    A[:3, 3] = [3.0, -4.0, 5.0]
    g = Grid((20, 12, 16), A)
    return np.random.default_rng(0).random(g.shape).astype(np.float32), g


def test_mip_equals_numpy_max_for_axis_aligned_views(random_volume):
    vol, g = random_volume
    # anterior: columns run toward patient left (-x: decreasing i), rows toward inferior (decreasing k)
    cam = make_camera(g, 0, 0, pixel_mm=1.0)
    assert cam.shape == (16, 20)
    img = render_mip(vol, g, cam)
    np.testing.assert_allclose(img, vol.max(axis=1)[::-1, ::-1].T, atol=1e-5)
    # posterior: columns toward patient right (increasing i)
    img = render_mip(vol, g, make_camera(g, 180, 0, pixel_mm=1.0))
    np.testing.assert_allclose(img, vol.max(axis=1)[:, ::-1].T, atol=1e-5)
    # from above (superior): looking down -z; with this convention rows run toward anterior
    cam = make_camera(g, 0, 90, pixel_mm=1.0, step_mm=1.0)
    np.testing.assert_allclose(cam.direction, [0, 0, -1], atol=1e-12)
    img = render_mip(vol, g, make_camera(g, 0, 90, pixel_mm=2.0))
    # 2 mm pixels: rows are the 2 mm j voxels (toward anterior), columns every second i voxel (toward left)
    assert img.shape == (12, 10)
    np.testing.assert_allclose(img, vol.max(axis=2)[18::-2, :].T, atol=1e-5)


def test_drr_equals_line_integral_for_axis_aligned_view(random_volume):
    vol, g = random_volume
    cam = make_camera(g, 0, 0, pixel_mm=1.0, step_mm=2.0)
    img = render_drr(vol, g, cam)
    np.testing.assert_allclose(img, 2.0 * vol.sum(axis=1)[::-1, ::-1].T, rtol=1e-5)


def test_camera_maps_world_points_to_pixels(random_volume):
    vol, g = random_volume
    cam = make_camera(g, 30, 25)
    p = g.center + np.array([4.0, -3.0, 2.0])
    r, c, t = cam.world_to_pixel(p)
    np.testing.assert_allclose(cam.pixel_to_world(r, c, t), p, atol=1e-9)


def test_iso_render_finds_the_sphere_silhouette_and_surface():
    A = np.diag([0.9, 1.1, 1.3, 1.0])
    g = Grid((56, 48, 40), A)
    c = g.center + np.array([3.0, -2.0, 1.5])
    r = 15.0
    vol = sphere(g, c, r)
    for az, el in [(0, 0), (35, 25), (-120, -40)]:
        cam = make_camera(g, az, el)
        res = render_iso(vol, g, cam, 0.5)
        rows, cols = np.meshgrid(np.arange(cam.shape[0]), np.arange(cam.shape[1]), indexing="ij")
        pr, pc, _ = cam.world_to_pixel(c)
        d_px = np.hypot(rows - pr, cols - pc) * cam.pixel_mm
        hit = res["hit"]
        assert np.all(hit[d_px < r - 1.0]) and not np.any(hit[d_px > r + 1.0])
        assert abs(hit.sum() * cam.pixel_mm ** 2 - np.pi * r * r) < 0.05 * np.pi * r * r
        # hit points on the sphere, on the camera-facing half, normals pointing out and toward the camera
        pts = res["points"][hit]
        assert np.abs(np.linalg.norm(pts - c, axis=1) - r).max() < 0.3
        inner = d_px[hit] < 0.8 * r
        assert np.all((pts[inner] - c) @ cam.direction < 0)
        n = res["normals"][hit][inner]
        radial = (pts[inner] - c) / r
        assert np.median(np.einsum("ij,ij->i", n, radial)) > 0.98
        img = res["image"]
        assert img.shape == cam.shape + (3,) and img[hit].min() > 0 and img[~hit].max() == 0
        assert np.isnan(res["depth"][~hit]).all()


def test_write_renders(tmp_path):
    g = Grid.centered(24, 1.5)
    vol = sphere(g, g.center, 10.0)
    paths = write_renders(vol, g, tmp_path, viewpoints=((0, 0), (90, 0)), level=0.5, max_size=64)
    assert sorted(paths) == sorted(f"{k}_{v}" for k in ("mip", "drr", "iso") for v in ("anterior", "left"))
    assert all(p.stat().st_size > 1000 for p in paths.values())
    with pytest.raises(ValueError):
        write_renders(vol, g, tmp_path, level=0.5, kinds=("xray",))

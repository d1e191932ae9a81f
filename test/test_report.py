"""Report pieces (geometry figure, montage, HTML) and the one-call navigation outputs on a small spine phantom."""
import json

import numpy as np
import pytest

from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.outputs.navigation import NavigationConfig, write_navigation_outputs
from ixgs_ros.outputs.report import flatten_metrics, plot_view_geometry, view_frustum, write_montage, write_report
from ixgs_ros.core.volume import Grid, hu_to_mu


def spine_phantom(grid, n_vert=2, pitch=18.0):
    """mu volume and TotalSegmentator-style labels: soft tissue, vertebral bodies (cortex + spongiosa) with a
    posterior spinous process, stacked along z (inferior to superior: L2, L1, ...)."""
    w = grid.world_coords() - grid.center
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    hu = np.full(grid.shape, -1000.0, np.float32)
    hu[(x / 22) ** 2 + (y / 18) ** 2 <= 1] = 30.0
    labels = np.zeros(grid.shape, np.int16)
    for n in range(n_vert):
        zc = (n - (n_vert - 1) / 2) * pitch
        r = np.hypot(x / 8, (y - 3) / 6)
        body = (np.abs(z - zc) <= 6) & (r <= 1)
        spine = (np.abs(z - zc) <= 3) & (np.abs(x) <= 1.5) & (y <= -3) & (y >= -14)
        hu[body] = 300.0
        hu[body & (r > 0.75)] = 900.0
        hu[spine] = 900.0
        labels[body | spine] = 31 - (n_vert - 1 - n)  # the top one is L1 (31), below it L2 (30), ...
    return hu_to_mu(hu).astype(np.float32), labels


def c_arm_views(grid, n=4):
    views = []
    for k in range(n):
        a = np.deg2rad(-45 + 90 * k / max(n - 1, 1))
        src = grid.center + 500.0 * np.array([np.sin(a), np.cos(a), 0.0])
        K = np.array([[1800.0, 0, 63.5], [0, 1800.0, 63.5], [0, 0, 1]])
        views.append(View(K, look_at(src, grid.center, [0, 0, 1]), 128, 128, {"sdd": 900.0}))
    return views


def test_flatten_metrics():
    flat = flatten_metrics({"psnr": 30.0, "surface": {"mean": 0.5, "per_vertebra": {"L1": {"hd95": 1.2}}}})
    assert flat == {"psnr": 30.0, "surface.mean": 0.5, "surface.per_vertebra.L1.hd95": 1.2}


def test_view_frustum_reaches_the_detector():
    g = Grid.centered(32, 1.0)
    v = c_arm_views(g, 1)[0]
    src, corners = view_frustum(v, grid=g)
    np.testing.assert_allclose(src, v.source)
    depth = (corners - src) @ v.principal_axis
    np.testing.assert_allclose(depth, 900.0)  # meta['sdd']
    uv, _ = v.project(corners)
    np.testing.assert_allclose(np.sort(uv[:, 0]), [-0.5, -0.5, 127.5, 127.5], atol=1e-6)


def test_geometry_plot_and_montage(tmp_path):
    from matplotlib.image import imread

    g = Grid.centered((40, 30, 20), (1.0, 1.0, 2.0))
    p = plot_view_geometry(c_arm_views(g, 5), g, tmp_path / "geometry.png")
    assert imread(str(p)).shape[0] > 300
    m = write_montage({"geometry": p, "missing": tmp_path / "nope.png"}, tmp_path / "montage.png",
                      info={"shape": [40, 30, 20]}, metrics={"a": {"b": 1.5}})
    assert imread(str(m)).shape[1] > 300


def test_write_report(tmp_path):
    g = Grid.centered(16, 1.0)
    png = plot_view_geometry([], g, tmp_path / "box.png")
    out = write_report(tmp_path, sections={"Geometry": {"box": png}}, grid=g, metrics={"hd95": 1.25},
                       files={"box": png})
    html = out["report_html"].read_text()
    assert "data:image/png;base64," in html and "hd95" in html and "1.25" in html and "box.png" in html
    assert out["report_png"].stat().st_size > 5000


@pytest.fixture(scope="module")
def navigation(tmp_path_factory):
    out = tmp_path_factory.mktemp("nav")
    A = np.diag([0.9, 0.9, 1.2, 1.0])
    g = Grid((48, 44, 40), A)
    mu, labels = spine_phantom(g)
    cfg = NavigationConfig(render_viewpoints=((0.0, 0.0), (90.0, 0.0)), render_max_size=96, mpr_max_size=128,
                           target_faces=5000, vertebra_target_faces=2000)
    paths = write_navigation_outputs(mu, g, out, views=c_arm_views(g), labels=labels,
                                     metrics={"psnr_3d": 31.5, "surface": {"mean": 0.7}}, config=cfg)
    return out, paths, mu, g


def test_navigation_outputs_written(navigation):
    out, paths, mu, g = navigation
    expected = {"nifti", "nrrd", "mesh_ply", "mesh_stl", "mesh_L1", "mesh_L2", "mpr_axial", "mpr_coronal",
                "mpr_sagittal", "mpr_oblique_0", "render_mip_anterior", "render_drr_anterior",
                "render_iso_anterior", "render_mip_left", "render_drr_left", "render_iso_left", "geometry",
                "report_html", "report_png", "summary"}
    assert expected <= set(paths), expected - set(paths)
    for key, p in paths.items():
        assert p.exists() and p.stat().st_size > 0, key
        assert out in p.parents, key
    html = paths["report_html"].read_text()
    assert html.count("data:image/png;base64,") == 4 + 6 + 1
    assert "psnr_3d" in html and "surface.mean" in html
    summary = json.loads(paths["summary"].read_text())
    assert summary["n_views"] == 4 and summary["metrics"]["psnr_3d"] == 31.5
    assert summary["files"]["mesh_L1"] == "mesh/mesh_L1.ply"
    assert summary["threshold"]["mu"] == pytest.approx(hu_to_mu(250.0))


def test_navigation_outputs_volumes_round_trip(navigation):
    from ixgs_ros.outputs.export import load_nrrd
    from ixgs_ros.outputs.mesh import read_mesh
    from ixgs_ros.core.volume import load_nifti, mu_to_hu

    out, paths, mu, g = navigation
    data, grid = load_nifti(paths["nifti"])
    assert grid == g and np.allclose(data, mu)
    data, grid, _ = load_nrrd(paths["nrrd"])
    assert grid == g and np.allclose(data, mu_to_hu(mu), atol=1e-2)
    bone = read_mesh(paths["mesh_ply"])
    lo, hi = g.bounds()
    assert np.all(bone.vertices >= lo - 1e-6) and np.all(bone.vertices <= hi + 1e-6)
    l1 = read_mesh(paths["mesh_L1"])
    l2 = read_mesh(paths["mesh_L2"])
    assert l1.vertices[:, 2].mean() > l2.vertices[:, 2].mean()  # L1 is superior to L2


def test_navigation_outputs_options(tmp_path):
    g = Grid.centered(24, 1.5)
    mu, _ = spine_phantom(g, n_vert=1)
    cfg = NavigationConfig(export_nrrd=False, mesh=False, render=False, mpr_planes=("axial",), mpr_obliques=(),
                           report=False)
    paths = write_navigation_outputs(mu, g, tmp_path, config=cfg)
    assert set(paths) == {"nifti", "mpr_axial", "summary"}
    with pytest.raises(ValueError):
        write_navigation_outputs(mu[:3], g, tmp_path)

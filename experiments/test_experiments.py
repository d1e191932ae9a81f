"""The helpers of the experiment scripts in ``experiments/`` (run with ``pytest experiments``; not part of ``make test``)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from refine_inner_sweep import view_order  # noqa: E402


@pytest.mark.parametrize("spec", ["sequential", "reverse", "golden", "random:3"])
def test_view_orders_are_permutations(spec):
    for n in (1, 2, 25):
        order = view_order(spec, n)
        assert sorted(order) == list(range(n))


def test_view_orders_differ_as_named():
    assert view_order("sequential", 5) == [0, 1, 2, 3, 4]
    assert view_order("reverse", 5) == [4, 3, 2, 1, 0]
    g = view_order("golden", 25)
    # consecutive updates are spread over the arc, not neighbours
    assert min(abs(a - b) for a, b in zip(g, g[1:])) >= 5
    assert view_order("random:1", 25) == view_order("random:1", 25) != view_order("random:2", 25)


def test_unknown_view_order_is_named_in_the_error():
    with pytest.raises(ValueError, match="spiral"):
        view_order("spiral", 4)


def test_exterior_oracle_mixes_as_named():
    from exterior_oracle import ROWS, mix_exterior

    shape = (6, 5, 4)
    coarse = np.full(shape, 1.0, np.float32)
    true = np.full(shape, 2.0, np.float32)
    inside = np.zeros(shape, bool)
    inside[2:4, 1:3, 1:3] = True
    dist = np.where(inside, 0.0, np.arange(6, dtype=float)[:, None, None] * 10 + 5 + np.zeros(shape))
    got = {r: mix_exterior(coarse, true, inside, dist, r, 30.0) for r in ROWS}
    # the fine box always keeps the coarse solution
    for r in ROWS:
        assert (got[r][inside] == 1.0).all()
    assert (got["engine"] == 1.0).all()
    assert (got["true"][~inside] == 2.0).all()
    near, far = ~inside & (dist < 30), ~inside & (dist >= 30)
    assert near.any() and far.any()
    assert (got["true-near"][near] == 2.0).all() and (got["true-near"][far] == 1.0).all()
    assert (got["true-far"][far] == 2.0).all() and (got["true-far"][near] == 1.0).all()


def test_exterior_oracle_rejects_bad_rows_and_shapes():
    from exterior_oracle import mix_exterior

    a = np.zeros((2, 2, 2), np.float32)
    m = np.zeros((2, 2, 2), bool)
    with pytest.raises(ValueError, match="halfway"):
        mix_exterior(a, a, m, a, "halfway", 30.0)
    with pytest.raises(ValueError, match="shapes differ"):
        mix_exterior(a, np.zeros((2, 2, 3)), m, a, "true", 30.0)


def test_coarse_sweep_settings_parse_to_engine_overrides():
    from coarse_sweep import parse_setting

    assert parse_setting("default") == {}
    assert parse_setting("init_exterior_levels=1, init_exterior_tv_unseen=4.0,init_exterior_sart_iterations=None") \
        == {"init_exterior_levels": 1, "init_exterior_tv_unseen": 4.0, "init_exterior_sart_iterations": None}
    for bad, why in (("init_exterior_levels", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("a=two words", "literal")):
        with pytest.raises(ValueError, match=why):
            parse_setting(bad)


def test_joint_tv_sart_solves_both_resolutions_from_one_residual():
    """``start_oracle.joint_tv_sart`` on a truncated synthetic scan: the fine box and the exterior both move
    towards the data (the residual falls), the exterior stays zero inside the fine box, no voxel goes negative,
    zero passes return the start, and bad starts are named."""
    pytest.importorskip("itk")
    from start_oracle import joint_tv_sart
    from test_rtk_baseline import CENTER, _truncated_scan

    from ixgs_ros.evaluation import metrics as M
    from ixgs_ros.core.volume import resample
    from ixgs_ros.core import rtk
    from ixgs_ros.core import solve_grid as sg
    from ixgs_ros.simulation.phantom import voxelize
    from ixgs_ros.core.volume import Grid

    views, proj, ell = _truncated_scan()
    roi = Grid.centered(24, 1.5, CENTER)
    gt = voxelize(ell, roi, supersample=2)
    solve = sg.default_solve_grid(views, roi, projections=proj, spacing=6.0)
    fine = roi.padded(4)
    inside = fine.contains(solve.world_coords())
    e0, x0 = np.zeros(solve.shape, np.float32), np.zeros(fine.shape, np.float32)

    def residual(e, x):
        return float(np.abs(proj - rtk.forward_project(e, solve, views) - rtk.forward_project(x, fine, views)).mean())

    seen = []
    e, x = joint_tv_sart(views, proj, solve, fine, e0, x0, 3, exterior_tv=(0.01, 0.005), fine_tv=(0.01, 0.005),
                         on_pass=lambda k, e, x: seen.append(k))
    assert seen == [1, 2, 3]
    assert e.shape == solve.shape and x.shape == fine.shape and e.dtype == x.dtype == np.float32
    assert np.all(e[inside] == 0) and e.min() >= 0 and x.min() >= 0
    assert e[~inside].max() > 0 and x.max() > 0
    assert residual(e, x) < 0.3 * residual(e0, x0)
    assert M.psnr_3d(resample(x, fine, roi), gt) > M.psnr_3d(np.zeros_like(gt), gt) + 3.0
    e1, x1 = joint_tv_sart(views, proj, solve, fine, np.full(solve.shape, 0.01, np.float32), x0 + 0.02, 0)
    assert np.all(e1[inside] == 0) and np.all(e1[~inside] == np.float32(0.01)) and np.all(x1 == np.float32(0.02))
    with pytest.raises(ValueError, match="do not match"):
        joint_tv_sart(views, proj, solve, fine, e0[1:], x0, 1)
    with pytest.raises(ValueError, match="inside the solve grid"):
        joint_tv_sart(views, proj, solve, Grid.centered(24, 1.5, CENTER + 500.0), e0,
                      np.zeros((24, 24, 24), np.float32), 1)
    with pytest.raises(ValueError, match="passes"):
        joint_tv_sart(views, proj, solve, fine, e0, x0, -1)


def test_start_oracle_names_unknown_rows(capsys):
    from start_oracle import main

    with pytest.raises(SystemExit):
        main(["somewhere", "cascade-zero", "halfway"])
    assert "halfway" in capsys.readouterr().err


def test_outline_oracle_rows_parse_and_bad_ones_are_named():
    from outline_oracle import parse_row

    assert parse_row("engine") == ("engine", 0.0)
    assert parse_row("box") == ("box", 0.0)
    assert parse_row("outline:3") == ("outline", 3.0)
    assert parse_row("largest:0.5") == ("largest", 0.5)
    assert parse_row("carve:0.02") == ("carve", 0.02)
    for bad, word in (("hull:3", "hull"), ("outline", "outline"), ("outline:x", "'x'"), ("largest:-1", ">= 0"),
                      ("carve:0", "> 0"), ("carve:y", "air threshold")):
        with pytest.raises(ValueError, match=word):
            parse_row(bad)


def test_body_outline_keeps_the_large_pieces_fills_holes_and_grows_in_mm():
    """Two bodies (one with an air hole inside) and a speck: the outline fills the hole, keeps both bodies and
    drops the speck, or keeps the largest body only; growth follows the voxel sizes in mm."""
    from outline_oracle import body_outline

    mu = np.zeros((40, 30, 10), np.float32)
    mu[5:25, 5:25, 2:8] = 0.02
    mu[10:15, 10:15, 4:6] = 0.0          # air inside the body (a lung)
    mu[30:36, 5:11, 2:8] = 0.02           # an arm, 216 voxels
    mu[38, 28, 5] = 0.05                  # a speck
    m = body_outline(mu, (1.0, 1.0, 2.0), min_voxels=100)
    assert m[12, 12, 5] and m[32, 7, 4] and not m[38, 28, 5] and not m[0, 0, 0]
    assert m.sum() == 20 * 20 * 6 + 6 * 6 * 6
    largest = body_outline(mu, (1.0, 1.0, 2.0), min_voxels=100, largest_only=True)
    assert largest[12, 12, 5] and not largest[32, 7, 4]
    grown = body_outline(mu, (1.0, 1.0, 2.0), 2.0, min_voxels=100)
    assert grown[3, 12, 5] and not grown[2, 12, 5]       # 2 mm along x: two voxels
    assert grown[12, 12, 1] and not grown[12, 12, 0]     # 2 mm along z: one voxel
    assert not body_outline(np.zeros((4, 4, 4)), (1, 1, 1)).any()


def test_masked_sart_tv_is_sart_tv_where_the_mask_keeps_all_and_holds_the_rest_at_zero():
    pytest.importorskip("itk")
    from outline_oracle import masked_sart_tv
    from test_rtk_baseline import CENTER, _truncated_scan

    from ixgs_ros.engine import init_solve as isv
    from ixgs_ros.core import solve_grid as sg
    from ixgs_ros.core.volume import Grid

    views, proj, _ = _truncated_scan()
    solve = sg.default_solve_grid(views, Grid.centered(24, 1.5, CENTER), projections=proj, spacing=6.0)
    plain = isv.sart_tv(views, proj, solve, 3, 0.02, tv_weight_final=0.005)
    passes = []
    same = masked_sart_tv(lambda g: np.ones(g.shape, bool), views, proj, solve, 3, 0.02, tv_weight_final=0.005,
                          on_pass=lambda k, n: passes.append((k, n)))
    assert passes == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_allclose(same, plain, rtol=1e-4, atol=1e-6)
    half = np.zeros(solve.shape, bool)
    half[: solve.shape[0] // 2] = True
    x = masked_sart_tv(lambda g: half, views, proj, solve, 2, 0.02, x0=np.full(solve.shape, 0.01, np.float32))
    assert np.all(x[~half] == 0) and x[half].max() > 0
    with pytest.raises(ValueError, match="mask of shape"):
        masked_sart_tv(lambda g: half[1:], views, proj, solve, 1, 0.02)


@pytest.mark.parametrize("script", ["outline_oracle", "start_oracle", "coarse_sweep", "exterior_oracle"])
def test_full_body_scripts_name_a_scan_that_is_not_full_body(tmp_path, capsys, script):
    import importlib
    import json

    from bench_scan import load_full_body

    (tmp_path / "bench_scan.json").write_text(json.dumps({"simulation": {"mode": "roi-only"}}))
    with pytest.raises(ValueError, match="'roi-only' scan"):
        load_full_body(tmp_path, 25)
    with pytest.raises(SystemExit):
        importlib.import_module(script).main([str(tmp_path)] + (["default"] if script == "coarse_sweep" else []))
    assert "'roi-only' scan; the exterior only exists on full-body scans" in capsys.readouterr().err


def test_air_hull_carves_air_the_views_see_and_keeps_all_material():
    """Space carving on a truncated synthetic scan: every voxel inside the body is kept, voxels whose rays show
    air in some view are carved, voxels no view sees are kept."""
    from outline_oracle import air_hull
    from test_rtk_baseline import CENTER, _truncated_scan

    from ixgs_ros.core import solve_grid as sg
    from ixgs_ros.core.volume import Grid

    views, proj, ell = _truncated_scan()
    grid = Grid.centered(48, 4.0, CENTER)
    keep = air_hull(views, proj, grid, 0.02)
    assert keep.shape == grid.shape and keep.dtype == bool
    X = grid.world_coords().reshape(-1, 3)
    body = (((X - CENTER) / np.array([60.0, 45.0, 40.0])) ** 2).sum(1) <= 1.0
    assert keep.reshape(-1)[body].all()
    unseen = sg.view_counts(views, grid).reshape(-1) == 0
    assert keep.reshape(-1)[unseen].all()
    carved = ~keep.reshape(-1)
    assert carved.sum() > 0.05 * len(X) and not (carved & body).any()


def _arc_and_points():
    """Six views on an arc around the origin and a lattice of points around it."""
    from ixgs_ros.core.geometry import View, look_at

    K = np.array([[800.0, 0, 63.5], [0, 800.0, 63.5], [0, 0, 1]])
    views = [View(K, look_at(500.0 * np.array([np.sin(a), -np.cos(a), 0.1]), (0, 0, 0), (0, 0, 1)), 128, 128)
             for a in np.linspace(-1.2, 1.2, 6)]
    return views, np.stack(np.meshgrid(*[np.linspace(-30, 30, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)


def _source_moved(views, k, mm):
    """``views`` with view ``k``'s source moved by ``mm`` along its image columns."""
    from ixgs_ros.core.geometry import View

    out = list(views)
    T = out[k].T_world_source.copy()
    T[:3, 3] += mm * out[k].R[:, 0]
    out[k] = View(out[k].K, T, out[k].width, out[k].height)
    return out


def test_selfcal_oracle_affine_alignment_absorbs_a_global_affine_map_only():
    from selfcal_oracle import affine_aligned_error

    views, pts = _arc_and_points()
    assert affine_aligned_error(views, views, pts) < 1e-6
    # one view moved on its own: no global map explains it
    moved = _source_moved(views, 2, 5.0)
    assert affine_aligned_error(moved, views, pts) > 0.5


def test_selfcal_oracle_splits_a_source_shift_into_an_image_shift():
    from selfcal_oracle import image_modes, image_shifts

    views, pts = _arc_and_points()
    assert np.allclose(image_shifts(views, views, pts), 0.0, atol=1e-6)
    moved = _source_moved(views, 2, 5.0)
    modes = image_modes(moved, views, pts)
    shift, size, linear, rest = modes[2]
    assert abs(shift[0]) > 3 * abs(shift[1]) and size > 2.0 and linear < 0.5 * size and rest < 0.5 * size

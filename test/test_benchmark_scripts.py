"""The helpers of the benchmark scripts in ``benchmarks/`` that choose what a sweep runs."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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

    from ixgs_ros.core import metrics as M
    from ixgs_ros.core import rtk_baseline as rb
    from ixgs_ros.core.phantom import voxelize
    from ixgs_ros.core.volume import Grid

    views, proj, ell = _truncated_scan()
    roi = Grid.centered(24, 1.5, CENTER)
    gt = voxelize(ell, roi, supersample=2)
    solve = rb.default_solve_grid(views, roi, projections=proj, spacing=6.0)
    fine = rb.pad_grid(roi, 4)
    inside = fine.contains(solve.world_coords())
    e0, x0 = np.zeros(solve.shape, np.float32), np.zeros(fine.shape, np.float32)

    def residual(e, x):
        return float(np.abs(proj - rb.forward_project(e, solve, views) - rb.forward_project(x, fine, views)).mean())

    seen = []
    e, x = joint_tv_sart(views, proj, solve, fine, e0, x0, 3, exterior_tv=(0.01, 0.005), fine_tv=(0.01, 0.005),
                         on_pass=lambda k, e, x: seen.append(k))
    assert seen == [1, 2, 3]
    assert e.shape == solve.shape and x.shape == fine.shape and e.dtype == x.dtype == np.float32
    assert np.all(e[inside] == 0) and e.min() >= 0 and x.min() >= 0
    assert e[~inside].max() > 0 and x.max() > 0
    assert residual(e, x) < 0.3 * residual(e0, x0)
    assert M.psnr_3d(rb.resample_volume(x, fine, roi), gt) > M.psnr_3d(np.zeros_like(gt), gt) + 3.0
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

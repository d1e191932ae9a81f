"""Pose self-calibration: registration of a view against a volume, the gauge, the engine's calibrated init
(recovery of known pose errors, outlier flag, auto decision, rollback, state round trip) and the CLI's flag and
file, on a small analytic phantom."""
import json
import logging

import numpy as np
import pytest

from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.core.volume import Grid
from ixgs_ros.engine import EngineConfig, EngineError, ReconstructionEngine
from ixgs_ros.engine.registration import (DrrModel, compose, corrected_view, correction_sizes, fix_gauge,
                                          matrix_to_rotvec, moved_view, register_view, similarity_matrix)
from ixgs_ros.evaluation.metrics import psnr_3d
from ixgs_ros.evaluation.pose_accuracy import reprojection_error, roi_points
from ixgs_ros.simulation.phantom import Ellipsoid, make_scan, project, voxelize

# a body with structure inside it (registration needs edges to lock on)
PHANTOM = [Ellipsoid((0, 0, 0), (30, 24, 34), mu=0.02)] + [
    Ellipsoid(c, a, mu=m) for c, a, m in [((10, -6, 8), (6, 5, 8), 0.03), ((-12, 6, -14), (4, 4, 6), 0.04),
                                          ((8, 10, -16), (5, 3, 4), 0.035), ((-10, -10, 12), (3, 6, 4), 0.03),
                                          ((0, 4, 0), (3, 3, 10), 0.05), ((15, 2, -2), (3, 3, 3), 0.04)]]
GRID = Grid.centered(32, 2.5, (0, 0, 0))
SMALL = {"iterations": 10, "init.passes": 10, "init.pass_views": 0, "lattice.cg_iterations": 10,
         "calibration.passes": 6}


def arc_views(n=10, size=48, sod=400.0, seed=0):
    """Views on a 160-degree arc with tilt and off-centre principal points, the phantom filling the detector."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = np.deg2rad(-80 + 160 * k / (n - 1))
        t = np.deg2rad(rng.uniform(-10, 10))
        src = sod * np.array([np.sin(a) * np.cos(t), -np.cos(a) * np.cos(t), np.sin(t)])
        f = size * sod / 95.0
        K = np.array([[f, 0, size / 2 - 0.5 + rng.uniform(-2, 2)], [0, f, size / 2 - 0.5 + rng.uniform(-2, 2)],
                      [0, 0, 1]])
        out.append(View(K, look_at(src, (0, 0, 0), (0, 0, 1)), size, size))
    return out


def perturb(views, deg, mm, seed=1, outlier=None):
    """Rotations about each source (N(0, deg) per axis) and source translations (N(0, mm)); ``outlier``: that
    view gets 5 degrees and 10 mm."""
    rng = np.random.default_rng(seed)
    out = []
    for i, v in enumerate(views):
        p = np.r_[np.deg2rad(rng.normal(0, deg, 3)), rng.normal(0, mm, 3), 0, 0]
        if i == outlier:
            p = np.r_[np.deg2rad(5.0) * np.array([0.6, 0.0, 0.8]), 10.0 * np.array([0.0, 0.6, 0.8]), 0, 0]
        out.append(corrected_view(v, p))
    return out


TRUE = arc_views()
PROJ = project(PHANTOM, TRUE)
GT = voxelize(PHANTOM, GRID, 2)
POINTS = roi_points(GRID)


def reconstruct(views, mode, **kw):
    eng = ReconstructionEngine(GRID, EngineConfig.from_dict({**SMALL, "calibration.mode": mode, **kw}))
    for v, p in zip(views, PROJ):
        eng.add_view(v, p)
    eng.step(SMALL["iterations"])
    return eng


@pytest.fixture(scope="module")
def noisy():
    return perturb(TRUE, 1.0, 1.0)


@pytest.fixture(scope="module")
def noisy_off(noisy):
    return reconstruct(noisy, "off")


@pytest.fixture(scope="module")
def noisy_on(noisy):
    return reconstruct(noisy, "on")


# ------------------------------------------------------------------------------------------ maths
def test_corrections_compose_and_a_rotation_about_the_source_keeps_the_source():
    v = TRUE[3]
    p = np.r_[np.deg2rad([0.4, -0.3, 0.2]), [0.5, -1.0, 0.2], 1.5, -0.5]
    q = np.r_[np.deg2rad([-0.1, 0.2, 0.3]), [0.3, 0.2, -0.4], -0.5, 0.25]
    a, b = corrected_view(corrected_view(v, p), q), corrected_view(v, compose(p, q))
    assert np.allclose(a.T_world_source, b.T_world_source, atol=1e-9) and np.allclose(a.K, b.K)
    r = corrected_view(v, np.r_[np.deg2rad([1.0, 0.0, 0.0]), 0, 0, 0, 0, 0])
    assert np.allclose(r.source, v.source) and not np.allclose(r.R, v.R)
    s = correction_sizes(v, np.r_[np.deg2rad(1.0) * v.R[:, 0], 0, 0, 0, 0, 0], (0, 0, 0))  # across the view
    assert s["rotation_deg"] == pytest.approx(1.0) and s["shift_mm"] == pytest.approx(400 * np.deg2rad(1), rel=0.05)


def test_drr_jacobian_matches_finite_differences_on_a_smooth_volume():
    from scipy.ndimage import gaussian_filter

    vol = gaussian_filter(GT, 1.5)
    m = DrrModel(vol, GRID)
    v = TRUE[2]
    _, J = m.sample(v)
    for k, eps in ((0, 1e-3), (1, 1e-3), (3, 0.2), (5, 0.2), (6, 0.2)):
        p = np.zeros(8)
        p[k] = eps
        fd = (m.sample(corrected_view(v, p), False)[0] - m.sample(corrected_view(v, -p), False)[0]) / (2 * eps)
        assert np.linalg.norm(fd - J[..., k]) < 0.15 * np.linalg.norm(fd), k


def test_registration_recovers_a_known_pose_error_on_the_true_volume():
    v = TRUE[4]
    given = corrected_view(v, np.r_[np.deg2rad([0.8, -0.6, 0.5]), [1.0, -0.5, 0.8], 0, 0])
    res = register_view(DrrModel(GT, GRID), given, PROJ[4], iterations=10)
    before = reprojection_error([given], [v], POINTS, align=False)["mean_px"]
    after = reprojection_error([corrected_view(given, res.correction)], [v], POINTS, align=False)["mean_px"]
    assert before > 2.0 and after < 0.15 * before
    assert res.cost_after < 0.2 * res.cost_before and res.ncc > 0.99


def test_gauge_fix_removes_a_global_similarity_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    noise = np.c_[np.deg2rad(rng.normal(0, 0.5, (10, 3))), rng.normal(0, 1, (10, 3)), np.zeros((10, 2))]
    M = similarity_matrix(np.r_[np.deg2rad([1.0, -0.5, 0.3]), [3.0, -2.0, 1.0], 0.01], (5, 0, 0))
    moved = [moved_view(corrected_view(v, p), M) for v, p in zip(TRUE, noise)]
    as_corr = np.array([np.r_[matrix_to_rotvec(m.R @ v.R.T), m.source - v.source, 0, 0]
                        for m, v in zip(moved, TRUE)])
    fixed = fix_gauge(as_corr, TRUE, POINTS)
    assert np.abs(fixed - fix_gauge(noise, TRUE, POINTS)).max() < 1e-4
    # after the fix the corrected views as a whole agree with the given ones: no drift, turn or scaling
    g = reprojection_error([corrected_view(v, p) for v, p in zip(TRUE, fixed)], TRUE, POINTS)["gauge"]
    assert g["rotation_deg"] < 1e-3 and g["translation_mm"] < 1e-2 and abs(g["scale"] - 1) < 1e-5
    # a view left out of the fit (a flagged one) moves with the others and keeps its own large error
    big = np.zeros((10, 8))
    big[3] = np.r_[np.deg2rad([4.0, -3.0, 0.0]), 10.0, 0.0, 0.0, 0, 0]
    moved = [moved_view(corrected_view(v, p), M) for v, p in zip(TRUE, big)]
    as_corr = np.array([np.r_[matrix_to_rotvec(m.R @ v.R.T), m.source - v.source, 0, 0] for m, v in zip(moved, TRUE)])
    part = fix_gauge(as_corr, TRUE, POINTS, trusted=[k != 3 for k in range(10)])
    assert np.abs(part - big).max() < 1e-3


# ------------------------------------------------------------------------------------------ engine
def test_engine_recovers_known_pose_errors_and_keeps_the_gauge(noisy, noisy_off, noisy_on):
    before = reprojection_error(noisy, TRUE, POINTS)["mean_px"]
    used = [vd.view for vd in noisy_on.views]
    after = reprojection_error(used, TRUE, POINTS)["mean_px"]
    assert before > 2.5 and after < 0.25 * before
    # gauge: the corrected views as a whole stay where the given ones are (no global drift)
    g = reprojection_error(used, noisy, POINTS)["gauge"]
    assert g["rotation_deg"] < 0.05 and g["translation_mm"] < 0.5 and abs(g["scale"] - 1) < 2e-3
    assert psnr_3d(noisy_on.volume(), GT) > psnr_3d(noisy_off.volume(), GT) + 1.0
    s = noisy_on.calibration.summary
    assert s["applied"] and s["mode"] == "on" and s["rms_shift_px"] > 1.0
    assert noisy_off.calibration.summary == {} and all(vd.view is v for vd, v in zip(noisy_off.views, noisy))


def _shutter_masks(seed=0):
    """Per view a collimator-like band at the top and the right (a third of the detector) that holds no data."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in TRUE:
        m = np.ones((48, 48), np.uint8)
        m[:int(rng.integers(12, 20))] = 0
        m[:, -int(rng.integers(10, 18)):] = 0
        out.append(m)
    return out


def test_registration_ignores_masked_pixels(noisy):
    """Masked pixels (zeros here, as a clipped window) reach the quick solves inpainted; the registration must
    not fit that continuation: exact shots are not flagged, and known errors are still corrected."""
    masks = _shutter_masks()

    def run(views):
        eng = ReconstructionEngine(GRID, EngineConfig.from_dict({**SMALL, "calibration.mode": "on"}))
        for v, p, m in zip(views, PROJ, masks):
            eng.add_view(v, np.where(m > 0, p, 0.0).astype(np.float32), mask=m)
        eng.step(SMALL["iterations"])
        return eng

    exact = run(TRUE)
    assert exact.calibration.summary["flagged"] == []  # fitting the inpainted bands flagged an exact shot
    fixed = run(noisy)
    before = reprojection_error(noisy, TRUE, POINTS)["mean_px"]
    after = reprojection_error([vd.view for vd in fixed.views], TRUE, POINTS)["mean_px"]
    assert after < 0.55 * before and fixed.calibration.summary["flagged"] == []


def test_a_large_pose_error_is_flagged_and_warned(caplog):
    views = perturb(TRUE, 0.3, 0.5, seed=2, outlier=6)
    with caplog.at_level(logging.WARNING, logger="ixgs_ros.engine.calibration"):
        eng = reconstruct(views, "on")
    assert eng.calibration.summary["flagged"] == [6]
    assert 6 in eng.calibration.flags and "view 6" in caplog.text and "implausibly large" in caplog.text
    doc = eng.calibration.to_json(eng)
    assert doc["flagged"] == [6] and doc["views"][6]["flagged"] and not doc["views"][5]["flagged"]
    assert doc["views"][6]["size"]["rotation_deg"] > 3.0


def test_auto_applies_corrections_only_when_they_matter(noisy):
    exact = reconstruct(TRUE, "auto")
    s = exact.calibration.summary
    assert not s["applied"] and s["decision"].startswith("auto: not applied")
    assert all(vd.view is v for vd, v in zip(exact.views, TRUE))
    assert reconstruct(noisy, "auto", **{"calibration.rounds": 1}).calibration.summary["applied"]
    few = reconstruct(TRUE, "on", **{"calibration.min_views": len(TRUE) + 1})
    assert few.calibration.summary == {}  # fewer training views than min_views: never refined


def test_auto_applies_only_corrections_that_make_the_views_more_consistent(noisy):
    # real pose errors: a quick solve from the corrected poses fits the images markedly better
    eng = reconstruct(noisy, "auto", **{"calibration.rounds": 2})
    c = eng.calibration.summary["consistency"]
    assert eng.calibration.summary["applied"] and c["gain"] >= EngineConfig().calibration.auto_min_gain
    assert c["misfit_corrected"] < c["misfit_given"]
    # the same corrections, held to a gain they cannot reach: declined, the poses stay as given, no flags
    strict = reconstruct(noisy, "auto", **{"calibration.rounds": 2, "calibration.auto_min_gain": 0.95})
    s = strict.calibration.summary
    assert not s["applied"] and "more consistent" in s["decision"] and s["flagged"] == []
    assert s["consistency"]["gain"] == pytest.approx(c["gain"])
    assert all(vd.view is v for vd, v in zip(strict.views, noisy))
    # `on` applies them whatever the gain, and reports it
    on = reconstruct(noisy, "on", **{"calibration.rounds": 2, "calibration.auto_min_gain": 0.95})
    assert on.calibration.summary["applied"] and "consistency" in on.calibration.summary


def test_a_round_step_is_measured_in_image_pixels():
    from ixgs_ros.engine.calibration import _step_px

    v = TRUE[2]
    pivot = np.zeros(3)
    t = 2.0 * v.R[:, 0]  # the source moved 2 mm along the image columns: the pivot moves f * 2 / depth px
    q = np.r_[0, 0, 0, t, 0, 0]
    depth = float(v.world_to_camera(pivot[None])[0, 2])
    expect = v.K[0, 0] * 2.0 / depth
    p0 = np.zeros((2, 8))
    q2 = np.stack([q, np.zeros(8)])
    assert _step_px([v, v], p0, q2, pivot, [True, False]) == pytest.approx(expect, rel=1e-6)
    assert _step_px([v, v], p0, q2, pivot, [True, True]) == pytest.approx(expect / np.sqrt(2), rel=1e-6)
    assert _step_px([v, v], p0, q2, pivot, [False, False]) == 0.0


def test_state_round_trip_keeps_the_corrections_and_v2_states_still_load(noisy_on, tmp_path):
    noisy_on.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "state.json").read_text())
    assert meta["version"] == 3 and meta["pose_calibration"]["corrections"]
    # the state's views are the poses as given; the corrections come back on top of them
    assert np.allclose(meta["views"][0]["T_world_source"], noisy_on.calibration.given[0].T_world_source)
    back = ReconstructionEngine.load(tmp_path / "s")
    for a, b in zip(back.views, noisy_on.views):
        assert np.allclose(a.view.T_world_source, b.view.T_world_source) and np.allclose(a.view.K, b.view.K)
        assert np.array_equal(a.T.numpy(), b.T.numpy())
    assert back.calibration.summary == noisy_on.calibration.summary
    assert np.allclose(back.volume(), noisy_on.volume())
    # a v2 state (before self-calibration) loads with its poses as they were
    meta.pop("pose_calibration")
    meta["version"] = 2
    (tmp_path / "s" / "state.json").write_text(json.dumps(meta))
    old = ReconstructionEngine.load(tmp_path / "s")
    assert old.calibration.corrections == {}
    assert np.allclose(old.views[0].view.T_world_source, noisy_on.calibration.given[0].T_world_source)
    meta["version"] = 3
    meta["pose_calibration"] = {"corrections": {"0": [1.0, 2.0]}}
    (tmp_path / "s" / "state.json").write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="pose_calibration"):
        ReconstructionEngine.load(tmp_path / "s")


def test_a_stopped_initialisation_rolls_the_corrections_back(noisy):
    eng = ReconstructionEngine(GRID, EngineConfig.from_dict({**SMALL, "calibration.mode": "on"}))
    for v, p in zip(noisy, PROJ):
        eng.add_view(v, p)

    def stop(stage, done, total):
        if stage.startswith("TV-SART"):  # after the pose refinement, in the init proper
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        eng.step(1, progress=stop)
    assert eng.model is None and eng.calibration.corrections == {} and eng.calibration.summary == {}
    assert all(vd.view is v for vd, v in zip(eng.views, noisy))


def test_calibration_config_is_validated():
    with pytest.raises(EngineError, match="calibration.mode"):
        EngineConfig.from_dict({"calibration.mode": "sometimes"})
    with pytest.raises(EngineError, match="calibration"):
        EngineConfig.from_dict({"calibration.rounds": 0})
    with pytest.raises(EngineError, match="auto_min_gain"):
        EngineConfig.from_dict({"calibration.auto_min_gain": 1.0})
    assert EngineConfig().calibration.mode == "auto"


# ------------------------------------------------------------------------------------------ CLI
def test_cli_refine_poses_writes_the_refined_poses(tmp_path, noisy, capsys):
    from ixgs_ros.cli import main

    scan = tmp_path / "scan"
    make_scan(PHANTOM, noisy).save(scan)
    cfg = tmp_path / "engine.json"
    cfg.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "iterations"}))
    common = ["--size", "32", "--spacing", "2.5", "--center", "0", "0", "0", "--iterations", "5", "--config",
              str(cfg), "--quiet", "--no-navigation"]
    assert main(["reconstruct", str(scan), "--out", str(tmp_path / "on"), "--refine-poses", "on"] + common) == 0
    assert "pose refinement: applied" in capsys.readouterr().out
    doc = json.loads((tmp_path / "on" / "refined_poses.json").read_text())
    assert doc["format"] == "ixgs-refined-poses" and len(doc["views"]) == len(noisy)
    v0 = doc["views"][0]
    assert np.allclose(v0["T_world_source_given"], noisy[0].T_world_source)
    assert not np.allclose(v0["T_world_source"], noisy[0].T_world_source)
    for key in ("rotation_deg", "translation_mm", "principal_point_px", "shift_px", "shift_mm"):
        assert key in v0["size"]
    rep = json.loads((tmp_path / "on" / "report.json").read_text())
    assert rep["pose_calibration"]["applied"] and rep["outputs"]["refined_poses"].endswith("refined_poses.json")
    assert main(["reconstruct", str(scan), "--out", str(tmp_path / "off"), "--refine-poses", "off"] + common) == 0
    assert not (tmp_path / "off" / "refined_poses.json").exists()
    with pytest.raises(SystemExit):
        main(["reconstruct", str(scan), "--out", str(tmp_path / "x"), "--refine-poses", "maybe"] + common)
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ live
def test_live_session_reports_the_refined_poses_and_names_the_flagged_shot(tmp_path):
    from ixgs_ros.engine.live import LiveConfig, LiveSession

    views = perturb(TRUE, 0.3, 0.5, seed=2, outlier=6)
    logs = []
    poses = tmp_path / "out" / "refined_poses.json"
    cfg = EngineConfig.from_dict({**SMALL, "calibration.mode": "on"})
    s = LiveSession(GRID, cfg, LiveConfig(min_views=len(views), reinit_growth=0, chunk_iterations=5,
                                          publish_period_s=1e-3, poses_file=str(poses)),
                    log=lambda level, text: logs.append((level, text)))
    for k, (v, p) in enumerate(zip(views, PROJ)):
        assert s.submit(f"shot{k}", v, p) is None
    for _ in range(20):
        s.work_once()
        if s.status().state == "converged":
            break
    st = s.status()
    assert st.state == "converged"
    pc = st.to_dict()["pose_calibration"]
    assert pc["applied"] and pc["flagged_view_ids"] == ["shot6"] and pc["file"] == str(poses)
    assert pc["consistency_gain"] > 0  # the corrected shots fit a quick solve better
    assert "'shot6'" in st.message and "implausible" in st.message
    assert any(level == "warn" and "'shot6'" in text for level, text in logs)
    doc = json.loads(poses.read_text())
    assert doc["flagged_view_ids"] == ["shot6"] and [e["view_id"] for e in doc["views"]] == [f"shot{k}" for k in
                                                                                            range(len(views))]
    assert doc["views"][6]["flagged"] and doc["views"][6]["size"]["rotation_deg"] > 3.0
    # the ROS status conversion takes the status dict as it is (the flags travel in the message text)
    pytest.importorskip("rclpy")
    from ixgs_ros.nodes import convert as cv

    try:
        msg = cv.status_to_msg(st.to_dict())
    except ImportError:  # the message types are not built here
        return
    assert "'shot6'" in msg.message


def test_node_parameter_refine_poses_maps_to_the_calibration_mode():
    pytest.importorskip("rclpy")
    try:
        from ixgs_ros.nodes.reconstruction import PARAMETERS, build_engine_config, check_parameter
    except ImportError:  # the ROS interfaces are not built here
        pytest.skip("ixgs_ros messages not built")
    assert PARAMETERS["refine_poses"][0] == "auto"
    for mode in ("auto", "on", "off"):
        assert build_engine_config("", [""], 10, "cpu", mode).calibration.mode == mode
        assert check_parameter("refine_poses", mode, {}) is None
    assert "refine_poses must be" in check_parameter("refine_poses", "sometimes", {})
    with pytest.raises(ValueError, match="refine_poses"):
        build_engine_config("", ["calibration.mode=on"], 10, "cpu", "auto")
    assert build_engine_config("", ["calibration.rounds=2"], 10, "cpu", "off").calibration.rounds == 2


def test_flags_see_the_image_displacement_and_ignore_small_inconsistencies():
    from ixgs_ros.engine.calibration import _flags

    c = EngineConfig().calibration
    sizes = [{"rotation_deg": 0.4, "translation_mm": 1.0, "shift_mm": 5.0 + 0.3 * k} for k in range(12)]
    ncc = np.full(12, 0.997)
    ncc[11] = 0.994  # an arc-end view a little less consistent, as on exact poses: no flag
    assert _flags(sizes, ncc, c) == {}
    # a rotation and a translation each below their limits that together move the ROI centre by 45 mm
    sizes[4] = {"rotation_deg": 2.0, "translation_mm": 6.0, "shift_mm": 45.0}
    got = _flags(sizes, ncc, c)
    assert list(got) == [4] and "ROI centre" in got[4]
    ncc[7] = 0.90  # a registration that failed: far less consistent than the rest
    assert sorted(_flags(sizes, ncc, c)) == [4, 7]

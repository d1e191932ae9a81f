"""The bone target on a tiny spine-like phantom: the bone solve recovers a compact object's surface
better than the full-volume path, pieces split and carry centroids and boxes, the quality gate marks a poorly
covered piece, the bone channel's errors, and the `ixgs reconstruct --target` contract."""
import json

import numpy as np
import pytest

import bone_phantom as bp
from ixgs_ros.cli import main
from ixgs_ros.core.bone_channel import BoneChannelError, load_bone_channel, save_bone_channel
from ixgs_ros.core.scan import Scan
from ixgs_ros.core.volume import Grid, load_nifti, save_nifti
from ixgs_ros.engine import EngineConfig, EngineError, ReconstructionEngine
from ixgs_ros.engine.bone import BoneReconstruction, finish_bone
from ixgs_ros.engine.bone_solve import bone_hull, refine_support, support_levels
from ixgs_ros.evaluation.accuracy import bone_surface_distance
from ixgs_ros.outputs.bone import bone_pieces, bone_surface_volume
from ixgs_ros.outputs.bone_gate import GateConfig, angular_coverage

#: small pass counts for 32^3 scenes (the defaults are tuned for 128^3 at 1 mm and take minutes)
BONE_SMALL = {"bone.coarse_passes": 8, "bone.fine_passes": 4, "bone.pass_views": 0}
FULL_SMALL = {"init.passes": 8, "init.pass_views": 0, "exterior.passes": 8, "exterior.levels": 1,
              "exterior.refine_passes": 4, "lattice.cg_iterations": 10, "optimiser.tv_size": 8, "iterations": 1,
              "calibration.mode": "off"}


@pytest.fixture(scope="module")
def scene():
    return bp.scene(n=16, arc=160.0, width=48)


@pytest.fixture(scope="module")
def bone_result(scene):
    views, _, bone, _, _ = scene
    rec = BoneReconstruction(bp.ROI, EngineConfig.from_dict(BONE_SMALL))
    for v, b in zip(views, bone):
        rec.add_view(v, b)
    rec.run()
    return rec


@pytest.mark.slow  # a quality comparison (the full-volume solve takes half a minute); bench_bone measures it
def test_bone_target_recovers_the_surface_better_than_the_full_volume(scene, bone_result):
    views, full, _, truth, _ = scene
    bone_vol = bone_result.volume()
    d_bone = bone_surface_distance(bone_vol, bp.ROI, truth, bp.ROI)
    eng = ReconstructionEngine(bp.ROI, EngineConfig.from_dict(FULL_SMALL))
    for v, p in zip(views, full):
        eng.add_view(v, p)
    eng.step(1)
    d_full = bone_surface_distance(eng.volume(), bp.ROI, bp.full_truth(bp.bone_ellipsoids()), bp.ROI)
    assert d_bone["mean"] < 0.6 and d_bone["hd95"] < 2.0, d_bone
    assert d_bone["mean"] < 0.7 * d_full["mean"] and d_bone["hd95"] < d_full["hd95"], (d_bone, d_full)
    # a bone volume: zero away from bone, mu (not HU, not normalised) inside
    level = 0.0195 * 1.2
    assert float(bone_vol[truth == 0].mean()) < 0.1 * level
    assert 0.8 * bp.BONE < float(np.median(bone_vol[truth >= bp.BONE * 0.99])) < 1.2 * bp.BONE


def test_bone_render_matches_its_projections(scene, bone_result):
    views, _, bone, _, _ = scene
    pred = bone_result.render_view(views[3])
    rel = np.abs(pred - bone[3]).sum() / bone[3].sum()
    assert rel < 0.15, rel


def test_hull_keeps_every_bone_voxel_and_removes_space(scene):
    views, _, bone, truth, _ = scene
    hull = bone_hull(views, bone, bp.ROI, 0.01 * float(bone.max()))
    assert not np.any((truth > 0) & ~hull)
    assert hull.mean() < 0.6


def test_support_step_and_floor_keep_bone_and_clear_haze():
    x = np.zeros((12, 12, 12), np.float32)
    x[4:8, 4:8, 4:8] = 0.03
    x[5, 5, 9] = 0.004          # haze next to bone: kept by the support step (a neighbour of bone)
    x[0, 0, 0] = 0.004          # isolated haze: removed
    y = refine_support(x, 0.5)
    assert y[0, 0, 0] == 0 and y[5, 5, 6] == 0.03
    assert support_levels(8, EngineConfig().bone)[0] == 0 and support_levels(8, EngineConfig().bone)[-1] == 0.5
    z = finish_bone(x)
    assert z[0, 0, 0] == 0 and z[5, 5, 7] == 0.03


def test_soft_tissue_fill_puts_the_surface_where_the_full_volume_has_it(scene):
    """A bone-only volume drops to 0 where the full volume drops to soft tissue: with partial-volume voxels its
    250 HU surface lies inside the bone; filled with soft tissue it matches the full volume's."""
    _, _, _, truth, bones = scene
    full = bp.full_truth(bones)
    raw = bone_surface_distance(truth, bp.ROI, full, bp.ROI)
    filled = bone_surface_distance(bone_surface_volume(truth, bp.SOFT), bp.ROI, full, bp.ROI)
    assert filled["mean"] < 0.5 * raw["mean"], (filled, raw)
    v = bone_surface_volume(truth)
    assert v[0, 0, 0] == 0 and np.all(v[truth >= bp.BONE * 0.999] == truth[truth >= bp.BONE * 0.999])


def test_pieces_split_with_centroids_boxes_and_labels(scene):
    views, _, _, truth, bones = scene
    pieces = bone_pieces(truth, bp.ROI, views=views)
    verts = [p for p in pieces if not p.truncated]
    assert len(verts) == 3
    # named by order along the spine (from the top), centroid and box around each ellipsoid
    assert [p.label for p in verts] == sorted(p.label for p in verts)
    for p, e in zip(verts, sorted(bones[:3], key=lambda e: -e.center[2])):
        assert np.linalg.norm(p.centroid - e.center) < 1.5
        lo, hi = p.bbox
        assert np.all(np.abs(lo - (e.center - e.semi_axes)) < 2.5) and np.all(np.abs(hi - (e.center + e.semi_axes)) < 2.5)
        assert p.for_navigation and 0.5 <= p.confidence <= 1
    rib = [p for p in pieces if p.truncated]
    assert len(rib) == 1 and not rib[0].for_navigation  # cut by the grid's boundary
    # with a label map, pieces take the overlapping vertebra's name; touching vertebrae are split by label
    touching = bp.voxelize_bones(bp.bone_ellipsoids(gap=-1.0, rib=False))
    labels = np.zeros(bp.ROI.shape, np.int32)
    z = bp.ROI.world_coords()[..., 2]
    labels[(touching > 0) & (z > 7.5)] = 32     # T12
    labels[(touching > 0) & (np.abs(z) <= 7.5)] = 31   # L1
    labels[(touching > 0) & (z < -7.5)] = 30    # L2
    named = bone_pieces(touching, bp.ROI, labels=labels)
    assert sorted(p.label for p in named) == ["L1", "L2", "T12"]
    assert not any(p.for_navigation for p in named)  # no views: no confidence, nothing for navigation
    assert len(bone_pieces(touching, bp.ROI)) == 1  # without labels they stay one piece


def test_gate_marks_a_poorly_covered_piece(scene):
    _, _, _, truth, _ = scene
    wide = bp.views(16, 160.0)
    narrow = bp.views(16, 50.0, kind="limited-arc")
    good = bone_pieces(truth, bp.ROI, views=wide)
    bad = bone_pieces(truth, bp.ROI, views=narrow)
    mid = lambda ps: min(ps, key=lambda p: np.linalg.norm(p.centroid))  # noqa: E731
    assert mid(good).for_navigation and not mid(bad).for_navigation
    assert mid(bad).terms["coverage"] < 0.4 < mid(good).terms["coverage"]
    assert "confidence" in mid(bad).terms["reason"]
    cov, n = angular_coverage(narrow, (0.0, 0.0, 0.0))
    assert n == 16 and cov == pytest.approx(50.0 / 180.0, abs=0.08)
    strict = bone_pieces(truth, bp.ROI, views=wide, gate=GateConfig(threshold=0.99))
    assert not any(p.for_navigation for p in strict)


def test_bone_channel_errors(tmp_path, scene):
    views, full, bone, _, _ = scene
    d = tmp_path / "scan"
    Scan(views, full).save(d)
    scan = Scan.load(d)
    with pytest.raises(BoneChannelError, match="no bone channel"):
        load_bone_channel(d, scan)
    save_bone_channel(d, bone)
    scan = Scan.load(d)
    assert scan.extra["bone"] == "bone.npy"
    assert np.array_equal(load_bone_channel(d, scan), bone)
    np.save(d / "bone.npy", bone[:-1])
    with pytest.raises(BoneChannelError, match="does not match"):
        load_bone_channel(d, scan)
    bad = bone.copy()
    bad[0, 0, 0] = np.nan
    np.save(d / "bone.npy", bad)
    with pytest.raises(BoneChannelError, match="NaN"):
        load_bone_channel(d, scan)
    with pytest.raises(EngineError, match="no training views"):
        BoneReconstruction(bp.ROI).run()


@pytest.fixture(scope="module")
def bone_scan(tmp_path_factory, scene):
    """A scan with the simulator's layout: line integrals + ideal/bone.npy, gt.nii.gz and labels.nii.gz."""
    views, full, bone, _, bones = scene
    d = tmp_path_factory.mktemp("bonescan")
    (d / "ideal").mkdir()
    np.save(d / "ideal" / "bone.npy", bone)
    Scan(views, full, extra={"ideal": {"bone": "ideal/bone.npy"}}).save(d)
    save_nifti(d / "gt.nii.gz", bp.full_truth(bones), bp.ROI)
    return d


def _grid_args():
    return ["--size", "32", "--spacing", "2", "--center", "0", "0", "0"]


def test_cli_target_bone_writes_bone_outputs(bone_scan, tmp_path, capsys):
    cfg = tmp_path / "bone.json"
    cfg.write_text(json.dumps(BONE_SMALL))
    out = tmp_path / "out"
    rc = main(["reconstruct", str(bone_scan), "--out", str(out), *_grid_args(), "--target", "bone",
               "--bone-from-ideal", "--holdout", "2", "--config", str(cfg), "--quiet"])
    assert rc == 0
    vol, grid = load_nifti(out / "bone.nii.gz")
    assert grid == Grid.centered(32, 2.0, (0, 0, 0)) and vol.dtype == np.float32
    assert not (out / "volume.nii.gz").exists()
    nav = json.loads((out / "navigation.json").read_text())["bone"]
    labels = [p["label"] for p in nav["pieces"]]
    assert len([p for p in nav["pieces"] if not p["truncated"]]) == 3, labels
    for p in nav["pieces"]:
        assert (out / p["mesh"]["file"]).exists()
        assert len(p["centroid_mm"]) == 3 and len(p["bbox_mm"]["min"]) == 3
        assert 0 <= p["confidence"] <= 1 and "consistency" in p["confidence_terms"]
    assert nav["for_navigation"] and set(nav["for_navigation"]) <= set(labels)
    acc = nav["accuracy"]  # gt.nii.gz beside the scan is on the grid: the surface accuracy is reported
    assert acc["mean_mm"] < 1.0 and acc["dice"] > 0.7
    assert (out / "bone" / "slices.png").exists() and (out / "bone" / "bone.stl").exists()
    rep = json.loads((out / "report.json").read_text())["bone"]
    assert rep["views_holdout"] and rep["wall_time_s"] > 0
    assert "bone target done" in capsys.readouterr().out


def test_cli_bone_needs_a_bone_channel(bone_scan, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["reconstruct", str(bone_scan), "--out", str(out), *_grid_args(), "--target", "bone", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no bone channel" in err and "--bone-from-ideal" in err
    assert not out.exists() or not any(out.iterdir())
    plain = tmp_path / "plain"
    Scan.load(bone_scan).subset(slice(None)).save(plain)
    (plain / "scan.json").write_text((plain / "scan.json").read_text().replace('"ideal"', '"was_ideal"'))
    rc = main(["reconstruct", str(plain), "--out", str(out), *_grid_args(), "--target", "both",
               "--bone-from-ideal", "--quiet"])
    assert rc == 2 and "neither a bone channel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reconstruct", str(plain), "--out", str(out), *_grid_args(), "--target", "marrow", "--quiet"])


def test_cli_simulate_ideal_bone(tmp_path, capsys):
    """`ixgs simulate --ideal-bone`: full-body line integrals with the bone-only projections beside them."""
    out = tmp_path / "sim"
    rc = main(["simulate", "--out", str(out), "--roi", "T12", "--roi-size", "16", "--roi-spacing", "4",
               "--views", "3", "--detector", "32", "--renderer", "trilinear", "--ideal-bone", "--no-preview",
               "--style-cache", "none", "--quiet"])
    assert rc == 0
    scan = Scan.load(out)
    bone = load_bone_channel(out, scan, from_ideal=True)
    assert bone.shape == scan.projections.shape == (3, 32, 32)
    assert bone.max() > 0.3 and np.all(bone <= scan.projections + 1e-4)
    assert bone.sum() < 0.6 * scan.projections.sum()  # bone crosses nearly every chest ray, but is a part of it
    bgt, grid = load_nifti(out / "bone_gt.nii.gz")
    gt, _ = load_nifti(out / "gt.nii.gz")
    level = 0.0195 * 1.2  # 200 HU
    assert np.all((bgt == 0) | (bgt > level)) and np.array_equal(bgt[gt > level], gt[gt > level])
    with pytest.raises(BoneChannelError, match="--bone-from-ideal"):
        load_bone_channel(out, scan)

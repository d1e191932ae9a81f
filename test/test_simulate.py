"""Trajectories, the DiffDRR line-integral renderer (checked against closed-form chords) and ixgs simulate."""
import json

import nibabel as nib
import numpy as np
import pytest

from ixgs_ros.core.geometry import View, rotation_x, rotation_z
from ixgs_ros.simulation.phantom import Ellipsoid, line_integral, voxelize
from ixgs_ros.core.scan import Scan
from ixgs_ros.simulation.trajectories import (DEFAULT_ARCS, PATIENT_TO_WORLD, TRAJECTORY_KINDS, TrajectoryConfig,
                                        auto_pixel_mm, make_trajectory)
from ixgs_ros.core.volume import Grid, load_nifti

pytest.importorskip("diffdrr")

from ixgs_ros.simulation.ct import load_ct  # noqa: E402
from ixgs_ros.simulation.simulate import (SimulationConfig, perturb_pose, render_line_integrals,  # noqa: E402
                                    simulate_scan)

ISO = np.array([-16.9, -61.8, -258.6])


def _wrap(a):
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


# ================================================================================================ trajectories
@pytest.mark.parametrize("kind", TRAJECTORY_KINDS)
def test_trajectory_sees_the_roi_and_respects_the_arc(kind):
    radius = 0.5 * np.sqrt(3) * 128
    cfg = TrajectoryConfig(kind=kind, n_views=12, seed=5)
    views = make_trajectory(cfg, ISO, radius)
    assert len(views) == 12 and all(isinstance(v, View) for v in views)
    assert {v.shape for v in views} == {(256, 256)}
    for v in views:
        assert v.in_view(ISO)
        # the auto pitch keeps the whole ROI box (and its bounding sphere) on the detector
        corners = Grid.centered(128, 1.0, ISO).corners()
        assert np.all(v.in_view(corners))
        d = np.linalg.norm(v.source - ISO)
        assert 590 < d < 610
        tr = v.meta["trajectory"]
        assert abs(tr["secondary_deg"] - tr["nominal_secondary_deg"]) <= cfg.tilt_jitter_deg + 1e-9
        assert abs(tr["roll_deg"]) <= cfg.roll_jitter_deg + 1e-9
        assert abs(v.meta["sdd"] - 1000) <= cfg.sdd_jitter_mm + 1e-9
        np.testing.assert_allclose(v.meta["carm"]["primary_deg"], tr["primary_deg"], atol=1e-9)
    prim = np.array([v.meta["trajectory"]["nominal_primary_deg"] for v in views])
    arc = DEFAULT_ARCS[kind]
    rel = _wrap(prim - cfg.arc_center_deg)
    if kind == "circular":
        steps = np.diff(np.sort(prim))
        np.testing.assert_allclose(steps, 360 / 12)
    else:
        assert np.all(np.abs(rel) <= arc / 2 + 1e-9)
        assert np.ptp(rel) > 0.75 * arc  # spread over the arc
    if kind == "two-orbit":
        tilts = sorted({v.meta["trajectory"]["nominal_secondary_deg"] for v in views})
        assert tilts == [-15.0, 15.0]
        assert [v.meta["trajectory"]["orbit"] for v in views] == [0] * 6 + [1] * 6


def test_trajectory_conventions_and_determinism():
    cfg = TrajectoryConfig(kind="limited-arc", n_views=3, arc_deg=180, width=100, height=80, pixel_mm=1.0)
    v0, v90 = make_trajectory(cfg.without_jitter(), ISO)[1], make_trajectory(cfg.without_jitter(), ISO)[2]
    # primary 0: source posterior (RAS y below the isocentre), beam anterior, rows toward the feet (-z)
    np.testing.assert_allclose(v0.source, ISO + [0, -600, 0], atol=1e-9)
    np.testing.assert_allclose(v0.principal_axis, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(v0.R[:, 1], [0, 0, -1], atol=1e-12)
    # primary +90 (LAO 90): detector on the patient's left = RAS -x, so the source is on the right (+x RAS)
    np.testing.assert_allclose(v90.source, ISO + [600, 0, 0], atol=1e-9)
    assert v0.shape == (80, 100) and v0.meta["sdd"] == 1000.0
    np.testing.assert_allclose(v0.K[0, 0], 1000.0)
    np.testing.assert_allclose(PATIENT_TO_WORLD @ PATIENT_TO_WORLD, np.eye(4))
    a = make_trajectory(TrajectoryConfig(seed=1), ISO, 100)
    b = make_trajectory(TrajectoryConfig(seed=1), ISO, 100)
    c = make_trajectory(TrajectoryConfig(seed=2), ISO, 100)
    assert all(x == y for x, y in zip(a, b))
    assert not all(x == y for x, y in zip(a, c))
    with pytest.raises(ValueError, match="trajectory"):
        make_trajectory(TrajectoryConfig(kind="spiral"), ISO)
    with pytest.raises(ValueError, match="SOD"):
        make_trajectory(TrajectoryConfig(sod_mm=1200), ISO)
    assert auto_pixel_mm(TrajectoryConfig(), 110.9) > auto_pixel_mm(TrajectoryConfig(), 50)


# ================================================================================================ renderer
def _box_chord(lo, hi, src, dirs):
    """Exact length of the rays src + t d (t >= 0, unit d) inside the axis-aligned box [lo, hi]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - src) / dirs
        t2 = (hi - src) / dirs
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.clip(tmax - np.maximum(tmin, 0), 0, None)


def _views(center, n=3, width=48, height=40, seed=3, pixel_mm=3.5):
    cfg = TrajectoryConfig(kind="random-arc", n_views=n, width=width, height=height, seed=seed, pixel_mm=pixel_mm,
                           tilt_jitter_deg=25, roll_jitter_deg=40, iso_jitter_mm=8, principal_jitter_px=6)
    return make_trajectory(cfg, center, 50)


def test_renderer_world_frame_and_units_exact_on_voxel_aligned_boxes():
    """Boxes whose faces lie on voxel edges are voxelised exactly, so Siddon must match the closed form to
    float precision. The grid is LAS-flipped, anisotropic and off-origin: any frame, half-voxel or unit
    error (e.g. integrating in voxel units) shows up."""
    sp = np.array([0.7, 0.5, 1.25])
    A = np.diag([-sp[0], sp[1], sp[2], 1.0])
    A[:3, 3] = [40.0, -70.0, 15.0]
    grid = Grid((90, 110, 60), A)
    vol = np.zeros(grid.shape, np.float32)
    boxes = [((10, 20, 5), (70, 95, 50), 0.02), ((30, 40, 20), (45, 60, 30), 0.05)]
    for (i0, j0, k0), (i1, j1, k1), mu in boxes:
        vol[i0:i1, j0:j1, k0:k1] += mu
    views = _views(grid.center)
    out = render_line_integrals(vol, grid, views, "siddon", compile=False)
    for v, img in zip(views, out):
        dirs = v.ray_directions()
        ref = np.zeros(img.shape)
        for lo_i, hi_i, mu in boxes:
            w = grid.index_to_world(np.array([np.array(lo_i) - 0.5, np.array(hi_i) - 0.5]))
            ref += mu * _box_chord(w.min(0), w.max(0), v.source, dirs)
        assert ref.max() > 1.0
        np.testing.assert_allclose(img, ref, atol=2e-4 * ref.max())


def _voxelize_shell(ells, grid, ss=2, slab=16):
    """Like phantom.voxelize(ells, grid, ss) but fast on fine grids: voxels whose whole extent is inside or
    outside an ellipsoid are classified from their centre, only the boundary shell is supersampled."""
    vol = np.zeros(grid.shape, np.float32)
    A = np.asarray(grid.affine)
    Ainv = np.linalg.inv(A)
    half = 0.5 * np.linalg.norm(grid.spacing)  # half voxel diagonal (mm)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    for e in ells:
        lo, hi = e.bounds()
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = box @ Ainv[:3, :3].T + Ainv[:3, 3]
        i0 = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
        i1 = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, grid.shape)
        M = (A[:3, :3].T @ e.rotation / e.semi_axes).astype(np.float32)  # index offset -> unit-sphere coords
        c = (Ainv[:3, :3] @ e.center + Ainv[:3, 3]).astype(np.float32)  # centre in index coords
        margin = half / e.semi_axes.min()
        for a in range(i0[0], i1[0], slab):
            b = min(a + slab, i1[0])
            idx = np.stack(np.meshgrid(np.arange(a, b), np.arange(i0[1], i1[1]), np.arange(i0[2], i1[2]),
                                       indexing="ij"), -1).astype(np.float32)
            q = np.sqrt((((idx - c) @ M) ** 2).sum(-1))
            frac = (q < 1 - margin).astype(np.float32)
            shell = (q >= 1 - margin) & (q <= 1 + margin)
            pts = idx[shell][:, None, :] + offs[None]
            frac[shell] = ((((pts - c) @ M) ** 2).sum(-1) <= 1).mean(-1)
            vol[a:b, i0[1]:i1[1], i0[2]:i1[2]] += e.mu * frac
    return vol


def _ellipsoids(c0):
    return [Ellipsoid(c0, [36, 28, 32], rotation_z(0.3), 0.02),
            Ellipsoid(c0 + [8, 4, -4], [14, 10, 18], rotation_x(0.5) @ rotation_z(1.0), 0.02),
            Ellipsoid(c0 + [-12, -5, 8], [9, 11, 8], None, -0.01)]


def _las_grid(c0, sp, extent=76.0):
    sp = np.asarray(sp, dtype=np.float64)
    shape = np.ceil(extent / sp).astype(int)
    A = np.diag([-sp[0], sp[1], sp[2], 1.0])  # LAS-flipped, anisotropic, off-origin
    A[:3, 3] = c0 - A[:3, :3] @ ((shape - 1) / 2)
    return Grid(tuple(shape), A)


def test_shell_voxelizer_agrees_with_phantom_voxelize():
    c0 = np.array([30.0, -20.0, 50.0])
    ells = _ellipsoids(c0)
    grid = _las_grid(c0, [2.0, 1.7, 2.3])
    np.testing.assert_allclose(_voxelize_shell(ells, grid), voxelize(ells, grid, supersample=2), atol=1e-6)


@pytest.fixture(scope="module")
def ellipsoid_phantom():
    # voxels of ~0.2 mm: the nearest-voxel staircase error (largest for rays grazing a surface) scales with
    # the voxel size (about 1.3 % at 1 mm, 0.65 % at 0.5 mm, 0.25-0.4 % here depending on the views)
    c0 = np.array([30.0, -20.0, 50.0])
    ells = _ellipsoids(c0)
    grid = _las_grid(c0, [0.22, 0.2, 0.25])
    vol = _voxelize_shell(ells, grid)
    views = _views(c0, seed=4)
    ref = np.stack([line_integral(ells, v) for v in views])
    return vol, grid, views, ref


def test_siddon_matches_closed_form_ellipsoid_chords(ellipsoid_phantom):
    vol, grid, views, ref = ellipsoid_phantom
    out = render_line_integrals(vol, grid, views, "siddon", compile=False)
    assert ref.max() > 1.0 and (ref > 0).mean() > 0.2
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 0.005, f"relative L2 {rel:.4f}"


def test_trilinear_renderer_close_to_siddon(ellipsoid_phantom):
    vol, grid, views, ref = ellipsoid_phantom
    out = render_line_integrals(vol, grid, views[:1], "trilinear", compile=False)
    rel = np.linalg.norm(out - ref[:1]) / np.linalg.norm(ref[:1])
    assert rel < 0.01, f"relative L2 {rel:.4f}"


def test_renderer_refuses_a_source_inside_the_volume():
    grid = Grid.centered(20, 50.0, ISO)  # 1 m cube around the isocentre: the source is inside
    v = make_trajectory(TrajectoryConfig(n_views=1, width=8, pixel_mm=4), ISO)
    with pytest.raises(ValueError, match="inside or beside"):
        render_line_integrals(np.ones(grid.shape, np.float32), grid, v, compile=False)


def test_perturb_pose_is_rigid_and_sized():
    rng = np.random.default_rng(0)
    T = make_trajectory(TrajectoryConfig(n_views=1), ISO)[0].T_world_source
    Tn, info = perturb_pose(T, 1.0, 2.0, ISO, rng)
    View(np.eye(3), Tn, 1, 1)  # validates rigidity
    assert 0 < info["rotation_deg"] < 5 and len(info["translation_mm"]) == 3
    assert not np.allclose(T, Tn)
    Ts, _ = perturb_pose(T, 0.0, 0.0, ISO, rng)
    np.testing.assert_allclose(Ts, T, atol=1e-12)


# ================================================================================================ simulate_scan
@pytest.fixture(scope="module")
def ct():
    return load_ct()


def _tiny(out_dir=None, **kw):
    traj = TrajectoryConfig(n_views=4, width=64, seed=kw.pop("seed", 0))
    return SimulationConfig(out_dir=out_dir, roi="T12", roi_size=32, roi_spacing=2.0, trajectory=traj,
                            compile=False, **kw)


@pytest.fixture(scope="module")
def tiny_scans(ct, tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    full = simulate_scan(_tiny(str(base / "full")), ct=ct)
    roi = simulate_scan(_tiny(str(base / "roi"), mode="roi-only"), ct=ct)
    return full, roi, base


def test_tiny_scan_files_shapes_and_metadata(tiny_scans):
    full, roi_only, base = tiny_scans
    for res, mode in ((full, "full-body"), (roi_only, "roi-only")):
        out = base / ("full" if mode == "full-body" else "roi")
        assert {p.name for p in out.iterdir()} >= {"scan.json", "projections.npy", "gt.nii.gz", "labels.nii.gz",
                                                    "preview.png"}
        scan = Scan.load(out)
        assert scan.image_kind == "line_integral" and scan.projections.shape == (4, 64, 64)
        np.testing.assert_array_equal(scan.projections, res.scan.projections)
        sim = scan.extra["simulation"]
        assert sim["mode"] == mode and sim["renderer"] == "siddon" and sim["seed"] == 0
        assert sim["ct_path"].endswith("cxr.nii.gz") and sim["ct_shape"] == [512, 512, 133]
        assert sim["trajectory"]["kind"] == "random-arc" and sim["trajectory"]["n_views"] == 4
        assert sim["trajectory"]["arc_deg"] == 160
        r = scan.extra["roi"]
        assert r["shape"] == [32, 32, 32] and r["label"] == 32 and r["name"] == "T12"
        grid = Grid(tuple(r["shape"]), np.array(r["affine"]))
        gt, ggrid = load_nifti(out / "gt.nii.gz")
        assert ggrid == grid and gt.shape == (32, 32, 32)
        np.testing.assert_allclose(gt, res.gt, rtol=1e-6)
        assert 0.03 < gt.max() < 0.08 and gt.min() >= 0  # bone present, mu in 1/mm
        lab = nib.load(str(out / "labels.nii.gz"))
        np.testing.assert_allclose(lab.affine, grid.affine, atol=1e-5)
        lab = np.asarray(lab.dataobj)
        assert np.issubdtype(lab.dtype, np.integer) and (lab == 32).sum() > 100
        for v in scan.views:
            assert v.in_view(grid.center) and "trajectory" in v.meta and "carm" in v.meta
        doc = json.loads((out / "scan.json").read_text())
        assert doc["format"] == "ixgs-scan" and doc["ground_truth"]["mu"] == "gt.nii.gz"
    # same seed and geometry in both modes
    assert all(a == b for a, b in zip(full.scan.views, roi_only.scan.views))
    assert "full-body" in full.summary() and "time" in full.summary()


def test_full_body_sees_more_material_than_roi_only(tiny_scans):
    full, roi_only, _ = tiny_scans
    pf, pr = full.scan.projections, roi_only.scan.projections
    assert np.all(pf >= pr - 1e-3)
    assert pf.mean() > 2 * pr.mean() and pr.max() > 0.5
    # ROI-only: zero where the rays miss the ROI box (outside the bounding box of its projected corners)
    for v, img in zip(roi_only.scan.views, pr):
        uv, _ = v.project(roi_only.roi.grid.corners())
        (u0, v0), (u1, v1) = np.floor(uv.min(0)) - 1, np.ceil(uv.max(0)) + 1
        uu, vv = v.pixel_grid()[..., 0], v.pixel_grid()[..., 1]
        outside = (uu < u0) | (uu > u1) | (vv < v0) | (vv > v1)
        assert np.all(img[outside] == 0) and img[~outside].max() > 0.5


def test_roi_only_projections_are_forward_projections_of_gt(tiny_scans):
    _, roi_only, base = tiny_scans
    gt, grid = load_nifti(base / "roi" / "gt.nii.gz")
    again = render_line_integrals(gt, grid, roi_only.scan.views, compile=False)
    np.testing.assert_allclose(again, roi_only.scan.projections, atol=1e-5)


def test_pose_noise_keeps_true_images(ct, tiny_scans):
    _, clean, _ = tiny_scans
    noisy = simulate_scan(_tiny(mode="roi-only", pose_noise_deg=1.0, pose_noise_mm=2.0, preview=False), ct=ct)
    np.testing.assert_array_equal(noisy.scan.projections, clean.scan.projections)
    for vn, vc in zip(noisy.scan.views, clean.scan.views):
        np.testing.assert_allclose(vn.meta["true_T_world_source"], vc.T_world_source)
        assert not np.allclose(vn.T_world_source, vc.T_world_source)
        assert "carm" not in vn.meta and "true_carm" in vn.meta and vn.meta["pose_noise"]["rotation_deg"] > 0
    assert noisy.scan.extra["simulation"]["pose_noise_deg"] == 1.0


def test_cli_simulate_point_roi(tmp_path, capsys):
    from ixgs_ros.cli import main

    out = tmp_path / "cli"
    rc = main(["simulate", "--out", str(out), "--center", "-16.9", "-61.8", "-258.6", "--size", "48",
               "--roi-size", "16", "--views", "3", "--detector", "40", "32", "--trajectory", "two-orbit",
               "--mode", "roi-only", "--no-jitter", "--renderer", "trilinear", "--seed", "4", "--no-preview",
               "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "two-orbit" in printed and "done in" in printed
    scan = Scan.load(out)
    assert scan.projections.shape == (3, 32, 40)
    assert scan.extra["roi"]["label"] is None and scan.extra["roi"]["shape"] == [16, 16, 16]
    assert scan.extra["simulation"]["renderer"] == "trilinear" and scan.extra["simulation"]["seed"] == 4
    np.testing.assert_allclose(scan.extra["roi"]["spacing_mm"], 3.0)
    assert not (out / "preview.png").exists() and (out / "gt.nii.gz").exists()
    # user errors: one line, exit code 2
    assert main(["simulate", "--out", str(out), "--roi", "T13"]) == 2
    assert "unknown vertebra" in capsys.readouterr().err
    assert main(["simulate", "--out", str(out), "--size", "40"]) == 2


@pytest.mark.slow
def test_benchmark_t12_full_body_25_views_256(ct, tmp_path, capsys):
    """The reference job: 25 random-arc views of 256x256 px through the whole chest CT around T12 (exact
    Siddon). Budget: < 5 min on 2 cores; measured ~3 min (compiled renderer) on a shared machine."""
    import time

    cfg = SimulationConfig(out_dir=str(tmp_path / "t12"), roi="T12",
                           trajectory=TrajectoryConfig(n_views=25, width=256))
    t0 = time.perf_counter()
    res = simulate_scan(cfg, ct=ct)
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n25-view 256^2 full-body T12 scan: {elapsed:.1f} s ({res.timings})")
    p = res.scan.projections
    assert p.shape == (25, 256, 256) and p.min() >= 0 and 3 < p.max() < 10
    for v, img in zip(res.scan.views, p):
        uv, _ = v.project(res.roi.center)
        assert img[int(round(uv[1])), int(round(uv[0]))] > 1.0  # the body and the spine are on every view
    assert elapsed < 600

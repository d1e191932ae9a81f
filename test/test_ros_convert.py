"""ixgs_ros.nodes.convert: numpy / core objects <-> ROS messages (no ROS graph needed)."""
import math
import sys

import numpy as np
import pytest

try:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
    from ixgs_ros.nodes import convert as cv
except ImportError as exc:  # a clear message instead of a bare collection error
    pytest.fail(f"ROS 2 runtime or generated ixgs_ros.msg missing ({exc}); run scripts/setup.sh", pytrace=False)

from ixgs_ros.core.geometry import View, look_at, rotation_x, rotation_y, rotation_z
from ixgs_ros.core.volume import Grid

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(7)


def random_rotation(rng):
    q = rng.normal(size=4)
    return cv.quaternion_to_rotation(*q)


def make_view(width=64, height=48, sdd=1020.0):
    K = [[980.0, 0.0, 31.7], [0.0, 990.0, 22.1], [0.0, 0.0, 1.0]]
    T = look_at([600.0, -35.0, 80.0], [1.0, 2.0, -3.0], [0.0, 0.0, 1.0])
    return View(K, T, width, height, {"sdd": sdd})


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("dtype,encoding", [(np.float32, "32FC1"), (np.float64, "64FC1"), (np.uint16, "16UC1"),
                                            (np.uint8, "mono8"), (np.int16, "16SC1"), (np.int32, "32SC1")])
def test_image_roundtrip_zero_copy(dtype, encoding):
    a = (RNG.random((37, 53)) * 200).astype(dtype)
    msg = cv.array_to_image(a)
    assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, 37, 53, 53 * a.itemsize)
    assert msg.is_bigendian == (sys.byteorder == "big")
    b = cv.image_to_array(msg)
    assert b.dtype == dtype and b.shape == (37, 53)
    np.testing.assert_array_equal(a, b)
    assert np.shares_memory(b, np.frombuffer(msg.data, np.uint8)), "reading must not copy"
    assert cv.image_to_array(deserialize_message(serialize_message(msg), Image)).tolist() == a.tolist()


def test_image_explicit_encodings_and_errors():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert cv.array_to_image(a, "mono16").encoding == "mono16"
    np.testing.assert_array_equal(cv.image_to_array(cv.array_to_image(a, "mono16")), a)
    with pytest.raises(cv.ConversionError, match="needs dtype"):
        cv.array_to_image(a, "32FC1")
    with pytest.raises(cv.ConversionError, match="unsupported"):
        cv.array_to_image(a, "rgb8")
    with pytest.raises(cv.ConversionError, match="2-D"):
        cv.array_to_image(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(cv.ConversionError, match="no image encoding"):
        cv.array_to_image(np.zeros((2, 3), np.complex64))
    msg = cv.array_to_image(a)
    msg.encoding = "rgb8"
    with pytest.raises(cv.ConversionError, match="single-channel"):
        cv.image_to_array(msg)
    msg = cv.array_to_image(a)
    msg.data = msg.data[:-2]
    with pytest.raises(cv.ConversionError, match="needs"):
        cv.image_to_array(msg)
    msg = cv.array_to_image(a)
    msg.step = 6
    with pytest.raises(cv.ConversionError, match="step"):
        cv.image_to_array(msg)


def test_image_with_row_padding():
    a = RNG.random((5, 7)).astype(np.float32)
    step = 7 * 4 + 12  # 12 bytes of padding per row
    raw = np.full((5, step), 0xAB, np.uint8)
    raw[:, :28] = a.view(np.uint8).reshape(5, 28)
    msg = Image(height=5, width=7, encoding="32FC1", is_bigendian=int(sys.byteorder == "big"), step=step)
    msg.data = raw.tobytes()
    b = cv.image_to_array(msg)
    np.testing.assert_array_equal(a, b)
    assert np.shares_memory(b, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("dtype,encoding", [(np.float32, "32FC1"), (np.uint16, "16UC1")])
def test_image_big_endian(dtype, encoding):
    a = (RNG.random((6, 9)) * 1000).astype(dtype)
    msg = Image(height=6, width=9, encoding=encoding, is_bigendian=1, step=9 * a.itemsize)
    msg.data = a.astype(a.dtype.newbyteorder(">")).tobytes()
    b = cv.image_to_array(msg)
    np.testing.assert_array_equal(a, b)
    assert b.dtype.isnative


# ------------------------------------------------------------------------------------------------- poses
def test_pose_roundtrip_metres_and_mm():
    rotations = [np.eye(3), rotation_x(np.pi), rotation_y(np.pi), rotation_z(np.pi),
                 rotation_x(np.pi) @ rotation_z(np.pi / 2)] + [random_rotation(RNG) for _ in range(50)]
    for R in rotations:
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = RNG.normal(size=3) * 500.0
        pose = cv.matrix_to_pose(T)
        assert pose.position.x == pytest.approx(T[0, 3] / 1000.0)  # metres in the message
        q = pose.orientation
        assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-12) and q.w >= 0
        np.testing.assert_allclose(cv.pose_to_matrix(pose), T, atol=1e-9)


def test_non_unit_and_zero_quaternion():
    pose = cv.matrix_to_pose(np.eye(4))
    pose.orientation.w = 1.0 + 1e-4
    np.testing.assert_allclose(cv.pose_to_matrix(pose), np.eye(4), atol=1e-12)
    pose.orientation.w = 0.0
    with pytest.raises(cv.ConversionError, match="not a rotation"):
        cv.pose_to_matrix(pose)


# ------------------------------------------------------------------------------------------- X-ray views
def test_view_roundtrip():
    view = make_view()
    img = RNG.random(view.shape).astype(np.float32)
    msg = cv.view_to_xray_view(view, img, view_id="shot_3", frame_id="patient", stamp=17.25)
    assert msg.image_kind == XrayView.IMAGE_KIND_LINE_INTEGRAL and msg.image.encoding == "32FC1"
    assert msg.header.frame_id == "patient" and msg.image.header.frame_id == "xray_source_optical"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (17, 250_000_000)
    np.testing.assert_allclose([msg.source_pose.position.x, msg.source_pose.position.y,
                                msg.source_pose.position.z], view.source / 1000.0)
    np.testing.assert_array_equal(msg.camera_info.k.reshape(3, 3), view.K)
    np.testing.assert_array_equal(msg.camera_info.p.reshape(3, 4)[:, :3], view.K)
    np.testing.assert_array_equal(msg.camera_info.r.reshape(3, 3), np.eye(3))
    assert msg.source_detector_distance_mm == 1020.0

    msg2 = deserialize_message(serialize_message(msg), XrayView)
    back = cv.xray_view_to_view(msg2)
    assert (back.width, back.height) == (view.width, view.height)
    np.testing.assert_array_equal(back.K, view.K)
    np.testing.assert_allclose(back.T_world_source, view.T_world_source, atol=1e-9)
    assert back.meta == {"view_id": "shot_3", "frame_id": "patient", "stamp": 17.25, "image_kind": 1,
                         "i0": 0.0, "sdd": 1020.0}
    np.testing.assert_array_equal(cv.xray_view_image(msg2), img)
    # the geometry the core derives is unchanged by the trip through metres
    np.testing.assert_allclose(back.project([[10.0, 20.0, 30.0]])[0], view.project([[10.0, 20.0, 30.0]])[0],
                               atol=1e-6)


def test_raw_view_and_unknown_sdd():
    view = View(make_view().K, make_view().T_world_source, 64, 48)  # no sdd in meta
    raw = (RNG.random(view.shape) * 60000).astype(np.uint16)
    msg = cv.view_to_xray_view(view, raw, image_kind=XrayView.IMAGE_KIND_RAW, i0=61000.0)
    assert msg.image.encoding == "16UC1" and msg.source_detector_distance_mm == 0.0 and msg.i0 == 61000.0
    back = cv.xray_view_to_view(msg)
    assert "sdd" not in back.meta and back.meta["image_kind"] == XrayView.IMAGE_KIND_RAW
    np.testing.assert_array_equal(cv.xray_view_image(msg), raw)


def test_view_errors():
    view = make_view()
    with pytest.raises(cv.ConversionError, match="does not match"):
        cv.view_to_xray_view(view, np.zeros((view.width, view.height), np.float32))
    with pytest.raises(cv.ConversionError, match="image_kind"):
        cv.view_to_xray_view(view, np.zeros(view.shape, np.float32), image_kind=5)
    with pytest.raises(cv.ConversionError, match="i0"):
        cv.view_to_xray_view(view, np.zeros(view.shape, np.float32), i0=-1.0)
    msg = cv.view_to_xray_view(view, np.zeros(view.shape, np.float32))
    msg.camera_info.width = 10
    with pytest.raises(cv.ConversionError, match="camera_info"):
        cv.xray_view_to_view(msg)
    msg = cv.view_to_xray_view(view, np.zeros(view.shape, np.float32), view_id="bad")
    msg.camera_info.k[0] = -5.0
    with pytest.raises(cv.ConversionError, match="'bad'.*focal"):
        cv.xray_view_to_view(msg)


@pytest.mark.parametrize("field,value,match", [
    ("source_detector_distance_mm", float("nan"), "source_detector_distance_mm must be >= 0"),
    ("source_detector_distance_mm", -1.0, "source_detector_distance_mm must be >= 0"),
    ("i0", float("inf"), "i0 must be >= 0"),
    ("camera_info.d", [0.1, 0.0, 0.0, 0.0, 0.0], "lens distortion"),
    ("camera_info.binning_x", 2, "binning 2x0"),
    ("camera_info.roi.x_offset", 4, "region of interest"),
])
def test_malformed_view_fields_are_refused(field, value, match):
    """What the message fuzzer found accepted silently: NaN / negative distances and i0, distortion, binning and a
    region of interest (the image would not be the detector K describes)."""
    view = make_view()
    msg = cv.view_to_xray_view(view, np.ones(view.shape, np.float32), view_id="m")
    obj, *path = field.split(".")
    target = msg if not path else getattr(msg, obj)
    for p in path[:-1]:
        target = getattr(target, p)
    setattr(target, path[-1] if path else obj, value)
    with pytest.raises(cv.ConversionError, match=match):
        cv.xray_view_to_view(msg)
    ok = cv.view_to_xray_view(view, np.ones(view.shape, np.float32), view_id="m")
    ok.camera_info.d = [0.0] * 5  # zero coefficients: undistorted
    assert cv.xray_view_to_view(ok).width == view.width


def test_row_step_of_another_encoding_is_refused():
    """A 16-bit image labelled mono8 fits its step (2 * width bytes >= width): refused, not read as half an image."""
    msg = cv.array_to_image(np.ones((8, 8), np.uint16))
    msg.encoding = "mono8"
    with pytest.raises(cv.ConversionError, match="at least twice"):
        cv.image_to_array(msg)


# ----------------------------------------------------------------------------------------------- volumes
def rotated_grid(shape, spacing, flip=False):
    A = np.eye(4)
    R = random_rotation(RNG)
    if flip:
        R = R @ np.diag([-1.0, -1.0, 1.0]) @ np.diag([1.0, 1.0, -1.0])  # det -1 (like LAS)
    A[:3, :3] = R * np.asarray(spacing)
    A[:3, 3] = [12.5, -40.0, 7.25]
    return Grid(shape, A)


@pytest.mark.parametrize("flip", [False, True])
def test_volume_roundtrip_and_order(flip):
    grid = rotated_grid((5, 6, 7), (0.7, 0.8, 2.5), flip)
    data = RNG.random(grid.shape).astype(np.float32)
    msg = cv.volume_to_msg(data, grid, units="1/mm", frame_id="patient", stamp=3.0)
    assert list(msg.size) == [5, 6, 7] and msg.units == "1/mm" and msg.header.frame_id == "patient"
    np.testing.assert_allclose(msg.spacing_mm, [0.7, 0.8, 2.5])
    # documented layout: flat index (i * J + j) * K + k
    i, j, k = 3, 4, 5
    assert msg.data[(i * 6 + j) * 7 + k] == data[i, j, k]
    p = msg.index_to_world.position
    np.testing.assert_allclose([p.x, p.y, p.z], grid.affine[:3, 3] / 1000.0)
    R = cv.pose_to_matrix(msg.index_to_world)[:3, :3]
    D = grid.affine[:3, :3] / grid.spacing
    np.testing.assert_allclose(R[:, :2], D[:, :2], atol=1e-9)
    np.testing.assert_allclose(R[:, 2], -D[:, 2] if flip else D[:, 2], atol=1e-9)

    back, grid2 = cv.msg_to_volume(deserialize_message(serialize_message(msg), Volume))
    assert back.shape == data.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(grid2.affine, grid.affine)


def test_volume_fortran_and_float64_input():
    grid = Grid.centered((4, 3, 2), 1.5)
    data = np.asfortranarray(RNG.random(grid.shape))
    back, _ = cv.msg_to_volume(cv.volume_to_msg(data, grid))
    np.testing.assert_array_equal(back, data.astype(np.float32))


def test_volume_without_affine_uses_pose_and_spacing():
    grid = rotated_grid((3, 4, 5), (1.0, 2.0, 3.0))
    msg = cv.volume_to_msg(np.zeros(grid.shape, np.float32), grid)
    msg.affine_mm = np.zeros(16)
    _, grid2 = cv.msg_to_volume(msg)
    np.testing.assert_allclose(grid2.affine, grid.affine, atol=1e-9)


def test_volume_errors():
    grid = Grid.centered((3, 4, 5), 1.0)
    with pytest.raises(cv.ConversionError, match="does not match"):
        cv.volume_to_msg(np.zeros((5, 4, 3)), grid)
    msg = cv.volume_to_msg(np.zeros(grid.shape), grid)
    msg.data = msg.data[:-1]
    with pytest.raises(cv.ConversionError, match="59 values"):
        cv.msg_to_volume(msg)
    msg = cv.volume_to_msg(np.zeros(grid.shape), grid)
    msg.affine_mm = np.zeros(16)
    msg.spacing_mm = np.zeros(3)
    with pytest.raises(cv.ConversionError, match="spacing"):
        cv.msg_to_volume(msg)


# ------------------------------------------------------------------------------------------------ status
def test_status_roundtrip():
    d = {"state": "optimizing", "views_used": 7, "iterations": 1200, "num_gaussians": 50000, "loss": 0.125,
         "heldout_psnr_2d": 31.5, "message": "ok", "wall_time_s": 12.5, "rejected": {"stamp_zero": 2},
         "volume_stage": "gaussian", "volume_view_ids": ["a", "b"], "volume_iteration": 1000}
    msg = cv.status_to_msg(d, frame_id="patient", stamp=2.5)
    assert msg.state == ReconstructionStatus.OPTIMIZING
    back = cv.status_msg_to_dict(deserialize_message(serialize_message(msg), ReconstructionStatus))
    assert back == {**d, "stamp": 2.5, "version": 2, "volume_view_count": 2, "views_rejected": 2}


def test_status_defaults_and_errors():
    msg = cv.status_to_msg({})
    assert msg.state == ReconstructionStatus.IDLE and msg.views_used == 0
    assert math.isnan(msg.loss) and math.isnan(msg.heldout_psnr_2d)
    assert cv.status_to_msg({"state": ReconstructionStatus.ERROR}).state == ReconstructionStatus.ERROR
    with pytest.raises(cv.ConversionError, match="unknown status field"):
        cv.status_to_msg({"iteration": 3})
    with pytest.raises(cv.ConversionError, match="unknown reconstruction state"):
        cv.status_to_msg({"state": "done"})
    with pytest.raises(cv.ConversionError, match="unknown reconstruction state"):
        cv.status_to_msg({"state": 9})
    with pytest.raises(cv.ConversionError, match="views_used"):
        cv.status_to_msg({"views_used": -1})


def test_make_header_stamps():
    h = cv.make_header("world", 1.9999999999)
    assert (h.stamp.sec, h.stamp.nanosec) == (2, 0)
    with pytest.raises(cv.ConversionError):
        cv.make_header("world", -1.0)

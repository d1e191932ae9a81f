"""Conversions between ixgs_ros.core objects / numpy arrays and ROS 2 messages.

Long because every inbound message (Image, CameraInfo, Pose, XrayView, Volume, status) is converted and checked in
this one place, so that no node reads a message field without its check.

This is the only place that knows both worlds, and the only place that converts units:

* ROS poses are in metres (REP 103); ``ixgs_ros.core`` works in millimetres. ``pose_to_matrix`` /
  ``matrix_to_pose`` (and everything built on them) multiply / divide translations by 1000.
* ``sensor_msgs/Image`` <-> numpy without cv_bridge (the PyPI cv_bridge is the ROS 1 port and breaks on
  numpy 2): reading is zero-copy (``np.frombuffer`` on the message buffer) unless the image is big-endian
  on a little-endian machine (or vice versa), which needs one byte-swapping copy.
* ``XrayView`` <-> :class:`ixgs_ros.core.geometry.View` + image; ``Volume`` <-> ``(array [I, J, K], Grid)``
  (interface version 2 adds the stage and the views it comes from); ``ReconstructionStatus`` <-> ``dict``.
* Poses are checked: a quaternion whose norm is not 1 (within :data:`~ixgs_ros.core.frames.QUAT_NORM_TOL`) is
  refused, not silently normalised. The outputs (meshes, clouds, slices, tf, diagnostics) convert in
  :mod:`ixgs_ros.nodes.convert_outputs`.

Imports the generated ``ixgs_ros.msg`` and the standard message packages, never rclpy itself, so the
conversions run (and are tested) without a ROS graph.
"""
from __future__ import annotations

import array
import math
import sys
from typing import Any, Mapping

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ixgs_ros.core import frames
from ixgs_ros.core.geometry import GeometryError, View
from ixgs_ros.core.volume import Grid, VolumeError
from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView

__all__ = [
    "MM_PER_M",
    "ConversionError",
    "QuaternionError",
    "make_header",
    "stamp_to_sec",
    "matrix_to_pose",
    "rigid_to_quaternion_metres",
    "pose_to_matrix",
    "rotation_to_quaternion",
    "quaternion_to_rotation",
    "image_to_array",
    "array_to_image",
    "view_to_camera_info",
    "camera_info_k",
    "view_to_xray_view",
    "xray_view_to_view",
    "xray_view_image",
    "volume_to_msg",
    "msg_to_volume",
    "STATE_NAMES",
    "status_to_msg",
    "status_msg_to_dict",
    "STAGE_NAMES",
    "volume_msg_origin",
    "INTERFACE_VERSION",
]

#: The interface version this module writes (msg/*.msg VERSION constants; docs/ros.md "Interface versions").
INTERFACE_VERSION = 2

MM_PER_M = 1000.0
_LITTLE = sys.byteorder == "little"

# Single-channel encodings of sensor_msgs/image_encodings.hpp that X-ray images use.
_ENCODING_DTYPES = {
    "32FC1": np.float32,
    "64FC1": np.float64,
    "16UC1": np.uint16,
    "mono16": np.uint16,
    "8UC1": np.uint8,
    "mono8": np.uint8,
    "16SC1": np.int16,
    "32SC1": np.int32,
}
# Default encoding for each dtype when publishing.
_DTYPE_ENCODINGS = {
    np.dtype(np.float32): "32FC1",
    np.dtype(np.float64): "64FC1",
    np.dtype(np.uint16): "16UC1",
    np.dtype(np.uint8): "mono8",
    np.dtype(np.int16): "16SC1",
    np.dtype(np.int32): "32SC1",
}


class ConversionError(ValueError):
    """A message cannot be converted (unsupported encoding, inconsistent sizes, invalid geometry)."""


class QuaternionError(ConversionError):
    """A pose's quaternion is zero or not of unit norm."""


# --------------------------------------------------------------------------------------------- header
def make_header(frame_id: str = "", stamp: Time | float | None = None) -> Header:
    """A ``std_msgs/Header``; ``stamp`` is a ``builtin_interfaces/Time``, seconds (float) or None (zero)."""
    h = Header()
    h.frame_id = str(frame_id)
    if stamp is None:
        pass
    elif isinstance(stamp, Time):
        h.stamp = stamp
    else:
        sec = float(stamp)
        if not math.isfinite(sec) or sec < 0:
            raise ConversionError(f"stamp must be finite seconds >= 0, got {stamp!r}")
        s = math.floor(sec)
        ns = int(round((sec - s) * 1e9))
        if ns >= 1_000_000_000:
            s, ns = s + 1, ns - 1_000_000_000
        h.stamp = Time(sec=int(s), nanosec=ns)
    return h


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# ------------------------------------------------------------------------------------- poses (m <-> mm)
def rotation_to_quaternion(R) -> tuple[float, float, float, float]:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation."""
    return frames.rotation_to_quaternion(R)


def quaternion_to_rotation(x: float, y: float, z: float, w: float, norm_tol: float | None = None) -> np.ndarray:
    """Rotation matrix of a quaternion, normalised first; with ``norm_tol`` a quaternion whose norm is further
    than that from 1 is refused (ConversionError), as the zero quaternion always is."""
    return frames.quaternion_to_rotation(x, y, z, w, norm_tol=norm_tol, error=QuaternionError)


def rigid_to_quaternion_metres(T_mm, what: str = "pose") -> tuple[tuple, list]:
    """``((x, y, z, w), [tx, ty, tz] in metres)`` of a rigid 4x4 transform in millimetres; a matrix that is not
    a finite 4x4 raises ConversionError naming ``what``. Shared by poses and tf transforms."""
    T = np.asarray(T_mm, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ConversionError(f"{what} must be a finite 4x4 matrix, got shape {T.shape}")
    return rotation_to_quaternion(T[:3, :3]), (T[:3, 3] / MM_PER_M).tolist()


def matrix_to_pose(T_mm) -> Pose:
    """``geometry_msgs/Pose`` (metres) of a rigid 4x4 transform in millimetres."""
    (x, y, z, w), (px, py, pz) = rigid_to_quaternion_metres(T_mm, "pose")
    return Pose(position=Point(x=px, y=py, z=pz), orientation=Quaternion(x=x, y=y, z=z, w=w))


def pose_to_matrix(pose: Pose, norm_tol: float | None = frames.QUAT_NORM_TOL) -> np.ndarray:
    """4x4 rigid transform in millimetres of a ``geometry_msgs/Pose`` (metres). A quaternion of norm further
    than ``norm_tol`` from 1 (or zero) raises ConversionError naming it (None: any non-zero one is normalised)."""
    p, q = pose.position, pose.orientation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(q.x, q.y, q.z, q.w, norm_tol=norm_tol)
    T[:3, 3] = np.array([p.x, p.y, p.z], dtype=np.float64) * MM_PER_M
    if not np.all(np.isfinite(T)):
        raise ConversionError("pose position is not finite")
    return T


# ------------------------------------------------------------------------------------------------ images
def image_to_array(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` (single channel) -> numpy ``[height, width]`` in native byte order.

    Zero-copy view of ``msg.data`` (row padding in ``step`` is skipped by striding) unless the image's byte
    order differs from this machine's, which costs one copy. Supported encodings: 32FC1, 64FC1, 16UC1,
    mono16, 8UC1, mono8, 16SC1, 32SC1.
    """
    dtype = _ENCODING_DTYPES.get(msg.encoding)
    if dtype is None:
        raise ConversionError(
            f"unsupported image encoding {msg.encoding!r}; X-ray images must be single-channel "
            f"({', '.join(_ENCODING_DTYPES)})")
    dtype = np.dtype(dtype)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"image has no pixels ({w}x{h})")
    row = w * dtype.itemsize
    if step < row:
        raise ConversionError(f"image step {step} is smaller than width*{dtype.itemsize} = {row} bytes")
    if step >= 2 * row:  # alignment pads a row by less than a row: this is data of another encoding or width
        raise ConversionError(f"image step {step} is at least twice width*{dtype.itemsize} = {row} bytes: the "
                              f"encoding {msg.encoding} or the width does not match the data")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * (h - 1) + row:
        raise ConversionError(f"image data has {buf.size} bytes, {w}x{h} {msg.encoding} with step {step} "
                              f"needs {step * h}")
    big = bool(msg.is_bigendian)
    src = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    if step == row:
        arr = buf[: h * row].view(src).reshape(h, w)
    else:
        arr = buf[: step * (h - 1) + row]
        arr = np.lib.stride_tricks.as_strided(arr, shape=(h, row), strides=(step, 1)).view(src)
    if dtype.itemsize > 1 and big == _LITTLE:
        arr = arr.astype(dtype)  # byte swap into native order (a copy)
    return arr


def array_to_image(data, encoding: str | None = None, header: Header | None = None) -> Image:
    """numpy ``[height, width]`` -> ``sensor_msgs/Image`` (native byte order, no row padding).

    ``encoding`` defaults from the dtype (float32 -> 32FC1, uint16 -> 16UC1, uint8 -> mono8, ...); an
    explicit encoding must match the array's dtype (e.g. "mono16" for uint16). One copy of the pixels.
    """
    a = np.asarray(data)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ConversionError(f"an image must be a non-empty 2-D array, got shape {a.shape}")
    native = a.dtype.newbyteorder("=")
    if encoding is None:
        encoding = _DTYPE_ENCODINGS.get(native)
        if encoding is None:
            raise ConversionError(f"no image encoding for dtype {a.dtype}; use one of "
                                  f"{sorted(str(d) for d in _DTYPE_ENCODINGS)}")
    elif encoding not in _ENCODING_DTYPES:
        raise ConversionError(f"unsupported image encoding {encoding!r}")
    dtype = np.dtype(_ENCODING_DTYPES[encoding])
    if native != dtype:
        raise ConversionError(f"encoding {encoding} needs dtype {dtype}, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if _LITTLE else 1
    msg.step = int(a.shape[1] * dtype.itemsize)
    buf = array.array("B")
    buf.frombytes(memoryview(a).cast("B"))
    msg.data = buf
    return msg


# ----------------------------------------------------------------------------------------- X-ray views
def view_to_camera_info(view: View, header: Header | None = None) -> CameraInfo:
    """``sensor_msgs/CameraInfo`` of a view: k = K, r = I, p = [K | 0], no distortion."""
    ci = CameraInfo()
    if header is not None:
        ci.header = header
    ci.width, ci.height = view.width, view.height
    ci.distortion_model = ""
    ci.k = np.ascontiguousarray(view.K, dtype=np.float64).reshape(9).copy()
    ci.r = np.eye(3).reshape(9)
    P = np.zeros((3, 4))
    P[:, :3] = view.K
    ci.p = P.reshape(12)
    return ci


def camera_info_k(ci: CameraInfo) -> np.ndarray:
    """K (3x3) of a ``sensor_msgs/CameraInfo``, refusing (ConversionError) what a pinhole X-ray view cannot
    be: lens distortion (non-zero ``d``), binning or a region of interest (the image would not be the detector
    that ``k`` describes)."""
    d = np.asarray(ci.d, dtype=np.float64)
    if d.size and (not np.all(np.isfinite(d)) or np.any(d != 0.0)):
        raise ConversionError(f"camera_info has lens distortion ({ci.distortion_model or 'no model'}, d = "
                              f"{np.round(d[:5], 6).tolist()}): X-ray views must be undistorted (d empty or zero)")
    if ci.binning_x > 1 or ci.binning_y > 1:
        raise ConversionError(f"camera_info binning {ci.binning_x}x{ci.binning_y} is not supported: send k, width "
                              "and height of the image as it is (binning 0 or 1)")
    roi = ci.roi
    if (roi.x_offset or roi.y_offset or roi.width or roi.height) and not (
            roi.x_offset == 0 and roi.y_offset == 0 and roi.width == ci.width and roi.height == ci.height):
        raise ConversionError(f"camera_info region of interest {roi.width}x{roi.height}+{roi.x_offset}+"
                              f"{roi.y_offset} is not supported: send k, width and height of the image as it is")
    k = np.asarray(ci.k, dtype=np.float64)
    if k.size != 9:
        raise ConversionError(f"camera_info k has {k.size} values, expected 9")
    return k.reshape(3, 3)


def view_to_xray_view(view: View, image, *, image_kind: int = XrayView.IMAGE_KIND_LINE_INTEGRAL,
                      view_id: str = "", frame_id: str = "world",
                      optical_frame_id: str = "xray_source_optical", stamp: Time | float | None = None,
                      i0: float = 0.0, encoding: str | None = None) -> XrayView:
    """Build an ``XrayView`` from a :class:`View` (mm) and its image ``[height, width]``.

    The pose is written in metres. ``source_detector_distance_mm`` comes from ``view.meta['sdd']`` (0 when
    absent). Line-integral images are sent as 32FC1 (float32).
    """
    if image_kind not in (XrayView.IMAGE_KIND_RAW, XrayView.IMAGE_KIND_LINE_INTEGRAL):
        raise ConversionError(f"image_kind must be IMAGE_KIND_RAW (0) or IMAGE_KIND_LINE_INTEGRAL (1), "
                              f"got {image_kind}")
    img = np.asarray(image)
    if image_kind == XrayView.IMAGE_KIND_LINE_INTEGRAL:
        img = img.astype(np.float32, copy=False)
        if encoding not in (None, "32FC1"):
            raise ConversionError(f"line-integral images are 32FC1, not {encoding}")
    if img.shape != view.shape:
        raise ConversionError(f"image shape {img.shape} does not match the view's detector "
                              f"(height, width) = {view.shape}")
    header = make_header(frame_id, stamp)
    optical = make_header(optical_frame_id, header.stamp)
    msg = XrayView()
    msg.header = header
    msg.image = array_to_image(img, encoding, optical)
    msg.camera_info = view_to_camera_info(view, optical)
    msg.source_pose = matrix_to_pose(view.T_world_source)
    msg.image_kind = int(image_kind)
    msg.view_id = str(view_id)
    sdd = float(view.meta.get("sdd", 0.0) or 0.0)
    if not math.isfinite(sdd) or sdd < 0:
        raise ConversionError(f"view.meta['sdd'] must be a distance >= 0 mm, got {sdd}")
    msg.source_detector_distance_mm = sdd
    i0 = float(i0)
    if not math.isfinite(i0) or i0 < 0:
        raise ConversionError(f"i0 must be >= 0 (0 = unknown), got {i0}")
    msg.i0 = i0
    return msg


def xray_view_to_view(msg: XrayView) -> View:
    """The :class:`View` (mm) of an ``XrayView``. ``meta`` carries ``view_id``, ``frame_id``, ``stamp``
    (seconds), ``image_kind``, ``i0`` and, when known (> 0), ``sdd``."""
    ci = msg.camera_info
    if (ci.width, ci.height) != (msg.image.width, msg.image.height):
        raise ConversionError(f"camera_info is {ci.width}x{ci.height} but the image is "
                              f"{msg.image.width}x{msg.image.height}")
    meta: dict[str, Any] = {
        "view_id": msg.view_id,
        "frame_id": msg.header.frame_id,
        "stamp": stamp_to_sec(msg.header.stamp),
        "image_kind": int(msg.image_kind),
        "i0": float(msg.i0),
    }
    for name in ("source_detector_distance_mm", "i0"):
        value = float(getattr(msg, name))
        if not math.isfinite(value) or value < 0:
            raise ConversionError(f"XrayView {msg.view_id!r}: {name} must be >= 0 (0 = unknown), got {value}")
    if msg.source_detector_distance_mm > 0:
        meta["sdd"] = float(msg.source_detector_distance_mm)
    K = camera_info_k(ci)
    try:
        return View(K, pose_to_matrix(msg.source_pose), int(ci.width), int(ci.height), meta)
    except GeometryError as exc:
        raise ConversionError(f"XrayView {msg.view_id!r}: {exc}") from None


def xray_view_image(msg: XrayView) -> np.ndarray:
    """The image of an ``XrayView`` as numpy ``[height, width]`` (zero-copy where possible)."""
    return image_to_array(msg.image)


# ------------------------------------------------------------------------------------------------ volumes
def _index_pose(affine: np.ndarray, spacing: np.ndarray) -> Pose:
    D = affine[:3, :3] / spacing
    if np.linalg.det(D) < 0:
        D = D.copy()
        D[:, 2] *= -1.0  # left-handed grid: the pose's z axis points along -k
    U, _, Vt = np.linalg.svd(D)  # nearest rotation (exact when the affine has no shear)
    R = U @ Vt
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = affine[:3, 3]
    return matrix_to_pose(T)


#: stage name (as LiveSession's VolumeSnapshot.stage) -> Volume.STAGE_* constant
STAGE_NAMES = {"": Volume.STAGE_UNKNOWN, "preview": Volume.STAGE_PREVIEW, "gaussian": Volume.STAGE_GAUSSIAN,
               "final": Volume.STAGE_FINAL}


def _stage_value(stage) -> int:
    if isinstance(stage, str):
        if stage not in STAGE_NAMES:
            raise ConversionError(f"unknown volume stage {stage!r}; one of {[k for k in STAGE_NAMES if k]}")
        return STAGE_NAMES[stage]
    if isinstance(stage, bool) or int(stage) not in STAGE_NAMES.values():
        raise ConversionError(f"unknown volume stage {stage!r}")
    return int(stage)


def _stage_name(value: int) -> str:
    return {v: k for k, v in STAGE_NAMES.items()}.get(int(value), "")


def volume_to_msg(data, grid: Grid, *, units: str = "1/mm", frame_id: str = "world",
                  stamp: Time | float | None = None, stage="", view_ids=(), iteration: int = 0) -> Volume:
    """``Volume`` of a float array ``data[i, j, k]`` on ``grid`` (values sent as float32, C order), with where it
    comes from: ``stage`` ("preview" | "gaussian" | "final" or a ``Volume.STAGE_*``), the ``view_ids`` of the
    training views and the ``iteration``."""
    a = np.asarray(data)
    if a.shape != grid.shape:
        raise ConversionError(f"volume shape {a.shape} does not match the grid {grid.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    msg = Volume()
    msg.header = make_header(frame_id, stamp)
    msg.size = np.array(grid.shape, dtype=np.uint32)
    spacing = grid.spacing
    msg.spacing_mm = np.asarray(spacing, dtype=np.float64)
    msg.affine_mm = np.ascontiguousarray(grid.affine, dtype=np.float64).reshape(16).copy()
    msg.index_to_world = _index_pose(np.asarray(grid.affine), spacing)
    msg.units = str(units)
    msg.version = INTERFACE_VERSION
    msg.stage = _stage_value(stage)
    msg.view_ids = [str(v) for v in view_ids]
    msg.view_count = len(msg.view_ids)
    msg.iteration = int(iteration)
    buf = array.array("f")
    buf.frombytes(memoryview(a).cast("B"))
    msg.data = buf
    return msg


def volume_msg_origin(msg: Volume) -> dict[str, Any]:
    """Where a ``Volume`` comes from: ``{"version", "stage" (name, "" when unknown), "view_ids", "view_count",
    "iteration"}`` (a version-1 producer gives version 0 and stage "")."""
    return {"version": int(msg.version), "stage": _stage_name(msg.stage), "view_ids": list(msg.view_ids),
            "view_count": int(msg.view_count), "iteration": int(msg.iteration)}


def msg_to_volume(msg: Volume) -> tuple[np.ndarray, Grid]:
    """``(data [I, J, K] float32, Grid)`` of a ``Volume`` (``data`` is a zero-copy view of the message).

    The grid comes from ``affine_mm``; a producer that left it all zeros gets one built from
    ``index_to_world`` and ``spacing_mm``.
    """
    shape = tuple(int(s) for s in msg.size)
    n = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(msg.data, dtype=np.float32)
    if flat.size != n:
        raise ConversionError(f"Volume data has {flat.size} values, size {shape} needs {n}")
    A = np.asarray(msg.affine_mm, dtype=np.float64).reshape(4, 4)
    if not A.any():
        spacing = np.asarray(msg.spacing_mm, dtype=np.float64)
        if not np.all(spacing > 0):
            raise ConversionError("Volume has neither affine_mm nor a positive spacing_mm")
        T = pose_to_matrix(msg.index_to_world, norm_tol=None)
        A = T.copy()
        A[:3, :3] = T[:3, :3] * spacing
    try:
        grid = Grid(shape, A)
    except VolumeError as exc:
        raise ConversionError(f"Volume geometry: {exc}") from None
    return flat.reshape(shape), grid


# ------------------------------------------------------------------------------------------------ status
#: state name (as used in dicts, lower case) -> ReconstructionStatus constant
STATE_NAMES = {
    "idle": ReconstructionStatus.IDLE,
    "waiting_for_views": ReconstructionStatus.WAITING_FOR_VIEWS,
    "optimizing": ReconstructionStatus.OPTIMIZING,
    "converged": ReconstructionStatus.CONVERGED,
    "error": ReconstructionStatus.ERROR,
}
_STATUS_FIELDS = {"state", "views_used", "iterations", "num_gaussians", "loss", "heldout_psnr_2d",
                  "message", "wall_time_s", "rejected", "volume_stage", "volume_view_ids", "volume_iteration",
                  "pose_calibration"}  # not a message field: its flagged views are named in `message`


def _state_value(state) -> int:
    if isinstance(state, str):
        try:
            return STATE_NAMES[state.lower()]
        except KeyError:
            raise ConversionError(f"unknown reconstruction state {state!r}; one of {list(STATE_NAMES)}") from None
    if isinstance(state, bool) or int(state) not in STATE_NAMES.values():
        raise ConversionError(f"unknown reconstruction state {state!r}; one of {list(STATE_NAMES)}")
    return int(state)


def _count(d: Mapping, key: str) -> int:
    v = d.get(key, 0)
    if isinstance(v, bool) or not float(v).is_integer() or not 0 <= int(v) < 2 ** 32:
        raise ConversionError(f"status {key} must be an integer in [0, 2^32), got {v!r}")
    return int(v)


def status_to_msg(status: Mapping[str, Any], *, frame_id: str = "world",
                  stamp: Time | float | None = None) -> ReconstructionStatus:
    """``ReconstructionStatus`` from a dict with keys among ``state`` (constant or name such as
    "optimizing"), ``views_used``, ``iterations``, ``num_gaussians``, ``loss``, ``heldout_psnr_2d``,
    ``message``, ``wall_time_s`` and (version 2) ``rejected`` ({reason key: count}), ``volume_stage`` (stage name),
    ``volume_view_ids``, ``volume_iteration``. Missing counts are 0, missing ``loss`` / ``heldout_psnr_2d`` NaN,
    a missing state IDLE. Unknown keys are an error (they are usually typos)."""
    unknown = set(status) - _STATUS_FIELDS
    if unknown:
        raise ConversionError(f"unknown status field(s) {sorted(unknown)}; known: {sorted(_STATUS_FIELDS)}")
    msg = ReconstructionStatus()
    msg.header = make_header(frame_id, stamp)
    msg.state = _state_value(status.get("state", ReconstructionStatus.IDLE))
    msg.views_used = _count(status, "views_used")
    msg.iterations = _count(status, "iterations")
    msg.num_gaussians = _count(status, "num_gaussians")
    msg.loss = float(status.get("loss", math.nan))
    msg.heldout_psnr_2d = float(status.get("heldout_psnr_2d", math.nan))
    msg.message = str(status.get("message", ""))
    msg.wall_time_s = float(status.get("wall_time_s", 0.0))
    msg.version = INTERFACE_VERSION
    msg.volume_stage = _stage_value(status.get("volume_stage", ""))
    msg.volume_view_ids = [str(v) for v in status.get("volume_view_ids", ())]
    msg.volume_view_count = len(msg.volume_view_ids)
    msg.volume_iteration = _count(status, "volume_iteration")
    rejected = dict(status.get("rejected") or {})
    msg.rejected_reasons = [str(k) for k in rejected]
    msg.rejected_counts = [_count(rejected, k) for k in rejected]
    msg.views_rejected = sum(msg.rejected_counts)
    return msg


def status_msg_to_dict(msg: ReconstructionStatus) -> dict[str, Any]:
    """The dict form of a ``ReconstructionStatus`` (``state`` as its lower-case name) plus ``stamp``."""
    names = {v: k for k, v in STATE_NAMES.items()}
    return {
        "state": names.get(int(msg.state), int(msg.state)),
        "views_used": int(msg.views_used),
        "iterations": int(msg.iterations),
        "num_gaussians": int(msg.num_gaussians),
        "loss": float(msg.loss),
        "heldout_psnr_2d": float(msg.heldout_psnr_2d),
        "message": msg.message,
        "wall_time_s": float(msg.wall_time_s),
        "stamp": stamp_to_sec(msg.header.stamp),
        "version": int(msg.version),
        "volume_stage": _stage_name(msg.volume_stage),
        "volume_view_ids": list(msg.volume_view_ids),
        "volume_view_count": int(msg.volume_view_count),
        "volume_iteration": int(msg.volume_iteration),
        "rejected": dict(zip(msg.rejected_reasons, (int(c) for c in msg.rejected_counts))),
        "views_rejected": int(msg.views_rejected),
    }

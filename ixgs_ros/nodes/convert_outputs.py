"""Conversions of the live outputs and the frame messages to and from ROS 2 messages (metres, REP 103).

The sibling of :mod:`ixgs_ros.nodes.convert` for what ``reconstruction_node`` shows (computed ROS-free by
:mod:`ixgs_ros.outputs.live`) and for tf:

* bone pieces -> ``visualization_msgs/MarkerArray`` (a DELETEALL, then one TRIANGLE_LIST per piece) and
  ``ixgs_ros/BoneMeshes`` (``shape_msgs/Mesh`` per piece with id, label, centroid, bounding box);
* the bone voxels -> ``sensor_msgs/PointCloud2`` with float32 fields ``x y z`` (metres), ``mu`` (1/mm), ``hu``;
* a slice -> ``sensor_msgs/Image`` 32FC1 of mu (1/mm; 0 outside the grid);
* rigid transforms <-> ``geometry_msgs/TransformStamped`` / ``tf2_msgs/TFMessage``;
* a node's health -> ``diagnostic_msgs/DiagnosticArray``.

Millimetres become metres here and nowhere else (as in :mod:`.convert`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import PointCloud2, PointField
from shape_msgs.msg import Mesh as MeshMsg
from shape_msgs.msg import MeshTriangle
from std_msgs.msg import ColorRGBA
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from ixgs_ros.msg import BoneMesh, BoneMeshes
from ixgs_ros.nodes.convert import (INTERFACE_VERSION, MM_PER_M, ConversionError, _stage_value, array_to_image,
                                    make_header, quaternion_to_rotation, rigid_to_quaternion_metres, stamp_to_sec)

__all__ = ["pieces_to_markers", "pieces_to_bone_meshes", "bone_meshes_to_arrays", "cloud_to_msg", "msg_to_cloud",
           "slice_to_image", "matrix_to_transform", "transform_to_matrix", "tf_message", "tf_message_edges",
           "diagnostic_array", "DIAGNOSTIC_LEVELS", "BONE_RGBA"]

#: Colour of the bone markers (RGBA); each piece is shaded a little differently so that neighbours separate.
BONE_RGBA = (0.93, 0.88, 0.76, 1.0)
DIAGNOSTIC_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR,
                     "stale": DiagnosticStatus.STALE}


def _point(p_mm) -> Point:
    x, y, z = (float(c) / MM_PER_M for c in p_mm)
    return Point(x=x, y=y, z=z)


def _points(xyz_mm) -> list[Point]:
    a = np.asarray(xyz_mm, dtype=np.float64).reshape(-1, 3) / MM_PER_M
    return [Point(x=x, y=y, z=z) for x, y, z in a.tolist()]


# ------------------------------------------------------------------------------------------------ meshes
def pieces_to_markers(pieces, *, frame_id: str, stamp, ns: str = "bone") -> MarkerArray:
    """A DELETEALL marker (clears the previous volume's pieces), then one TRIANGLE_LIST per piece (its triangles'
    corners in metres, outward winding; id = piece id)."""
    header = make_header(frame_id, stamp)
    out = MarkerArray()
    clear = Marker()
    clear.header, clear.ns, clear.action = header, ns, Marker.DELETEALL
    out.markers.append(clear)
    for p in pieces:
        m = Marker()
        m.header, m.ns, m.id = header, ns, int(p.id)
        m.type, m.action = Marker.TRIANGLE_LIST, Marker.ADD
        m.pose.orientation.w = 1.0
        m.scale = Vector3(x=1.0, y=1.0, z=1.0)
        shade = 1.0 - 0.12 * (int(p.id) % 4)
        r, g, b, a = BONE_RGBA
        m.color = ColorRGBA(r=r * shade, g=g * shade, b=b * shade, a=a)
        m.points = _points(p.mesh.triangles())
        m.text = p.label
        out.markers.append(m)
    return out


def pieces_to_bone_meshes(pieces, *, frame_id: str, stamp, stage="", view_ids=(), iteration: int = 0,
                          threshold_hu: float = 0.0, ply_path: str = "") -> BoneMeshes:
    msg = BoneMeshes()
    msg.header = make_header(frame_id, stamp)
    msg.version = INTERFACE_VERSION
    msg.stage = _stage_value(stage)
    msg.view_ids = [str(v) for v in view_ids]
    msg.view_count = len(msg.view_ids)
    msg.iteration = int(iteration)
    msg.threshold_hu = float(threshold_hu)
    msg.ply_path = str(ply_path)
    for p in pieces:
        bm = BoneMesh()
        bm.id, bm.label = int(p.id), str(p.label)
        mesh = MeshMsg()
        mesh.vertices = _points(p.mesh.vertices)
        mesh.triangles = [MeshTriangle(vertex_indices=f) for f in np.asarray(p.mesh.faces, dtype=np.uint32)]
        bm.mesh = mesh
        bm.centroid, bm.bbox_min, bm.bbox_max = _point(p.centroid), _point(p.bbox_min), _point(p.bbox_max)
        bm.area_m2 = float(p.area_mm2) / MM_PER_M ** 2
        bm.volume_m3 = float(p.volume_mm3) / MM_PER_M ** 3
        msg.pieces.append(bm)
    return msg


def bone_meshes_to_arrays(msg: BoneMeshes) -> list[dict[str, Any]]:
    """Per piece ``{"id", "label", "vertices" [N, 3] mm, "faces" [M, 3], "centroid" mm, "bbox_min", "bbox_max"}``."""
    out = []
    for bm in msg.pieces:
        v = np.array([[p.x, p.y, p.z] for p in bm.mesh.vertices], dtype=np.float64).reshape(-1, 3) * MM_PER_M
        f = np.array([list(t.vertex_indices) for t in bm.mesh.triangles], dtype=np.int64).reshape(-1, 3)
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ConversionError(f"BoneMesh {bm.id}: triangle indices outside its {len(v)} vertices")
        pt = lambda p: np.array([p.x, p.y, p.z]) * MM_PER_M  # noqa: E731
        out.append({"id": int(bm.id), "label": bm.label, "vertices": v, "faces": f, "centroid": pt(bm.centroid),
                    "bbox_min": pt(bm.bbox_min), "bbox_max": pt(bm.bbox_max)})
    return out


# ------------------------------------------------------------------------------------------------ cloud
_CLOUD_FIELDS = ("x", "y", "z", "mu", "hu")
_CLOUD_DTYPE = np.dtype([(n, "<f4") for n in _CLOUD_FIELDS])


def cloud_to_msg(xyz_mm, mu, hu, *, frame_id: str, stamp) -> PointCloud2:
    """``PointCloud2`` (height 1, little-endian float32 ``x y z`` in metres, ``mu`` in 1/mm, ``hu``)."""
    xyz = np.asarray(xyz_mm, dtype=np.float64).reshape(-1, 3)
    n = len(xyz)
    if np.shape(mu) != (n,) or np.shape(hu) != (n,):
        raise ConversionError(f"cloud: {n} points but {np.shape(mu)} mu and {np.shape(hu)} HU values")
    rec = np.empty(n, dtype=_CLOUD_DTYPE)
    for c, name in enumerate("xyz"):
        rec[name] = xyz[:, c] / MM_PER_M
    rec["mu"], rec["hu"] = mu, hu
    msg = PointCloud2()
    msg.header = make_header(frame_id, stamp)
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=_CLOUD_DTYPE.fields[name][1], datatype=PointField.FLOAT32, count=1)
                  for name in _CLOUD_FIELDS]
    msg.is_bigendian = False
    msg.point_step = _CLOUD_DTYPE.itemsize
    msg.row_step = msg.point_step * n
    msg.data = rec.tobytes()
    msg.is_dense = True
    return msg


def msg_to_cloud(msg: PointCloud2) -> dict[str, np.ndarray]:
    """``{"xyz" [N, 3] mm, <every other float32 field> [N]}`` of a little-endian float32 PointCloud2."""
    if msg.is_bigendian:
        raise ConversionError("big-endian point clouds are not supported")
    fields = {f.name: f for f in msg.fields}
    if any(f.datatype != PointField.FLOAT32 or f.count != 1 for f in msg.fields):
        raise ConversionError("only single float32 fields are supported")
    n = int(msg.width) * int(msg.height)
    dtype = np.dtype({"names": list(fields), "formats": ["<f4"] * len(fields),
                      "offsets": [f.offset for f in fields.values()], "itemsize": int(msg.point_step)})
    rec = np.frombuffer(bytes(msg.data), dtype=dtype, count=n)
    out = {name: rec[name].astype(np.float32) for name in fields if name not in "xyz"}
    out["xyz"] = np.stack([rec[c] for c in "xyz"], axis=1).astype(np.float64) * MM_PER_M
    return out


# ------------------------------------------------------------------------------------------------ slices
def slice_to_image(image, *, frame_id: str, stamp):
    """``sensor_msgs/Image`` 32FC1 of a slice (mu in 1/mm); pixels outside the grid (NaN) become 0."""
    a = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return array_to_image(a, "32FC1", make_header(frame_id, stamp))


# ------------------------------------------------------------------------------------------------ tf
def matrix_to_transform(T_mm) -> Transform:
    (x, y, z, w), (tx, ty, tz) = rigid_to_quaternion_metres(T_mm, "transform")
    return Transform(translation=Vector3(x=tx, y=ty, z=tz), rotation=Quaternion(x=x, y=y, z=z, w=w))


def transform_to_matrix(t: Transform, norm_tol: float | None = 1e-3) -> np.ndarray:
    """4x4 (mm) of a ``geometry_msgs/Transform`` (metres); a non-unit quaternion raises ConversionError."""
    q, v = t.rotation, t.translation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(q.x, q.y, q.z, q.w, norm_tol=norm_tol)
    T[:3, 3] = np.array([v.x, v.y, v.z], dtype=np.float64) * MM_PER_M
    if not np.all(np.isfinite(T)):
        raise ConversionError("transform translation is not finite")
    return T


def tf_message(transforms) -> TFMessage:
    """``TFMessage`` of ``(parent, child, T_parent_child mm, stamp)`` tuples."""
    msg = TFMessage()
    for parent, child, T, stamp in transforms:
        ts = TransformStamped()
        ts.header = make_header(parent, stamp)
        ts.child_frame_id = str(child)
        ts.transform = matrix_to_transform(T)
        msg.transforms.append(ts)
    return msg


def tf_message_edges(msg: TFMessage) -> tuple[list[tuple[str, str, np.ndarray, float]], list[str]]:
    """``(edges, errors)``: ``(parent, child, T_parent_child mm, stamp s)`` per convertible transform, and one
    line per transform that is not (naming its frames and the reason)."""
    edges, errors = [], []
    for ts in msg.transforms:
        try:
            edges.append((ts.header.frame_id, ts.child_frame_id, transform_to_matrix(ts.transform),
                          stamp_to_sec(ts.header.stamp)))
        except ConversionError as exc:
            errors.append(f"transform {ts.header.frame_id!r} <- {ts.child_frame_id!r}: {exc}")
    return edges, errors


# ------------------------------------------------------------------------------------------------ diagnostics
def diagnostic_array(name: str, level: str, message: str, values: Mapping[str, Any], *, stamp,
                     hardware_id: str = "") -> DiagnosticArray:
    """One ``DiagnosticStatus`` (``level`` "ok" | "warn" | "error" | "stale") with ``values`` as key/value
    strings (floats with 6 significant digits, NaN as "nan")."""
    if level not in DIAGNOSTIC_LEVELS:
        raise ConversionError(f"diagnostic level must be one of {list(DIAGNOSTIC_LEVELS)}, got {level!r}")
    st = DiagnosticStatus()
    st.level = DIAGNOSTIC_LEVELS[level]
    st.name, st.message, st.hardware_id = str(name), str(message), str(hardware_id)

    def text(v) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6g}"
        return str(v)

    st.values = [KeyValue(key=str(k), value=text(v)) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header = make_header("", stamp)
    arr.status = [st]
    return arr

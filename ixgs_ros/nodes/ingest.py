"""xray_ingest_node: turns a tracked C-arm's image stream into ``ixgs_ros/XrayView`` messages, recording each.

Interface (topic names are relative, so a namespace or remapping places them):

* subscribes ``image_raw`` (sensor_msgs/Image, single channel), ``camera_info`` (sensor_msgs/CameraInfo,
  K of the detector as seen from the source; usually re-sent with each image) and ``source_pose``
  (geometry_msgs/PoseStamped: the tracked source optical frame, metres, REP 103), QoS reliability from
  ``qos_reliability``; with ``use_tf`` also ``/tf`` and ``/tf_static``;
* publishes ``xray_views_raw`` (ixgs_ros/XrayView): each image with the camera_info and the pose nearest to
  its stamp (within ``max_sync_skew_s``), stamped with the image's stamp, ``image_kind`` from the
  ``image_kind`` parameter, and a ``view_id`` that stays unique across restarts: ``view_id_prefix`` + the shot
  record's sequence number (3+ digits) with ``record_dir``, else ``view_id_prefix`` + a random session token +
  ``_`` + a counter;
* publishes ``/diagnostics`` (shots published, recorded, refused by reason).

Poses: a ``source_pose`` in ``world_frame`` (an empty frame_id is taken as it) is used as is; with ``use_tf`` a
pose in another frame is moved into ``world_frame`` through the tf tree at its stamp, and with
``tf_source_frame`` the poses also come from the tf tree itself: every sample of a dynamic transform on the
chain ``world_frame`` <- ... <- ``tf_source_frame`` (e.g. world <- tracker <- C-arm marker <- source, the last
link a static calibration) gives the composed source pose at that stamp.

No shot lost: with ``record_dir`` each paired shot is written to that :class:`~ixgs_ros.core.shot_record.ShotRecord`
(atomically, before it is published); ``reconstruction_node`` takes up from there the shots it did not receive.

Input checks (each refusal logged with its reason and counted, see ``ixgs_ros.core.shot_checks.REASONS``):
zero / non-unit quaternions, stamps of 0 or more than ``max_future_s`` ahead of this node's clock, integer
images labelled as line integrals, raw integer images with more than ``max_saturated_fraction`` of their pixels
at the maximum value. Images that arrive out of stamp order are paired like the others (an image waits for a
pose within the skew up to ``max_wait_s``; :mod:`ixgs_ros.core.shot_sync`).
"""
from __future__ import annotations

import sys
import time
import uuid

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ixgs_ros.core.frame_policy import DROP_REASONS, FRAME_POLICIES, FramePolicy
from ixgs_ros.core.frames import FrameError, FrameGraph
from ixgs_ros.core.shot_checks import (DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_SATURATED_FRACTION, RejectionLedger,
                                       line_integral_dtype_reason, saturation_reason, stamp_reason)
from ixgs_ros.core.shot_record import RecordError, ShotRecord
from ixgs_ros.core.shot_sync import ShotAssembler, ShotSyncError
from ixgs_ros.msg import XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import (SHOT_QUEUE_DEPTH, Diagnostics, declare_parameters, guard_parameters, now_s,
                                  run_node, shot_qos)

NAME = "xray_ingest_node"

PARAMETERS = {
    "world_frame": ("world", "Frame of the published views (and of source_pose unless use_tf moves it there)"),
    "image_kind": ("raw", "What the detector sends: 'raw' intensities or 'line_integral' (-ln I/I0)"),
    "source_detector_distance_mm": (0.0, "Focal spot to detector distance (mm); 0 = unknown"),
    "max_sync_skew_s": (0.05, "Largest stamp difference (s) between an image and its pose / camera_info"),
    "max_wait_s": (1.0, "Longest time (s) an image waits for a later pose before it is paired or dropped"),
    "view_id_prefix": ("shot_", "Prefix of the view_id given to each published view"),
    "record_dir": ("", "Shot record folder (ixgs-shot-record): every paired shot is written there before it is "
                       "published, and view ids continue its sequence; '' = no record"),
    "qos_reliability": ("reliable", "QoS reliability of the image_raw / camera_info / source_pose subscriptions: "
                                    "'reliable' or 'best_effort' (for sensor-data publishers)"),
    "use_tf": (False, "Listen to /tf and /tf_static: source_pose in another frame is moved into world_frame"),
    "tf_source_frame": ("", "With use_tf: the X-ray source's frame in the tf tree; its pose in world_frame at each "
                            "tracker sample becomes a source pose; '' = source_pose only"),
    "tf_tolerance_s": (0.02, "How far (s) outside a dynamic transform's samples a lookup may use the nearest one"),
    "max_saturated_fraction": (DEFAULT_MAX_SATURATED_FRACTION, "Raw integer images with a larger share of pixels "
                                                               "at the dtype's maximum are refused"),
    "max_future_s": (DEFAULT_MAX_FUTURE_S, "Stamps more than this many seconds ahead of the node's clock are "
                                           "refused (as is a stamp of 0)"),
    "frame_policy": ("all", "Which paired frames become views: 'all' (radiography: every image is a shot) or "
                            "'still' (fluoroscopy: the first frame after the C-arm settles at a new position)"),
    "still_time_s": (0.5, "frame_policy still: how long (s) the source pose must stay still before a frame"),
    "still_mm": (0.5, "frame_policy still: largest source movement (mm) that counts as still / the same position"),
    "still_deg": (0.2, "frame_policy still: largest rotation (degrees) that counts as still / the same position"),
}
#: Parameters a running node takes without a restart.
LIVE = {"max_sync_skew_s", "max_wait_s", "source_detector_distance_mm", "max_saturated_fraction", "max_future_s",
        "view_id_prefix"}

_RAW_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.float32))


def check_parameter(name: str, value) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` (None when it is)."""
    if name == "image_kind" and value not in ("raw", "line_integral"):
        return f"image_kind must be 'raw' or 'line_integral', got {value!r}"
    if name == "source_detector_distance_mm" and not value >= 0:
        return f"source_detector_distance_mm must be >= 0 (0 = unknown), got {value}"
    if name in ("max_sync_skew_s", "max_wait_s", "tf_tolerance_s") and not value >= 0:
        return f"{name} must be >= 0, got {value}"
    if name == "max_saturated_fraction" and not 0.0 <= value <= 1.0:
        return f"max_saturated_fraction must be in [0, 1], got {value}"
    if name == "max_future_s" and not value > 0:
        return f"max_future_s must be > 0, got {value}"
    if name == "qos_reliability" and value not in ("reliable", "best_effort"):
        return f"qos_reliability must be 'reliable' or 'best_effort', got {value!r}"
    if name == "frame_policy" and value not in FRAME_POLICIES:
        return f"frame_policy must be one of {', '.join(FRAME_POLICIES)}, got {value!r}"
    if name in ("still_time_s", "still_mm", "still_deg") and not value >= 0:
        return f"{name} must be >= 0, got {value}"
    if name == "world_frame" and not str(value).strip():
        return "world_frame must not be empty"
    return None


class IngestNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=``)."""
        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        for name, value in p.items():
            why = check_parameter(name, value)
            if why:
                raise ValueError(why)
        self.sync = self._make_sync(p["max_sync_skew_s"], p["max_wait_s"])
        self.policy = FramePolicy(p["frame_policy"], p["still_time_s"], p["still_mm"], p["still_deg"])
        self.frames_received = 0
        self.frames_paired = 0
        self.frames_dropped = {k: 0 for k in DROP_REASONS}
        self.kind = (XrayView.IMAGE_KIND_RAW if p["image_kind"] == "raw" else XrayView.IMAGE_KIND_LINE_INTEGRAL)
        self.world = str(p["world_frame"])
        self.published = 0
        self.dropped = 0
        self.rejected = RejectionLedger()
        self.record_failures = 0
        self._throttled: dict[tuple[str, str], tuple[float, int]] = {}
        self._warned_empty_frame = False
        self.record = None
        if p["record_dir"].strip():
            try:
                self.record = ShotRecord(p["record_dir"].strip())
            except RecordError as exc:
                raise ValueError(f"record_dir: {exc}") from None
        self._session = uuid.uuid4().hex[:6]
        self.tf = None
        if p["use_tf"]:
            from ixgs_ros.nodes.tf_listener import TfListener

            self.tf = TfListener(self, FrameGraph(tolerance_s=p["tf_tolerance_s"]), on_update=self._on_tf)
        elif p["tf_source_frame"]:
            raise ValueError("tf_source_frame needs use_tf:=true")
        qos = shot_qos(p["qos_reliability"])
        self.publisher = self.create_publisher(XrayView, "xray_views_raw", SHOT_QUEUE_DEPTH)
        self.create_subscription(Image, "image_raw", self._on_image, qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        self.create_subscription(PoseStamped, "source_pose", self._on_pose, shot_qos(p["qos_reliability"], 50))
        self.create_timer(0.1, lambda: self._emit(*self.sync.poll(now_s(self))))
        Diagnostics(self, self._diagnostics)
        guard_parameters(self, check_parameter, self._apply, LIVE)
        rec = f"; recording to {self.record.path} (next seq {self.record.next_seq})" if self.record is not None else ""
        poses = f"tf chain {self.world!r} <- {p['tf_source_frame']!r}" if p["tf_source_frame"] else "source_pose"
        self.get_logger().info(
            f"pairing image_raw + camera_info + {poses} ({self.world!r}, max skew {p['max_sync_skew_s']} s, "
            f"{p['qos_reliability']}) into xray_views_raw ({p['image_kind']}, frame policy {p['frame_policy']}){rec}")

    @staticmethod
    def _make_sync(skew, wait) -> ShotAssembler:
        try:
            return ShotAssembler(max_skew_s=skew, max_wait_s=wait)
        except ShotSyncError as exc:
            raise ValueError(str(exc).replace("max_skew_s", "max_sync_skew_s")) from None

    def _apply(self, changes: dict) -> None:
        if "max_sync_skew_s" in changes or "max_wait_s" in changes:
            new = self._make_sync(changes.get("max_sync_skew_s", self.params["max_sync_skew_s"]),
                                  changes.get("max_wait_s", self.params["max_wait_s"]))
            self.sync.max_skew_s, self.sync.max_wait_s = new.max_skew_s, new.max_wait_s
        self.params.update(changes)

    # ---------------------------------------------------------------------------------------- checks
    def _refuse(self, key: str, text: str, throttle: bool = False, reason: str = "") -> None:
        """Count and log a refused input. ``throttle`` (the pose and camera_info streams, tens of Hz): the same
        ``(key, reason)`` is logged at most once every 5 s, saying how many were refused meanwhile."""
        self.rejected.count(key)
        if throttle:
            now = time.monotonic()
            last, suppressed = self._throttled.get((key, reason), (-1e9, 0))
            if now - last < 5.0:
                self._throttled[(key, reason)] = (last, suppressed + 1)
                return
            self._throttled[(key, reason)] = (now, 0)
            if suppressed:
                text += f" ({suppressed} more refused for the same reason in the last {now - last:.0f} s)"
        self.get_logger().warning(text)

    def _stamp_ok(self, what: str, stamp: float, throttle: bool = False, nanosec: int = 0) -> bool:
        bad = stamp_reason(stamp, now_s(self), self.params["max_future_s"], nanosec=nanosec)
        if bad:
            self._refuse(bad[0], f"rejected {what}: {bad[1]}", throttle, reason=what)
        return bad is None

    # ---------------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Image) -> None:
        self.frames_received += 1
        stamp = cv.stamp_to_sec(msg.header.stamp)
        if not self._stamp_ok("image_raw", stamp, nanosec=msg.header.stamp.nanosec):
            return
        try:
            image = np.array(cv.image_to_array(msg))  # own copy: the message buffer is not ours to keep
        except cv.ConversionError as exc:
            self._refuse("conversion", f"rejected image_raw at {stamp:.6f} s: {exc}")
            return
        if self.kind == XrayView.IMAGE_KIND_LINE_INTEGRAL:
            why = line_integral_dtype_reason(image.dtype)
            if why:
                self._refuse("encoding", f"rejected image_raw at {stamp:.6f} s ({msg.encoding}): {why}; set "
                                         "image_kind:=raw for detector values")
                return
        else:
            why = saturation_reason(image, self.params["max_saturated_fraction"])
            if why:
                self._refuse("saturated", f"rejected image_raw at {stamp:.6f} s: {why}")
                return
        if self.tf is not None and self.params["tf_source_frame"]:
            self._static_chain_pose(stamp)
        try:
            result = self.sync.add_image(stamp, image, now_s(self), tag=msg.header.stamp)
        except ShotSyncError as exc:
            self._refuse("conversion", f"rejected image_raw: {exc}")
            return
        self._emit(*result)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        stamp = cv.stamp_to_sec(msg.header.stamp)
        if not self._stamp_ok("camera_info", stamp, throttle=True, nanosec=msg.header.stamp.nanosec):
            return
        try:
            result = self.sync.add_camera_info(stamp, cv.camera_info_k(msg), msg.width, msg.height, now_s(self))
        except (ShotSyncError, cv.ConversionError) as exc:
            self._refuse("conversion", f"rejected camera_info: {exc}", throttle=True, reason="camera_info")
            return
        self._emit(*result)

    def _on_pose(self, msg: PoseStamped) -> None:
        stamp = cv.stamp_to_sec(msg.header.stamp)
        if not self._stamp_ok("source_pose", stamp, throttle=True, nanosec=msg.header.stamp.nanosec):
            return
        frame = msg.header.frame_id
        try:
            T = cv.pose_to_matrix(msg.pose)
        except cv.QuaternionError as exc:
            q = msg.pose.orientation  # one line per 5 s for each norm (to 0.1): a drifting stream does not flood
            norm = float(np.linalg.norm([q.x, q.y, q.z, q.w]))
            self._refuse("quaternion", f"rejected source_pose at {stamp:.6f} s: {exc}", throttle=True,
                         reason=f"{norm:.1f}")
            return
        except cv.ConversionError as exc:
            self._refuse("conversion", f"rejected source_pose at {stamp:.6f} s: {exc}", throttle=True,
                         reason="source_pose")
            return
        if not frame and not self._warned_empty_frame:
            self._warned_empty_frame = True
            self.get_logger().warning(f"source_pose has an empty frame_id: taken as world_frame {self.world!r}")
        if frame and frame != self.world:
            if self.tf is None:
                self._refuse("frame", f"rejected source_pose in frame {frame!r}: poses must be given in world_frame "
                                      f"{self.world!r} (or set use_tf:=true to move them there through /tf)",
                             throttle=True, reason=frame)
                return
            try:
                T = self.tf.lookup(self.world, frame, stamp) @ T
            except FrameError as exc:
                self._refuse("frame", f"rejected source_pose in frame {frame!r}: {exc}", throttle=True, reason=frame)
                return
        self._add_pose(stamp, T)

    def _add_pose(self, stamp: float, T) -> None:
        try:
            result = self.sync.add_pose(stamp, T, now_s(self))
        except ShotSyncError as exc:
            self._refuse("conversion", f"rejected source pose: {exc}", throttle=True, reason="sync")
            return
        self._emit(*result)

    def _on_tf(self, edges, static: bool) -> None:
        """A tf update: with ``tf_source_frame``, each new sample of a dynamic link of the chain gives a pose."""
        source = self.params["tf_source_frame"]
        if not source or static:
            return
        try:
            chain = {(parent, child) for parent, child, is_static in self.tf.path(self.world, source) if not is_static}
        except FrameError:
            return  # the chain is not complete yet
        for stamp in sorted({s for parent, child, _, s in edges if (parent, child) in chain}):
            try:
                T = self.tf.lookup(self.world, source, stamp)
            except FrameError:
                continue  # another link of the chain has no sample near this stamp
            self._add_pose(stamp, T)

    def _static_chain_pose(self, stamp: float) -> None:
        """A chain of static links only (a fixed C-arm) gives its pose to any image, at the image's stamp."""
        try:
            path = self.tf.path(self.world, self.params["tf_source_frame"])
            if path and all(is_static for _, _, is_static in path):
                self._add_pose(stamp, self.tf.lookup(self.world, self.params["tf_source_frame"]))
        except FrameError:
            pass

    # ---------------------------------------------------------------------------------------- output
    def _next_view_id(self) -> str:
        prefix = self.params["view_id_prefix"]
        if self.record is not None:
            return lambda seq: f"{prefix}{seq:03d}"  # the record's sequence number: unique across restarts
        return f"{prefix}{self._session}_{self.published:03d}"

    def _emit(self, shots, dropped) -> None:
        for d in dropped:
            self.dropped += 1
            self.rejected.count("sync")
            self.get_logger().warning(d.reason)
        for shot in shots:
            self.frames_paired += 1
            take, why = self.policy.decide(shot.stamp, shot.view.T_world_source)
            if not take:
                self.frames_dropped[why] += 1
                continue
            image = shot.image
            if self.kind == XrayView.IMAGE_KIND_LINE_INTEGRAL:
                image = image.astype(np.float32, copy=False)
            elif image.dtype not in _RAW_DTYPES:
                image = image.astype(np.float32)
            view = shot.view
            sdd = self.params["source_detector_distance_mm"]
            if sdd > 0:
                view.meta["sdd"] = sdd
            view_id = self._next_view_id()
            if self.record is not None:
                kind = "raw" if self.kind == XrayView.IMAGE_KIND_RAW else "line_integral"
                extra = {"sdd": sdd} if sdd > 0 else {}
                try:
                    view_id = self.record.append(view, image, view_id=view_id, stamp=shot.stamp, image_kind=kind,
                                                 **extra).view_id
                except RecordError as exc:  # a full disk must not stop the acquisition: the shot still goes out
                    self.record_failures += 1
                    self.rejected.count("record")
                    view_id = f"{self.params['view_id_prefix']}{self._session}_{self.published:03d}"
                    self.get_logger().error(f"shot record: {exc}; {view_id} is published but not recorded")
            msg = cv.view_to_xray_view(view, image, image_kind=self.kind, view_id=view_id, frame_id=self.world,
                                       stamp=shot.tag)
            self.publisher.publish(msg)
            self.published += 1
            self.get_logger().info(f"published {view_id} (pose {1e3 * shot.pose_skew_s:.1f} ms, camera_info "
                                   f"{1e3 * shot.info_skew_s:.1f} ms from the image stamp)")

    def _diagnostics(self):
        rejected = self.rejected.snapshot()
        values = {"published": self.published, "recorded": self.record.next_seq if self.record else "off",
                  "record_failures": self.record_failures, "waiting_images": self.sync.pending,
                  "frame_policy": self.policy.mode, "frames.received": self.frames_received,
                  "frames.paired": self.frames_paired, "frames.views": self.published,
                  **{f"frames.dropped.{k}": v for k, v in self.frames_dropped.items()},
                  **{f"rejected.{k}": v for k, v in rejected.items()}}
        level = "error" if self.record_failures else ("warn" if rejected else "ok")
        return level, f"{self.published} shots published, {sum(rejected.values())} inputs refused", values


def main(args=None) -> int:
    return run_node(IngestNode, args)


if __name__ == "__main__":
    sys.exit(main())

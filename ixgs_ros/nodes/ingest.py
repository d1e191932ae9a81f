"""xray_ingest_node: turns a tracked C-arm's image stream into ``ixgs_ros/XrayView`` messages.

Interface (topic names are relative, so a namespace or remapping places them):

* subscribes ``image_raw`` (sensor_msgs/Image, single channel), ``camera_info`` (sensor_msgs/CameraInfo,
  K of the detector as seen from the source; usually re-sent with each image) and ``source_pose``
  (geometry_msgs/PoseStamped: the tracked source optical frame in ``world_frame``, metres, REP 103);
* publishes ``xray_views_raw`` (ixgs_ros/XrayView): each image with the camera_info and the pose nearest to
  its stamp (within ``max_sync_skew_s``), stamped with the image's stamp, ``view_id`` =
  ``view_id_prefix`` + a 3-digit counter, ``image_kind`` from the ``image_kind`` parameter.

The pairing is :class:`ixgs_ros.core.shot_sync.ShotAssembler` (ROS-free): an image waits until a pose
stamped at or after it has arrived, or ``max_wait_s``; an image that cannot be paired is dropped with a
warning naming why (no pose / camera_info within the skew, size mismatch). Poses in another frame than
``world_frame`` are refused with a warning (no tf2 here); an empty frame_id is taken as ``world_frame``.
"""
from __future__ import annotations

import sys

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ixgs_ros.core.shot_sync import ShotAssembler, ShotSyncError
from ixgs_ros.msg import XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import SHOT_QUEUE_DEPTH, declare_parameters, run_node

NAME = "xray_ingest_node"

PARAMETERS = {
    "world_frame": ("world", "Frame of the tracked source poses and of the published views"),
    "image_kind": ("raw", "What the detector sends: 'raw' intensities or 'line_integral' (-ln I/I0)"),
    "source_detector_distance_mm": (0.0, "Focal spot to detector distance (mm); 0 = unknown"),
    "max_sync_skew_s": (0.05, "Largest stamp difference (s) between an image and its pose / camera_info"),
    "max_wait_s": (1.0, "Longest time (s) an image waits for a later pose before it is paired or dropped"),
    "view_id_prefix": ("shot_", "Prefix of the view_id given to each published view"),
}

_RAW_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.float32))


class IngestNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=``)."""
        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        if p["image_kind"] not in ("raw", "line_integral"):
            raise ValueError(f"image_kind must be 'raw' or 'line_integral', got {p['image_kind']!r}")
        if not p["source_detector_distance_mm"] >= 0:
            raise ValueError(f"source_detector_distance_mm must be >= 0 (0 = unknown), got "
                             f"{p['source_detector_distance_mm']}")
        try:
            self.sync = ShotAssembler(max_skew_s=p["max_sync_skew_s"], max_wait_s=p["max_wait_s"])
        except ShotSyncError as exc:
            raise ValueError(str(exc).replace("max_skew_s", "max_sync_skew_s")) from None
        self.kind = (XrayView.IMAGE_KIND_RAW if p["image_kind"] == "raw" else XrayView.IMAGE_KIND_LINE_INTEGRAL)
        self.published = 0
        self.dropped = 0
        self._warned_empty_frame = False
        self.publisher = self.create_publisher(XrayView, "xray_views_raw", SHOT_QUEUE_DEPTH)
        self.create_subscription(Image, "image_raw", self._on_image, SHOT_QUEUE_DEPTH)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, SHOT_QUEUE_DEPTH)
        self.create_subscription(PoseStamped, "source_pose", self._on_pose, 50)
        self.create_timer(0.1, lambda: self._emit(*self.sync.poll(self._now())))
        self.get_logger().info(
            f"pairing image_raw + camera_info + source_pose ({p['world_frame']!r}, max skew "
            f"{p['max_sync_skew_s']} s) into xray_views_raw ({p['image_kind']})")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---------------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Image) -> None:
        try:
            image = np.array(cv.image_to_array(msg))  # own copy: the message buffer is not ours to keep
            result = self.sync.add_image(cv.stamp_to_sec(msg.header.stamp), image, self._now(),
                                         tag=msg.header.stamp)
        except (cv.ConversionError, ShotSyncError) as exc:
            self.get_logger().warning(f"rejected image_raw: {exc}")
            return
        self._emit(*result)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            result = self.sync.add_camera_info(cv.stamp_to_sec(msg.header.stamp),
                                               np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
                                               msg.width, msg.height, self._now())
        except ShotSyncError as exc:
            self.get_logger().warning(f"rejected camera_info: {exc}", throttle_duration_sec=5.0)
            return
        self._emit(*result)

    def _on_pose(self, msg: PoseStamped) -> None:
        frame = msg.header.frame_id
        world = self.params["world_frame"]
        if frame != world:
            if frame:
                self.get_logger().warning(f"rejected source_pose in frame {frame!r}: poses must be given in "
                                       f"world_frame {world!r}", throttle_duration_sec=5.0)
                return
            if not self._warned_empty_frame:
                self._warned_empty_frame = True
                self.get_logger().warning(f"source_pose has an empty frame_id: taken as world_frame {world!r}")
        try:
            result = self.sync.add_pose(cv.stamp_to_sec(msg.header.stamp), cv.pose_to_matrix(msg.pose),
                                        self._now())
        except (cv.ConversionError, ShotSyncError) as exc:
            self.get_logger().warning(f"rejected source_pose: {exc}", throttle_duration_sec=5.0)
            return
        self._emit(*result)

    # ---------------------------------------------------------------------------------------- output
    def _emit(self, shots, dropped) -> None:
        for d in dropped:
            self.dropped += 1
            self.get_logger().warning(d.reason)
        for shot in shots:
            image = shot.image
            if self.kind == XrayView.IMAGE_KIND_LINE_INTEGRAL:
                if not np.issubdtype(image.dtype, np.floating):
                    self.dropped += 1
                    self.get_logger().warning(f"image at {shot.stamp:.6f} s dropped: image_kind is line_integral but "
                                           f"the image is {image.dtype} (line integrals are floating point)")
                    continue
                image = image.astype(np.float32, copy=False)
            elif image.dtype not in _RAW_DTYPES:
                image = image.astype(np.float32)
            view = shot.view
            sdd = self.params["source_detector_distance_mm"]
            if sdd > 0:
                view.meta["sdd"] = sdd
            view_id = f"{self.params['view_id_prefix']}{self.published:03d}"
            msg = cv.view_to_xray_view(view, image, image_kind=self.kind, view_id=view_id,
                                       frame_id=self.params["world_frame"], stamp=shot.tag)
            self.publisher.publish(msg)
            self.published += 1
            self.get_logger().info(f"published {view_id} (pose {1e3 * shot.pose_skew_s:.1f} ms, camera_info "
                                   f"{1e3 * shot.info_skew_s:.1f} ms from the image stamp)")


def main(args=None) -> int:
    return run_node(IngestNode, args)


if __name__ == "__main__":
    sys.exit(main())

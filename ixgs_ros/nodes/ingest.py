"""xray_ingest_node: turns a tracked C-arm's image stream into ``ixgs_ros/XrayView`` messages.

Interface (topic names are relative, so a namespace or remapping places them):

* subscribes ``image_raw`` (sensor_msgs/Image), ``camera_info`` (sensor_msgs/CameraInfo) and
  ``source_pose`` (geometry_msgs/PoseStamped, the tracked source optical frame in ``world_frame``);
* publishes ``xray_views_raw`` (ixgs_ros/XrayView, ``image_kind`` from the ``image_kind`` parameter).

STATUS: skeleton. The node starts, declares its parameters and subscriptions and logs what arrives, but
does NOT yet pair images with camera info and poses (stamp matching within ``max_sync_skew_s``) nor
publish XrayView messages. The conversions it will use exist in :mod:`ixgs_ros.nodes.convert`
(``view_to_xray_view``, ``pose_to_matrix``).
"""
from __future__ import annotations

import sys

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ixgs_ros.msg import XrayView
from ixgs_ros.nodes._base import declare_parameters, run_node

NAME = "xray_ingest_node"

PARAMETERS = {
    "world_frame": ("world", "Frame of the tracked source poses and of the published views"),
    "image_kind": ("raw", "What the detector sends: 'raw' intensities or 'line_integral' (-ln I/I0)"),
    "source_detector_distance_mm": (0.0, "Focal spot to detector distance (mm); 0 = unknown"),
    "max_sync_skew_s": (0.05, "Largest stamp difference (s) between an image and its pose"),
    "view_id_prefix": ("shot_", "Prefix of the view_id given to each published view"),
}


class IngestNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_parameters(self, PARAMETERS)
        if self.params["image_kind"] not in ("raw", "line_integral"):
            raise ValueError(f"image_kind must be 'raw' or 'line_integral', got {self.params['image_kind']!r}")
        self.counts = {"image_raw": 0, "camera_info": 0, "source_pose": 0}
        self.publisher = self.create_publisher(XrayView, "xray_views_raw", 10)
        self.create_subscription(Image, "image_raw", lambda m: self._count("image_raw"), 10)
        self.create_subscription(CameraInfo, "camera_info", lambda m: self._count("camera_info"), 10)
        self.create_subscription(PoseStamped, "source_pose", lambda m: self._count("source_pose"), 10)
        self.get_logger().info(
            "waiting for image_raw/camera_info/source_pose; pairing them into XrayView messages is not "
            "implemented yet (skeleton node), nothing is published on xray_views_raw")

    def _count(self, topic: str) -> None:
        self.counts[topic] += 1
        if self.counts[topic] == 1:
            self.get_logger().warn(f"received {topic}, but this skeleton node does not process it yet")


def main(args=None) -> int:
    return run_node(IngestNode, args)


if __name__ == "__main__":
    sys.exit(main())

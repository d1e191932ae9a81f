"""reconstruction_node: reconstructs the attenuation volume online from line-integral X-ray views.

Interface: subscribes ``xray_views`` (ixgs_ros/XrayView, line integrals); publishes ``volume``
(ixgs_ros/Volume, mu in 1/mm on the grid given by ``volume_size`` / ``voxel_size_mm`` /
``volume_center_mm``) and ``reconstruction_status`` (ixgs_ros/ReconstructionStatus, at
``status_rate_hz``).

STATUS: skeleton. The node starts, declares its parameters, converts every incoming view with
:func:`ixgs_ros.nodes.convert.xray_view_to_view` (so malformed views are reported) and publishes an honest
status: IDLE before the first view, then WAITING_FOR_VIEWS with ``views_used = 0`` and a message saying
that no reconstruction engine is connected. It does NOT optimise Gaussians nor publish ``volume``: the
reconstruction engine API of ixgs_ros.core is not available yet.
"""
from __future__ import annotations

import sys

from rclpy.node import Node

from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
from ixgs_ros.nodes._base import declare_parameters, run_node
from ixgs_ros.nodes.convert import ConversionError, status_to_msg, xray_view_to_view

NAME = "reconstruction_node"

PARAMETERS = {
    "world_frame": ("world", "Frame of the reconstructed volume (must match the views' header.frame_id)"),
    "min_views": (3, "Views needed before optimisation starts"),
    "heldout_views": (0, "Views kept out of training to report heldout_psnr_2d"),
    "iterations": (3000, "Optimisation iterations per reconstruction"),
    "volume_size": ([128, 128, 128], "Output grid size in voxels (I, J, K)"),
    "voxel_size_mm": (1.0, "Output voxel size (mm)"),
    "volume_center_mm": ([0.0, 0.0, 0.0], "Output grid centre in world_frame (mm)"),
    "device": ("auto", "Torch device: 'auto', 'cpu' or 'cuda'"),
    "status_rate_hz": (2.0, "Rate of reconstruction_status messages"),
    "volume_publish_period_s": (5.0, "Period of volume snapshots while optimising"),
}


class ReconstructionNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_parameters(self, PARAMETERS)
        rate = float(self.params["status_rate_hz"])
        if not rate > 0:
            raise ValueError(f"status_rate_hz must be positive, got {rate}")
        self.views = {}
        self.status_pub = self.create_publisher(ReconstructionStatus, "reconstruction_status", 10)
        self.volume_pub = self.create_publisher(Volume, "volume", 1)
        self.create_subscription(XrayView, "xray_views", self._on_view, 10)
        self.create_timer(1.0 / rate, self._publish_status)
        self.get_logger().info(
            "waiting for xray_views; the reconstruction engine is not connected yet (skeleton node): "
            "views are validated and counted, no volume is published")

    def _on_view(self, msg: XrayView) -> None:
        try:
            view = xray_view_to_view(msg)
        except ConversionError as exc:
            self.get_logger().error(f"rejected view: {exc}")
            return
        self.views[view.meta["view_id"] or f"#{len(self.views)}"] = view

    def _publish_status(self) -> None:
        if not self.views:
            status = {"state": "idle", "message": "no views received"}
        else:
            status = {"state": "waiting_for_views",
                      "message": f"{len(self.views)} views received; reconstruction engine not connected yet"}
        self.status_pub.publish(status_to_msg(status, frame_id=self.params["world_frame"],
                                              stamp=self.get_clock().now().to_msg()))


def main(args=None) -> int:
    return run_node(ReconstructionNode, args)


if __name__ == "__main__":
    sys.exit(main())

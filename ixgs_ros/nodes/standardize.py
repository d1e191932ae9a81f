"""standardize_node: turns raw X-ray views into line-integral views ready for reconstruction.

Interface: subscribes ``xray_views_raw`` (ixgs_ros/XrayView, any ``image_kind``), publishes
``xray_views`` (ixgs_ros/XrayView with ``image_kind = IMAGE_KIND_LINE_INTEGRAL``, 32FC1).

STATUS: skeleton. The node starts, declares its parameters and subscription and logs what arrives, but
does NOT yet standardize (flat-field / log transform -ln(I/I0) with ``i0`` or the message's ``i0``,
detector down-sampling by ``downsample`` with the matching ``View.scaled``) nor publish anything. That
processing belongs in ixgs_ros.core, which this node will call once it exists.
"""
from __future__ import annotations

import sys

from rclpy.node import Node

from ixgs_ros.msg import XrayView
from ixgs_ros.nodes._base import declare_parameters, run_node

NAME = "standardize_node"

PARAMETERS = {
    "i0": (0.0, "Unattenuated intensity for raw images; 0 = use the message's i0, else estimate it"),
    "downsample": (1, "Integer detector down-sampling factor (1 = keep the detector resolution)"),
}


class StandardizeNode(Node):
    def __init__(self):
        super().__init__(NAME)
        self.params = declare_parameters(self, PARAMETERS)
        if self.params["downsample"] < 1:
            raise ValueError(f"downsample must be >= 1, got {self.params['downsample']}")
        self.received = 0
        self.publisher = self.create_publisher(XrayView, "xray_views", 10)
        self.create_subscription(XrayView, "xray_views_raw", self._on_view, 10)
        self.get_logger().info(
            "waiting for xray_views_raw; standardization is not implemented yet (skeleton node), nothing is "
            "published on xray_views")

    def _on_view(self, msg: XrayView) -> None:
        self.received += 1
        if self.received == 1:
            self.get_logger().warn(f"received view {msg.view_id!r}, but this skeleton node does not process it yet")


def main(args=None) -> int:
    return run_node(StandardizeNode, args)


if __name__ == "__main__":
    sys.exit(main())

"""standardize_node: turns raw X-ray views into line-integral views ready for reconstruction.

Interface: subscribes ``xray_views_raw`` (ixgs_ros/XrayView, any ``image_kind``), publishes
``xray_views`` (ixgs_ros/XrayView with ``image_kind = IMAGE_KIND_LINE_INTEGRAL``, 32FC1, same header,
view_id and pose).

Each view goes through :func:`ixgs_ros.core.radiograph.standardize`: raw intensities become
``-ln(I / I0)`` with I0 from the ``i0`` parameter (> 0), else the message's ``i0`` (> 0), else estimated from
the image (a high percentile: needs some direct-beam pixels); line-integral views pass through; then the
detector is binned by ``downsample`` with the matching intrinsics. A view that cannot be standardized is
dropped with a warning naming its view_id and the reason.

This is the classical (physics) step only: no scatter, noise or vendor-processing correction. The learned,
anatomy-guided standardization will run here, after this step, once it exists in ixgs_ros.core.
"""
from __future__ import annotations

import sys

from rclpy.node import Node

from ixgs_ros.core.radiograph import RadiographError, standardize
from ixgs_ros.msg import XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import SHOT_QUEUE_DEPTH, declare_parameters, run_node

NAME = "standardize_node"

PARAMETERS = {
    "i0": (0.0, "Unattenuated intensity for raw images; 0 = use the message's i0, else estimate it"),
    "downsample": (1, "Integer detector down-sampling factor (1 = keep the detector resolution)"),
}


class StandardizeNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=``)."""
        super().__init__(NAME, **node_kwargs)
        self.params = declare_parameters(self, PARAMETERS)
        if self.params["downsample"] < 1:
            raise ValueError(f"downsample must be >= 1, got {self.params['downsample']}")
        if not self.params["i0"] >= 0:
            raise ValueError(f"i0 must be >= 0 (0 = from the message or estimated), got {self.params['i0']}")
        self.published = 0
        self.dropped = 0
        self.publisher = self.create_publisher(XrayView, "xray_views", SHOT_QUEUE_DEPTH)
        self.create_subscription(XrayView, "xray_views_raw", self._on_view, SHOT_QUEUE_DEPTH)
        self.get_logger().info(
            f"standardizing xray_views_raw into line integrals on xray_views (i0 "
            f"{self.params['i0'] or 'from the message or estimated'}, downsample {self.params['downsample']})")

    def _on_view(self, msg: XrayView) -> None:
        try:
            out = self.process(msg)
        except (cv.ConversionError, RadiographError) as exc:
            self.dropped += 1
            self.get_logger().warning(f"dropped view {msg.view_id!r}: {exc}")
            return
        self.publisher.publish(out)
        self.published += 1

    def process(self, msg: XrayView) -> XrayView:
        """The standardized ``XrayView`` of ``msg`` (raises ConversionError / RadiographError)."""
        if msg.image_kind not in (XrayView.IMAGE_KIND_RAW, XrayView.IMAGE_KIND_LINE_INTEGRAL):
            raise cv.ConversionError(f"unknown image_kind {msg.image_kind}")
        view = cv.xray_view_to_view(msg)
        image = cv.xray_view_image(msg)
        raw = msg.image_kind == XrayView.IMAGE_KIND_RAW
        i0 = self.params["i0"] or msg.i0
        view, li, info = standardize(view, image, raw=raw, i0=i0, downsample=self.params["downsample"])
        if raw and info["i0_estimated"]:
            self.get_logger().info(f"view {msg.view_id!r}: i0 estimated from the image: {info['i0']:.6g}",
                                   throttle_duration_sec=10.0)
        if raw and info["clipped_low"]:
            self.get_logger().warning(f"view {msg.view_id!r}: {info['clipped_low']} pixel(s) below i0 * 1e-6 "
                                   f"clipped", throttle_duration_sec=10.0)
        return cv.view_to_xray_view(view, li, image_kind=XrayView.IMAGE_KIND_LINE_INTEGRAL, view_id=msg.view_id,
                                    frame_id=msg.header.frame_id, optical_frame_id=msg.image.header.frame_id,
                                    stamp=msg.header.stamp)


def main(args=None) -> int:
    return run_node(StandardizeNode, args)


if __name__ == "__main__":
    sys.exit(main())

"""standardize_node: turns raw X-ray views into line-integral views ready for reconstruction.

Interface: subscribes ``xray_views_raw`` (ixgs_ros/XrayView, any ``image_kind``), publishes
``xray_views`` (ixgs_ros/XrayView with ``image_kind = IMAGE_KIND_LINE_INTEGRAL``, 32FC1, same header,
view_id and pose).

Each view goes through :func:`ixgs_ros.core.radiograph.standardize`: raw intensities become
``-ln(I / I0)`` with I0 from the ``i0`` parameter (> 0), else the message's ``i0`` (> 0), else estimated from
the image (a high percentile: needs some direct-beam pixels); line-integral views pass through; then the
detector is binned by ``downsample`` with the matching intrinsics. A view that cannot be standardized is
dropped with a warning naming its view_id and the reason, and counted by reason on ``/diagnostics``: among them
line-integral views whose pixels are integers (a mislabelled raw image) and raw integer images with more than
``max_saturated_fraction`` of their pixels at the maximum value. ``qos_reliability`` selects the subscription's
QoS; ``i0`` and ``downsample`` can be changed at run time (validated).

This is the classical (physics) step only: no scatter, noise or vendor-processing correction. The learned,
anatomy-guided standardization will run here, after this step, once it exists in ixgs_ros.core.
"""
from __future__ import annotations

import sys

from rclpy.node import Node

from ixgs_ros.core.radiograph import RadiographError, standardize
from ixgs_ros.core.shot_checks import (DEFAULT_MAX_SATURATED_FRACTION, RejectionLedger, line_integral_dtype_reason,
                                       saturation_reason)
from ixgs_ros.msg import XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import (SHOT_QUEUE_DEPTH, Diagnostics, declare_parameters, guard_parameters, run_node,
                                  shot_qos)

NAME = "standardize_node"

PARAMETERS = {
    "i0": (0.0, "Unattenuated intensity for raw images; 0 = use the message's i0, else estimate it"),
    "downsample": (1, "Integer detector down-sampling factor (1 = keep the detector resolution)"),
    "qos_reliability": ("reliable", "QoS reliability of the xray_views_raw subscription: 'reliable' or "
                                    "'best_effort'"),
    "max_saturated_fraction": (DEFAULT_MAX_SATURATED_FRACTION, "Raw integer images with a larger share of pixels "
                                                               "at the dtype's maximum are dropped"),
}
LIVE = {"i0", "downsample", "max_saturated_fraction"}


class _Refused(cv.ConversionError):
    """A view refused by an input check: ``key`` is its reason key (ixgs_ros.core.shot_checks.REASONS)."""

    def __init__(self, key: str, text: str):
        super().__init__(text)
        self.key = key


def check_parameter(name: str, value) -> str | None:
    if name == "downsample" and value < 1:
        return f"downsample must be >= 1, got {value}"
    if name == "i0" and not value >= 0:
        return f"i0 must be >= 0 (0 = from the message or estimated), got {value}"
    if name == "max_saturated_fraction" and not 0.0 <= value <= 1.0:
        return f"max_saturated_fraction must be in [0, 1], got {value}"
    if name == "qos_reliability" and value not in ("reliable", "best_effort"):
        return f"qos_reliability must be 'reliable' or 'best_effort', got {value!r}"
    return None


class StandardizeNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=``)."""
        super().__init__(NAME, **node_kwargs)
        self.params = declare_parameters(self, PARAMETERS)
        for name, value in self.params.items():
            why = check_parameter(name, value)
            if why:
                raise ValueError(why)
        self.published = 0
        self.dropped = 0
        self.rejected = RejectionLedger()
        self.publisher = self.create_publisher(XrayView, "xray_views", SHOT_QUEUE_DEPTH)
        self.create_subscription(XrayView, "xray_views_raw", self._on_view, shot_qos(self.params["qos_reliability"]))
        guard_parameters(self, check_parameter, self.params.update, LIVE)
        Diagnostics(self, self._diagnostics)
        self.get_logger().info(
            f"standardizing xray_views_raw into line integrals on xray_views (i0 "
            f"{self.params['i0'] or 'from the message or estimated'}, downsample {self.params['downsample']})")

    def _on_view(self, msg: XrayView) -> None:
        try:
            out = self.process(msg)
        except (cv.ConversionError, RadiographError) as exc:
            self.dropped += 1
            self.rejected.count(exc.key if isinstance(exc, _Refused) else
                                "quaternion" if isinstance(exc, cv.QuaternionError) else "conversion")
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
        why = saturation_reason(image, self.params["max_saturated_fraction"]) if raw else \
            line_integral_dtype_reason(image.dtype)
        if why:
            raise _Refused("saturated" if raw else "encoding", why)
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


    def _diagnostics(self):
        rejected = self.rejected.snapshot()
        return ("warn" if rejected else "ok", f"{self.published} views standardized, {self.dropped} dropped",
                {"published": self.published, **{f"rejected.{k}": v for k, v in rejected.items()}})


def main(args=None) -> int:
    return run_node(StandardizeNode, args)


if __name__ == "__main__":
    sys.exit(main())

"""standardize_node: turns raw X-ray views (any C-arm image style) into line-integral views for reconstruction.

Interface: subscribes ``xray_views_raw`` (ixgs_ros/XrayView, any ``image_kind``); publishes, with the same
header, view_id and pose,

* ``xray_views``: the line integral (``image_kind = IMAGE_KIND_LINE_INTEGRAL``, 32FC1);
* ``xray_views_bone``: the bone-only line integral (``IMAGE_KIND_LINE_INTEGRAL``, 32FC1; model method only);
* ``xray_views_mask``: the per-pixel validity (``IMAGE_KIND_RAW``, mono8, 1 = valid; model method only).

``method``:

* ``model`` (default): raw images go through the anatomy-guided standardization model
  (:class:`ixgs_ros.standardize.apply.Standardizer`, weights from the ``weights`` parameter, default the
  committed ones): raw counts or vendor-processed images, any polarity or bit depth. Invalid pixels
  (shutters, saturation, metal, overlays) are flagged in the mask and hold a smooth continuation of their
  valid neighbours in the line integral, so a consumer that ignores the mask gets no garbage.
* ``log``: the classical physics step only, ``-ln(I / I0)`` with I0 from the ``i0`` parameter (> 0), else the
  message's ``i0`` (> 0), else estimated from the image (:func:`ixgs_ros.core.radiograph.standardize`); raw
  integer images with more than ``max_saturated_fraction`` of their pixels at the maximum value are dropped.

Line-integral views pass through either way (integer pixels labelled as line integrals are refused: a
mislabelled raw image). Then the detector is binned by ``downsample`` (line integrals and bone averaged; a
binned pixel is valid only when all its pixels are). A view that cannot be standardized (NaN, blank, all
saturated, too small or too large, an image whose size disagrees with its camera_info) is dropped with a
warning naming its view_id and the reason, counted by reason on ``/diagnostics``: never a silent garbage view.
``qos_reliability`` selects the subscription's QoS; ``i0``, ``downsample`` and ``max_saturated_fraction`` can
be changed at run time (validated).
"""
from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node

from ixgs_ros.core.radiograph import RadiographError, bin_view, standardize
from ixgs_ros.core.shot_checks import (DEFAULT_MAX_SATURATED_FRACTION, RejectionLedger, line_integral_dtype_reason,
                                       no_signal_reason, raw_i0_reason, saturation_reason)
from ixgs_ros.msg import XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import (SHOT_QUEUE_DEPTH, Diagnostics, declare_parameters, guard_parameters, run_node,
                                  shot_qos)
from ixgs_ros.standardize.apply import StandardizeError, Standardizer

NAME = "standardize_node"
METHODS = ("model", "log")

PARAMETERS = {
    "method": ("model", "Raw images: 'model' (the standardization model) or 'log' (-ln(I/I0) only)"),
    "weights": ("", "Standardization model weights (.safetensors with its .json); '' = the committed ones"),
    "i0": (0.0, "method log: unattenuated intensity; 0 = use the message's i0, else estimate it"),
    "downsample": (1, "Integer detector down-sampling factor (1 = keep the detector resolution)"),
    "qos_reliability": ("reliable", "QoS reliability of the xray_views_raw subscription: 'reliable' or "
                                    "'best_effort'"),
    "max_saturated_fraction": (DEFAULT_MAX_SATURATED_FRACTION, "method log: raw integer images with a larger "
                                                               "share of pixels at the dtype's maximum are dropped"),
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
    if name == "method" and value not in METHODS:
        return f"method must be one of {', '.join(METHODS)}, got {value!r}"
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
        self.model = None
        if self.params["method"] == "model":
            self.model = Standardizer(self.params["weights"] or None)  # a bad weights file stops the node here
        self.published = 0
        self.dropped = 0
        self.rejected = RejectionLedger()
        self.publisher = self.create_publisher(XrayView, "xray_views", SHOT_QUEUE_DEPTH)
        self.bone_publisher = self.create_publisher(XrayView, "xray_views_bone", SHOT_QUEUE_DEPTH)
        self.mask_publisher = self.create_publisher(XrayView, "xray_views_mask", SHOT_QUEUE_DEPTH)
        self.create_subscription(XrayView, "xray_views_raw", self._on_view, shot_qos(self.params["qos_reliability"]))
        guard_parameters(self, check_parameter, self.params.update, LIVE)
        Diagnostics(self, self._diagnostics)
        how = (f"the standardization model ({self.model.weights.name}, sha256 {self.model.record['sha256'][:12]})"
               if self.model is not None else
               f"-ln(I/I0) (i0 {self.params['i0'] or 'from the message or estimated'})")
        self.get_logger().info(f"standardizing xray_views_raw into line integrals on xray_views with {how}, "
                               f"downsample {self.params['downsample']}")

    def _on_view(self, msg: XrayView) -> None:
        try:
            outs = self.process(msg)
        except (cv.ConversionError, RadiographError, StandardizeError) as exc:
            self.dropped += 1
            self.rejected.count(exc.key if isinstance(exc, _Refused) else
                                "quaternion" if isinstance(exc, cv.QuaternionError) else "conversion")
            self.get_logger().warning(f"dropped view {msg.view_id!r}: {exc}")
            return
        self.publisher.publish(outs[0])
        if len(outs) == 3:
            self.bone_publisher.publish(outs[1])
            self.mask_publisher.publish(outs[2])
        self.published += 1

    def _message(self, msg: XrayView, view, image, kind: int) -> XrayView:
        return cv.view_to_xray_view(view, image, image_kind=kind, view_id=msg.view_id,
                                    frame_id=msg.header.frame_id, optical_frame_id=msg.image.header.frame_id,
                                    stamp=msg.header.stamp)

    def process(self, msg: XrayView) -> list[XrayView]:
        """``[line]`` or, through the model, ``[line, bone, mask]`` XrayViews of ``msg`` (raises
        ConversionError / RadiographError / StandardizeError)."""
        if msg.image_kind not in (XrayView.IMAGE_KIND_RAW, XrayView.IMAGE_KIND_LINE_INTEGRAL):
            raise cv.ConversionError(f"unknown image_kind {msg.image_kind}")
        view = cv.xray_view_to_view(msg)
        image = cv.xray_view_image(msg)
        raw = msg.image_kind == XrayView.IMAGE_KIND_RAW
        if not raw:
            why = line_integral_dtype_reason(image.dtype)
            if why:
                raise _Refused("encoding", why)
        ds = self.params["downsample"]
        LI = XrayView.IMAGE_KIND_LINE_INTEGRAL
        if raw and self.model is not None:
            # the model flags saturated pixels in its mask and refuses a view with too few valid ones
            out = self.model(image)
            bview, line = bin_view(view, out.line, ds)
            _, bone = bin_view(view, out.bone, ds)
            _, valid = bin_view(view, out.mask.astype(np.float32), ds)
            mask = (valid > 0.999).astype(np.uint8)
            if out.valid_fraction < 0.5:
                self.get_logger().warning(f"view {msg.view_id!r}: only {100 * out.valid_fraction:.0f} % of the "
                                          "pixels are valid", throttle_duration_sec=10.0)
            return [self._message(msg, bview, line.astype(np.float32), LI),
                    self._message(msg, bview, np.ascontiguousarray(bone, dtype=np.float32), LI),
                    self._message(msg, bview, mask, XrayView.IMAGE_KIND_RAW)]
        if raw:
            why = saturation_reason(image, self.params["max_saturated_fraction"])
            if why:
                raise _Refused("saturated", why)
        i0 = self.params["i0"] or msg.i0
        if raw:
            why = no_signal_reason(image)
            if why:
                raise _Refused("no_signal", why)
            why = raw_i0_reason(image, i0)
            if why:
                raise _Refused("i0", why)
        view, li, info = standardize(view, image, raw=raw, i0=i0, downsample=ds)
        if raw and info["i0_estimated"]:
            self.get_logger().info(f"view {msg.view_id!r}: i0 estimated from the image: {info['i0']:.6g}",
                                   throttle_duration_sec=10.0)
        if raw and info["clipped_low"]:
            self.get_logger().warning(f"view {msg.view_id!r}: {info['clipped_low']} pixel(s) below i0 * 1e-6 "
                                      f"clipped", throttle_duration_sec=10.0)
        return [self._message(msg, view, li, LI)]

    def _diagnostics(self):
        rejected = self.rejected.snapshot()
        return ("warn" if rejected else "ok", f"{self.published} views standardized, {self.dropped} dropped",
                {"published": self.published, **{f"rejected.{k}": v for k, v in rejected.items()}})


def main(args=None) -> int:
    return run_node(StandardizeNode, args)


if __name__ == "__main__":
    sys.exit(main())

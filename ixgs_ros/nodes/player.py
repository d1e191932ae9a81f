"""scan_player_node: plays an ixgs-scan folder or a recorded bag as a tracked C-arm, to drive the live pipeline
without one.

With ``bag`` (a rosbag2 folder, mcap or sqlite3: a ``ros2 bag record`` of a C-arm, or a shot record exported by
``python -m ixgs_ros.nodes.bag export``) it replays the bag's ``sensor_msgs/Image`` (to ``image_raw``),
``CameraInfo`` (``camera_info``), ``PoseStamped`` (``source_pose``) and ``tf2_msgs/TFMessage`` (``/tf``,
``/tf_static``) messages with their recorded time spacing divided by ``rate_scale``, as the recorded bytes,
stamps included (``restamp`` shifts every stamp by the same amount so that the first is now); other types are
skipped. Otherwise it plays ``scan_dir``:

Publishes, like a C-arm driver plus an optical tracker would (topic names relative):

* ``image_raw`` (sensor_msgs/Image): one shot every ``1 / rate_hz`` s. With ``raw_i0 > 0`` the scan's line
  integrals become detector counts ``round(raw_i0 * exp(-p))`` (16UC1, clipped to 1..65535), else the line
  integrals themselves (32FC1: run xray_ingest_node with ``image_kind:=line_integral``). A raw scan is
  played as stored (16UC1 when its values fit, else 32FC1).
* ``camera_info`` (sensor_msgs/CameraInfo) with each image, under the image's stamp.
* ``source_pose`` (geometry_msgs/PoseStamped in ``world_frame``, metres): the tracker stream at
  ``pose_rate_hz``, holding the pose of the latest shot, plus one sample at each shot's stamp.

Stamps are the node clock's. With ``wait_for_subscribers`` (default) it starts once the three topics have
subscribers, so no shot is lost to discovery. After the last view it logs and idles (or starts over with
``loop``).

    scan_player_node --ros-args -p scan_dir:=bench_out/scans/... -p raw_i0:=30000.0 -r __ns:=/ixgs
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ixgs_ros.core.scan import Scan, ScanError
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import SHOT_QUEUE_DEPTH, declare_parameters, latched_qos, run_node

NAME = "scan_player_node"

PARAMETERS = {
    "scan_dir": ("", "ixgs-scan folder to play (this or bag is required)"),
    "bag": ("", "rosbag2 folder (mcap or sqlite3) to replay instead of scan_dir"),
    "rate_scale": (1.0, "bag: playback speed (2 = twice as fast as recorded)"),
    "restamp": (False, "bag: shift all stamps so that the first message is stamped now"),
    "rate_hz": (1.0, "Shots per second"),
    "pose_rate_hz": (50.0, "Rate of the simulated tracker's source_pose stream"),
    "raw_i0": (0.0, "> 0: publish detector counts round(raw_i0 * exp(-line integral)); 0: line integrals"),
    "world_frame": ("world", "Frame of the published source poses"),
    "optical_frame": ("xray_source_optical", "frame_id of image_raw and camera_info"),
    "loop": (False, "Start over after the last view"),
    "wait_for_subscribers": (True, "Start playing once image_raw, camera_info and source_pose have subscribers"),
}


class ScanPlayerNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=``)."""
        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        if not p["scan_dir"] and not p["bag"]:
            raise ValueError("scan_dir is required (-p scan_dir:=/path/to/scan), or bag")
        self.waiting = bool(p["wait_for_subscribers"])
        self.pub_image = self.create_publisher(Image, "image_raw", SHOT_QUEUE_DEPTH)
        self.pub_info = self.create_publisher(CameraInfo, "camera_info", SHOT_QUEUE_DEPTH)
        self.pub_pose = self.create_publisher(PoseStamped, "source_pose", 50)
        if p["bag"]:
            self._init_bag(p)
            return
        for key in ("rate_hz", "pose_rate_hz"):
            if not p[key] > 0:
                raise ValueError(f"{key} must be > 0, got {p[key]}")
        if not p["raw_i0"] >= 0:
            raise ValueError(f"raw_i0 must be >= 0 (0 = publish line integrals), got {p['raw_i0']}")
        try:
            self.scan = Scan.load(Path(p["scan_dir"]))
        except (ScanError, OSError) as exc:
            raise ValueError(f"scan_dir {p['scan_dir']!r}: {exc}") from None
        if p["raw_i0"] > 0 and self.scan.image_kind != "line_integral":
            raise ValueError(f"raw_i0 converts line integrals, but {p['scan_dir']!r} holds "
                             f"{self.scan.image_kind} images")
        self.next_index = 0
        self.current_pose = None
        self.create_timer(1.0 / p["pose_rate_hz"], self._tracker_tick)
        self.create_timer(1.0 / p["rate_hz"], self._shot_tick)
        kind = f"detector counts (i0 {p['raw_i0']:g})" if p["raw_i0"] > 0 else f"{self.scan.image_kind} images"
        self.get_logger().info(f"playing {len(self.scan)} views of {p['scan_dir']} as {kind} at "
                               f"{p['rate_hz']:g} shots/s")

    # ------------------------------------------------------------------------------------ bags
    def _init_bag(self, p) -> None:
        from ixgs_ros.nodes.bag import PLAYED_TYPES, read_bag

        if not p["rate_scale"] > 0:
            raise ValueError(f"rate_scale must be > 0, got {p['rate_scale']}")
        try:
            msgs = [m for m in read_bag(p["bag"]) if m.msgtype in PLAYED_TYPES]
        except Exception as exc:  # rosbags raises its own error types for damaged bags
            raise ValueError(f"bag {p['bag']!r}: {type(exc).__name__}: {exc}") from None
        if not msgs:
            raise ValueError(f"bag {p['bag']!r}: no Image, CameraInfo, PoseStamped or TFMessage messages")
        from tf2_msgs.msg import TFMessage

        self.pub_tf = self.create_publisher(TFMessage, "/tf", 100)
        self.pub_tf_static = self.create_publisher(TFMessage, "/tf_static", latched_qos(100))
        self.types = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo,
                      "geometry_msgs/msg/PoseStamped": PoseStamped, "tf2_msgs/msg/TFMessage": TFMessage}
        self.bag_msgs = msgs
        self.bag_index = 0
        self.bag_t0 = None  # (wall time, bag time) of the first message
        self.shift_ns = None
        self.create_timer(0.005, self._bag_tick)
        n_img = sum(m.msgtype == "sensor_msgs/msg/Image" for m in msgs)
        self.get_logger().info(f"replaying {len(msgs)} messages ({n_img} images) of {p['bag']} at "
                               f"{p['rate_scale']:g}x")

    def _bag_publisher(self, m):
        if m.msgtype == "tf2_msgs/msg/TFMessage":
            return self.pub_tf_static if m.topic.endswith("tf_static") else self.pub_tf
        return {"sensor_msgs/msg/Image": self.pub_image, "sensor_msgs/msg/CameraInfo": self.pub_info,
                "geometry_msgs/msg/PoseStamped": self.pub_pose}[m.msgtype]

    def _restamped(self, m):
        from rclpy.serialization import deserialize_message

        from builtin_interfaces.msg import Time

        msg = deserialize_message(m.data, self.types[m.msgtype])
        headers = [t.header for t in msg.transforms] if m.msgtype == "tf2_msgs/msg/TFMessage" else [msg.header]
        for h in headers:
            ns = h.stamp.sec * 1_000_000_000 + h.stamp.nanosec + self.shift_ns
            h.stamp = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        return msg

    def _bag_tick(self) -> None:
        if self.waiting:
            if self._subscribed():
                self.waiting = False
                self.get_logger().info("subscribers are up: playing")
            return
        now = self.get_clock().now().nanoseconds
        if self.bag_t0 is None:
            self.bag_t0 = (now, self.bag_msgs[0].timestamp_ns)
            self.shift_ns = now - self.bag_msgs[0].timestamp_ns
        while self.bag_index < len(self.bag_msgs):
            m = self.bag_msgs[self.bag_index]
            due = self.bag_t0[0] + (m.timestamp_ns - self.bag_t0[1]) / self.params["rate_scale"]
            if due > now:
                return
            self._bag_publisher(m).publish(self._restamped(m) if self.params["restamp"] else m.data)
            self.bag_index += 1
            if self.bag_index == len(self.bag_msgs):
                self.get_logger().info(f"replayed all {len(self.bag_msgs)} messages of {self.params['bag']}")

    # ------------------------------------------------------------------------------------ scans
    def image(self, index: int) -> np.ndarray:
        """The image published for view ``index``."""
        proj = self.scan.projections[index]
        i0 = self.params["raw_i0"]
        if i0 > 0:
            return np.clip(np.round(i0 * np.exp(-proj.astype(np.float64))), 1, 65535).astype(np.uint16)
        if self.scan.image_kind == "raw" and proj.min() >= 0 and proj.max() <= 65535 and \
                np.array_equal(proj, np.round(proj)):
            return proj.astype(np.uint16)
        return proj.astype(np.float32)

    def _publish_pose(self, stamp) -> None:
        msg = PoseStamped()
        msg.header = cv.make_header(self.params["world_frame"], stamp)
        msg.pose = cv.matrix_to_pose(self.current_pose)
        self.pub_pose.publish(msg)

    def _tracker_tick(self) -> None:
        if self.current_pose is not None:
            self._publish_pose(self.get_clock().now().to_msg())

    def _subscribed(self) -> bool:
        return all(pub.get_subscription_count() > 0 for pub in (self.pub_image, self.pub_info, self.pub_pose))

    def _shot_tick(self) -> None:
        if self.waiting:
            if not self._subscribed():
                return
            self.waiting = False
            self.get_logger().info("subscribers are up: playing")
            return  # one period for them to finish matching
        if self.next_index >= len(self.scan):
            if not self.params["loop"]:
                return
            self.next_index = 0
        i = self.next_index
        self.next_index += 1
        view = self.scan.views[i]
        stamp = self.get_clock().now().to_msg()
        header = cv.make_header(self.params["optical_frame"], stamp)
        self.current_pose = view.T_world_source
        self.pub_info.publish(cv.view_to_camera_info(view, header))
        self.pub_image.publish(cv.array_to_image(self.image(i), header=header))
        self._publish_pose(stamp)
        if self.next_index == len(self.scan):
            self.get_logger().info(f"played all {len(self.scan)} views" +
                                   ("; starting over" if self.params["loop"] else ""))


def main(args=None) -> int:
    return run_node(ScanPlayerNode, args)


if __name__ == "__main__":
    sys.exit(main())

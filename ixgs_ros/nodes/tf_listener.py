"""A minimal tf listener: /tf and /tf_static into a :class:`~ixgs_ros.core.frames.FrameGraph` (no tf2_ros).

tf2_ros is not installable from PyPI; its wire format is ``tf2_msgs/TFMessage`` on the absolute topics ``/tf``
(dynamic transforms; reliable, volatile, depth 100) and ``/tf_static`` (static ones; reliable, transient local,
so a listener that starts late still gets them), which is all this needs. The maths (buffering, interpolation,
composing a chain) is ROS-free in :mod:`ixgs_ros.core.frames`. Bad transforms (non-unit quaternions, loops,
non-finite values) are refused one by one with a logged reason; the others of the message are kept.
"""
from __future__ import annotations

import threading
from typing import Callable

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from ixgs_ros.core.frames import FrameError, FrameGraph
from ixgs_ros.nodes.convert_outputs import tf_message_edges

__all__ = ["TfListener", "TF_QOS", "TF_STATIC_QOS"]

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TfListener:
    """Keeps ``graph`` up to date from /tf and /tf_static. ``on_update(edges, static)`` (optional) is called
    after each message with the ``(parent, child, T_mm, stamp)`` edges it stored; ``on_error(text)`` gets one
    line per refused transform."""

    def __init__(self, node: Node, graph: FrameGraph | None = None, *,
                 on_update: Callable[[list, bool], None] | None = None,
                 on_error: Callable[[str], None] | None = None, callback_group=None):
        self.graph = graph or FrameGraph()
        self.lock = threading.Lock()
        self.on_update = on_update
        self.on_error = on_error or (lambda text: node.get_logger().warning(text, throttle_duration_sec=5.0))
        self.refused = 0
        node.create_subscription(TFMessage, "/tf", lambda m: self._on(m, False), TF_QOS,
                                 callback_group=callback_group)
        node.create_subscription(TFMessage, "/tf_static", lambda m: self._on(m, True), TF_STATIC_QOS,
                                 callback_group=callback_group)

    def _on(self, msg: TFMessage, static: bool) -> None:
        edges, errors = tf_message_edges(msg)
        stored = []
        with self.lock:
            for parent, child, T, stamp in edges:
                try:
                    self.graph.set_transform(parent, child, T, stamp, static=static)
                    stored.append((parent, child, T, stamp))
                except FrameError as exc:
                    errors.append(str(exc))
        for text in errors:
            self.refused += 1
            self.on_error(f"rejected {'/tf_static' if static else '/tf'} transform: {text}")
        if stored and self.on_update is not None:
            self.on_update(stored, static)

    def lookup(self, target: str, source: str, stamp: float | None = None):
        """``T_target_source`` (mm) at ``stamp``; FrameError when not (yet) possible."""
        with self.lock:
            return self.graph.lookup(target, source, stamp)

    def path(self, target: str, source: str):
        with self.lock:
            return self.graph.path(target, source)

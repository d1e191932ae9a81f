"""Shared plumbing of the ixgs_ros node executables: parameter declaration and the spin/shutdown loop."""
from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from typing import Any, Callable, Mapping

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

#: How often (s) the spin loop returns to Python, so that a SIGINT/SIGTERM is acted on within this time.
SPIN_PERIOD_S = 0.1

#: QoS history depth of every shot topic (image_raw, camera_info, xray_views_raw, xray_views), publishers and
#: subscriptions alike: a whole C-arm session (10-50 shots) fits, so a node that is busy for a while (e.g.
#: loading RTK, which holds the interpreter for seconds) loses no shot: with a shallow queue the reliable writer
#: overwrites samples not yet acknowledged (test_ros_nodes sends a burst of 30).
SHOT_QUEUE_DEPTH = 100

#: name -> (default value, description). Defaults live here (one place per node); config/ixgs.yaml
#: overrides them for the launch file.
ParameterSpec = Mapping[str, tuple[Any, str]]


def declare_parameters(node: Node, spec: ParameterSpec) -> dict[str, Any]:
    """Declare every parameter of ``spec`` on ``node`` and return their current values by name.

    A value of the wrong type (e.g. ``voxel_size_mm:=1`` for a double) raises ``ValueError`` naming the
    parameter, which :func:`run_node` reports in one line."""
    values = {}
    for name, (default, description) in spec.items():
        try:
            node.declare_parameter(name, default, ParameterDescriptor(description=description))
        except ParameterException as exc:
            raise ValueError(f"parameter {name}: {exc}") from None
        values[name] = node.get_parameter(name).value
    return values


class RosLogHandler(logging.Handler):
    """Routes the ROS-free library's ``logging`` records (logger ``ixgs_ros``) to the node's rosout logger."""

    def __init__(self, node: Node):
        super().__init__(logging.INFO)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            logger = self.node.get_logger()
            if record.levelno >= logging.ERROR:
                logger.error(text)
            elif record.levelno >= logging.WARNING:
                logger.warning(text)
            else:
                logger.info(text)
        except Exception:  # a log line must never break the node
            pass


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """Initialise rclpy, spin the node made by ``factory`` until SIGINT/SIGTERM, shut down cleanly (exit 0).

    Shutdown does not rely on rclpy's own signal handlers: with them, a SIGTERM now and then failed to wake
    an executor blocked in ``rcl_wait`` and the node never exited (seen in CI and reproduced here, about 1
    stop in 20). Instead the signals set a flag from Python's handler and the executor spins in
    ``SPIN_PERIOD_S`` slices, so the flag is seen within that time. SIGUSR1 dumps every thread's Python
    stack to stderr (``faulthandler``), for diagnosing a node that hangs."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = None
    try:
        try:
            node = factory()
        except ValueError as exc:  # bad parameters: one clear line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        handler = RosLogHandler(node)
        lib_logger = logging.getLogger("ixgs_ros")
        lib_logger.addHandler(handler)
        lib_logger.setLevel(logging.INFO)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:
            pass
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

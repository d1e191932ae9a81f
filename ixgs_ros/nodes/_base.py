"""Shared plumbing of the ixgs_ros node executables: parameters (declared, and validated when changed at run
time), the QoS of the shot topics, diagnostics, and the spin/shutdown loop."""
from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from typing import Any, Callable, Mapping

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

#: How often (s) the spin loop returns to Python, so that a SIGINT/SIGTERM is acted on within this time.
SPIN_PERIOD_S = 0.1

#: QoS history depth of every shot topic (image_raw, camera_info, xray_views_raw, xray_views), publishers and
#: subscriptions alike: a whole C-arm session (10-50 shots) fits, so a node that is busy for a while (e.g.
#: loading RTK, which holds the interpreter for seconds) loses no shot: with a shallow queue the reliable writer
#: overwrites samples not yet acknowledged (test_ros_nodes sends a burst of 30).
SHOT_QUEUE_DEPTH = 100

#: name -> (default value, description). Defaults live here (one place per node); config/ixgs.yaml
#: overrides them for the launch file. A default that is a ``Parameter.Type`` declares a parameter of that type
#: without a value (unset: None in the returned values; the description says what unset means).
ParameterSpec = Mapping[str, tuple[Any, str]]

#: QoS reliabilities the shot subscriptions accept (parameter ``qos_reliability``). A best-effort subscription
#: matches reliable and best-effort publishers (samples a busy reader misses are then gone); a reliable one
#: matches reliable publishers only, and none of the sensor-data (best-effort) kind.
RELIABILITIES = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}

#: Diagnostics go to the absolute topic every ROS 2 diagnostics tool reads.
DIAGNOSTICS_TOPIC = "/diagnostics"


def declare_parameters(node: Node, spec: ParameterSpec) -> dict[str, Any]:
    """Declare every parameter of ``spec`` on ``node`` and return their current values by name.

    A value of the wrong type (e.g. ``voxel_size_mm:=1`` for a double) raises ``ValueError`` naming the
    parameter, which :func:`run_node` reports in one line."""
    values = {}
    for name, (default, description) in spec.items():
        # A string parameter accepts a YAML boolean: ROS reads a bare off/on/yes/no/true/false as one, so
        # ``refine_poses:=off`` would otherwise be refused as a BOOL; it becomes the word "off" / "on".
        words = isinstance(default, str)
        try:
            node.declare_parameter(name, default, ParameterDescriptor(description=description, dynamic_typing=words))
        except ParameterException as exc:
            raise ValueError(f"parameter {name}: {exc}") from None
        try:
            values[name] = node.get_parameter(name).value
        except ParameterUninitializedException:
            values[name] = None
        if words and not isinstance(values[name], str):
            values[name] = _as_word(name, values[name])
            node.set_parameters([Parameter(name, Parameter.Type.STRING, values[name])])
    return values


def _as_word(name: str, value: Any) -> str:
    """The string a string parameter means by a non-string value: a boolean is "on" / "off"; anything else is
    refused, naming the parameter."""
    if isinstance(value, bool):
        return "on" if value else "off"
    raise ValueError(f"parameter {name}: expected a string, got {value!r} ({type(value).__name__})")


def shot_qos(reliability: str, depth: int = SHOT_QUEUE_DEPTH) -> QoSProfile:
    """QoS of a shot subscription: keep last ``depth``, volatile, ``reliability`` "reliable" | "best_effort"."""
    if reliability not in RELIABILITIES:
        raise ValueError(f"qos_reliability must be one of {', '.join(RELIABILITIES)}, got {reliability!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITIES[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable, transient local: a subscriber that comes later still gets the last ``depth`` messages."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def guard_parameters(node: Node, check: Callable[[str, Any], str | None], apply: Callable[[dict], None],
                     live: set[str]) -> None:
    """Validate run-time parameter changes: each new value goes through ``check(name, value)`` (a reason string
    refuses the whole request, as does a name outside ``live``: it only takes effect at a restart); an accepted
    request is handed to ``apply({name: value})`` before it is stored. Each refusal is logged with its reason
    and returned to the caller (``ros2 param set`` prints it)."""

    def on_set(params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        for name, value in changes.items():
            if name.startswith("qos_overrides.") or name == "use_sim_time":
                continue
            why = check(name, value)
            if not why and name not in live:
                why = f"{name} cannot be changed while the node runs; restart the node with the new value"
            if why:
                node.get_logger().warning(f"parameter change refused: {why}")
                return SetParametersResult(successful=False, reason=why)
        try:
            apply(changes)
        except ValueError as exc:
            node.get_logger().warning(f"parameter change refused: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        node.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)


class Diagnostics:
    """Publishes the node's ``diagnostic_msgs/DiagnosticArray`` on /diagnostics every ``period_s``:
    ``report()`` returns ``(level, message, {key: value})`` (level "ok" | "warn" | "error")."""

    def __init__(self, node: Node, report: Callable[[], tuple[str, str, dict]], period_s: float = 1.0,
                 callback_group=None):
        from ixgs_ros.nodes.convert_outputs import diagnostic_array

        self._array = diagnostic_array
        self.node = node
        self.report = report
        self.name = f"ixgs_ros: {node.get_fully_qualified_name()}"
        self.pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        node.create_timer(period_s, self.publish, callback_group=callback_group)

    def publish(self) -> None:
        try:
            level, message, values = self.report()
            self.pub.publish(self._array(self.name, level, message, values,
                                         stamp=self.node.get_clock().now().to_msg()))
        except Exception as exc:  # diagnostics must never take the node down
            self.node.get_logger().error(f"diagnostics: {type(exc).__name__}: {exc}", throttle_duration_sec=10.0)


def now_s(node: Node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


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


def run_node(factory: Callable[[], Node], args: list[str] | None = None, threads: int = 1) -> int:
    """Initialise rclpy, spin the node made by ``factory`` until SIGINT/SIGTERM, shut down cleanly (exit 0).

    Shutdown does not rely on rclpy's own signal handlers: with them, a SIGTERM now and then failed to wake
    an executor blocked in ``rcl_wait`` and the node never exited (seen in CI and reproduced here, about 1
    stop in 20). Instead the signals set a flag from Python's handler and the executor spins in
    ``SPIN_PERIOD_S`` slices, so the flag is seen within that time. SIGUSR1 dumps every thread's Python
    stack to stderr (``faulthandler``), for diagnosing a node that hangs. ``threads > 1``: a multi-threaded
    executor (a node whose services may take seconds keeps its timers running in the other threads)."""
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
        executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:
            pass
    finally:
        if executor is not None:
            pool = getattr(executor, "_executor", None)
            if pool is not None:
                # rclpy's MultiThreadedExecutor.shutdown destroys its guard condition before its threads are done,
                # and a callback finishing then fails on it ("cannot use Destroyable"): let them finish first
                pool.shutdown(wait=True)
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

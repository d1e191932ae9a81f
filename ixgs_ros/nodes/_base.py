"""Shared plumbing of the ixgs_ros node executables: parameter declaration and the spin/shutdown loop."""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

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


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """Initialise rclpy, spin the node made by ``factory`` until SIGINT/SIGTERM, shut down cleanly."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = factory()
        except ValueError as exc:  # bad parameters: one clear line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            rclpy.spin(node)
        except Exception:
            if rclpy.ok():
                raise
            # SIGINT/SIGTERM shut the context down while the executor was building its wait set: rclpy then
            # raises RCLError ("the given context is not valid") instead of ExternalShutdownException
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0

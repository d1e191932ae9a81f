"""Shared plumbing of the ixgs_ros node executables: parameter declaration and the spin/shutdown loop."""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

#: name -> (default value, description). Defaults live here (one place per node); config/ixgs.yaml
#: overrides them for the launch file.
ParameterSpec = Mapping[str, tuple[Any, str]]


def declare_parameters(node: Node, spec: ParameterSpec) -> dict[str, Any]:
    """Declare every parameter of ``spec`` on ``node`` and return their current values by name."""
    values = {}
    for name, (default, description) in spec.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=description))
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
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0

"""The node executables: parameters (code vs config/ixgs.yaml vs launch file) and live behaviour of the
skeleton nodes in their own processes (start, parameters from the YAML, status topic, clean SIGTERM)."""
from __future__ import annotations

import ast
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"xray_ingest_node": "ingest", "standardize_node": "standardize",
           "reconstruction_node": "reconstruction"}

pytestmark = pytest.mark.ros


def setup_py_nodes() -> dict:
    """NODES of setup.py, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "NODES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no NODES")


def test_executables_agree_everywhere():
    nodes = setup_py_nodes()
    assert nodes == {name: f"ixgs_ros.nodes.{mod}:main" for name, mod in MODULES.items()}
    cmake = (ROOT / "cmake" / "install_python.cmake").read_text()
    for name, mod in MODULES.items():
        assert f'"{name}={mod}"' in cmake
    launch = ast.parse((ROOT / "launch" / "ixgs.launch.py").read_text())  # not importable here (no launch)
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in launch.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
    assert consts["PACKAGE"] == "ixgs_ros" and set(consts["NODES"]) == set(MODULES)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in launch.body)


def test_yaml_matches_declared_parameters():
    config = yaml.safe_load((ROOT / "config" / "ixgs.yaml").read_text())
    assert set(config) == {f"/**/{name}" for name in MODULES}
    for name, mod in MODULES.items():
        spec = importlib.import_module(f"ixgs_ros.nodes.{mod}").PARAMETERS
        values = config[f"/**/{name}"]["ros__parameters"]
        assert set(values) == set(spec), name
        for key, value in values.items():
            default = spec[key][0]
            assert type(value) is type(default), f"{name}.{key}: {value!r} vs default {default!r}"
            if isinstance(default, list):
                assert {type(v) for v in value} == {type(default[0])}, f"{name}.{key}"


# ------------------------------------------------------------------------------------------ live nodes
@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    env = {
        "ROS_DOMAIN_ID": str(1 + ((os.getpid() + 37) % 100)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_profile.xml"),
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


def start_node(module: str, env: dict, *ros_args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"ixgs_ros.nodes.{module}", "--ros-args", *ros_args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode, proc.stdout.read()


def test_nodes_run_and_reconstruction_reports_status(ros_env):
    import rclpy
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from ixgs_ros.core.geometry import View, look_at
    from ixgs_ros.msg import ReconstructionStatus, XrayView
    from ixgs_ros.nodes import convert as cv

    ns = "/ixgs_test"
    params = ["--params-file", str(ROOT / "config" / "ixgs.yaml")]
    procs = {
        "reconstruction": start_node("reconstruction", ros_env, "-r", f"__ns:={ns}", *params,
                                     "-p", "status_rate_hz:=20.0", "-p", "volume_size:=[64,48,32]"),
        "ingest": start_node("ingest", ros_env, "-r", f"__ns:={ns}", *params),
        "standardize": start_node("standardize", ros_env, "-r", f"__ns:={ns}", *params),
    }
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node("ixgs_test_probe", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        statuses = []
        node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", statuses.append, 10)
        views = node.create_publisher(XrayView, f"{ns}/xray_views", 10)

        def spin_until(cond, timeout=30.0):
            deadline = time.monotonic() + timeout
            while not cond() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            return cond()

        # parameters: YAML values, command-line overrides
        client = node.create_client(GetParameters, f"{ns}/reconstruction_node/get_parameters")
        assert client.wait_for_service(timeout_sec=30.0), "reconstruction_node did not come up"
        future = client.call_async(GetParameters.Request(names=["volume_size", "status_rate_hz", "min_views",
                                                                "device"]))
        assert spin_until(future.done)
        size, rate, min_views, device = future.result().values
        assert list(size.integer_array_value) == [64, 48, 32] and rate.double_value == 20.0
        assert min_views.integer_value == 3 and device.string_value == "auto"

        assert spin_until(lambda: statuses), "no reconstruction_status"
        first = statuses[-1]
        assert first.state == ReconstructionStatus.IDLE and first.views_used == 0 and first.header.frame_id == "world"

        assert spin_until(lambda: views.get_subscription_count() > 0)
        view = View([[500.0, 0.0, 15.5], [0.0, 500.0, 11.5], [0.0, 0.0, 1.0]],
                    look_at([0.0, -500.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]), 32, 24)
        good = cv.view_to_xray_view(view, np.ones(view.shape, np.float32), view_id="v1")
        bad = cv.view_to_xray_view(view, np.ones(view.shape, np.float32), view_id="bad")
        bad.camera_info.k[0] = -1.0  # invalid intrinsics: must be rejected, not counted
        views.publish(bad)
        views.publish(good)
        n = len(statuses)
        assert spin_until(lambda: len(statuses) > n and statuses[-1].state == ReconstructionStatus.WAITING_FOR_VIEWS)
        last = statuses[-1]
        assert last.message.startswith("1 views received") and last.views_used == 0
        assert np.isnan(last.loss) and np.isnan(last.heldout_psnr_2d)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        results = {name: stop(p) for name, p in procs.items()}
    for name, (rc, out) in results.items():
        assert rc == 0, f"{name} did not stop cleanly on SIGTERM (rc={rc}):\n{out}"
        assert "skeleton node" in out, out
    assert "rejected view: XrayView 'bad'" in results["reconstruction"][1]


def test_node_rejects_bad_parameter(ros_env):
    proc = start_node("standardize", ros_env, "-p", "downsample:=0")
    rc, out = proc.wait(timeout=30), proc.stdout.read()
    assert rc == 2 and "error: downsample must be >= 1, got 0" in out and "Traceback" not in out

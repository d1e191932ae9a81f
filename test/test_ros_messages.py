"""Each custom message crosses a process boundary intact: a publisher process and a subscriber process
(rclpy, Fast DDS with config/fastdds_profile.xml, discovery limited to localhost, a private domain id).

The same file is the peer program: ``python test_ros_messages.py pub|sub OUTDIR``.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_profile.xml"
TOPICS = ("xray_view", "volume", "status")
TIMEOUT_S = 60.0

pytestmark = pytest.mark.ros


def build_messages() -> dict:
    """The messages sent, identical in every process (fixed seed and stamps)."""
    from ixgs_ros.core.geometry import View, look_at
    from ixgs_ros.core.volume import Grid
    from ixgs_ros.msg import XrayView
    from ixgs_ros.nodes import convert as cv

    rng = np.random.default_rng(2024)
    view = View([[1100.0, 0.0, 127.5], [0.0, 1100.0, 130.25], [0.0, 0.0, 1.0]],
                look_at([-35.0, -620.0, 40.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]), 256, 256, {"sdd": 1100.0})
    image = (rng.random((256, 256)) * 4.0).astype(np.float32)
    grid = Grid.centered(32, (1.25, 1.0, 0.75), center=(3.0, -2.0, 10.0))
    volume = (rng.random(grid.shape) * 0.04).astype(np.float32)
    return {
        "xray_view": cv.view_to_xray_view(view, image, view_id="shot_001", frame_id="world", stamp=1700000000.125,
                                          image_kind=XrayView.IMAGE_KIND_LINE_INTEGRAL),
        "volume": cv.volume_to_msg(volume, grid, units="1/mm", frame_id="world", stamp=1700000001.5),
        "status": cv.status_to_msg({"state": "optimizing", "views_used": 12, "iterations": 2500,
                                    "num_gaussians": 48211, "loss": 0.0321, "heldout_psnr_2d": math.nan,
                                    "message": "held-out: none", "wall_time_s": 41.5}, stamp=1700000002.0),
    }


def _qos():
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    # reliable + transient local: a subscriber that matches late still gets the (single) sample
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def run_publisher(outdir: Path) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    msgs = build_messages()
    rclpy.init()
    node = rclpy.create_node("ixgs_test_publisher")
    pubs = {name: node.create_publisher(type(msgs[name]), f"ixgs_test/{name}", _qos()) for name in TOPICS}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.get_subscription_count() == 0 for p in pubs.values()):
            if time.monotonic() > deadline:
                print("publisher: no subscriber matched", file=sys.stderr)
                return 3
            rclpy.spin_once(node, timeout_sec=0.05)
        for name in TOPICS:
            pubs[name].publish(msgs[name])
        (outdir / "published").write_text(repr(time.time()))
        rclpy.spin(node)  # keep the samples available until the test stops us with SIGTERM
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_subscriber(outdir: Path) -> int:
    import rclpy
    from rclpy.serialization import serialize_message

    from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView

    types = {"xray_view": XrayView, "volume": Volume, "status": ReconstructionStatus}
    received = {}
    rclpy.init()
    node = rclpy.create_node("ixgs_test_subscriber")

    def callback(name):
        def on_msg(msg):
            received[name] = serialize_message(msg)  # deserialised by rclpy here, serialised again for the test
        return on_msg

    for name in TOPICS:
        node.create_subscription(types[name], f"ixgs_test/{name}", callback(name), _qos())
    (outdir / "subscribed").write_text("")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(received) < len(TOPICS) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    for name, data in received.items():
        (outdir / f"{name}.cdr").write_bytes(data)
    return 0 if len(received) == len(TOPICS) else 4


# ------------------------------------------------------------------------------------------------ the test
def ros_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "ROS_DOMAIN_ID": str(1 + (os.getpid() % 100)),  # private per test run
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE),
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    })
    return env


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args} ignored SIGTERM")
    return proc.returncode


def test_custom_messages_between_processes(tmp_path):
    try:
        from rclpy.serialization import deserialize_message

        from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
        from ixgs_ros.nodes import convert as cv
    except ImportError as exc:
        pytest.fail(f"ROS 2 runtime or generated ixgs_ros.msg missing ({exc}); run scripts/setup.sh")
    env = ros_env(tmp_path)
    me = str(Path(__file__).resolve())
    sub = subprocess.Popen([sys.executable, me, "sub", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    pub = subprocess.Popen([sys.executable, me, "pub", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        try:
            sub_rc = sub.wait(timeout=TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            sub_rc = None
        pub_rc = stop(pub)
    finally:
        for p in (sub, pub):
            if p.poll() is None:
                p.kill()
                p.wait()
    sub_out, pub_out = sub.stdout.read(), pub.stdout.read()
    assert sub_rc == 0, f"subscriber rc={sub_rc}\n{sub_out}\npublisher:\n{pub_out}"
    assert pub_rc == 0, f"publisher rc={pub_rc} (SIGTERM must end it cleanly)\n{pub_out}"

    expected = build_messages()
    types = {"xray_view": XrayView, "volume": Volume, "status": ReconstructionStatus}
    got = {}
    for name in TOPICS:
        data = (tmp_path / f"{name}.cdr").read_bytes()
        # (no byte comparison: CDR alignment padding is not initialised, so equal messages may differ there)
        got[name] = deserialize_message(data, types[name])

    # every field (generated __eq__), then through the conversions the nodes use
    assert got["xray_view"] == expected["xray_view"]
    img = cv.xray_view_image(got["xray_view"])
    assert img.shape == (256, 256) and img.dtype == np.float32
    np.testing.assert_array_equal(img, cv.xray_view_image(expected["xray_view"]))
    v_got, v_exp = cv.xray_view_to_view(got["xray_view"]), cv.xray_view_to_view(expected["xray_view"])
    assert v_got == v_exp and v_got.meta == v_exp.meta

    assert got["volume"] == expected["volume"]
    vol, grid = cv.msg_to_volume(got["volume"])
    vol_exp, grid_exp = cv.msg_to_volume(expected["volume"])
    assert vol.shape == (32, 32, 32)
    np.testing.assert_array_equal(vol, vol_exp)
    np.testing.assert_array_equal(grid.affine, grid_exp.affine)

    s_got, s_exp = cv.status_msg_to_dict(got["status"]), cv.status_msg_to_dict(expected["status"])
    for key in ("loss", "wall_time_s"):  # float32 on the wire
        s_exp[key] = float(np.float32(s_exp[key]))
    assert math.isnan(s_got.pop("heldout_psnr_2d")) and math.isnan(s_exp.pop("heldout_psnr_2d"))
    assert s_got == s_exp


if __name__ == "__main__":
    role, out = sys.argv[1], Path(sys.argv[2])
    sys.exit(run_publisher(out) if role == "pub" else run_subscriber(out))

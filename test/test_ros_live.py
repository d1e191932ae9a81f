"""The live pipeline as a user runs it: `ixgs live` starts every node as its own process with the launch file's
executables and parameters; a small simulated scan is played through it and every output is checked (volume and
status with their views and stage, bone markers and meshes inside the volume, the bone cloud's fields, MPR slice
shapes, the volume frame looked up from /tf_static, diagnostics, the services), a picture of what RViz shows is
rendered, the shot record is replayed from a bag, and the process stops cleanly. Also: a reconstruction node
killed with kill -9 loses no shot, view ids stay unique across ingest restarts, each bad input is refused and
counted, poses come from a tf chain, QoS and run-time parameter changes."""
from __future__ import annotations

import ast
import importlib.util
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_ros_nodes import MU, ros_env, sphere_scan, spinner, start_node, stop  # noqa: F401 (ros_env: a fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ros

#: Tiny and fast: 16^3 at 2.5 mm, the torch initial solve (no RTK to load), a short schedule.
TINY_RECONSTRUCTION = {
    "volume_size": "[16,16,16]", "voxel_size_mm": "2.5", "volume_center_mm": "[0.0,0.0,0.0]", "device": "cpu",
    "min_views": "8", "iterations": "15", "status_rate_hz": "10.0", "volume_publish_period_s": "30.0",
    "engine_overrides": "[init.solver=torch,init.passes=3,exterior.passes=null,init.tv_weight=0.01,"
                        "init.tv_weight_final=null,seed=1]",
    "refine_poses": "off",
    "mesh_threshold_hu": "600.0", "cloud_threshold_hu": "600.0", "mesh_smooth_iterations": "0",
}


def launch_constants() -> dict:
    tree = ast.parse((ROOT / "launch" / "ixgs.launch.py").read_text())
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}


def test_ixgs_live_starts_what_the_launch_file_starts(tmp_path):
    """Same executables (the launch file's NODES + its scan player), the same parameter file, namespace and node
    names; each executable is the one setup.py and cmake/install_python.cmake install."""
    from ixgs_ros.commands import live
    from test_ros_nodes import setup_py_nodes

    consts = launch_constants()
    assert tuple(consts["NODES"]) == live.PIPELINE and consts["PLAYER"] == live.PLAYER
    assert consts["NAMESPACE"] == live.NAMESPACE
    assert Path(*consts["PARAMS_FILE"]) == live.default_params_file().relative_to(ROOT)
    launch_src = (ROOT / "launch" / "ixgs.launch.py").read_text()
    assert "parameters=[params_file]" in launch_src and "executable=name, name=name, namespace=namespace" in launch_src
    from ixgs_ros.core.scan import Scan

    views, images = sphere_scan(2, size=16, seed=0)
    Scan(views, images).save(tmp_path / "ideal")
    Scan(views, 30000.0 * np.exp(-images), image_kind="raw").save(tmp_path / "raw")
    args = Namespace(scan=str(tmp_path / "ideal"), bag=None, no_player=False, params=None, namespace="ixgs", out=None,
                     rate=None, raw_i0=30000.0, grid_from_scan=False, set=[], duration=None, export_bag=None)
    cmds = live.build_commands(args)
    assert list(cmds) == [*consts["NODES"], consts["PLAYER"]]
    entry = setup_py_nodes()
    for name, cmd in cmds.items():
        ros = cmd[cmd.index("--ros-args"):]
        assert ros[:7] == ["--ros-args", "-r", "__ns:=/ixgs", "-r", f"__node:={name}", "--params-file",
                           str(ROOT / "config" / "ixgs.yaml")], ros
        exe = cmd[: cmd.index("--ros-args")]
        module = entry[name].split(":")[0]
        assert exe in ([str(Path(sys.executable).parent / name)], [sys.executable, "-m", module]), exe
    assert cmds["scan_player_node"][-4:] == ["-p", f"scan_dir:={tmp_path / 'ideal'}", "-p", "raw_i0:=30000.0"]
    # counts of exact line integrals are standardized by the plain log; a raw scan keeps the file's method
    assert cmds["standardize_node"][-2:] == ["-p", "method:=log"]
    raw = live.build_commands(Namespace(**{**vars(args), "scan": str(tmp_path / "raw")}))
    assert not any(a.startswith("method:=") for a in raw["standardize_node"])
    # a raw scan plays its own images (raw_i0 0: the player refuses to convert raw images) as raw images
    assert "raw_i0:=0.0" in raw["scan_player_node"] and not any(a.startswith("image_kind:=")
                                                                for a in raw["xray_ingest_node"])
    with pytest.raises(ValueError, match="expected NODE.PARAM=VALUE"):
        live.build_commands(Namespace(**{**vars(args), "set": ["min_views=3"]}))


def _probe(ns):
    """A probe node in its own context collecting every output of the namespace."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image, PointCloud2
    from visualization_msgs.msg import MarkerArray

    from ixgs_ros.msg import BoneMeshes, ReconstructionStatus, Volume
    from ixgs_ros.nodes._base import latched_qos
    from ixgs_ros.nodes.tf_listener import TfListener

    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("ixgs_live_probe", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    got = {"status": [], "status_t": [], "diagnostics": {}}

    def keep(key):
        return lambda m: got.__setitem__(key, m)

    def on_status(m):
        got["status"].append(m)
        got["status_t"].append(time.monotonic())

    def on_diag(arr):
        for st in arr.status:
            got["diagnostics"][st.name] = st

    q = latched_qos()
    node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", on_status, 50)
    node.create_subscription(Volume, f"{ns}/volume", keep("volume"), q)
    node.create_subscription(MarkerArray, f"{ns}/bone_markers", keep("markers"), q)
    node.create_subscription(BoneMeshes, f"{ns}/bone_meshes", keep("meshes"), q)
    node.create_subscription(PointCloud2, f"{ns}/bone_cloud", keep("cloud"), q)
    for plane in ("axial", "coronal", "sagittal"):
        node.create_subscription(Image, f"{ns}/mpr/{plane}", keep(plane), q)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    tf = TfListener(node)
    return ctx, node, ex, got, tf


def _call(node, ex, srv_type, name, request, timeout=60.0):
    client = node.create_client(srv_type, name)
    spin_until = spinner(ex, timeout, 0.05)
    assert spin_until(client.service_is_ready), f"service {name} not up"
    future = client.call_async(request)
    assert spin_until(future.done), f"no answer from {name}"
    return future.result()


def _rviz_module():
    spec = importlib.util.spec_from_file_location("rviz_picture", ROOT / "scripts" / "rviz_picture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_live_pipeline_end_to_end_every_output_services_picture_and_replay(ros_env, tmp_path):
    import rclpy
    from std_srvs.srv import Trigger

    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.shot_record import ShotRecord
    from ixgs_ros.core.volume import Grid
    from ixgs_ros.msg import ReconstructionStatus, Volume
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes import convert_outputs as co
    from ixgs_ros.srv import SaveSnapshot

    n = 8
    views, images = sphere_scan(n, size=32, seed=2)
    Scan(views, images).save(tmp_path / "scan")
    out = tmp_path / "run"
    ns = "/ixgs_e2e"
    sets = [f"reconstruction_node.{k}={v}" for k, v in TINY_RECONSTRUCTION.items()]
    cmd = [sys.executable, "-m", "ixgs_ros.cli", "live", "--scan", str(tmp_path / "scan"), "--out", str(out),
           "--namespace", ns, "--rate", "4.0", "--no-grid-from-scan", "--export-bag", str(tmp_path / "bag"),
           *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx, node, ex, got, tf = _probe(ns)
    spin_until = spinner(ex, 240.0, 0.05)
    grid = Grid.centered(16, 2.5, (0.0, 0.0, 0.0))
    try:
        def final():
            v, s = got.get("volume"), got["status"][-1] if got["status"] else None
            return (v is not None and v.stage == Volume.STAGE_FINAL and v.view_count == n and s is not None
                    and s.state == ReconstructionStatus.CONVERGED and "markers" in got and "sagittal" in got)

        if not spin_until(final):
            pytest.fail(f"no final volume: {got['status'][-1:]}\n{stop(proc)[1][-6000:]}")
        spin_until(lambda: False, timeout=1.5)  # the outputs of the final volume, diagnostics
        # --- volume and status: which views, which stage
        vol = got["volume"]
        ids = list(vol.view_ids)
        assert len(ids) == n and len(set(ids)) == n and all(i.startswith("shot_") for i in ids)
        mu, vgrid = cv.msg_to_volume(vol)
        np.testing.assert_allclose(vgrid.affine, grid.affine)
        r = np.linalg.norm(grid.world_coords(), axis=-1)
        assert float(mu[r < 6.0].mean()) > 0.5 * MU > float(mu[r > 17.0].mean())
        st = got["status"][-1]
        assert st.volume_stage == Volume.STAGE_FINAL and list(st.volume_view_ids) == ids and st.views_rejected == 0
        # --- meshes: pieces inside the volume, the same triangles in both messages
        lo, hi = (b / 1000.0 for b in grid.bounds())
        tri = [m for m in got["markers"].markers if m.points]
        assert tri and all(m.header.frame_id == "world" for m in tri)
        pts = np.array([[p.x, p.y, p.z] for m in tri for p in m.points])
        assert len(pts) > 0 and np.all(pts >= lo - 1e-6) and np.all(pts <= hi + 1e-6)
        meshes = got["meshes"]
        assert meshes.stage == Volume.STAGE_FINAL and list(meshes.view_ids) == ids and meshes.threshold_hu == 600.0
        arrays = co.bone_meshes_to_arrays(meshes)
        assert sum(len(a["faces"]) for a in arrays) * 3 == len(pts)
        np.testing.assert_allclose(arrays[0]["centroid"], [0.0, 0.0, 0.0], atol=2.5)  # the sphere's centre
        assert meshes.ply_path == str(out / "outputs" / "bone.ply") and Path(meshes.ply_path).is_file()
        # --- cloud: fields and values; slices: shapes
        cloud = co.msg_to_cloud(got["cloud"])
        assert [f.name for f in got["cloud"].fields] == ["x", "y", "z", "mu", "hu"] and len(cloud["xyz"]) > 0
        assert np.all(cloud["hu"] > 600.0) and np.all(np.abs(cloud["xyz"]) <= 20.0 + 1e-3)
        for plane in ("axial", "coronal", "sagittal"):
            img = got[plane]
            assert (img.height, img.width, img.encoding) == (17, 17, "32FC1"), plane
            assert img.header.stamp == vol.header.stamp
        # --- the volume frame on /tf_static: voxel (i, j, k) of the volume at (2.5 i, 2.5 j, 2.5 k) mm in it
        T = tf.lookup("world", "ixgs_volume")
        np.testing.assert_allclose(T @ [2.5 * 3, 2.5 * 4, 2.5 * 5, 1.0], grid.affine @ [3, 4, 5, 1.0], atol=1e-6)
        # --- diagnostics of every pipeline node; the heartbeat kept its rate through the initialisation
        names = {k.rsplit("/", 1)[-1] for k in got["diagnostics"]}
        assert {"xray_ingest_node", "standardize_node", "reconstruction_node"} <= names, names
        gaps = np.diff(got["status_t"])
        assert gaps.max() < 1.5, f"status heartbeat stalled {gaps.max():.2f} s (rate 10 Hz)"
        # --- the picture an RViz user sees
        rviz = _rviz_module()
        msgs = rviz.collect(node, ex, ns, timeout=30.0)
        assert set(msgs) == {"markers", "cloud", "axial", "coronal", "sagittal"}
        png = rviz.render(msgs, tmp_path / "rviz.png")
        assert png.stat().st_size > 20_000
        # --- services
        res = _call(node, ex, SaveSnapshot, f"{ns}/reconstruction_node/save_snapshot",
                    SaveSnapshot.Request(directory="case_1"))
        assert res.success, res.message
        files = {Path(f).name for f in res.files}
        assert {"volume.nii.gz", "bone.ply", "report.json", "mpr_axial.png"} <= files
        assert Path(res.directory) == out / "snapshots" / "case_1"
        bad = _call(node, ex, SaveSnapshot, f"{ns}/reconstruction_node/save_snapshot",
                    SaveSnapshot.Request(directory="../escape"))
        assert not bad.success and "no '..'" in bad.message
        again = _call(node, ex, SaveSnapshot, f"{ns}/reconstruction_node/save_snapshot",
                      SaveSnapshot.Request(directory="case_1"))
        assert not again.success and "not empty" in again.message
        res = _call(node, ex, Trigger, f"{ns}/reconstruction_node/reinit", Trigger.Request())
        assert res.success, res.message
        res = _call(node, ex, Trigger, f"{ns}/reconstruction_node/reset", Trigger.Request(), timeout=120.0)
        assert res.success, res.message
        got["status"].clear()
        assert spin_until(lambda: got["status"] and got["status"][-1].state == ReconstructionStatus.IDLE, timeout=10)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed"
        log = proc.stdout.read()
    assert rc == 0, log[-6000:]
    assert "ixgs live: stopped xray_ingest_node (0), standardize_node (0), reconstruction_node (0), " \
           "scan_player_node (0)" in log, log[-4000:]
    assert f"wrote {n} shots to {tmp_path / 'bag'}" in log
    record = ShotRecord(out / "record").entries()
    assert [s.view_id for s in record] == sorted(ids)  # every shot recorded, under the id it was published with

    # --- replay the recorded acquisition from the bag: the same shots come out of a fresh ingest node
    ns2 = "/ixgs_replay"
    ingest = start_node("ingest", ros_env, "-r", f"__ns:={ns2}", "-p", f"record_dir:={tmp_path / 'record2'}")
    player = start_node("player", ros_env, "-r", f"__ns:={ns2}", "-p", f"bag:={tmp_path / 'bag'}",
                        "-p", "rate_scale:=4.0")
    deadline = time.monotonic() + 60
    while len(ShotRecord(tmp_path / "record2").entries()) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = stop(player)[1] + stop(ingest)[1]
    replay = ShotRecord(tmp_path / "record2").entries()
    assert len(replay) == n, logs
    for a, b in zip(record, replay):
        assert a.stamp == b.stamp
        np.testing.assert_array_equal(a.image(), b.image())
        np.testing.assert_allclose(a.T_world_source, b.T_world_source, atol=1e-9)
        np.testing.assert_allclose(a.K, b.K)


# ------------------------------------------------------------------------------------------ raw shots by hand
class CArm:
    """A probe that publishes what a tracked C-arm does: image_raw + camera_info + source_pose samples around
    each shot (detector counts of the sphere scan's line integrals)."""

    I0 = 30000.0

    def __init__(self, node, ns, views, images, reliability="reliable"):
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        self.views, self.images = views, images
        self.img = node.create_publisher(Image, f"{ns}/image_raw", qos)
        self.info = node.create_publisher(CameraInfo, f"{ns}/camera_info", qos)
        self.pose = node.create_publisher(PoseStamped, f"{ns}/source_pose", qos)

    def counts(self, k):
        return np.clip(np.round(self.I0 * np.exp(-self.images[k])), 1, 65535).astype(np.uint16)

    def pose_msg(self, T, t, frame="world", quat=None):
        from geometry_msgs.msg import PoseStamped

        from ixgs_ros.nodes import convert as cv

        m = PoseStamped()
        m.header = cv.make_header(frame, t)
        m.pose = cv.matrix_to_pose(T)
        if quat is not None:
            o = m.pose.orientation
            o.x, o.y, o.z, o.w = quat
        return m

    def shot(self, k, t, image=None, poses=True):
        from ixgs_ros.nodes import convert as cv

        header = cv.make_header("xray_source_optical", t)
        self.info.publish(cv.view_to_camera_info(self.views[k], header))
        self.img.publish(cv.array_to_image(self.counts(k) if image is None else image, header=header))
        if poses:
            for dt in (0.0, 0.004):
                self.pose.publish(self.pose_msg(self.views[k].T_world_source, t + dt))

    def ready(self):
        return all(p.get_subscription_count() > 0 for p in (self.img, self.info, self.pose))


def _status_of(got):
    return got["status"][-1] if got["status"] else None


@pytest.mark.slow
def test_kill_9_of_the_reconstruction_loses_no_shot_and_ids_stay_unique(ros_env, tmp_path):
    """kill -9 of reconstruction_node after 5 shots, 5 more while it is down, a restart: all 10 are there (restored
    or taken up from the shot record). kill -9 of the ingest node: its next shot gets a new id and is accepted."""
    import rclpy

    n = 12
    views, images = sphere_scan(n, size=32, seed=5)
    ns = "/ixgs_kill"
    record, state = tmp_path / "record", tmp_path / "state"
    recon_args = ["-r", f"__ns:={ns}", "-p", f"record_dir:={record}", "-p", f"state_dir:={state}",
                  "-p", "min_views:=50", "-p", "volume_size:=[16,16,16]", "-p", "voxel_size_mm:=2.5",
                  "-p", "status_rate_hz:=10.0", "-p", "takeup_period_s:=1.0", "-p", "takeup_grace_s:=1.0",
                  "-p", f"takeup_i0:={CArm.I0}", "-p", "outputs:=['']"]
    ingest_args = ["-r", f"__ns:={ns}", "-p", f"record_dir:={record}"]
    procs = {"ingest": start_node("ingest", ros_env, *ingest_args),
             "standardize": start_node("standardize", ros_env, "-r", f"__ns:={ns}", "-p", f"i0:={CArm.I0}"),
             "reconstruction": start_node("reconstruction", ros_env, *recon_args)}
    ctx, node, ex, got, _ = _probe(ns)
    spin_until = spinner(ex, 90.0, 0.05)
    carm = CArm(node, ns, views, images)
    t0 = time.time()
    try:
        assert spin_until(lambda: carm.ready() and got["status"]), "the nodes did not come up"
        spin_until(lambda: False, timeout=3.0)
        for k in range(5):
            carm.shot(k, t0 + k)
            spin_until(lambda: False, timeout=0.2)
        assert spin_until(lambda: _status_of(got).views_used == 5), _status_of(got)
        procs["reconstruction"].send_signal(signal.SIGKILL)
        procs["reconstruction"].wait()
        for k in range(5, 10):  # recorded while the reconstruction is down
            carm.shot(k, t0 + k)
            spin_until(lambda: False, timeout=0.2)
        procs["ingest"].send_signal(signal.SIGKILL)  # the ingest node dies too and comes back
        procs["ingest"].wait()
        procs["ingest"] = start_node("ingest", ros_env, *ingest_args)
        procs["reconstruction"] = start_node("reconstruction", ros_env, *recon_args)
        got["status"].clear()
        assert spin_until(lambda: got["status"] and _status_of(got).views_used == 10), \
            f"{_status_of(got)}\n{stop(procs['reconstruction'])[1]}"
        assert spin_until(carm.ready)
        spin_until(lambda: False, timeout=3.0)
        carm.shot(10, t0 + 10)
        assert spin_until(lambda: _status_of(got).views_used == 11), _status_of(got)
        assert _status_of(got).views_rejected == 0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        results = {name: stop(p) for name, p in procs.items()}
    assert all(rc == 0 for rc, _ in results.values()), results
    log = results["reconstruction"][1]
    assert "restored 5 views" in log and "took up 5 shot(s) from the shot record" in log, log
    from ixgs_ros.core.shot_record import ShotRecord

    assert [s.view_id for s in ShotRecord(record).entries()] == [f"shot_{k:03d}" for k in range(11)]


def test_bad_inputs_are_refused_and_counted_qos_and_parameter_changes(ros_env, tmp_path):
    """Each bad input of the issue, refused with a logged reason and counted (ingest: /diagnostics; reconstruction:
    its status); two shots in reverse stamp order both arrive; a best-effort publisher reaches an ingest node set
    to best_effort; run-time parameter changes are checked (refused with the reason, or applied)."""
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    from ixgs_ros.msg import XrayView
    from ixgs_ros.nodes import convert as cv

    views, images = sphere_scan(6, size=32, seed=7)
    ns = "/ixgs_bad"
    procs = {"ingest": start_node("ingest", ros_env, "-r", f"__ns:={ns}", "-p", "qos_reliability:=best_effort"),
             "standardize": start_node("standardize", ros_env, "-r", f"__ns:={ns}", "-p", f"i0:={CArm.I0}"),
             "reconstruction": start_node("reconstruction", ros_env, "-r", f"__ns:={ns}", "-p", "min_views:=50",
                                          "-p", "volume_size:=[16,16,16]", "-p", "voxel_size_mm:=2.5",
                                          "-p", "status_rate_hz:=10.0", "-p", "outputs:=['']")}
    ctx, node, ex, got, _ = _probe(ns)
    spin_until = spinner(ex, 90.0, 0.05)
    carm = CArm(node, ns, views, images, reliability="best_effort")
    views_pub = node.create_publisher(XrayView, f"{ns}/xray_views", 100)
    t0 = time.time()
    try:
        assert spin_until(lambda: carm.ready() and views_pub.get_subscription_count() > 0 and got["status"])
        spin_until(lambda: False, timeout=3.0)
        # to the ingest node: two good shots in reverse stamp order, then the bad ones
        carm.shot(1, t0 + 1.0)
        carm.shot(0, t0 + 0.5)
        spin_until(lambda: False, timeout=0.3)
        carm.shot(2, t0 + 2.0, image=np.full((32, 32), 65535, np.uint16))         # saturated
        carm.shot(2, 0.0)                        # stamp 0: camera_info, image, first pose sample (3)
        carm.shot(2, t0 + 3600.0)                # an hour ahead: camera_info, image, two pose samples (4)
        T = views[3].T_world_source
        for q in ((0, 0, 0, 2.0), (0, 0, 0, 1.3), (0, 0, 0, 0.0)):                  # not rotations
            carm.pose.publish(carm.pose_msg(T, t0 + 3.0, quat=q))
        assert spin_until(lambda: _status_of(got).views_used == 2), _status_of(got)
        # straight to the reconstruction node
        good = cv.view_to_xray_view(views[4], images[4], view_id="direct_4", stamp=t0 + 4)
        views_pub.publish(good)
        bad = {
            "empty_id": cv.view_to_xray_view(views[5], images[5], view_id="", stamp=t0 + 5),
            "duplicate_content": cv.view_to_xray_view(views[4], images[4], view_id="again_4", stamp=t0 + 5),
            "duplicate_id": cv.view_to_xray_view(views[5], images[5], view_id="direct_4", stamp=t0 + 5),
            "stamp_zero": cv.view_to_xray_view(views[5], images[5], view_id="zero", stamp=0.0),
            "stamp_future": cv.view_to_xray_view(views[5], images[5], view_id="late", stamp=t0 + 3600),
            "encoding": cv.view_to_xray_view(views[5], np.round(images[5] * 1000).astype(np.uint16), view_id="int",
                                             image_kind=XrayView.IMAGE_KIND_RAW, stamp=t0 + 5),
            "quaternion": cv.view_to_xray_view(views[5], images[5], view_id="q", stamp=t0 + 5),
            "image_kind": cv.view_to_xray_view(views[5], images[5], view_id="raw", image_kind=XrayView.IMAGE_KIND_RAW,
                                               stamp=t0 + 5),
        }
        bad["encoding"].image_kind = XrayView.IMAGE_KIND_LINE_INTEGRAL  # 16UC1 data labelled as line integrals
        bad["quaternion"].source_pose.orientation.w *= 1.3
        spin_until(lambda: _status_of(got).views_used == 3)
        for m in bad.values():
            views_pub.publish(m)
        assert spin_until(lambda: _status_of(got).views_rejected == len(bad)), _status_of(got)
        st = _status_of(got)
        assert dict(zip(st.rejected_reasons, st.rejected_counts)) == {k: 1 for k in bad} and st.views_used == 3
        # the ingest node's refusals, on /diagnostics
        def ingest_counts():
            d = next((v for k, v in got["diagnostics"].items() if k.endswith("xray_ingest_node")), None)
            return {kv.key: kv.value for kv in d.values} if d else {}
        assert spin_until(lambda: ingest_counts().get("rejected.quaternion") == "3"), ingest_counts()
        counts = ingest_counts()
        assert {k: counts.get(f"rejected.{k}") for k in ("saturated", "stamp_zero", "stamp_future")} == \
            {"saturated": "1", "stamp_zero": "3", "stamp_future": "4"}, counts
        assert counts["published"] == "2"
        # run-time parameters: checked, refused with the reason, or applied
        def set_params(**kw):
            req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in kw.items()])
            return _call(node, ex, SetParameters, f"{ns}/reconstruction_node/set_parameters", req).results[0]
        r = set_params(voxel_size_mm=-5.0)
        assert not r.successful and r.reason == "voxel_size_mm must be a positive number, got -5.0"
        r = set_params(volume_size=[32, 32, 32])
        assert not r.successful and "cannot be changed while the node runs" in r.reason
        r = set_params(mesh_threshold_hu=float("nan"))
        assert not r.successful and "mesh_threshold_hu must be a number of HU" in r.reason
        got["status"].clear()
        assert set_params(status_rate_hz=2.0).successful
        spin_until(lambda: False, timeout=1.0)
        got["status"].clear()
        spin_until(lambda: False, timeout=3.0)
        assert 3 <= len(got["status"]) <= 9, len(got["status"])  # about 2 Hz now (was 10)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        results = {name: stop(p) for name, p in procs.items()}
    assert all(rc == 0 for rc, _ in results.values()), results
    ingest, recon = results["ingest"][1], results["reconstruction"][1]
    for text in ("% of the pixels are saturated (at 65535)", "stamp is 0 (never set by the sender)",
                 "s ahead of this node's clock", "is not a unit quaternion (norm 2", "norm 1.3",
                 "is not a rotation (norm 0"):
        assert text in ingest, (text, ingest)
    for text in ("rejected view (no view_id): view_id is empty", "rejected view 'again_4': the same image and pose",
                 "rejected view 'direct_4': duplicate view_id", "rejected view 'int': the image is uint16 but is "
                 "labelled as line integrals", "rejected view 'q': source_pose: quaternion",
                 "rejected view 'raw': image_kind 0", "parameter change refused: voxel_size_mm must be a positive"):
        assert text in recon, (text, recon)


def test_poses_from_a_tf_chain(ros_env):
    """world <- tracker (static) <- C-arm marker (tracked, 100 Hz on /tf) <- source (static calibration): each
    image gets the composed source pose at its stamp; a PoseStamped in the tracker frame is moved into world."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from ixgs_ros.core.frames import invert, transform_from
    from ixgs_ros.core.geometry import rotation_x, rotation_z
    from ixgs_ros.msg import XrayView
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes import convert_outputs as co

    views, images = sphere_scan(3, size=32, seed=9)
    T_world_tracker = transform_from(rotation_z(0.4), [200.0, -100.0, 1500.0])
    T_marker_source = transform_from(rotation_x(0.1), [10.0, 20.0, -30.0])

    def T_tracker_marker(T_world_source):  # what the tracker must measure for the source to be there
        return invert(T_world_tracker) @ T_world_source @ invert(T_marker_source)

    ns = "/ixgs_tf"
    ingest = start_node("ingest", ros_env, "-r", f"__ns:={ns}", "-p", "use_tf:=true", "-p", "tf_source_frame:=source",
                        "-p", "image_kind:=line_integral")
    ctx, node, ex, got, _ = _probe(ns)
    spin_until = spinner(ex, 60.0, 0.02)
    out = []
    node.create_subscription(XrayView, f"{ns}/xray_views_raw", out.append, 10)
    carm = CArm(node, ns, views, images)
    tf_pub = node.create_publisher(TFMessage, "/tf", 100)
    static = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    t0 = time.time()
    try:
        static.publish(co.tf_message([("world", "tracker", T_world_tracker, t0), ("marker", "source", T_marker_source,
                                                                                   t0)]))
        assert spin_until(lambda: carm.ready() and tf_pub.get_subscription_count() > 0 and
                          node.count_subscribers(f"{ns}/xray_views_raw") >= 1)
        spin_until(lambda: False, timeout=2.0)
        for k in range(3):
            t = t0 + k
            carm.shot(k, t, image=images[k].astype(np.float32), poses=False)
            for dt in (-0.01, 0.0, 0.01):  # the tracker's samples around the shot
                tf_pub.publish(co.tf_message([("tracker", "marker", T_tracker_marker(views[k].T_world_source),
                                               t + dt)]))
            spin_until(lambda: False, timeout=0.2)
        # a PoseStamped in the tracker frame is moved into world through /tf_static
        assert spin_until(lambda: len(out) == 3), [m.view_id for m in out]
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        rc, log = stop(ingest)
    assert rc == 0, log
    for msg, v in zip(out, views):
        np.testing.assert_allclose(cv.xray_view_to_view(msg).T_world_source, v.T_world_source, atol=1e-6)
    assert "tf chain 'world' <- 'source'" in log

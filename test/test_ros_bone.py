"""reconstruction_node's bone target as a process: views and bone-only views of the bone phantom in (a bad bone view
refused and counted, bone views before and after their line views), bone_volume out (zero away from bone), the
bone meshes and bone_navigation from it (pieces with their gate), the status saying so; a restarted node restores
the bone views from state_dir and publishes the bone volume again."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

import bone_phantom as bp
from test_ros_nodes import ros_env, spinner, start_node, stop  # noqa: F401 (ros_env: a fixture)

pytestmark = pytest.mark.ros


def write_params(tmp_path, n: int, extra: dict):
    """The node's parameter file: the full target as small as it goes (its volume only has to be final), the bone
    target as test_bone's, ``extra`` on top."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/reconstruction_node": {"ros__parameters": {
        "volume_size": [32, 32, 32], "voxel_size_mm": 2.0, "volume_center_mm": [0.0, 0.0, 0.0], "device": "cpu",
        "iterations": 5, "refine_iterations": 0, "min_views": n, "status_rate_hz": 10.0,
        "volume_publish_period_s": 60.0, "refine_poses": "off", "mesh_smooth_iterations": 0,
        "engine_overrides": ["init.solver=torch", "init.passes=2", "init.pass_views=0", "init.solve_max_voxels=32768",
                             "exterior.passes=2", "exterior.levels=1", "exterior.refine_passes=0",
                             "lattice.cg_iterations=10", "optimiser.tv_size=8", "seed=1",
                             "bone.coarse_passes=8", "bone.fine_passes=4", "bone.pass_views=0"],
        **extra}}}))
    return params


def test_reconstruction_node_publishes_the_bone_target(ros_env, tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from std_msgs.msg import String

    from ixgs_ros.core.volume import hu_to_mu
    from ixgs_ros.msg import BoneMeshes, ReconstructionStatus, Volume, XrayView
    from ixgs_ros.nodes import convert as cv

    ns = "/ixgs_bone"
    n = 12
    params = write_params(tmp_path, n, {"state_dir": str(tmp_path / "state"), "output_dir": str(tmp_path / "out"),
                                        "outputs": ["mesh", "cloud"]})
    vs, full, bone, truth, _ = bp.scene(n=n, arc=160.0, width=40)
    ids = [f"shot_{k:02d}" for k in range(n)]
    now = time.time()
    lines = [cv.view_to_xray_view(v, im, view_id=i, stamp=now) for i, v, im in zip(ids, vs, full)]
    bones = [cv.view_to_xray_view(v, im, view_id=i, stamp=now) for i, v, im in zip(ids, vs, bone)]
    nan = bone[3].copy()
    nan[5, 5] = np.nan
    bad = cv.view_to_xray_view(vs[3], nan, view_id="bad_bone", stamp=now)

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    proc = start_node("reconstruction", ros_env, "-r", f"__ns:={ns}", "--params-file", str(params))
    outs = []
    try:
        node = rclpy.create_node("ixgs_bone_probe", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        got = {"status": [], "bone_volume": [], "bone_meshes": [], "bone_navigation": [], "volume": []}
        node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", got["status"].append, 10)
        for topic, typ in (("volume", Volume), ("bone_volume", Volume), ("bone_meshes", BoneMeshes),
                           ("bone_navigation", String)):
            node.create_subscription(typ, f"{ns}/{topic}", got[topic].append, latched)
        pub = node.create_publisher(XrayView, f"{ns}/xray_views", 100)
        pub_bone = node.create_publisher(XrayView, f"{ns}/xray_views_bone", 100)
        spin_until = spinner(executor, 90.0, 0.05)
        assert spin_until(lambda: pub.get_subscription_count() and pub_bone.get_subscription_count()
                          and got["status"]), "reconstruction_node did not come up"
        # half of the bone views before their line views, a bad one, then the rest
        for m in [*bones[:6], bad, *lines, *bones[6:]]:
            (pub_bone if m in bones or m is bad else pub).publish(m)
            spin_until(lambda: False, timeout=0.02)
        assert spin_until(lambda: got["bone_volume"] and got["bone_navigation"]), (
            f"no bone volume: {got['status'][-1].message if got['status'] else None}; {stop(proc)[1]}")
        vol = got["bone_volume"][-1]
        mu, grid = cv.msg_to_volume(vol)
        assert grid == bp.ROI and vol.header.frame_id == "world"
        assert list(vol.view_ids) == ids and vol.stage == Volume.STAGE_FINAL
        assert spin_until(lambda: got["volume"]) and got["volume"][-1].header.stamp == vol.header.stamp
        from scipy.ndimage import binary_dilation

        level = float(hu_to_mu(200.0))
        far = ~binary_dilation(truth > 0, iterations=2)
        assert np.median(mu[truth > 0.5 * bp.BONE]) > level and float(np.abs(mu[far]).mean()) < 0.02 * level
        # meshes of the bone volume (they replace the full volume's), with the gate on bone_navigation
        # (the full volume's meshes, labelled piece_<k>, carry the same stamp and come first)
        assert spin_until(lambda: got["bone_meshes"] and got["bone_meshes"][-1].pieces
                          and got["bone_meshes"][-1].pieces[0].label.startswith("bone-"))
        meshes = got["bone_meshes"][-1]
        assert meshes.header.stamp == vol.header.stamp and list(meshes.view_ids) == ids
        nav = json.loads(got["bone_navigation"][-1].data)
        assert len(meshes.pieces) >= 3 and [p["id"] for p in nav["pieces"]] == [p.id for p in meshes.pieces]
        assert [p["label"] for p in nav["pieces"]] == [p.label for p in meshes.pieces]
        assert all(0.0 <= p["confidence"] <= 1.0 and isinstance(p["for_navigation"], bool) for p in nav["pieces"])
        assert nav["view_ids"] == ids and (tmp_path / "out" / "bone_navigation.json").exists()
        assert spin_until(lambda: "bone target: done" in got["status"][-1].message), got["status"][-1].message
        st = got["status"][-1]
        assert dict(zip(st.rejected_reasons, st.rejected_counts)).get("bone_image") == 1, st
        rc, out = stop(proc)
        outs.append(out)
        assert rc == 0, out

        # a restart restores the bone views (and the final volume's ids) and publishes the bone volume again
        for v in got.values():
            v.clear()
        node.destroy_node()
        node = rclpy.create_node("ixgs_bone_probe2", context=ctx)
        executor.add_node(node)
        node.create_subscription(Volume, f"{ns}/bone_volume", got["bone_volume"].append, latched)
        node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", got["status"].append, 10)
        proc = start_node("reconstruction", ros_env, "-r", f"__ns:={ns}", "--params-file", str(params))
        assert spin_until(lambda: got["bone_volume"]), f"no bone volume after the restart: {stop(proc)[1]}"
        mu2, _ = cv.msg_to_volume(got["bone_volume"][-1])
        assert list(got["bone_volume"][-1].view_ids) == ids and np.allclose(mu2, mu, atol=1e-4)
    finally:
        rc, out = stop(proc)
        outs.append(out)
        rclpy.shutdown(context=ctx)
    assert "Traceback" not in "".join(outs), "".join(outs)


def test_a_bone_volume_without_a_surface_leaves_the_full_volumes_meshes(ros_env, tmp_path):
    """A weak bone channel (the phantom's bone line integrals at 0.1 times their value: the bone solve finds no
    bone) still gives a bone_volume, but the bone meshes stay those of the full volume (the mesh level here is
    -200 HU, so that the tiny, blurred full volume has a surface: its soft tissue)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    from ixgs_ros.msg import BoneMeshes, ReconstructionStatus, Volume, XrayView
    from ixgs_ros.nodes import convert as cv

    ns = "/ixgs_bone_weak"
    n = 12
    params = write_params(tmp_path, n, {"outputs": ["mesh"], "mesh_threshold_hu": -200.0})
    vs, full, bone, _, _ = bp.scene(n=n, arc=160.0, width=40)
    now = time.time()
    msgs = [(False, cv.view_to_xray_view(v, im, view_id=f"shot_{k:02d}", stamp=now)) for k, (v, im) in
            enumerate(zip(vs, full))]
    msgs += [(True, cv.view_to_xray_view(v, 0.1 * im, view_id=f"shot_{k:02d}", stamp=now)) for k, (v, im) in
             enumerate(zip(vs, bone))]
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    proc = start_node("reconstruction", ros_env, "-r", f"__ns:={ns}", "--params-file", str(params))
    out = ""
    try:
        node = rclpy.create_node("ixgs_bone_weak_probe", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        got = {"status": [], "bone_volume": [], "bone_meshes": []}
        node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", got["status"].append, 10)
        node.create_subscription(Volume, f"{ns}/bone_volume", got["bone_volume"].append, latched)
        node.create_subscription(BoneMeshes, f"{ns}/bone_meshes", got["bone_meshes"].append, latched)
        pub = node.create_publisher(XrayView, f"{ns}/xray_views", 100)
        pub_bone = node.create_publisher(XrayView, f"{ns}/xray_views_bone", 100)
        spin_until = spinner(executor, 90.0, 0.05)
        assert spin_until(lambda: pub.get_subscription_count() and pub_bone.get_subscription_count()
                          and got["status"]), "reconstruction_node did not come up"
        for is_bone, m in msgs:
            (pub_bone if is_bone else pub).publish(m)
            spin_until(lambda: False, timeout=0.02)
        assert spin_until(lambda: got["bone_volume"] and got["status"]
                          and "bone target: done" in got["status"][-1].message), (
            f"no bone volume: {got['status'][-1].message if got['status'] else None}; {stop(proc)[1]}")
        spin_until(lambda: False, timeout=1.0)
        mu, _ = cv.msg_to_volume(got["bone_volume"][-1])
        assert mu.shape == (32, 32, 32) and float(mu.max()) < 0.2 * bp.BONE  # published, no bone in it
        pieces = got["bone_meshes"][-1].pieces if got["bone_meshes"] else []
        assert pieces and all(p.label.startswith("piece_") for p in pieces), [p.label for p in pieces]
    finally:
        rc, out = stop(proc)
        rclpy.shutdown(context=ctx)
    assert rc == 0 and "Traceback" not in out, out
    assert "bone meshes stay the full volume's" in out, out

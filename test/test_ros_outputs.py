"""Conversions of the live outputs and the interface-version-2 fields (ixgs_ros.nodes.convert_outputs, convert), and
the generated tf2_msgs: its type name and hash are ROS 2's, checked against an independent implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

try:
    from ixgs_ros.msg import ReconstructionStatus, Volume
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes import convert_outputs as co
except ImportError as exc:  # pragma: no cover - environment problem, not a test failure to hide
    pytest.fail(f"ROS 2 runtime or generated interfaces missing ({exc}); run scripts/setup.sh", pytrace=False)

from ixgs_ros.core.volume import Grid
from ixgs_ros.outputs.live import LiveOutputConfig, compute_live_outputs

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def two_spheres():
    grid = Grid.centered(40, 1.0, (5.0, -3.0, 2.0))
    x = grid.world_coords()
    mu = np.full(grid.shape, 0.0195, np.float32)  # water
    mu[np.linalg.norm(x - [5, -3, 10], axis=-1) < 7] = 0.04  # two bone balls (about 1050 HU)
    mu[np.linalg.norm(x - [5, -3, -8], axis=-1) < 5] = 0.04
    out = compute_live_outputs(mu, grid, LiveOutputConfig(mesh_smooth_iterations=0).validate())
    return grid, mu, out


def test_outputs_of_a_volume(two_spheres):
    grid, mu, out = two_spheres
    assert [p.label for p in out.pieces] == ["piece_0", "piece_1"]
    np.testing.assert_allclose(out.pieces[0].centroid, [5, -3, 10], atol=0.3)
    np.testing.assert_allclose(out.pieces[1].centroid, [5, -3, -8], atol=0.3)
    assert out.pieces[0].volume_mm3 == pytest.approx(4 / 3 * np.pi * 7 ** 3, rel=0.2)  # binary ball, iso at 250 HU
    lo, hi = grid.bounds()
    for p in out.pieces:
        assert np.all(p.mesh.vertices >= lo - 1e-6) and np.all(p.mesh.vertices <= hi + 1e-6)
    assert out.cloud_total == len(out.cloud_xyz) == int((mu > 0.0195 * 1.2).sum())
    np.testing.assert_allclose(out.cloud_hu, 1000.0 * (0.04 / 0.0195 - 1.0), rtol=1e-5)
    assert set(out.slices) == {"axial", "coronal", "sagittal"}
    for image, plane in out.slices.values():
        assert image.shape == (41, 41) and image.dtype == np.float32
    thin = compute_live_outputs(mu, grid, LiveOutputConfig(cloud_max_points=100), kinds=("cloud",))
    assert len(thin.cloud_xyz) <= 100 and thin.cloud_total == out.cloud_total and not thin.pieces
    with pytest.raises(ValueError, match="mesh_threshold_hu must be a number of HU"):
        LiveOutputConfig(mesh_threshold_hu=float("nan")).validate()


def test_markers_and_bone_meshes(two_spheres):
    grid, _, out = two_spheres
    arr = co.pieces_to_markers(out.pieces, frame_id="world", stamp=12.5)
    from visualization_msgs.msg import Marker

    assert arr.markers[0].action == Marker.DELETEALL
    tri = arr.markers[1:]
    assert [m.type for m in tri] == [Marker.TRIANGLE_LIST] * 2 and [m.id for m in tri] == [0, 1]
    assert len(tri[0].points) == 3 * out.pieces[0].mesh.n_faces
    pts = np.array([[p.x, p.y, p.z] for p in tri[0].points]) * 1000.0  # metres in the message
    np.testing.assert_allclose(pts.reshape(-1, 3, 3), out.pieces[0].mesh.triangles(), atol=1e-9)
    msg = co.pieces_to_bone_meshes(out.pieces, frame_id="world", stamp=12.5, stage="final", view_ids=["a", "b"],
                                   iteration=40, threshold_hu=250.0, ply_path="/x/bone.ply")
    assert msg.version == 2 and msg.stage == Volume.STAGE_FINAL and msg.view_count == 2 and msg.iteration == 40
    back = co.bone_meshes_to_arrays(msg)
    for piece, b in zip(out.pieces, back):
        np.testing.assert_allclose(b["vertices"], piece.mesh.vertices, atol=1e-9)
        np.testing.assert_array_equal(b["faces"], piece.mesh.faces)
        np.testing.assert_allclose(b["centroid"], piece.centroid, atol=1e-9)
    assert msg.pieces[0].area_m2 == pytest.approx(out.pieces[0].area_mm2 * 1e-6)


def test_cloud_and_slices(two_spheres):
    _, _, out = two_spheres
    msg = co.cloud_to_msg(out.cloud_xyz, out.cloud_mu, out.cloud_hu, frame_id="world", stamp=1.0)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "mu", "hu"] and msg.point_step == 20
    back = co.msg_to_cloud(msg)
    np.testing.assert_allclose(back["xyz"], out.cloud_xyz, atol=1e-3)  # float32 metres
    np.testing.assert_array_equal(back["mu"], out.cloud_mu)
    image, _ = out.slices["axial"]
    img = co.slice_to_image(image, frame_id="world", stamp=1.0)
    assert img.encoding == "32FC1" and (img.height, img.width) == image.shape
    np.testing.assert_array_equal(cv.image_to_array(img), np.nan_to_num(image))


def test_tf_and_diagnostics():
    from ixgs_ros.core.geometry import look_at

    T = look_at([100.0, -600.0, 40.0], [0, 0, 0], [0, 0, 1])
    msg = co.tf_message([("world", "source", T, 3.25)])
    edges, errors = co.tf_message_edges(msg)
    assert not errors and edges[0][:2] == ("world", "source") and edges[0][3] == 3.25
    np.testing.assert_allclose(edges[0][2], T, atol=1e-9)
    msg.transforms[0].transform.rotation.w *= 2.0
    edges, errors = co.tf_message_edges(msg)
    assert not edges and "not a unit quaternion" in errors[0] and "'world' <- 'source'" in errors[0]
    d = co.diagnostic_array("ixgs_ros: /n", "warn", "2 refused", {"rejected.saturated": 2, "gap": 0.25,
                                                                  "psnr": math.nan}, stamp=1.0)
    st = d.status[0]
    assert st.level == st.WARN and {kv.key: kv.value for kv in st.values} == {"rejected.saturated": "2",
                                                                               "gap": "0.25", "psnr": "nan"}


def test_volume_and_status_say_where_they_come_from():
    grid = Grid.centered((4, 5, 6), 2.0, (1.0, 2.0, 3.0))
    msg = cv.volume_to_msg(np.zeros(grid.shape), grid, stamp=1.0, stage="gaussian", view_ids=["s1", "s2", "s3"],
                           iteration=35)
    assert cv.volume_msg_origin(msg) == {"version": 2, "stage": "gaussian", "view_ids": ["s1", "s2", "s3"],
                                         "view_count": 3, "iteration": 35}
    assert Volume().version == 0 and cv.volume_msg_origin(Volume())["stage"] == ""  # a version-1 producer
    with pytest.raises(cv.ConversionError, match="unknown volume stage 'almost'"):
        cv.volume_to_msg(np.zeros(grid.shape), grid, stage="almost")
    st = cv.status_to_msg({"state": "optimizing", "rejected": {"saturated": 2, "stamp_zero": 1},
                           "volume_stage": "preview", "volume_view_ids": ["a", "b"], "volume_iteration": 0})
    assert st.version == 2 and st.views_rejected == 3 and st.volume_stage == Volume.STAGE_PREVIEW
    d = cv.status_msg_to_dict(st)
    assert d["rejected"] == {"saturated": 2, "stamp_zero": 1} and d["volume_view_ids"] == ["a", "b"]
    assert d["volume_view_count"] == 2 and ReconstructionStatus.VERSION == 2


def test_generated_tf2_msgs_interoperate_by_type_name_and_hash():
    """The tf2_msgs built from the public definition (interfaces/tf2_msgs) has ROS 2's type name and RIHS01 hash:
    compared with rosbags' independent type store of the Kilted and Jazzy definitions, and with what the running
    rmw announces for a /tf publisher."""
    import json
    import os
    import sys

    import rclpy
    from rosbags.typesys import Stores, get_typestore
    from tf2_msgs.msg import TFMessage

    desc = json.loads(open(os.path.join(sys.prefix, "share", "tf2_msgs", "msg", "TFMessage.json")).read())
    ours = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
    for store in (Stores.ROS2_KILTED, Stores.ROS2_JAZZY):
        ts = get_typestore(store)
        for name in ("tf2_msgs/msg/TFMessage", "geometry_msgs/msg/TransformStamped"):
            assert ours[name] == ts.hash_rihs01(name), (store, name)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-r", "__ns:=/tf_hash_check"])
    try:
        node = rclpy.create_node("tf_hash_probe", context=ctx)
        node.create_publisher(TFMessage, "tf_hash_check_topic", 1)
        info = node.get_publishers_info_by_topic("/tf_hash_check/tf_hash_check_topic")
        assert info[0].topic_type == "tf2_msgs/msg/TFMessage"
        assert str(info[0].topic_type_hash) == ours["tf2_msgs/msg/TFMessage"]
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_intermediate_outputs_take_at_most_their_share_of_the_time():
    """OutputPublisher with outputs that take 0.2 s: intermediate (Gaussian-stage) volumes arriving every 0.05 s
    get outputs back to back with max_share 1, and about every 1 s with max_share 0.2 (0.2 s of work, 0.8 s
    pause), always for the newest volume; a final volume that arrives during the pause gets its outputs at once;
    and a share outside (0, 1] is refused."""
    import threading
    import time

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from ixgs_ros.engine.live import VolumeSnapshot
    from ixgs_ros.nodes.recon_outputs import OutputPublisher
    from ixgs_ros.outputs.live import LiveOutputs

    with pytest.raises(ValueError, match="outputs_max_share"):
        LiveOutputConfig(outputs_max_share=0.0).validate()
    with pytest.raises(ValueError, match="outputs_max_share"):
        LiveOutputConfig(outputs_max_share=1.5).validate()
    grid = Grid.centered(4, 1.0, (0.0, 0.0, 0.0))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node("ixgs_outputs_pacing", context=ctx)
        counts = {}
        for share in (1.0, 0.2):
            done, lock = [], threading.Lock()

            def compute(snap, config=None, kinds=None):
                time.sleep(0.2)
                with lock:
                    done.append((time.monotonic(), snap.stage, snap.iteration))
                return LiveOutputs()

            pub = OutputPublisher(node, grid, LiveOutputConfig(outputs_max_share=share).validate(), ("mpr",),
                                  world_frame="world", volume_frame="volume")
            pub.compute = compute
            mu = np.zeros(grid.shape, np.float32)
            t0 = time.monotonic()
            it = 0
            while time.monotonic() - t0 < 2.5:
                it += 1
                pub.submit(VolumeSnapshot(mu, "gaussian", "", (), it), None)
                time.sleep(0.05)
            if share < 1.0:  # in a pause: the final volume's outputs do not wait for it
                while not done or time.monotonic() - done[-1][0] > 0.2:
                    time.sleep(0.01)
                t_final = time.monotonic()
                pub.submit(VolumeSnapshot(mu, "final", "", (), it + 1), None)
                deadline = time.monotonic() + 3.0
                while done[-1][1] != "final" and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert done[-1][1] == "final" and done[-1][0] - t_final < 0.45, done[-3:]
            pub.stop()
            gauss = [d for d in done if d[1] == "gaussian"]
            counts[share] = len(gauss)
            gaps = np.diff([d[0] for d in gauss])
            if share < 1.0:
                assert gaps.min() > 0.9, gaps  # 0.2 s of work, then at least 0.8 s of pause
            # each computed volume was the newest one submitted when its computation began
            assert all(b[2] > a[2] + 1 for a, b in zip(gauss, gauss[1:]))
        assert counts[1.0] >= 9 and counts[0.2] <= 4, counts
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)

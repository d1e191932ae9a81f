"""standardize_node with the standardization model: a raw image comes out as line integral, bone channel and
validity mask (same view_id), images it cannot handle are dropped with a logged reason."""
import numpy as np
import pytest

from test_ros_nodes import ros_env, spinner, start_node, stop  # noqa: F401  (fixtures and helpers)

pytestmark = pytest.mark.ros


def test_standardize_node_publishes_line_bone_and_mask_and_drops_bad_images(ros_env):  # noqa: F811
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from ixgs_ros.core.geometry import View, look_at
    from ixgs_ros.msg import XrayView
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.standardize.apply import Standardizer

    ns = "/ixgs_std_model"
    proc = start_node("standardize", ros_env, "-r", f"__ns:={ns}", "-p", "downsample:=2")
    view = View([[300.0, 0.0, 31.5], [0.0, 300.0, 31.5], [0.0, 0.0, 1.0]],
                look_at([0.0, -600.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]), 64, 64)
    yy, xx = np.mgrid[0:64, 0:64]
    body = 3.0 * np.sqrt(np.clip(1 - ((xx - 32) / 26.0) ** 2 - ((yy - 32) / 30.0) ** 2, 0, None))
    raw = np.round(20000 * np.exp(-body)).astype(np.uint16)
    nan = raw.astype(np.float32)
    nan[5, 5] = np.nan
    inputs = {"good": (raw, "mono16"), "nan": (nan, "32FC1"), "blank": (np.zeros((64, 64), np.uint16), "mono16"),
              "saturated": (np.full((64, 64), 65535, np.uint16), "mono16")}
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    got = {"xray_views": [], "xray_views_bone": [], "xray_views_mask": []}
    try:
        node = rclpy.create_node("ixgs_test_probe", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        for topic, box in got.items():
            node.create_subscription(XrayView, f"{ns}/{topic}", box.append, 10)
        pub = node.create_publisher(XrayView, f"{ns}/xray_views_raw", 10)
        spin_until = spinner(executor, 60.0, 0.05)
        assert spin_until(lambda: pub.get_subscription_count() > 0
                          and node.count_publishers(f"{ns}/xray_views_mask") > 0)
        spin_until(lambda: False, timeout=1.0)
        for vid, (img, enc) in inputs.items():
            pub.publish(cv.view_to_xray_view(view, img, image_kind=XrayView.IMAGE_KIND_RAW, view_id=vid, encoding=enc))
        spin_until(lambda: all(len(b) >= 1 for b in got.values()))
        spin_until(lambda: False, timeout=1.0)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        rc, out = stop(proc)
    assert rc == 0, out
    for topic, msgs in got.items():
        assert [m.view_id for m in msgs] == ["good"], (topic, out)
    line, bone, mask = (cv.xray_view_image(got[t][0]) for t in got)
    assert got["xray_views"][0].image_kind == XrayView.IMAGE_KIND_LINE_INTEGRAL and line.shape == (32, 32)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert (bone <= line + 1e-5).all()
    # the node runs exactly the model (2x2 binning after it)
    ref = Standardizer()(raw)
    assert np.allclose(line, ref.line.reshape(32, 2, 32, 2).mean(axis=(1, 3)), atol=1e-5)
    assert "dropped view 'nan': image contains 1 NaN or inf value(s)" in out
    assert "dropped view 'blank': blank image" in out
    assert "dropped view 'saturated': saturated image" in out

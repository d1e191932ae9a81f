"""What an RViz user sees of a running reconstruction_node, rendered offscreen into one PNG.

Subscribes (latched QoS, so the last outputs arrive at once) to NS/bone_markers (visualization_msgs/MarkerArray),
NS/bone_cloud (sensor_msgs/PointCloud2) and NS/mpr/{axial,coronal,sagittal} (sensor_msgs/Image 32FC1), waits for
all of them, and draws with matplotlib (Agg): the marker meshes shaded by a headlight in a 3D view, the cloud
coloured by HU, and the three slices windowed for bone, each titled with what the messages say.

    python scripts/rviz_picture.py --ns /ixgs --out rviz.png [--timeout 120]

``collect`` and ``render`` are used by test_ros_live (at small size).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PLANES = ("axial", "coronal", "sagittal")


def collect(node, executor, ns: str, timeout: float = 60.0) -> dict:
    """The latest message of each output topic (keys markers, cloud, axial, coronal, sagittal); a key is missing
    when nothing arrived within ``timeout``."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2
    from visualization_msgs.msg import MarkerArray

    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got: dict = {}
    ns = "/" + ns.strip("/")
    subs = [node.create_subscription(MarkerArray, f"{ns}/bone_markers", lambda m: got.__setitem__("markers", m), qos),
            node.create_subscription(PointCloud2, f"{ns}/bone_cloud", lambda m: got.__setitem__("cloud", m), qos)]
    for plane in PLANES:
        subs.append(node.create_subscription(Image, f"{ns}/mpr/{plane}",
                                             lambda m, p=plane: got.__setitem__(p, m), qos))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < 2 + len(PLANES):
        executor.spin_once(timeout_sec=0.1)
    for s in subs:
        node.destroy_subscription(s)
    return got


def _triangles(markers) -> tuple[np.ndarray, list[tuple]]:
    """``(triangles [T, 3, 3] mm, per-triangle colours)`` of the TRIANGLE_LIST markers."""
    from visualization_msgs.msg import Marker

    tris, colours = [], []
    for m in markers.markers:
        if m.type != Marker.TRIANGLE_LIST or m.action != Marker.ADD or not m.points:
            continue
        p = np.array([[q.x, q.y, q.z] for q in m.points], dtype=np.float64).reshape(-1, 3, 3) * 1000.0
        tris.append(p)
        colours += [(m.color.r, m.color.g, m.color.b)] * len(p)
    if not tris:
        return np.zeros((0, 3, 3)), []
    return np.concatenate(tris), colours


def render(msgs: dict, path, *, title: str = "ixgs_ros live outputs as RViz shows them (slices: bone window W 1800 "
                                            "L 450 HU)", max_triangles: int = 30000,
           max_points: int = 20000) -> Path:
    """Draw ``msgs`` (from :func:`collect`) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from ixgs_ros.core.volume import mu_to_hu
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes import convert_outputs as co

    fig = plt.figure(figsize=(14, 8.5), dpi=90, facecolor="black")
    fig.suptitle(title, color="white")
    ax = fig.add_subplot(2, 3, (1, 2), projection="3d", facecolor="black")
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    if "markers" in msgs:
        tris, colours = _triangles(msgs["markers"])
        if len(tris) > max_triangles:
            keep = np.linspace(0, len(tris) - 1, max_triangles).astype(int)
            tris, colours = tris[keep], [colours[i] for i in keep]
        if len(tris):
            n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            light = np.array([0.4, -0.8, 0.45]) / np.linalg.norm([0.4, -0.8, 0.45])
            shade = 0.25 + 0.75 * np.clip(n @ light, 0, 1)
            face = np.asarray(colours) * shade[:, None]
            ax.add_collection3d(Poly3DCollection(tris, facecolors=face, edgecolors="none"))
            lo, hi = np.minimum(lo, tris.reshape(-1, 3).min(0)), np.maximum(hi, tris.reshape(-1, 3).max(0))
        n_pieces = sum(1 for m in msgs["markers"].markers if m.points)
        ax.set_title(f"bone_markers: {n_pieces} piece{'s' if n_pieces != 1 else ''}, {len(tris)} triangles",
                     color="white")
    cloud_ax = fig.add_subplot(2, 3, 3, projection="3d", facecolor="black")
    if "cloud" in msgs:
        c = co.msg_to_cloud(msgs["cloud"])
        xyz, hu = c["xyz"], c.get("hu", np.zeros(len(c["xyz"])))
        if len(xyz) > max_points:
            keep = np.linspace(0, len(xyz) - 1, max_points).astype(int)
            xyz, hu = xyz[keep], hu[keep]
        if len(xyz):
            cloud_ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=hu, s=1, cmap="plasma", vmin=200, vmax=900)
            lo, hi = np.minimum(lo, xyz.min(0)), np.maximum(hi, xyz.max(0))
        cloud_ax.set_title(f"bone_cloud: {msgs['cloud'].width} points (HU)", color="white")
    for a in (ax, cloud_ax):
        if np.all(np.isfinite(lo)):
            mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
            a.set_xlim(mid[0] - half, mid[0] + half)
            a.set_ylim(mid[1] - half, mid[1] + half)
            a.set_zlim(mid[2] - half, mid[2] + half)
        a.view_init(elev=15, azim=-60)
        a.tick_params(colors="grey", labelsize=6)
        for pane in (a.xaxis.pane, a.yaxis.pane, a.zaxis.pane):  # RViz's dark background
            pane.set_facecolor((0.19, 0.19, 0.19, 1.0))
            pane.set_edgecolor("grey")
        for axis, name in zip((a.xaxis, a.yaxis, a.zaxis), "xyz"):
            axis.label.set_color("grey")
            axis.set_label_text(f"{name} (mm)")
    for i, plane in enumerate(PLANES):
        a = fig.add_subplot(2, 3, 4 + i)
        a.set_facecolor("black")
        a.axis("off")
        if plane in msgs:
            img = mu_to_hu(cv.image_to_array(msgs[plane]))  # the message holds mu (1/mm); shown in a bone window
            a.imshow(img, cmap="gray", vmin=-450.0, vmax=1350.0)
            a.set_title(f"mpr/{plane} {img.shape[1]}x{img.shape[0]} {msgs[plane].encoding}", color="white")
        else:
            a.set_title(f"mpr/{plane}: nothing received", color="red")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="black")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", default="/ixgs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    try:
        node = rclpy.create_node("ixgs_rviz_picture")
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        msgs = collect(node, ex, args.ns, args.timeout)
        missing = [k for k in ("markers", "cloud", *PLANES) if k not in msgs]
        print(f"wrote {render(msgs, args.out)}" + (f" (nothing received on {missing})" if missing else ""))
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())

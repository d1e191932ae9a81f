"""A fluoroscopy-like stream into the live pipeline: 16-bit frames at 30 Hz for 60 s (512x512), camera_info with
each frame and a 100 Hz tracker, from a C-arm that stops, moves 10 degrees, stops again. Loopback only (localhost
discovery, shared memory), bounded in frame count and time.

xray_ingest_node runs with ``frame_policy:=still`` (docs/ros.md, "Frame policy"): one view per stop of the
C-arm, the other frames dropped and counted. Measured: frames sent / received / paired / made views / dropped
by reason (the ingest node's /diagnostics), views recorded, standardized and accepted by the reconstruction (no
accepted view dropped), the stops of the trajectory (the views expected), the peak RSS of each node (sampled every
second, and its VmHWM) and the RSS after the first stop and at the end.

    python benchmarks/load_stream.py [--duration 60] [--rate 30] [--size 512] [--json PATH]

``test/test_load_stream.py`` runs 2 s at 30 Hz of 128x128 frames in ``make test``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_harness import NodeProcess, Probe, print_table, ros_env  # noqa: E402

NS = "/ixgs_load"
I0 = 30000.0
STEP_DEG = 10.0


class Trajectory:
    """Stops of ``still_s`` at 0, 10, 20 ... degrees, ``move_s`` of rotation between them."""

    def __init__(self, still_s: float, move_s: float):
        self.still_s, self.move_s = still_s, move_s

    def angle(self, t: float) -> float:
        period = self.still_s + self.move_s
        i, r = divmod(t, period)
        frac = 0.0 if r <= self.still_s else (r - self.still_s) / self.move_s
        return STEP_DEG * (i + frac)

    def stops(self, duration: float, still_time_s: float) -> int:
        """Stops long enough (and inside the run) for a view."""
        period = self.still_s + self.move_s
        n, t = 0, 0.0
        while t < duration:
            if min(self.still_s, duration - t) > still_time_s + 0.1:
                n += 1
            t += period
        return n


def make_views(size: int, n: int):
    from ixgs_ros.core.geometry import View, look_at
    from ixgs_ros.simulation.phantom import Ellipsoid, project

    f = 350.0 * size / 32.0
    K = [[f, 0.0, size / 2 - 0.5], [0.0, f, size / 2 - 0.5], [0.0, 0.0, 1.0]]
    views = []
    for i in range(n):
        a = np.deg2rad(-80 + STEP_DEG * i)
        src = 400.0 * np.array([np.sin(a), -np.cos(a), 0.05])
        views.append(View(K, look_at(src, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)), size, size))
    lines = project([Ellipsoid((0.0, 0.0, 0.0), (12.0,) * 3, mu=0.04)], views)
    counts = [np.clip(np.round(I0 * np.exp(-p)), 1, 65534).astype(np.uint16) for p in lines]
    return views, counts


def pose_at(angle_deg: float):
    from ixgs_ros.core.geometry import look_at

    a = np.deg2rad(-80 + angle_deg)
    return look_at(400.0 * np.array([np.sin(a), -np.cos(a), 0.05]), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))


def stream(duration: float = 60.0, rate: float = 30.0, size: int = 512, still_s: float = 2.0, move_s: float = 1.5,
           still_time_s: float = 0.5, pose_rate: float = 100.0, workdir: Path | None = None, log=print) -> dict:
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from ixgs_ros.msg import ReconstructionStatus
    from ixgs_ros.nodes import convert as cv

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ixgs_load_")
        workdir = Path(tmp.name)
    workdir = Path(workdir)
    env = ros_env(workdir)
    traj = Trajectory(still_s, move_s)
    n_pos = int(duration / (still_s + move_s)) + 2
    views, counts = make_views(size, n_pos)
    ds = max(1, size // 128)
    ns = ["-r", f"__ns:={NS}"]
    nodes = {
        "ingest": NodeProcess("ingest", ns + ["-p", f"record_dir:={workdir / 'record'}", "-p", "frame_policy:=still",
                                              "-p", f"still_time_s:={still_time_s}"], env, workdir / "ingest.log"),
        "standardize": NodeProcess("standardize", ns + ["-p", "method:=log", "-p", f"i0:={I0}",
                                                        "-p", f"downsample:={ds}"], env, workdir / "standardize.log"),
        "reconstruction": NodeProcess("reconstruction", ns + [
            "-p", "min_views:=1000000", "-p", "volume_size:=[16,16,16]", "-p", "voxel_size_mm:=2.5",
            "-p", "status_rate_hz:=5.0", "-p", "outputs:=['']", "-p", "device:=cpu"], env,
            workdir / "reconstruction.log"),
    }
    for n in nodes.values():
        n.start()
    probe = Probe("ixgs_load_probe")
    status = []
    rss_samples = {k: [] for k in nodes}
    t_wall = time.monotonic()
    try:
        node = probe.node
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        img_pub = node.create_publisher(Image, f"{NS}/image_raw", qos)
        info_pub = node.create_publisher(CameraInfo, f"{NS}/camera_info", qos)
        pose_pub = node.create_publisher(PoseStamped, f"{NS}/source_pose", QoSProfile(depth=50))
        node.create_subscription(ReconstructionStatus, f"{NS}/reconstruction_status",
                                 lambda m: status.__setitem__(slice(None), [m]), 10)
        if not probe.spin_until(lambda: all(p.get_subscription_count() > 0 for p in (img_pub, info_pub, pose_pub))
                                and status and probe.diag("xray_ingest_node"), 120.0):
            raise RuntimeError("nodes did not come up")
        probe.spin_for(1.0)
        rss_idle = {k: round(n.rss_mb(), 1) for k, n in nodes.items()}
        n_frames = int(round(duration * rate))
        n_poses = int(round(duration * pose_rate))
        t0 = time.monotonic()
        stamp0 = time.time()
        sent_frames = sent_poses = 0
        next_sample = t0
        late = 0.0
        while sent_frames < n_frames or sent_poses < n_poses:
            t_frame = sent_frames / rate if sent_frames < n_frames else float("inf")
            t_pose = sent_poses / pose_rate if sent_poses < n_poses else float("inf")
            t_next = min(t_frame, t_pose)
            while time.monotonic() - t0 < t_next:
                probe.executor.spin_once(timeout_sec=max(0.0, min(0.002, t_next - (time.monotonic() - t0))))
            late = max(late, time.monotonic() - t0 - t_next)
            if time.monotonic() - t0 > duration + 10.0:
                break  # bounded in time whatever happens
            if t_pose <= t_frame:
                m = PoseStamped(header=cv.make_header("world", stamp0 + t_pose),
                                pose=cv.matrix_to_pose(pose_at(traj.angle(t_pose))))
                pose_pub.publish(m)
                sent_poses += 1
            else:
                h = cv.make_header("xray_source_optical", stamp0 + t_frame)
                i = int(round(traj.angle(t_frame) / STEP_DEG))
                info_pub.publish(cv.view_to_camera_info(views[i], h))
                img_pub.publish(cv.array_to_image(counts[i], header=h))
                sent_frames += 1
            if time.monotonic() >= next_sample:
                for k, n in nodes.items():
                    rss_samples[k].append(n.rss_mb())
                next_sample += 1.0
        stream_s = time.monotonic() - t0
        expected = traj.stops(duration, still_time_s)

        def diag():
            return probe.diag("xray_ingest_node")

        def views_done():
            d = diag()
            st = status[-1] if status else None
            return (d.get("waiting_images") == "0" and st is not None
                    and st.views_used + st.views_rejected >= int(d.get("frames.views", 0)))
        # the ingest node's diagnostics come once a second: wait for one sent after the last frame before
        # comparing its view count with the reconstruction's (an older one undercounts the views)
        probe.spin_for(1.5)
        probe.spin_until(views_done, 60.0)
        probe.spin_for(2.0)  # the last diagnostics
        d = diag()
        st = status[-1]
        std = probe.diag("standardize_node")
        for k, n in nodes.items():
            rss_samples[k].append(n.rss_mb())
        rss = {k: {"idle": rss_idle[k], "end": round(rss_samples[k][-1], 1),
                   "peak_sampled": round(max(rss_samples[k]), 1), "peak_hwm": round(n.peak_rss_mb(), 1)}
               for k, n in nodes.items()}
        alive = {k: n.alive() for k, n in nodes.items()}
    finally:
        probe.close()
        codes = {k: n.stop() for k, n in nodes.items()}
    record = workdir / "record" / "shots"
    n_rec = len(list(record.glob("*.json"))) if record.is_dir() else 0
    rec_mb = sum(p.stat().st_size for p in record.glob("*")) / 2 ** 20 if record.is_dir() else 0.0
    ints = {k: int(v) for k, v in d.items() if k.startswith(("frames.", "rejected.")) and v.lstrip("-").isdigit()}
    report = {
        "benchmark": "load_stream", "duration_s": duration, "rate_hz": rate, "size": size, "pose_rate_hz": pose_rate,
        "trajectory": {"still_s": still_s, "move_s": move_s, "step_deg": STEP_DEG}, "still_time_s": still_time_s,
        "frames_sent": sent_frames, "poses_sent": sent_poses, "stream_s": round(stream_s, 2),
        "max_send_lag_s": round(late, 3), "mb_per_s": round(sent_frames * size * size * 2 / 2 ** 20 / stream_s, 1),
        "ingest": ints, "stops_expected": expected, "views": ints.get("frames.views", 0), "views_recorded": n_rec,
        "record_mb": round(rec_mb, 1), "standardized": int(std.get("published", -1)),
        "reconstruction_views_used": int(st.views_used), "reconstruction_rejected": int(st.views_rejected),
        "accepted_views_dropped": int(ints.get("frames.views", 0)) - int(st.views_used),
        "rss_mb": rss, "alive_at_end": alive, "exit_codes": codes, "wall_s": round(time.monotonic() - t_wall, 1),
    }
    if tmp is not None:
        tmp.cleanup()
    return report


def print_report(r: dict) -> None:
    print(json.dumps(r, indent=1, default=str))
    rows = [[k, v["idle"], v["end"], v["peak_sampled"], v["peak_hwm"], r["alive_at_end"][k], r["exit_codes"][k]]
            for k, v in r["rss_mb"].items()]
    print_table(rows, ["node", "rss idle MB", "end", "peak (1 s samples)", "VmHWM", "alive", "exit"])
    i = r["ingest"]
    print(f"\n{r['frames_sent']} frames of {r['size']}x{r['size']} in {r['stream_s']} s ({r['mb_per_s']} MB/s): "
          f"received {i.get('frames.received')}, paired {i.get('frames.paired')}, views {r['views']} "
          f"(stops {r['stops_expected']}), dropped moving {i.get('frames.dropped.moving')}, same position "
          f"{i.get('frames.dropped.same_position')}, sync {i.get('rejected.sync', 0)}; reconstruction accepted "
          f"{r['reconstruction_views_used']}, accepted views dropped {r['accepted_views_dropped']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--still-s", type=float, default=2.0)
    ap.add_argument("--move-s", type=float, default=1.5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "load_stream.json"))
    a = ap.parse_args(argv)
    r = stream(a.duration, a.rate, a.size, a.still_s, a.move_s, workdir=Path(a.workdir) if a.workdir else None)
    print_report(r)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    ok = r["accepted_views_dropped"] == 0 and all(r["alive_at_end"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

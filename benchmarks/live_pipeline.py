"""Live pipeline benchmark: a scan played as a tracked C-arm through the ROS nodes, timed as a user sees it.

Starts the pipeline exactly as ``ixgs live --scan`` does (the launch file's executables with config/ixgs.yaml,
each its own process; :func:`ixgs_ros.commands.live.build_commands`), on the scan's ROI grid, with the player
sending detector counts ``raw_i0 * exp(-p)`` (so the standardize step runs) at ``--rate`` shots per second once
the pipeline is up. A probe listens to ``image_raw``, ``volume`` and ``reconstruction_status``, and every node's
CPU time and resident memory (the reconstruction node together with its session process) are sampled from
/proc. Reported:

* ``t_last_shot``: when the probe saw the last image on ``image_raw`` (the moment the C-arm shot);
* the first volume after it, the first volume reconstructed from every training shot (``view_count``), and the
  final one (stage final, every shot), each in seconds after the last shot;
* per node: CPU seconds, mean CPU share over the run, peak RSS; the longest gap between two status messages
  (the heartbeat, ``status_rate_hz``);
* with a ground truth (``gt.nii.gz`` beside the scan) each volume's 3D PSNR / SSIM (R2-Gaussian's protocol), and
  with ``--compare-file`` the file-based reconstruction of the same shots (``ixgs_ros.pipeline``, the same
  engine configuration) and the difference of the final volumes' PSNR.

The issue's configuration (1 shot per 2 s, 25 full-body shots, 128^3 at 1 mm, full-volume target; about an hour
on this shared 2-core machine):

    ixgs simulate --out bench_out/live/scan25 --views 25 --roi T12 --mode full-body
    python benchmarks/live_pipeline.py --scan bench_out/live/scan25 --out bench_out/live/full --rate 0.5 \\
        --min-views 3 --iterations 100 --compare-file

Writes ``OUT/live.json`` and ``OUT/live.md`` and prints the table; node logs go to ``OUT/<node>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of one process (0, 0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime + stime
        rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return 0.0, 0


class Sampler(threading.Thread):
    """Samples each node every ``period`` s with its child processes (the reconstruction node's session runs in
    one): CPU seconds (the last reading of every process ever seen, so a child that ended still counts) and the
    peak of the summed RSS."""

    def __init__(self, pids: dict[str, int], period: float = 0.5):
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.seen: dict[str, dict[int, float]] = {n: {} for n in pids}  # node -> pid -> CPU seconds
        self.peak_rss = {n: 0 for n in pids}
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.stop_event.is_set():
            for name, pid in self.pids.items():
                total_rss = 0
                for p in [pid, *_children(pid)]:
                    cpu, rss = _cpu_rss(p)
                    if cpu:
                        self.seen[name][p] = cpu
                    total_rss += rss
                self.peak_rss[name] = max(self.peak_rss[name], total_rss)
            self.stop_event.wait(self.period)

    def report(self) -> dict:
        wall = time.monotonic() - self.t0
        out = {}
        for n in self.pids:
            cpu = sum(self.seen[n].values())
            out[n] = {"cpu_s": round(cpu, 1), "cpu_share": round(cpu / max(wall, 1e-9), 3),
                      "peak_rss_mb": round(self.peak_rss[n] / 2 ** 20, 1), "processes": len(self.seen[n])}
        return out


def file_reconstruction(scan_dir: Path, grid, overrides: list[str], iterations: int, raw_i0: float):
    """The file-based reconstruction of the same shots as the live run sees them (counts rounded as the player
    sends them, then -ln(I/I0) with the estimated I0, as standardize_node), with the node's engine configuration."""
    from ixgs_ros.core.radiograph import standardize
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.nodes.reconstruction import build_engine_config
    from ixgs_ros.pipeline import reconstruct_scan

    scan = Scan.load(scan_dir)
    if raw_i0 > 0:
        views, images = [], []
        for v, p in zip(scan.views, scan.projections):
            counts = np.clip(np.round(raw_i0 * np.exp(-p.astype(np.float64))), 1, 65535).astype(np.uint16)
            v2, li, _ = standardize(v, counts, raw=True, i0=0.0)
            views.append(v2)
            images.append(li)
        scan = Scan(views, np.stack(images), "line_integral", scan.extra)
    config = build_engine_config("", overrides, iterations, "cpu")
    t0 = time.monotonic()
    result = reconstruct_scan(scan, grid, config, progress=False)
    return np.asarray(result.volume), time.monotonic() - t0


def on_gt_grid(mu, grid, gt_grid):
    """``mu`` (on the node's axis-aligned grid) on the ground truth's grid, resampled when they differ."""
    from ixgs_ros.core.volume import resample

    if grid.shape == gt_grid.shape and np.allclose(grid.affine, gt_grid.affine, atol=1e-4):
        return mu
    return resample(mu, grid, gt_grid)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", required=True, help="ixgs-scan folder (gt.nii.gz beside it for the quality columns)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=0.5, help="shots per second (default 0.5: one per 2 s)")
    ap.add_argument("--min-views", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--raw-i0", type=float, default=30000.0)
    ap.add_argument("--timeout", type=float, default=7200.0)
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="more node parameters, as ixgs live --set")
    ap.add_argument("--compare-file", action="store_true", help="also run the file-based reconstruction")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from ixgs_ros.commands.live import build_commands
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti
    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.msg import ReconstructionStatus, Volume
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes._base import latched_qos, shot_qos

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scan_dir = Path(args.scan).resolve()
    n_shots = len(Scan.load(scan_dir))
    n_train = n_shots - args.heldout
    gt_path = scan_dir / "gt.nii.gz"
    gt, gt_grid = load_nifti(gt_path) if gt_path.is_file() else (None, None)
    os.environ.update(ROS_DOMAIN_ID=str(150 + os.getpid() % 60), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      RMW_IMPLEMENTATION="rmw_fastrtps_cpp", ROS_LOG_DIR=str(out / "ros_log"),
                      FASTDDS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"),
                      PYTHONUNBUFFERED="1")
    ns = "ixgs_live_bench"
    sets = [f"reconstruction_node.min_views={args.min_views}", f"reconstruction_node.heldout_views={args.heldout}",
            f"reconstruction_node.iterations={args.iterations}", *args.set]
    commands = build_commands(Namespace(scan=str(scan_dir), bag=None, no_player=False, params=None, namespace=ns,
                                        out=str(out / "run"), rate=args.rate, raw_i0=args.raw_i0,
                                        grid_from_scan=True, set=sets, duration=None, export_bag=None))
    procs, logs = {}, {}
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    events: list[dict] = []
    state = {"images": [], "status": None, "num_gaussians": 0}
    t_start = time.monotonic()
    sampler = None
    try:
        node = rclpy.create_node("ixgs_live_bench_probe", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def on_volume(msg):  # scored after the run: SSIM here would take CPU from the reconstruction
            origin = cv.volume_msg_origin(msg)
            mu, vgrid = cv.msg_to_volume(msg)
            events.append({"t": time.monotonic(), **{k: origin[k] for k in ("stage", "view_count", "iteration")},
                           "mu": mu.copy(), "grid": vgrid})
            print(f"[{events[-1]['t'] - t_start:7.1f} s] volume: {origin['stage']} from {origin['view_count']} views, "
                  f"iteration {origin['iteration']}", flush=True)

        def on_status(msg):
            state["status"] = msg
            state.setdefault("status_t", []).append(time.monotonic())

        node.create_subscription(Image, f"/{ns}/image_raw", lambda m: state["images"].append(time.monotonic()),
                                 shot_qos("best_effort"))
        node.create_subscription(ReconstructionStatus, f"/{ns}/reconstruction_status", on_status, 10)
        node.create_subscription(Volume, f"/{ns}/volume", on_volume, latched_qos())
        env = dict(os.environ)
        for name, cmd in commands.items():
            if name == "scan_player_node":  # the C-arm shoots once the chain is up
                hops = [f"/{ns}/xray_views_raw", f"/{ns}/xray_views"]
                up_by = time.monotonic() + 180.0
                while not all(node.count_subscribers(t) for t in hops) and time.monotonic() < up_by:
                    ex.spin_once(timeout_sec=0.1)
                ready_by = time.monotonic() + 5.0
                while time.monotonic() < ready_by:
                    ex.spin_once(timeout_sec=0.1)
            logs[name] = open(out / f"{name}.log", "w")
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
                                           text=True)
            if name == "scan_player_node":
                sampler = Sampler({n: p.pid for n, p in procs.items()})
                sampler.start()
        deadline = t_start + args.timeout
        last_msg = None
        while time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
            st = state["status"]
            if st is not None and st.message != last_msg and "iteration" not in st.message:
                last_msg = st.message
                print(f"[{time.monotonic() - t_start:7.1f} s] status: {st.message}", flush=True)
            final = [e for e in events if e["stage"] == "final" and e["view_count"] >= n_train]
            if final and st is not None and st.state == ReconstructionStatus.CONVERGED:
                break
            if any(p.poll() is not None for n, p in procs.items() if n != "scan_player_node"):
                print("a node exited early; see its log", file=sys.stderr)
                break
        final_status = state["status"]
        node.destroy_node()
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        rclpy.shutdown(context=ctx)
        for p in reversed(list(procs.values())):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()

    images = state["images"]
    t_last = images[n_shots - 1] if len(images) >= n_shots else None
    rel = []
    node_grid = events[-1]["grid"] if events else None
    for e in events:
        mu, vgrid = e.pop("mu"), e.pop("grid")
        mu = on_gt_grid(mu, vgrid, gt_grid) if gt is not None else None
        rel.append(dict(e, t=round(e["t"] - t_last, 1) if t_last is not None else None,
                        psnr_3d=float(psnr_3d(mu, gt)) if gt is not None else float("nan"),
                        ssim_3d=float(ssim_3d(mu, gt)) if gt is not None else float("nan")))
    after = [e for e in rel if e["t"] is not None and e["t"] >= 0]
    every = [e for e in after if e["view_count"] >= n_train]
    finals = [e for e in every if e["stage"] == "final"]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scan": str(scan_dir), "shots": n_shots, "rate_hz": args.rate,
        "min_views": args.min_views, "heldout": args.heldout, "iterations": args.iterations, "raw_i0": args.raw_i0,
        "shots_seen": len(images),
        "converged": bool(final_status is not None and final_status.state == ReconstructionStatus.CONVERGED),
        "final_status": None if final_status is None else {"message": final_status.message,
                                                            "wall_time_s": final_status.wall_time_s,
                                                            "views_rejected": final_status.views_rejected},
        "status_max_gap_s": round(float(np.diff(state["status_t"]).max()), 2) if len(state.get("status_t", [])) > 1
        else None,
        "first_volume_after_last_shot_s": after[0]["t"] if after else None,
        "first_volume_of_every_shot_s": every[0]["t"] if every else None,
        "final_volume_s": finals[0]["t"] if finals else None,
        "final_psnr_3d": finals[0]["psnr_3d"] if finals else None,
        "nodes": sampler.report() if sampler else {},
        "volumes": rel,
    }
    if args.compare_file and finals and gt is not None:
        cfg_over = [s.split("=", 1)[1] for s in sets if s.startswith("reconstruction_node.engine_overrides=")]
        overrides = [o.strip() for o in cfg_over[0].strip("[]").split(",") if o.strip()] if cfg_over else []
        mu_file, secs = file_reconstruction(scan_dir, node_grid, overrides, args.iterations, args.raw_i0)
        mu_file = on_gt_grid(mu_file, node_grid, gt_grid)
        result["file_based"] = {"psnr_3d": float(psnr_3d(mu_file, gt)), "ssim_3d": float(ssim_3d(mu_file, gt)),
                                "seconds": round(secs, 1)}
        result["live_minus_file_psnr_db"] = round(finals[0]["psnr_3d"] - result["file_based"]["psnr_3d"], 2)
    (out / "live.json").write_text(json.dumps(result, indent=2))
    rows = ["| volume | stage | views | iteration | s after the last shot | 3D PSNR (dB) | 3D SSIM |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {i} | {e['stage']} | {e['view_count']} | {e['iteration']} | {e['t']} | {e['psnr_3d']:.2f} | "
             f"{e['ssim_3d']:.3f} |" for i, e in enumerate(rel)]
    rows += ["", "| node | CPU s | CPU share | peak RSS (MB) |", "|---|---|---|---|"]
    rows += [f"| {n} | {r['cpu_s']} | {r['cpu_share']} | {r['peak_rss_mb']} |" for n, r in result["nodes"].items()]
    table = "\n".join(rows)
    (out / "live.md").write_text(f"`{result['command']}`\n\n{table}\n")
    print(table)
    print(json.dumps({k: result.get(k) for k in ("converged", "shots_seen", "status_max_gap_s",
                                                 "first_volume_after_last_shot_s",
                                                 "first_volume_of_every_shot_s", "final_volume_s", "final_psnr_3d",
                                                 "file_based", "live_minus_file_psnr_db")}, indent=2))
    return 0 if result["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())

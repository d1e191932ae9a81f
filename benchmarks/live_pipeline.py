"""Live pipeline benchmark: a scan played as a tracked C-arm through the four ROS nodes, timed as a user sees it.

Starts ``xray_ingest_node``, ``standardize_node``, ``reconstruction_node`` (on the scan's ROI grid) and, once
they subscribe, ``scan_player_node`` (detector counts ``raw_i0 * exp(-p)``, a shot every ``1 / rate`` s) as
separate processes,
with ``config/ixgs.yaml`` plus the overrides below, and listens to ``reconstruction_status`` and ``volume``.
Each volume is scored against the scan's ground truth (3D PSNR / SSIM, R²-Gaussian's protocol) and classed
as a *preview* (published while the status says no Gaussians exist yet: the initialisation's TV-SART
solutions) or a *snapshot*. Times are seconds after the reconstruction node accepted ``min_views`` training
views (``t_ready``). The iteration column is that of the last status received before the volume (the node
publishes its status on a timer, so it can lag behind the volume). Stops at CONVERGED (or ``--timeout``), then stops the nodes with SIGTERM.

    python benchmarks/live_pipeline.py --scan bench_out/scans/T12-full-body-arc160-28v-256px-128x1mm-siddon-s0 \\
        --out bench_out/live --min-views 25 --heldout 3

Writes ``OUT/live.json`` and ``OUT/live.md`` and prints the table; node logs go to ``OUT/<node>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NODES = {"ingest": "xray_ingest_node", "standardize": "standardize_node",
         "reconstruction": "reconstruction_node", "player": "scan_player_node"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", required=True, help="ixgs-scan folder with gt.nii.gz (e.g. from ixgs bench)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-views", type=int, default=25)
    ap.add_argument("--heldout", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--rate", type=float, default=4.0, help="shots per second")
    ap.add_argument("--raw-i0", type=float, default=30000.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    from ixgs_ros.evaluation.metrics import psnr_3d, ssim_3d
    from ixgs_ros.core.volume import load_nifti
    from ixgs_ros.msg import ReconstructionStatus, Volume
    from ixgs_ros.nodes import convert as cv

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scan = Path(args.scan)
    gt, grid = load_nifti(scan / "gt.nii.gz")
    center = [float(c) for c in grid.center]
    # the nodes and this process's probe share a private domain (set before rclpy.init reads it)
    os.environ.update(ROS_DOMAIN_ID=str(150 + os.getpid() % 60), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      RMW_IMPLEMENTATION="rmw_fastrtps_cpp", ROS_LOG_DIR=str(out / "ros_log"),
                      FASTDDS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"))
    env = dict(os.environ)
    ns = "/ixgs_live_bench"
    common = ["--ros-args", "-r", f"__ns:={ns}", "--params-file", str(ROOT / "config" / "ixgs.yaml")]
    extra = {
        "reconstruction": ["-p", f"min_views:={args.min_views}", "-p", f"heldout_views:={args.heldout}",
                           "-p", f"iterations:={args.iterations}", "-p", f"volume_center_mm:={center}",
                           "-p", f"volume_size:={list(grid.shape)}",
                           "-p", f"voxel_size_mm:={float(grid.spacing.max())}"],
        "player": ["-p", f"scan_dir:={scan}", "-p", f"rate_hz:={args.rate}", "-p", f"raw_i0:={args.raw_i0}"],
    }
    procs, logs = {}, {}
    ctx = rclpy.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    events: list[dict] = []
    t_start = time.monotonic()
    state = {"t_ready": None, "num_gaussians": 0, "status": None}
    try:
        node = rclpy.create_node("ixgs_live_bench_probe", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def on_status(msg):
            now = time.monotonic()
            state["status"] = msg
            state["num_gaussians"] = msg.num_gaussians
            if state["t_ready"] is None and msg.views_used >= args.min_views:
                state["t_ready"] = now

        def on_volume(msg):  # scored after the run: SSIM here would take CPU from the reconstruction
            now = time.monotonic()
            mu, vgrid = cv.msg_to_volume(msg)
            st = state["status"]
            events.append({"t": now, "kind": "preview" if state["num_gaussians"] == 0 else "snapshot",
                           "iterations": int(st.iterations) if st else 0, "mu": mu.copy(), "grid": vgrid})
            print(f"[{now - t_start:7.1f} s] volume ({events[-1]['kind']}, last status at iteration {events[-1]['iterations']})",
                  flush=True)

        node.create_subscription(ReconstructionStatus, f"{ns}/reconstruction_status", on_status, 10)
        node.create_subscription(Volume, f"{ns}/volume", on_volume,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        def start(name):
            logs[name] = open(out / f"{name}.log", "w")
            procs[name] = subprocess.Popen([sys.executable, "-m", f"ixgs_ros.nodes.{name}", *common,
                                            *extra.get(name, [])], cwd=ROOT, env=env, stdout=logs[name],
                                           stderr=subprocess.STDOUT, text=True)

        for name in ("ingest", "standardize", "reconstruction"):
            start(name)
        # as a user would: the C-arm shoots once the chain is up (shot topics are volatile: a node that
        # subscribes later does not get the shots published before)
        hops = [f"{ns}/xray_views_raw", f"{ns}/xray_views"]
        up_by = time.monotonic() + 120.0
        while not all(node.count_subscribers(t) for t in hops) and time.monotonic() < up_by:
            ex.spin_once(timeout_sec=0.1)
        if not all(node.count_subscribers(t) for t in hops):
            raise RuntimeError("the nodes did not come up within 120 s; see their logs in " + str(out))
        start("player")
        deadline = t_start + args.timeout
        last_msg = None
        while time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
            st = state["status"]
            if st is not None and st.message != last_msg and (last_msg is None or st.num_gaussians == 0
                                                             or "iteration" not in st.message):
                last_msg = st.message
                print(f"[{time.monotonic() - t_start:7.1f} s] status: {st.message}", flush=True)
            if st is not None and st.state == ReconstructionStatus.CONVERGED and events:
                break
            if any(p.poll() is not None for p in procs.values() if p is not procs["player"]):
                print("a node exited early; see its log", file=sys.stderr)
                break
        final = state["status"]
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()

    t0 = state["t_ready"]
    rel = []
    for e in events:
        mu, vgrid = e.pop("mu"), e.pop("grid")
        same = vgrid.shape == grid.shape and np.allclose(vgrid.affine, grid.affine, atol=1e-4)
        rel.append(dict(e, t=round(e["t"] - t0, 1) if t0 is not None else None,
                        psnr_3d=float(psnr_3d(mu, gt)) if same else float("nan"),
                        ssim_3d=float(ssim_3d(mu, gt)) if same else float("nan")))
    previews = [e for e in rel if e["kind"] == "preview"]
    snaps = [e for e in rel if e["kind"] == "snapshot"]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "scan": str(scan), "min_views": args.min_views,
        "heldout": args.heldout, "rate_hz": args.rate, "raw_i0": args.raw_i0, "iterations": args.iterations,
        "converged": bool(final is not None and final.state == ReconstructionStatus.CONVERGED),
        "final_status": None if final is None else {"message": final.message, "wall_time_s": final.wall_time_s,
                                                    "heldout_psnr_2d": final.heldout_psnr_2d},
        "volumes": rel,
        "first_preview_s": previews[0]["t"] if previews else None,
        "first_gaussian_volume_s": snaps[0]["t"] if snaps else None,
        "final_volume_s": snaps[-1]["t"] if snaps else None,
    }
    (out / "live.json").write_text(json.dumps(result, indent=2))
    rows = ["| volume | seconds after min_views views | last status's iteration | 3D PSNR (dB) | 3D SSIM |", "|---|---|---|---|---|"]
    rows += [f"| {e['kind']} | {e['t']} | {e['iterations']} | {e['psnr_3d']:.2f} | {e['ssim_3d']:.3f} |" for e in rel]
    table = "\n".join(rows)
    (out / "live.md").write_text(f"`{result['command']}`\n\n{table}\n")
    print(table)
    print(json.dumps({k: result[k] for k in ("converged", "first_preview_s", "first_gaussian_volume_s",
                                             "final_volume_s", "final_status")}, indent=2))
    return 0 if result["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())

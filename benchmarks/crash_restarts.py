"""kill -9 of the live pipeline's nodes at chosen moments, each restarted at once with the same record_dir /
state_dir: no accepted shot may be lost, and the final volume should match an uninterrupted run's.

A tiny scan (32 px views of a sphere, 16^3 grid at 2.5 mm, the torch initial solve, a short schedule) is sent by a
probe acting as the C-arm (image_raw + camera_info + two pose samples per shot). Each scenario is a list of
(node, moment) kills: ``ingestion`` (after the k-th shot, while shots still come), ``init`` (the reconstruction
has all its views and no Gaussian yet), ``optimisation`` (iterations running), ``saving`` (right as the final
volume is published and the state written). The C-arm waits while the ingest node is down (it retries; a shot
the ingest node never took is not an accepted shot). Accepted shots are those in the shot record; after each
restart the reconstruction must come back with every recorded shot (restored from its state or taken up from
the record), and at the end the final volume's views must be every recorded shot. The final volumes are scored
by 3D PSNR against the analytic sphere and compared with an uninterrupted run's.

    python benchmarks/crash_restarts.py [--scenarios 4] [--shots 10] [--json PATH]

``--scenarios 4`` gives 20 kills; ``test/test_crash_restarts.py`` runs 2 kills in ``make test``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_messages import I0, Pool  # noqa: E402
from ros_harness import NodeProcess, Probe, print_table, ros_env  # noqa: E402

NS = "/ixgs_crash"
MU, RADIUS = 0.04, 12.0
SCENARIOS = [
    [("ingest", "ingestion"), ("reconstruction", "ingestion"), ("reconstruction", "init"),
     ("reconstruction", "optimisation"), ("reconstruction", "saving")],
    [("standardize", "ingestion"), ("ingest", "ingestion"), ("reconstruction", "init"),
     ("standardize", "optimisation"), ("reconstruction", "optimisation")],
    [("reconstruction", "ingestion"), ("standardize", "ingestion"), ("reconstruction", "optimisation"),
     ("ingest", "optimisation"), ("reconstruction", "saving")],
    [("ingest", "ingestion"), ("reconstruction", "init"), ("reconstruction", "optimisation"),
     ("reconstruction", "optimisation"), ("standardize", "saving")],
]
CI_SCENARIO = [("ingest", "ingestion"), ("reconstruction", "optimisation")]
TINY = ["-p", "volume_size:=[16,16,16]", "-p", "voxel_size_mm:=2.5", "-p", "volume_center_mm:=[0.0,0.0,0.0]",
        "-p", "device:=cpu", "-p", "iterations:=150", "-p", "status_rate_hz:=10.0",
        "-p", "volume_publish_period_s:=30.0", "-p", "outputs:=['']", "-p", "reinit_growth:=0.0",
        "-p", "refine_poses:=off",
        "-p", "engine_overrides:=[init.solver=torch,init.passes=3,exterior.passes=null,init.tv_weight=0.01,"
              "init.tv_weight_final=null,seed=1]"]


def sphere_psnr(mu: np.ndarray, grid) -> float:
    """3D PSNR of ``mu`` against the analytic sphere on ``grid`` (GT scaled by its maximum, peak 1)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    gt = (np.linalg.norm(xyz, axis=1) <= RADIUS).astype(np.float64).reshape(grid.shape) * MU
    mse = float(np.mean((np.asarray(mu, np.float64) / MU - gt / MU) ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def run_scenario(kills, n_shots: int, workdir: Path, log=print, timeout: float = 600.0) -> dict:
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from ixgs_ros.core.shot_record import ShotRecord
    from ixgs_ros.msg import ReconstructionStatus, Volume
    from ixgs_ros.nodes import convert as cv
    from ixgs_ros.nodes._base import latched_qos

    workdir.mkdir(parents=True, exist_ok=True)
    env = ros_env(workdir)
    record, state = workdir / "record", workdir / "state"
    ns = ["-r", f"__ns:={NS}"]
    nodes = {
        "ingest": NodeProcess("ingest", ns + ["-p", f"record_dir:={record}"], env, workdir / "ingest.log"),
        "standardize": NodeProcess("standardize", ns + ["-p", "method:=log", "-p", f"i0:={I0}"], env,
                                   workdir / "standardize.log"),
        "reconstruction": NodeProcess("reconstruction", ns + TINY + [
            "-p", f"record_dir:={record}", "-p", f"state_dir:={state}", "-p", f"min_views:={n_shots}",
            "-p", "takeup_period_s:=1.0", "-p", "takeup_grace_s:=1.0", "-p", f"takeup_i0:={I0}"], env,
            workdir / "reconstruction.log"),
    }
    for n in nodes.values():
        n.start()
    pool = Pool(seed=4)
    probe = Probe("ixgs_crash_probe")
    t_start = time.monotonic()
    events = []
    status, volumes = [], []
    try:
        node = probe.node
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        img_pub = node.create_publisher(Image, f"{NS}/image_raw", qos)
        info_pub = node.create_publisher(CameraInfo, f"{NS}/camera_info", qos)
        pose_pub = node.create_publisher(PoseStamped, f"{NS}/source_pose", qos)
        node.create_subscription(ReconstructionStatus, f"{NS}/reconstruction_status",
                                 lambda m: status.__setitem__(slice(None), [m]), 10)
        node.create_subscription(Volume, f"{NS}/volume", volumes.append, latched_qos())

        def ingest_ready():
            return all(p.get_subscription_count() > 0 for p in (img_pub, info_pub, pose_pub))

        def st():
            return status[-1] if status else None

        def recorded() -> int:
            try:
                return len(ShotRecord(record).entries())
            except Exception:
                return 0

        if not probe.spin_until(lambda: ingest_ready() and st() is not None, 120.0):
            raise RuntimeError("nodes did not come up")
        probe.spin_for(1.0)

        def kill(name, moment):
            n = nodes[name]
            before = recorded()
            n.kill9()
            t_kill = time.monotonic()
            status.clear()
            n.start()
            ev = {"node": name, "moment": moment, "recorded_at_kill": before, "t_s": round(t_kill - t_start, 1)}
            if name == "reconstruction":  # it must come back with every shot recorded so far
                ok = probe.spin_until(lambda: st() is not None and st().views_used >= recorded(), 120.0)
                ev.update(views_after_restart=int(st().views_used) if st() else 0, recorded=recorded(),
                          back_s=round(time.monotonic() - t_kill, 1), complete=bool(ok))
            elif name == "ingest":  # up again: its start line, then time for discovery to drop the dead reader
                probe.spin_until(lambda: "pairing image_raw" in n.log().split("===== start")[-1], 60.0)
                probe.spin_for(2.0)
                ev.update(back_s=round(time.monotonic() - t_kill, 1))
            else:
                probe.spin_until(lambda: "standardizing" in n.log().split("===== start")[-1], 60.0)
                ev.update(back_s=round(time.monotonic() - t_kill, 1))
            events.append(ev)
            log(f"kill -9 {name} at {moment}: {ev}")

        ingestion = [k for k in kills if k[1] == "ingestion"]
        later = [k for k in kills if k[1] != "ingestion"]
        at_shot = {int((i + 1) * n_shots / (len(ingestion) + 1)): k for i, k in enumerate(ingestion)}
        t0 = time.time() - 100.0
        resends = 0
        for k in range(n_shots):
            if k in at_shot:
                kill(*at_shot.pop(k))
            view, _, counts = pool.shot(k)
            t = t0 + 2.0 * k
            for attempt in range(4):  # a C-arm retries a shot its receiver did not take (it was down)
                probe.spin_until(ingest_ready, 60.0)
                h = cv.make_header("xray_source_optical", t)
                info_pub.publish(cv.view_to_camera_info(view, h))
                img_pub.publish(cv.array_to_image(counts, header=h))
                for dt in (0.0, 0.004):
                    m = PoseStamped(header=cv.make_header("world", t + dt),
                                    pose=cv.matrix_to_pose(view.T_world_source))
                    pose_pub.publish(m)
                if probe.spin_until(lambda: recorded() > k, 5.0):
                    break
                resends += 1
            probe.spin_for(0.3)
        probe.spin_until(lambda: recorded() >= n_shots, 20.0)
        for name, moment in later:
            if moment == "init":  # the last view is in: the initialisation starts
                cond = lambda: st() is not None and st().views_used >= n_shots and st().iterations == 0  # noqa: E731
            elif moment == "optimisation":
                cond = lambda: (st() is not None and st().state == ReconstructionStatus.OPTIMIZING  # noqa: E731
                                and st().iterations > 0)
            else:
                n_vol = len(volumes)
                cond = lambda: any(v.stage == Volume.STAGE_FINAL for v in volumes[n_vol:])  # noqa: E731
            hit = probe.spin_until(cond, 180.0)
            if not hit:
                log(f"moment {moment} not reached for {name}; killing anyway")
            kill(name, moment if hit else moment + " (not reached)")
        n_rec = recorded()

        def final():
            return next((v for v in reversed(volumes) if v.stage == Volume.STAGE_FINAL
                         and v.view_count >= n_rec), None)
        probe.spin_until(lambda: final() is not None, timeout)
        vol = final()
        ids = sorted(vol.view_ids) if vol else []
        rec_ids = sorted(s.view_id for s in ShotRecord(record).entries())
        mu, grid = cv.msg_to_volume(vol) if vol else (None, None)
        alive = {k: n.alive() for k, n in nodes.items()}
    finally:
        probe.close()
        codes = {k: n.stop(60.0) for k, n in nodes.items()}
    return {"kills": events, "shots_sent": n_shots, "resends": resends, "shots_recorded": len(rec_ids),
            "final_view_count": len(ids), "shots_lost": len(set(rec_ids) - set(ids)),
            "lost_after_restart": sum(max(0, e.get("recorded", 0) - e.get("views_after_restart", e.get("recorded", 0)))
                                      for e in events),
            "psnr_3d": round(sphere_psnr(mu, grid), 3) if mu is not None else None,
            "mu": None if mu is None else np.array(mu), "alive_at_end": alive, "exit_codes": codes,
            "wall_s": round(time.monotonic() - t_start, 1)}


def run(scenarios, n_shots: int = 10, baseline: bool = True, workdir: Path | None = None, log=print) -> dict:
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ixgs_crash_")
        workdir = Path(tmp.name)
    results = []
    base = run_scenario([], n_shots, Path(workdir) / "baseline", log) if baseline else None
    for i, kills in enumerate(scenarios):
        r = run_scenario(kills, n_shots, Path(workdir) / f"scenario{i}", log)
        if base is not None and base["mu"] is not None and r["mu"] is not None:
            r["psnr_diff_db"] = round(r["psnr_3d"] - base["psnr_3d"], 3)
            r["max_abs_diff_mu"] = float(np.abs(r["mu"] - base["mu"]).max())
        results.append(r)
    for r in results + ([base] if base else []):
        r.pop("mu", None)
    report = {
        "benchmark": "crash_restarts", "shots_per_run": n_shots, "kills": sum(len(r["kills"]) for r in results),
        "kills_by_node": {}, "kills_by_moment": {},
        "shots_lost": sum(r["shots_lost"] for r in results),
        "lost_after_restart": sum(r["lost_after_restart"] for r in results),
        "volumes_compared": sum(1 for r in results if "psnr_diff_db" in r),
        "baseline": base, "scenarios": results,
    }
    for r in results:
        for e in r["kills"]:
            report["kills_by_node"][e["node"]] = report["kills_by_node"].get(e["node"], 0) + 1
            report["kills_by_moment"][e["moment"]] = report["kills_by_moment"].get(e["moment"], 0) + 1
    if tmp is not None:
        tmp.cleanup()
    return report


def print_report(r: dict) -> None:
    print(json.dumps(r, indent=1, default=str))
    rows = [[i, " ".join(f"{e['node'][:5]}@{e['moment']}" for e in s["kills"]), s["shots_recorded"],
             s["final_view_count"], s["shots_lost"], s["psnr_3d"], s.get("psnr_diff_db", "-"), s["wall_s"]]
            for i, s in enumerate(r["scenarios"])]
    if r["baseline"]:
        b = r["baseline"]
        rows.insert(0, ["base", "(none)", b["shots_recorded"], b["final_view_count"], b["shots_lost"], b["psnr_3d"],
                        "-", b["wall_s"]])
    print_table(rows, ["run", "kills", "recorded", "final views", "lost", "psnr dB", "diff dB", "wall s"])
    print(f"\n{r['kills']} kill -9, {r['shots_lost']} accepted shots lost, {r['volumes_compared']} final volumes "
          "compared with the uninterrupted run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", type=int, default=4, help="scenarios of 5 kills each (4: 20 kills)")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "crash_restarts.json"))
    a = ap.parse_args(argv)
    r = run(SCENARIOS[: a.scenarios], a.shots, not a.no_baseline, Path(a.workdir) if a.workdir else None)
    print_report(r)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    return 0 if r["shots_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

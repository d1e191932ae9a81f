"""``ixgs live --scan DIR``: the live ROS 2 pipeline on this machine, in one command.

Starts the node executables of ``launch/ixgs.launch.py`` (xray_ingest_node, standardize_node,
reconstruction_node) with the same parameter file (``config/ixgs.yaml``) and namespace, each as its own
process, plus ``scan_player_node`` playing a scan folder (``--scan``) or a recorded bag (``--bag``) as a tracked
C-arm once the pipeline is up; prints their output line by line with the node's name, and stops them all
cleanly (SIGINT, then SIGTERM, then SIGKILL after a grace time) on Ctrl-C, after ``--duration`` seconds, or when
one of them exits. The launch file stays the way to start the pipeline on a ROS 2 installation; this launcher
runs where ``launch`` is not installable (test_ros_live checks that both start the same executables with the
same parameters).

With ``--out DIR`` the run keeps what it makes: the ingest node's shot record (``DIR/record``, which the
reconstruction node also takes up shots from), the engine state (``DIR/state``), the latest bone mesh
(``DIR/outputs``), snapshots (``DIR/snapshots``) and, with ``--export-bag``, the recorded acquisition as a bag.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: What launch/ixgs.launch.py starts (its NODES), in start order, and the module of each executable.
PIPELINE = ("xray_ingest_node", "standardize_node", "reconstruction_node")
PLAYER = "scan_player_node"
MODULES = {"xray_ingest_node": "ingest", "standardize_node": "standardize", "reconstruction_node": "reconstruction",
           "scan_player_node": "player"}
NAMESPACE = "ixgs"  # launch/ixgs.launch.py's default namespace
ROOT = Path(__file__).resolve().parents[2]


def default_params_file() -> Path:
    """config/ixgs.yaml of the source tree, else of an installed share/ixgs_ros."""
    for candidate in (ROOT / "config" / "ixgs.yaml", Path(sys.prefix) / "share" / "ixgs_ros" / "config" / "ixgs.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("config/ixgs.yaml not found; give --params")


def add_parser(sub):
    p = sub.add_parser("live", help="run the live ROS 2 pipeline here (nodes as processes, a scan or bag as C-arm)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scan", help="ixgs-scan folder played as a tracked C-arm")
    src.add_argument("--bag", help="rosbag2 folder (mcap/sqlite3) replayed as the C-arm's streams")
    src.add_argument("--no-player", action="store_true", help="start the pipeline only (a real C-arm publishes)")
    p.add_argument("--params", help="ROS 2 parameter file (default: config/ixgs.yaml, as the launch file)")
    p.add_argument("--namespace", default=NAMESPACE, help=f"namespace of the nodes and topics (default {NAMESPACE})")
    p.add_argument("--out", help="keep the shot record, state, outputs and snapshots under this folder")
    p.add_argument("--rate", type=float, default=None, help="shots per second of the scan player")
    p.add_argument("--raw-i0", type=float, default=30000.0,
                   help="line-integral scan: play detector counts round(I0 exp(-p)), standardized by -ln(I/I0) "
                        "(default 30000; 0 = the line integrals themselves); a raw scan plays its own images, "
                        "standardized by the parameter file's method")
    p.add_argument("--grid-from-scan", action=argparse.BooleanOptionalAction, default=True,
                   help="scan: reconstruct on the scan's ROI grid (size, spacing, centre; default yes)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="a parameter of one node, e.g. reconstruction_node.min_views=25 (repeatable; ROS syntax)")
    p.add_argument("--duration", type=float, default=None, help="stop everything after this many seconds")
    p.add_argument("--export-bag", help="with --out: write the recorded shots as a bag folder here at the end")
    p.add_argument("--grace", type=float, default=20.0, help="seconds a node gets to stop before it is killed")
    p.set_defaults(func=run)
    return p


def executable(node: str) -> list[str]:
    """The command of a node executable: the installed console script beside this interpreter (what setup.py
    and cmake/install_python.cmake install), else ``python -m ixgs_ros.nodes.<module>``."""
    script = Path(sys.executable).parent / node
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which(node)
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return [found]
    return [sys.executable, "-m", f"ixgs_ros.nodes.{MODULES[node]}"]


def _scan_grid(scan_dir: str) -> dict:
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.pipeline import choose_grid

    grid = choose_grid(Scan.load(scan_dir))
    return {"volume_size": list(grid.shape), "voxel_size_mm": float(max(grid.spacing)),
            "volume_center_mm": [round(float(c), 4) for c in grid.center]}


def _scan_kind(scan_dir: str) -> str:
    from ixgs_ros.core.scan import Scan

    return Scan.load(scan_dir).image_kind


def _ros_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(_ros_value(x) for x in v) + "]"
    return str(v)


def build_commands(args) -> dict[str, list[str]]:
    """node -> command line (what :func:`run` starts; also what the test compares with the launch file)."""
    params = Path(args.params) if args.params else default_params_file()
    overrides: dict[str, dict[str, object]] = {n: {} for n in (*PIPELINE, PLAYER)}
    if args.out:
        out = Path(args.out).resolve()
        overrides["xray_ingest_node"]["record_dir"] = str(out / "record")
        overrides["reconstruction_node"].update(record_dir=str(out / "record"), state_dir=str(out / "state"),
                                                output_dir=str(out / "outputs"), snapshot_root=str(out / "snapshots"))
    if args.scan:
        raw_scan = _scan_kind(args.scan) == "raw"
        overrides[PLAYER]["scan_dir"] = str(Path(args.scan).resolve())
        # a raw (real-style) scan is played as its own images (raw_i0 converts line integrals only) and goes
        # through the parameter file's standardization (the model)
        overrides[PLAYER]["raw_i0"] = 0.0 if raw_scan else float(args.raw_i0)
        if args.rate:
            overrides[PLAYER]["rate_hz"] = float(args.rate)
        if not raw_scan and args.raw_i0 <= 0:
            overrides["xray_ingest_node"]["image_kind"] = "line_integral"
        elif not raw_scan:
            # Counts made from exact line integrals follow Beer-Lambert with no scatter or vendor processing:
            # -ln(I/I0) gives the scan back, where the standardization model (trained for real-style images)
            # would change it.
            overrides["standardize_node"]["method"] = "log"
        if args.grid_from_scan:
            overrides["reconstruction_node"].update(_scan_grid(args.scan))
    if args.bag:
        overrides[PLAYER]["bag"] = str(Path(args.bag).resolve())
    extra: dict[str, list[str]] = {n: [] for n in overrides}
    for item in args.set:
        node, dot, rest = item.partition(".")
        if not dot or "=" not in rest or node not in overrides:
            raise ValueError(f"--set {item!r}: expected NODE.PARAM=VALUE with NODE one of {sorted(overrides)}")
        name, _, value = rest.partition("=")
        extra[node] += ["-p", f"{name}:={value}"]
    nodes = list(PIPELINE) + ([] if args.no_player else [PLAYER])
    return {n: [*executable(n), "--ros-args", "-r", f"__ns:=/{args.namespace.strip('/')}", "-r", f"__node:={n}",
                "--params-file", str(params),
                *[a for k, v in overrides[n].items() for a in ("-p", f"{k}:={_ros_value(v)}")], *extra[n]]
            for n in nodes}


def _pump(name: str, proc: subprocess.Popen, width: int) -> None:
    for line in proc.stdout:
        sys.stdout.write(f"[{name:<{width}}] {line}")
        sys.stdout.flush()


def _stop(procs: dict[str, subprocess.Popen], grace: float) -> dict[str, int]:
    """SIGINT to every node still running (reverse start order), then SIGTERM, then SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0)):
        running = [p for p in reversed(list(procs.values())) if p.poll() is None]
        for p in running:
            p.send_signal(sig)
        deadline = time.monotonic() + wait
        for p in running:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
    return {n: p.returncode for n, p in procs.items()}


def run(args) -> int:
    if args.export_bag and not args.out:
        raise ValueError("--export-bag needs --out (the bag is made from the shot record there)")
    commands = build_commands(args)
    env = dict(os.environ)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_profile.xml"))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    width = max(map(len, commands))
    procs: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *a: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        for name, cmd in commands.items():
            if name == PLAYER:
                stop.wait(3.0)  # the pipeline subscribes first (shot topics are not latched)
                if stop.is_set():
                    break
            procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True)  # our SIGINT, not the terminal's, stops them
            threading.Thread(target=_pump, args=(name, procs[name], width), daemon=True).start()
            print(f"ixgs live: started {name} (pid {procs[name].pid}): {' '.join(cmd)}", flush=True)
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                break
            ended = [n for n, p in procs.items() if p.poll() is not None and n != PLAYER]
            if ended:
                print(f"ixgs live: {', '.join(ended)} exited (code {procs[ended[0]].returncode}); stopping",
                      flush=True)
                break
            stop.wait(0.2)
    finally:
        codes = _stop(procs, args.grace)
        for s, h in previous.items():
            signal.signal(s, h)
    print("ixgs live: stopped " + ", ".join(f"{n} ({c})" for n, c in codes.items()), flush=True)
    if args.export_bag:
        record = Path(args.out).resolve() / "record"
        res = subprocess.run([sys.executable, "-m", "ixgs_ros.nodes.bag", "export", str(record), args.export_bag],
                             env=env)
        if res.returncode:
            return res.returncode
    return 0 if all(c in (0, -signal.SIGINT) for c in codes.values()) else 1

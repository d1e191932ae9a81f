"""Shared plumbing of the live reliability benchmarks (fuzz_messages, crash_restarts, load_stream): the node
processes (started, killed, stopped, their RSS read from /proc), an isolated ROS environment (own domain id,
localhost discovery, the shared-memory FastDDS profile) and a probe node in its own rclpy context.

Not a test fixture: the benchmarks are scripts, their small-size tests import them."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ros_env(workdir: Path, domain: int | None = None) -> dict:
    """Environment of the node processes and of this one: a domain of its own, localhost only, shared memory."""
    env = {
        "ROS_DOMAIN_ID": str(domain if domain is not None else 101 + (os.getpid() + random.randrange(1000)) % 100),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_profile.xml"),
        "ROS_LOG_DIR": str(Path(workdir) / "ros_log"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
    }
    os.environ.update(env)
    pp = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([pp] if pp else []))
    return dict(os.environ)


# ------------------------------------------------------------------------------------------------ /proc
def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (MiB)."""
    return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` plus that of each descendant alive now (MiB)."""
    return sum(_status_kb(p, "VmHWM") for p in process_tree(pid)) / 1024.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


# ------------------------------------------------------------------------------------------------ nodes
class NodeProcess:
    """One node executable (``python -m ixgs_ros.nodes.<module> --ros-args ...``) with its output in a file."""

    def __init__(self, module: str, args: list[str], env: dict, log_path: Path):
        self.module, self.args, self.env, self.log_path = module, list(args), env, Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts} at {time.time():.3f}\n")
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", f"ixgs_ros.nodes.{self.module}", "--ros-args",
                                      *self.args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        return rss_mb(self.pid) if self.alive() else 0.0

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid) if self.alive() else 0.0

    def kill9(self) -> None:
        """SIGKILL of the node process only (a reconstruction's session child sees its parent gone and exits)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None: it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------------------------ probe
class Probe:
    """A node in its own rclpy context: publishers / subscriptions made by the caller, ``spin_until``, and the
    latest ``/diagnostics`` status of every node (``diag(node_name)`` -> {key: value})."""

    def __init__(self, name: str = "ixgs_bench_probe"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.diagnostics: dict[str, dict] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)

    def _on_diag(self, arr) -> None:
        for st in arr.status:
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values}

    def diag(self, node_name: str) -> dict:
        for name, values in self.diagnostics.items():
            if name.endswith("/" + node_name):
                return values
        return {}

    def spin_for(self, seconds: float, period: float = 0.01) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(period, max(0.0, end - time.monotonic())))

    def spin_until(self, cond, timeout: float, period: float = 0.02) -> bool:
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=period)
        return bool(cond())

    def close(self) -> None:
        import rclpy

        try:
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.ctx)


def rejected_counts(values: dict) -> dict[str, int]:
    """``{reason: count}`` of a node's diagnostics values (``rejected.<key>``)."""
    out = {}
    for k, v in values.items():
        if k.startswith("rejected."):
            try:
                out[k[len("rejected."):]] = int(v)
            except ValueError:
                pass
    return out


def print_table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*["-" * w for w in widths]))
    for r in rows:
        print(line.format(*[str(x) for x in r]))

"""Memory and CPU figures of the running process and machine, for reports and benchmarks (Linux /proc)."""
from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["rss_now_mb", "peak_rss_mb", "rss_of_pid_mb"]


def _status_field(path: Path, key: str) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def rss_now_mb() -> float | None:
    """Resident memory of this process now (MiB), None where /proc is not available."""
    return _status_field(Path("/proc/self/status"), "VmRSS")


def rss_of_pid_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` now (MiB), None when it is gone or unreadable."""
    return _status_field(Path(f"/proc/{int(pid)}/status"), "VmRSS")


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (MiB; ``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

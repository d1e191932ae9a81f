"""Run a :class:`~ixgs_ros.engine.live.LiveSession` where it cannot stall its front end: a thread, or a process.

A live front end (the ROS ``reconstruction_node``) must keep answering (a status heartbeat, services) whatever
the optimiser does. Python threads share one interpreter lock, and RTK's wrappers hold it for the whole of each
call: loading them holds it for 10-20 s, each TV-SART sweep for about a second per 10 views at 64^3 (seconds
at 128^3 with 25 views), during which no other thread of the process runs. So the session runs in a
child process by default (:class:`ProcessRunner`); :class:`ThreadRunner` keeps it in a thread (tests that patch
the engine in-process, or a machine where a second process is not wanted). Both offer the same interface:

* :meth:`submit` / :meth:`reject` / :meth:`knows` / :meth:`reset` / :meth:`request_reinit` as the session's;
* :meth:`status` (the latest :class:`~ixgs_ros.engine.live.LiveStatus` dict, never waits on the worker),
  :attr:`last_volume`, :attr:`meta`, :attr:`info` (restored views, schedule target, whether a model exists);
* ``on_volume`` and ``log`` callbacks, called from one of the runner's threads;
* :meth:`close`: stops the worker at the end of its chunk, takes the queued views and saves.

The child is ``python -m ixgs_ros.engine.live_process FD`` (a fresh interpreter: nothing of the parent's main
module is imported again, unlike multiprocessing's spawn), connected by a socket pair. It gets its own copies of
everything it needs (grid, configuration, state_dir) as the first message, ignores
SIGINT/SIGTERM (the parent decides when it stops) and, when the parent dies (its end of the pipe closes), stops,
saves and exits, so a ``kill -9`` of the node loses nothing the session had accepted. Messages between the
two are Python objects over a private pipe between this process and its own child.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable

from ..core.volume import Grid
from .config import EngineConfig
from .live import LiveConfig, LiveSession, VolumeSnapshot

__all__ = ["ThreadRunner", "ProcessRunner", "make_runner"]

STATUS_PERIOD_S = 0.1  # how often the child sends its status


LOCK_FILE = ".lock"


def lock_state_dir(state_dir, log, timeout_s: float = 60.0):
    """Hold ``state_dir/.lock`` (an advisory lock, released when this process ends) so that one process at a
    time writes the state: a node restarted right after a ``kill -9`` waits for its predecessor's session process,
    which saves and exits when it sees its parent gone. Returns the open lock file; ValueError after
    ``timeout_s``."""
    import fcntl

    d = os.fspath(state_dir)
    os.makedirs(d, exist_ok=True)
    f = open(os.path.join(d, LOCK_FILE), "a+")
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except OSError:
            if time.monotonic() > deadline:
                f.close()
                raise ValueError(f"state_dir {d!r} is in use by another reconstruction process (still after "
                                 f"{timeout_s:g} s); stop it or choose another state_dir") from None
            if not waited:
                waited = True
                log("info", f"state_dir {d!r} is in use: waiting for the previous reconstruction process to save "
                            "and exit")
            time.sleep(0.2)


def _build_session(grid: Grid, config: EngineConfig, live: LiveConfig, state_dir, on_volume, log) -> LiveSession:
    kwargs = dict(on_volume=on_volume, log=log)
    if state_dir:
        return LiveSession.restore(state_dir, grid, config, live, **kwargs)
    return LiveSession(grid, config, live, **kwargs)


def _info(session: LiveSession) -> dict:
    return {"restored_views": len(session.view_ids), "target": session.target,
            "initialised": session.engine.model is not None, "config": session.config}


# ------------------------------------------------------------------------------------------------ thread
class ThreadRunner:
    """The session in a worker thread of this process."""

    def __init__(self, grid: Grid, config: EngineConfig, live: LiveConfig, *, state_dir=None,
                 on_volume: Callable[[VolumeSnapshot], None] | None = None,
                 log: Callable[[str, str], None] | None = None, preload_rtk: bool = True):
        self._lock = lock_state_dir(state_dir, log or (lambda level, text: None)) if state_dir else None
        self.session = _build_session(grid, config, live, state_dir, on_volume, log)
        self.info = _info(self.session)
        self._thread = threading.Thread(target=self.session.run, name="ixgs_reconstruction", daemon=True)
        self._thread.start()
        if preload_rtk and config.init.solver != "torch" and not self.info["initialised"]:
            threading.Thread(target=_preload_rtk, args=(self.session.log,), name="ixgs_rtk_preload",
                             daemon=True).start()

    def submit(self, view_id, view, image, name=None, quiet_duplicate: bool = False):
        if quiet_duplicate and self.session.knows(view_id):
            return None
        return self.session.submit(view_id, view, image, name)

    def reject(self, key: str, name: str, why: str) -> None:
        self.session.reject(key, name, why)

    def knows(self, view_id: str) -> bool:
        return self.session.knows(view_id)

    def next_name(self, view_id: str) -> str:
        return self.session.next_name(view_id)

    def status(self) -> dict:
        return self.session.status().to_dict()

    def reset(self, timeout: float | None = 60.0, meta: dict | None = None) -> bool:
        return self.session.reset(timeout, meta)

    def request_reinit(self) -> str | None:
        return self.session.request_reinit()

    @property
    def last_volume(self) -> VolumeSnapshot | None:
        return self.session.last_volume

    @property
    def meta(self) -> dict:
        return dict(self.session.meta)

    def close(self, log_wait: Callable[[], None] | None = None) -> None:
        self.session.stop()
        self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            if log_wait:
                log_wait()
            self._thread.join()
        self.session.close()
        if self._lock is not None:
            self._lock.close()


def _preload_rtk(log) -> None:
    """ITK loads RTK's wrappers on first use (10-20 s on 2 cores): done while the shots arrive, not inside the
    first initialisation's first pass."""
    from ..core import rtk

    try:
        log("debug", f"RTK loaded in {rtk.preload():.1f} s")
    except Exception as exc:  # the initialisation reports it when it needs RTK
        log("debug", f"RTK preload failed: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------------ process
class _PipeLogHandler(logging.Handler):
    def __init__(self, send):
        super().__init__(logging.INFO)
        self._send = send

    def emit(self, record):
        level = "error" if record.levelno >= logging.ERROR else "warn" if record.levelno >= logging.WARNING \
            else "info"
        try:
            self._send(("log", level, self.format(record)))
        except Exception:
            pass


def _child_main(conn, grid, config, live, state_dir, preload_rtk) -> None:
    """The child process: the session, its worker thread, a status pusher; commands come over ``conn``."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    send_lock = threading.Lock()
    alive = threading.Event()
    alive.set()

    def send(msg) -> None:
        if not alive.is_set():
            return
        try:
            with send_lock:
                conn.send(msg)
        except (OSError, EOFError, ValueError):
            alive.clear()  # the parent is gone

    def log(level, text):
        send(("log", level, text))

    lib = logging.getLogger("ixgs_ros")
    lib.addHandler(_PipeLogHandler(send))
    lib.setLevel(logging.INFO)
    lib.propagate = False
    try:
        state_lock = lock_state_dir(state_dir, log) if state_dir else None  # noqa: F841 (held while the process lives)
        session = _build_session(grid, config, live, state_dir, lambda snap: send(("volume", snap)), log)
    except Exception as exc:
        send(("error", str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", dict(_info(session), known_ids=session.known_ids()), dict(session.meta)))
    worker = threading.Thread(target=session.run, name="ixgs_reconstruction", daemon=True)
    worker.start()
    if preload_rtk and session.engine.model is None:
        threading.Thread(target=_preload_rtk, args=(log,), name="ixgs_rtk_preload", daemon=True).start()

    def status():
        d = session.status().to_dict()
        d["known_ids"] = session.known_ids()
        return d

    def push_status():
        while alive.is_set():
            send(("status", status(), dict(session.meta)))
            time.sleep(STATUS_PERIOD_S)

    threading.Thread(target=push_status, name="ixgs_status_push", daemon=True).start()
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                log("warn", "the node process is gone: stopping the reconstruction and saving its state")
                break
            kind = msg[0]
            if kind == "submit":
                _, vid, name, view, image, quiet = msg
                if not (quiet and session.knows(vid)):
                    session.submit(vid, view, image, name)
            elif kind == "reject":
                session.reject(*msg[1:])
            elif kind == "reset":
                _, token, timeout, meta = msg
                threading.Thread(target=lambda: send(("reply", token, session.reset(timeout, meta))),
                                 daemon=True).start()
            elif kind == "reinit":
                send(("reply", msg[1], session.request_reinit()))
            elif kind == "stop":
                break
    finally:
        session.stop()
        worker.join()
        session.close()
        send(("status", status(), dict(session.meta)))
        send(("closed",))
        alive.clear()


class ProcessRunner:
    """The session in a child process (see the module docstring). ValueError when the child cannot start the
    session (e.g. an unreadable state_dir), with the child's one-line reason."""

    def __init__(self, grid: Grid, config: EngineConfig, live: LiveConfig, *, state_dir=None,
                 on_volume: Callable[[VolumeSnapshot], None] | None = None,
                 log: Callable[[str, str], None] | None = None, preload_rtk: bool = True,
                 start_timeout_s: float = 300.0):
        self._on_volume = on_volume or (lambda snap: None)
        self._log = log or (lambda level, text: None)
        ours, theirs = socket.socketpair()
        # a fresh interpreter (never fork a process holding ROS / torch threads); it finds this package as the
        # parent does
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "ixgs_ros.engine.live_process", str(theirs.fileno())],
                                      pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        # the torch solver needs no RTK (its wrappers load for 10-20 s holding the interpreter lock)
        self._conn.send((grid, config, live, str(state_dir) if state_dir else None,
                         preload_rtk and config.init.solver != "torch"))
        self._send_lock = threading.Lock()
        self._status: dict = {}
        self._meta: dict = {}
        self._last_volume: VolumeSnapshot | None = None
        self._submitted: set[str] = set()
        self._tokens = itertools.count()
        self._replies: dict[int, object] = {}
        self._reply_cond = threading.Condition()
        self._closed = threading.Event()
        deadline = time.monotonic() + start_timeout_s
        while True:  # the child's first message: ready (with its info) or the error that stopped it
            if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                self._proc.kill()
                raise ValueError(f"the reconstruction process did not start within {start_timeout_s:g} s")
            try:
                msg = self._conn.recv()
            except EOFError:
                raise ValueError(f"the reconstruction process exited at start (exit code "
                                 f"{self._proc.wait(timeout=10)})") from None
            if msg[0] == "log":
                self._log(msg[1], msg[2])
                continue
            if msg[0] == "error":
                self._proc.wait(timeout=10)
                raise ValueError(msg[1])
            _, self.info, self._meta = msg
            self._status = {"known_ids": self.info.pop("known_ids")}
            break
        self._reader = threading.Thread(target=self._read, name="ixgs_session_reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------------------ child -> parent
    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            try:
                if kind == "status":
                    self._status, self._meta = msg[1], msg[2]
                elif kind == "volume":
                    self._last_volume = msg[1]
                    self._on_volume(msg[1])
                elif kind == "log":
                    self._log(msg[1], msg[2])
                elif kind == "reply":
                    with self._reply_cond:
                        self._replies[msg[1]] = msg[2]
                        self._reply_cond.notify_all()
                elif kind == "closed":
                    break
            except Exception as exc:  # a callback's failure must not stop the reader
                self._log("error", f"live session reader: {type(exc).__name__}: {exc}")
        self._closed.set()
        with self._reply_cond:
            self._reply_cond.notify_all()

    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _call(self, kind: str, *args, timeout: float | None = None):
        token = next(self._tokens)
        self._send((kind, token, *args))
        with self._reply_cond:
            self._reply_cond.wait_for(lambda: token in self._replies or self._closed.is_set(), timeout)
            return self._replies.pop(token, None)

    # ------------------------------------------------------------------------------ the interface
    def submit(self, view_id, view, image, name=None, quiet_duplicate: bool = False):
        if view_id:
            self._submitted.add(view_id)
        self._send(("submit", view_id, name or (repr(view_id) if view_id else "(no view_id)"), view, image,
                    bool(quiet_duplicate)))
        return None  # refusals are logged and counted by the child

    def reject(self, key: str, name: str, why: str) -> None:
        self._send(("reject", key, name, why))

    def knows(self, view_id: str) -> bool:
        """Sent to the child by this runner, or accepted by the session (restored views included)."""
        return bool(view_id) and (view_id in self._submitted or view_id in self._status.get("known_ids", ()))

    def next_name(self, view_id: str) -> str:
        return repr(view_id) if view_id else "(no view_id)"

    def status(self) -> dict:
        return {k: v for k, v in self._status.items() if k != "known_ids"}

    def reset(self, timeout: float | None = 60.0, meta: dict | None = None) -> bool:
        done = self._call("reset", timeout, meta, timeout=None if timeout is None else timeout + 5.0)
        if done:
            self._submitted.clear()
        return bool(done)

    def request_reinit(self) -> str | None:
        return self._call("reinit", timeout=10.0)

    @property
    def last_volume(self) -> VolumeSnapshot | None:
        return self._last_volume

    @property
    def meta(self) -> dict:
        return dict(self._meta)

    def close(self, log_wait: Callable[[], None] | None = None) -> None:
        try:
            self._send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        if not self._closed.wait(2.0):
            if log_wait:
                log_wait()
            self._closed.wait()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _main(argv) -> int:
    """The child's entry point: ``python -m ixgs_ros.engine.live_process FD``."""
    conn = Connection(int(argv[0]))
    try:
        grid, config, live, state_dir, preload_rtk = conn.recv()
    except (EOFError, OSError):
        return 1
    _child_main(conn, grid, config, live, state_dir, preload_rtk)
    # everything is saved and the parent told: skip the interpreter's finalisation, which takes seconds with
    # torch and ITK loaded (and would wait for a thread inside an ITK call)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def make_runner(process: bool, *args, **kwargs):
    """:class:`ProcessRunner` when ``process``, else :class:`ThreadRunner`."""
    return (ProcessRunner if process else ThreadRunner)(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

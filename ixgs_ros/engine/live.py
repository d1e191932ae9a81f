"""The live reconstruction policy, ROS-free: views arrive one by one while the engine works.

Long because the policy is one state machine (input queue, schedule, re-inits, operator requests, persistence)
under one lock discipline, which reads best in one place.

:class:`LiveSession` owns a :class:`~ixgs_ros.engine.ReconstructionEngine` and decides what to do next; the ROS
``reconstruction_node`` only converts messages and publishes what the session hands it, and any other front end
(a test, a replay from files) can drive it the same way.

* :meth:`LiveSession.submit` (any thread, never waits for the engine) checks a view's id and queues it.
* A worker calls :meth:`LiveSession.work_once` in a loop (:meth:`run`): it hands queued views to the engine
  (a view the engine refuses is logged and dropped; nothing accepted before is lost), and once ``min_views``
  training views are in it runs ``engine.step`` in chunks of ``chunk_iterations`` until the schedule's
  ``iterations`` are done, handing volume snapshots to ``on_volume`` every ``publish_period_s`` (stretched so
  that snapshots take at most ``snapshot_share`` of the time) and when the schedule ends.
* The engine initialises from the training views present at its first step; its TV-SART solutions go to
  ``on_volume`` as previews as soon as they exist. Once the training views reach ``reinit_growth`` times those
  of the current init, the engine is re-initialised from all of them (3 -> 5 -> 8 -> 12 -> 18 -> 27 views at
  1.5), so the volume keeps up as shots arrive. With ``supersede_init`` an (re-)initialisation is abandoned (rolled
  back) for one from all views when a training view arrives while it is young (before its first TV-SART solve
  has finished), or, until it has handed out a volume, once the views waiting reach ``reinit_growth`` times those
  it started from: while shots come faster than a first solve, the work goes to the latest ones and the
  initialisation from all of them starts right after the last shot. After the schedule, a new training view
  that does not trigger a re-init adds ``refine_iterations`` more at the final learning rate.
* With ``state_dir`` the engine state and the session's bookkeeping (``live_state.json``: view ids, schedule
  target) are written after every accepted batch of views, after every snapshot and on :meth:`close`, and
  restored by :meth:`LiveSession.restore`; a restarted session loses nothing it had accepted.
* :meth:`stop` ends the worker at the end of the running chunk; an initialisation in progress stops at the end
  of its current pass and is rolled back (the views stay).
* Input checks: :meth:`submit` refuses an id already accepted and a view whose content (intrinsics, pose, image)
  equals an accepted one under another id; the front end's own checks call :meth:`reject`. Every refusal is
  logged with its reason and counted by reason key (:data:`ixgs_ros.core.shot_checks.REASONS`) in the status.
* Operator requests (from any thread; the worker acts on them between chunks): :meth:`reset` drops every view and
  starts a new reconstruction, :meth:`request_reinit` re-initialises from all training views now.
* Pose self-calibration (:mod:`~ixgs_ros.engine.calibration`, ``calibration.mode`` of the engine configuration)
  runs inside each (re-)initialisation from enough training views. After each, the status carries its summary
  (``pose_calibration``: decision, corrections' sizes, the ids of the views flagged as implausible, which the
  status message names too), and with ``poses_file`` the corrected poses are written there
  (``refined_poses.json``, the same content as ``ixgs reconstruct`` writes plus each view's id).
"""
from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..core.config import flatten
from ..core.shot_checks import RejectionLedger, content_digest
from ..core.volume import Grid
from .config import EngineConfig, EngineError
from .engine import EngineStatus, ReconstructionEngine

__all__ = ["LiveConfig", "LiveSession", "LiveStatus", "VolumeSnapshot", "STATE_FILE"]

_log = logging.getLogger(__name__)

#: The session's bookkeeping beside the engine state in ``state_dir``.
STATE_FILE = "live_state.json"
_OLD_STATE_FILE = "node_state.json"  # the same content, as the first node wrote it


@dataclass
class LiveConfig:
    min_views: int = 3              # training views needed before optimisation starts
    heldout_views: int = 0          # the first N accepted views are only scored (2D PSNR on them)
    reinit_growth: float = 1.5      # re-initialise once the training views reach this multiple (0 = never)
    refine_iterations: int = 50     # iterations added when training views arrive after the schedule (0 = none)
    publish_period_s: float = 5.0   # volume snapshots while optimising
    chunk_iterations: int = 5       # iterations per engine.step call (between them: new views, snapshots, stop)
    snapshot_share: float = 0.2     # snapshots may take at most this share of the worker's time
    supersede_init: bool = True     # a young init gives way to any new view, one with no volume out yet to growth x
    poses_file: str = ""            # refined_poses.json written after each init with pose self-calibration

    def validate(self) -> "LiveConfig":
        for name, low in (("min_views", 1), ("heldout_views", 0), ("refine_iterations", 0),
                          ("chunk_iterations", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not (self.reinit_growth == 0 or self.reinit_growth > 1) or not math.isfinite(self.reinit_growth):
            raise ValueError(f"reinit_growth must be 0 (never) or > 1, got {self.reinit_growth}")
        if not self.publish_period_s > 0:
            raise ValueError(f"publish period must be positive, got {self.publish_period_s}")
        if not 0 < self.snapshot_share < 1:
            raise ValueError(f"snapshot_share must be in (0, 1), got {self.snapshot_share}")
        return self


@dataclass(frozen=True)
class VolumeSnapshot:
    """A volume handed to ``on_volume``: mu (1/mm) on the session's grid and where it comes from."""
    mu: object                      # float32 [I, J, K]
    stage: str                      # preview (an init solution) | gaussian (optimising) | final (schedule done)
    label: str                      # a sentence for the log
    view_ids: tuple[str, ...]       # ids of the views it was reconstructed from ("" where none was given)
    iteration: int


@dataclass(frozen=True)
class LiveStatus:
    state: str                      # idle | waiting_for_views | optimizing | converged | error
    message: str
    views_used: int
    iterations: int
    num_gaussians: int
    loss: float
    wall_time_s: float
    heldout_psnr_2d: float
    rejected: dict = None           # {reason key: count} of the inputs refused so far
    volume_stage: str = ""          # stage of the last volume handed out ("" before the first)
    volume_view_ids: tuple = ()     # the training views it was reconstructed from
    volume_iteration: int = 0
    pose_calibration: dict = None   # summary of the last init's pose self-calibration ({} when none ran)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rejected"] = dict(self.rejected or {})
        d["pose_calibration"] = dict(self.pose_calibration or {})
        d["volume_view_ids"] = list(self.volume_view_ids)
        return d


class _Stopped(Exception):
    """Raised from the engine's progress callback to stop an initialisation at shutdown or for a reset."""


class _Superseded(_Stopped):
    """Raised from the engine's progress callback to abandon an initialisation for one from more views."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _default_log(level: str, text: str) -> None:
    getattr(_log, "warning" if level == "warn" else level)(text)


class LiveSession:
    def __init__(self, grid: Grid, config: EngineConfig, live: LiveConfig | None = None, *, state_dir=None,
                 on_volume: Callable[[VolumeSnapshot], None] | None = None,
                 log: Callable[[str, str], None] | None = None, engine: ReconstructionEngine | None = None,
                 view_ids: list[str] | None = None, target: int | None = None, digests: list[str] | None = None,
                 meta: dict | None = None):
        """Use :meth:`restore` to continue from ``state_dir``; this constructor starts a new reconstruction
        (``engine``/``view_ids``/``target`` are for :meth:`restore`). ``log(level, text)`` with level debug /
        info / warn / error receives every message (default: the ``logging`` module)."""
        self.grid = grid
        self.live = (live or LiveConfig()).validate()
        self.state_dir = Path(state_dir) if state_dir else None
        self.on_volume = on_volume or (lambda snap: None)
        self.log = log or _default_log
        self.engine = engine or ReconstructionEngine(grid, config)
        self.config = self.engine.config
        self.engine_lock = threading.Lock()  # every engine call holds it
        self.view_ids: list[str] = list(view_ids or [])  # per engine view index ("" = none given)
        self.target = target if target is not None else self.config.iterations
        self._cond = threading.Condition()
        self._pending: collections.deque = collections.deque()  # (view_id, name, View, image)
        self._known_ids = {v for v in self.view_ids if v}
        self._digests = {d for d in (digests or []) if d}  # content of the accepted views (duplicate check)
        self._digest_list: list[str] = list(digests or [""] * len(self.view_ids))
        self.meta: dict = dict(meta or {})  # the front end's own bookkeeping, saved with the session
        self.rejections = RejectionLedger()
        self._last_volume: VolumeSnapshot | None = None
        self._reset_requested = False
        self._reset_meta: dict = {}
        self._reset_done = threading.Event()
        self._reinit_requested = False
        self._received = len(self.view_ids)
        self._stop = False
        self._engine_status: EngineStatus = self.engine.status()
        self._init_progress: tuple[str, str, int, int] | None = None
        self._heldout_psnr = math.nan
        self._error: str | None = None
        self._last_publish_time: float | None = None
        self._snapshot_s = 0.0
        self._stretch_logged = False
        self._published_iteration = -1
        self._previews = 0  # preview volumes handed out (an initialisation that has shown one is not superseded)
        self._poses: dict = {}  # summary of the last init's pose self-calibration (the status shows it)
        if self.engine.calibration.summary:  # restored
            self._record_poses()

    # ------------------------------------------------------------------------------ persistence
    @classmethod
    def restore(cls, state_dir, grid: Grid, config: EngineConfig, live: LiveConfig | None = None, **kwargs):
        """The session saved in ``state_dir`` when there is one (its engine keeps its saved configuration: a
        bit-exact continuation; differences to ``config`` are logged), else a new session saving there.
        ValueError when the state cannot be read or is on another grid."""
        d = Path(state_dir)
        log = kwargs.get("log") or _default_log
        if not (d / "state.json").exists():
            return cls(grid, config, live, state_dir=d, **kwargs)
        try:
            eng = ReconstructionEngine.load(d, device=config.device)
        except (EngineError, OSError, KeyError, ValueError) as exc:
            raise ValueError(f"state_dir {str(d)!r}: cannot restore the engine state ({exc}); move it away to "
                             "start a new reconstruction") from None
        if eng.grid != grid:
            raise ValueError(f"state_dir {str(d)!r} holds a reconstruction on grid {eng.grid.shape} with affine "
                             f"{eng.grid.affine.tolist()}, not the requested grid; change the grid or the "
                             "state_dir")
        saved, wanted = flatten(eng.config.to_dict()), flatten(config.to_dict())
        diff = sorted(k for k in saved if k != "device" and saved[k] != wanted.get(k))
        if diff:
            log("warn", f"state_dir {str(d)!r}: continuing with the saved engine configuration, which differs "
                        "from the parameters in " + ", ".join(f"{k} (saved {saved[k]!r}, parameters {wanted[k]!r})"
                                                               for k in diff))
        ids: list[str] = []
        digests: list[str] = []
        meta: dict = {}
        target = eng.config.iterations
        side = d / STATE_FILE if (d / STATE_FILE).exists() else d / _OLD_STATE_FILE
        if side.exists():
            try:
                doc = json.loads(side.read_text())
                ids = [str(v) for v in doc.get("view_ids", [])]
                digests = [str(v) for v in doc.get("digests", [])]
                meta = dict(doc.get("meta", {}))
                target = max(target, int(doc.get("target", target)))
            except (ValueError, TypeError, AttributeError) as exc:
                log("warn", f"{side}: unreadable ({exc}); view ids of the restored views are unknown")
        if len(ids) != len(eng.views):
            log("warn", f"{side}: {len(ids)} view ids for {len(eng.views)} saved views; the ids of the others "
                        "are unknown (duplicates of them are not detected)")
            ids = (ids + [""] * len(eng.views))[: len(eng.views)]
        if len(digests) != len(ids):
            digests = [""] * len(ids)  # a state of an earlier version: content duplicates of those are not seen
        st = eng.status()
        log("info", f"restored {len(eng.views)} views ({st.views_holdout} held out) and {st.iterations} "
                    f"iterations from {d}")
        return cls(grid, eng.config, live, state_dir=d, engine=eng, view_ids=ids, target=target, digests=digests,
                   meta=meta, **kwargs)

    def save(self) -> None:
        """Engine state + bookkeeping into ``state_dir`` (caller holds ``engine_lock``); errors are logged."""
        if self.state_dir is None:
            return
        try:
            self.engine.save(self.state_dir)
            tmp = self.state_dir / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps({"view_ids": self.view_ids, "target": self.target,
                                       "digests": self._digest_list, "meta": self.meta}))
            tmp.replace(self.state_dir / STATE_FILE)
        except Exception as exc:  # a full disk must not stop the reconstruction
            self.log("error", f"could not save the state to {self.state_dir}: {exc}")

    # ------------------------------------------------------------------------------ input
    def submit(self, view_id: str, view, image, name: str | None = None) -> str | None:
        """Queue a view for the worker (thread-safe, never touches the engine). Returns None when queued, else
        the reason it was refused (a duplicate ``view_id``, or the content of an accepted view under another id),
        which is also logged and counted. ``name`` (for the log) comes from :meth:`next_name` when not given."""
        name = name or self.next_name(view_id)
        digest = content_digest(view.K, view.T_world_source, image)
        with self._cond:
            if view_id and view_id in self._known_ids:
                return self.reject("duplicate_id", name, "duplicate view_id (a view with this id was already "
                                                         "accepted)")
            if digest in self._digests:
                return self.reject("duplicate_content", name, "the same image and pose as a view already accepted "
                                                              "(one shot sent twice under another id)")
            if view_id:
                self._known_ids.add(view_id)
            self._digests.add(digest)
            self._pending.append((view_id, name, view, image, digest))
            self._cond.notify_all()
        return None

    def reject(self, key: str, name: str, why: str) -> str:
        """Log and count a refused input (``key`` from :data:`ixgs_ros.core.shot_checks.REASONS`); returns ``why``."""
        self.rejections.count(key)
        self.log("error", f"rejected view {name}: {why}")
        return why

    def known_ids(self) -> list[str]:
        """Ids of the views accepted or queued."""
        with self._cond:
            return sorted(self._known_ids)

    def knows(self, view_id: str) -> bool:
        """Has a view with this id been accepted (or queued)?"""
        with self._cond:
            return bool(view_id) and view_id in self._known_ids

    # ------------------------------------------------------------------------------ operator requests
    def reset(self, timeout: float | None = 60.0, meta: dict | None = None) -> bool:
        """Drop every view (queued ones too) and start a new reconstruction on the same grid and configuration; the
        worker does it between chunks (a running initialisation is stopped and rolled back first). ``meta`` updates
        :attr:`meta` with it. True once done, False when ``timeout`` passed first (it still happens)."""
        with self._cond:
            self._reset_meta = dict(meta or {})
            self._reset_done.clear()
            self._reset_requested = True
            self._cond.notify_all()
        return self._reset_done.wait(timeout)

    def request_reinit(self) -> str | None:
        """Ask for a re-initialisation from all training views at the worker's next round. Returns None when it
        will happen, else why not (no model yet: the first initialisation is still to come)."""
        st = self._engine_status
        if st.num_gaussians == 0:
            return (f"nothing to re-initialise yet: {st.views_used} training views, the first initialisation "
                    f"starts at {self.live.min_views}")
        with self._cond:
            self._reinit_requested = True
            self._cond.notify_all()
        return None

    def _do_reset(self) -> None:
        with self._cond:
            dropped = len(self._pending)
            self._pending.clear()
            self._reset_requested = False
            meta = self._reset_meta
        with self.engine_lock:
            n = len(self.engine.views)
            self.engine = ReconstructionEngine(self.grid, self.config)
            self.view_ids, self._digest_list = [], []
            with self._cond:
                self._known_ids.clear()
                self._digests.clear()
            self.target = self.config.iterations
            self.meta.update(meta)
            self._engine_status = self.engine.status()
            self._heldout_psnr = math.nan
            self._error = None
            self._last_volume = None
            self._published_iteration = -1
            self._last_publish_time = None
            self._poses = {}
            self.rejections.clear()
            self.save()
        self.log("info", f"reset: {n} views dropped ({dropped} queued); a new reconstruction starts with the next view")
        self._reset_done.set()

    def next_name(self, view_id: str) -> str:
        """How the log names the next view received: its id, or its number among the views received."""
        with self._cond:
            self._received += 1
            return repr(view_id) if view_id else f"#{self._received - 1} (no view_id)"

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def last_volume(self) -> VolumeSnapshot | None:
        """The last volume handed to ``on_volume`` (None before the first)."""
        return self._last_volume

    # ------------------------------------------------------------------------------ status
    def status(self) -> LiveStatus:
        """The session's state for a status message (no engine call: cached by the worker)."""
        st = self._engine_status
        pending = len(self._pending)
        n_train, n_hold = st.views_used, st.views_holdout
        vol = self._last_volume
        base = dict(views_used=n_train, iterations=st.iterations, num_gaussians=st.num_gaussians, loss=st.loss,
                    wall_time_s=st.wall_time_s, heldout_psnr_2d=self._heldout_psnr,
                    rejected=self.rejections.snapshot(), volume_stage=vol.stage if vol else "",
                    volume_view_ids=vol.view_ids if vol else (), volume_iteration=vol.iteration if vol else 0,
                    pose_calibration=self._poses)
        accepted = f"{_plural(n_train + n_hold, 'view')} accepted ({n_train} training, {n_hold} held out)"
        if pending:
            accepted += f", {pending} queued"
        flagged = self._poses.get("flagged_view_ids") or []
        if flagged:  # shots whose pose looks wrong: the operator should know at once
            accepted += (f"; pose refinement flagged {_plural(len(flagged), 'view')} as implausible (moved patient "
                         f"or wrong pose?): {', '.join(map(repr, flagged))}")
        if self._error is not None:
            return LiveStatus("error", f"{self._error} ({accepted}; a new training view retries)", **base)
        if n_train + n_hold + pending == 0:
            return LiveStatus("idle", "no views received", **base)
        if n_train < self.live.min_views:
            more = self.live.min_views - n_train
            return LiveStatus("waiting_for_views", f"{accepted}; waiting for {_plural(more, 'more training view')}",
                              **base)
        prog = self._init_progress
        if prog is not None:
            what, stage, done, total = prog
            return LiveStatus("optimizing", f"{accepted}; {what}: {stage} {done}/{total}", **base)
        if st.num_gaussians == 0:
            return LiveStatus("optimizing", f"{accepted}; initialising", **base)
        if st.iterations < self.target or (pending and self.live.refine_iterations > 0):
            return LiveStatus("optimizing", f"{accepted}; iteration {st.iterations}/{self.target}", **base)
        return LiveStatus("converged", f"{accepted}; schedule done ({st.iterations} iterations)", **base)

    def snapshot_period(self) -> float:
        """Seconds between snapshots while optimising: the publish period, stretched so that snapshots take at
        most ``snapshot_share`` of the time."""
        share = self.live.snapshot_share
        return max(self.live.publish_period_s, self._snapshot_s * (1.0 - share) / share)

    # ------------------------------------------------------------------------------ worker
    def run(self) -> None:
        """The worker loop: :meth:`work_once` until :meth:`stop`; an unexpected error is reported, never fatal."""
        while True:
            with self._cond:
                if self._stop:
                    return
            try:
                self.work_once()
            except Exception as exc:  # never let the worker die silently
                self._error = f"reconstruction worker: {type(exc).__name__}: {exc}"
                self.log("error", self._error)
                self._wait(0.5)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def close(self) -> None:
        """After the worker has ended: add the views that arrived meanwhile and save."""
        self._take_pending()
        with self.engine_lock:
            self.save()

    def _take_pending(self) -> bool:
        """Hand queued views to the engine; True when a training view was added."""
        with self._cond:
            batch = list(self._pending)  # removed below, after the cached status counts them as accepted
            if self._reset_requested:
                return False
        if not batch:
            return False
        added_train = False
        added = 0
        with self.engine_lock:
            eng = self.engine
            schedule_done = eng.model is not None and eng.iteration >= self.target
            for vid, name, view, image, digest in batch:
                holdout = len(eng.holdout_indices) < self.live.heldout_views
                try:
                    eng.add_view(view, image, holdout=holdout)
                except Exception as exc:  # EngineError: bad image; anything else: the view cannot be used
                    why = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                    self.reject("engine", name, f"the engine refused it: {why}")
                    with self._cond:
                        self._known_ids.discard(vid)
                        self._digests.discard(digest)
                    continue
                self.view_ids.append(vid)
                self._digest_list.append(digest)
                added += 1
                added_train |= not holdout
            if added_train and schedule_done and self.live.refine_iterations > 0:
                self.target = eng.iteration + self.live.refine_iterations
            self._engine_status = eng.status()
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
            if added:
                self.save()
        if added:
            st = self._engine_status
            self.log("info", f"accepted {_plural(added, 'view')}: {st.views_used} training, "
                             f"{st.views_holdout} held out")
        return added_train

    def work_once(self) -> None:
        """One round: take new views, then one chunk of optimisation, one snapshot, a re-init or a short wait."""
        if self._reset_requested:
            self._do_reset()
            return
        added_train = self._take_pending()
        st = self._engine_status
        if self._error is not None:
            if not added_train:  # after a failure, a new training view is the reason to try again
                self._wait(0.5)
                return
            self._error = None
        if self._reinit_requested and st.num_gaussians > 0:
            self._reinit_requested = False
            self._reinitialise("requested")
            return
        if self._reinit_due(st):
            self._reinitialise()
            return
        if st.views_used >= self.live.min_views and st.iterations < self.target:
            self._optimise_chunk(st)
            return
        if st.num_gaussians and self._published_iteration != st.iterations:
            self._safe_snapshot("final")  # e.g. a restored, finished reconstruction: publish it once
            return
        self._wait(0.5)

    def _optimise_chunk(self, st: EngineStatus) -> None:
        if self._last_publish_time is None:  # the snapshot period counts from the start
            self._last_publish_time = time.monotonic()
        initialising = st.num_gaussians == 0

        def chunk():
            with self.engine_lock:
                n = min(self.live.chunk_iterations, self.target - self.engine.iteration)
                new = self.engine.step(n, progress=self._progress_callback(
                    f"initialising from {st.views_used} training views", st.views_used) if initialising else None,
                    preview=self._preview if initialising else None)
                if initialising:
                    self._record_poses()
                return new

        new = self._guarded(chunk, "optimisation", "initialisation stopped by the shutdown; the views are kept (it "
                                                   "starts again from them at the next start when state_dir is set)")
        if new is None:
            return
        if new.iterations < self.target:
            self._engine_status = new
            period = self.snapshot_period()
            if period > self.live.publish_period_s and not self._stretch_logged:
                self._stretch_logged = True
                self.log("info", f"a volume snapshot takes {self._snapshot_s:.1f} s: publishing every {period:.1f} "
                                 f"s instead of {self.live.publish_period_s:g} s, so snapshots take at most "
                                 f"{100 * self.live.snapshot_share:.0f} % of the optimisation time")
            if time.monotonic() - self._last_publish_time >= period:
                self._safe_snapshot("gaussian")
            return
        # schedule done: the final volume (and held-out score) goes out before the status says converged
        self._safe_snapshot("final")
        self._engine_status = new
        psnr = "" if math.isnan(self._heldout_psnr) else f", held-out 2D PSNR {self._heldout_psnr:.2f} dB"
        self.log("info", f"schedule done: {new.iterations} iterations on {new.views_used} training views in "
                         f"{new.wall_time_s:.1f} s{psnr}")

    def _reinit_due(self, st: EngineStatus) -> bool:
        g = self.live.reinit_growth
        return g > 0 and st.num_gaussians > 0 and st.init_views > 0 and st.views_used >= g * st.init_views

    def _reinitialise(self, why: str = "") -> None:
        """Initialise again from all training views and restart the schedule; the previous volume stays out until
        the next snapshot, and a failure keeps the previous model."""
        st = self._engine_status
        self.log("info", f"re-initialising from {st.views_used} training views (the current volume was "
                         f"initialised from {st.init_views}){'; ' + why if why else ''}")
        t0 = time.monotonic()

        def reinit():
            with self.engine_lock:
                new = self.engine.reinitialize(progress=self._progress_callback(
                    f"re-initialising from {st.views_used} training views", st.views_used))
                self._record_poses()
                self.target = self.engine.iteration + self.engine.config.iterations
                self.save()
                return new

        new = self._guarded(reinit, "re-initialisation",
                            "re-initialisation stopped by the shutdown; the previous model is kept")
        if new is None:
            return
        self._engine_status = new
        self._safe_snapshot("gaussian")  # the new init's volume goes out at once
        self.log("info", f"re-initialised in {time.monotonic() - t0:.1f} s; schedule restarted "
                         f"({self.config.iterations} iterations)")

    def _guarded(self, call, what: str, stopped: str):
        """``call()``'s result; a stop (logged as ``stopped``) or an error (logged, and the status says ``what``
        failed) gives None."""
        try:
            return call()
        except _Superseded as exc:
            self.log("info", str(exc))
        except _Stopped:
            self.log("info", f"{what} stopped for the reset" if self._reset_requested else stopped)
        except Exception as exc:
            self._error = f"{what} failed: {type(exc).__name__}: {exc}"
            self.log("error", self._error)
        finally:
            self._init_progress = None
        return None

    def _progress_callback(self, what: str, n_views: int = 0):
        """The engine's ``progress`` for an (re-)initialisation from ``n_views`` training views: shows the stage in
        the status and stops the initialisation (the engine rolls it back) once the session is stopped or reset,
        or, with ``supersede_init``, once the views waiting supersede it: while it is young (no TV-SART solve of
        it has finished yet: the pose refinement and the first, cheap, coarse solve) any new training view does,
        and until it has handed out a volume, ``reinit_growth`` times the views it started from do. So while
        shots come faster than a first solve, each restart takes them all and the initialisation from every shot
        starts right after the last; with slower shots an initialisation matures and shows its volume."""
        previews_at_start = self._previews
        young = True

        def progress(stage: str, done: int, total: int) -> None:
            nonlocal young
            self._init_progress = (what, stage, done, total)
            if self._stop or self._reset_requested:
                raise _Stopped()
            if "TV-SART" in stage and total > 0 and done >= total:
                young = False
            g = self.live.reinit_growth
            # until this initialisation has handed out a volume, nothing of it is lost by starting again
            if self.live.supersede_init and g > 0 and n_views and self._previews == previews_at_start:
                waiting = self._waiting_training_views()
                if waiting and (young or n_views + waiting >= g * n_views):
                    raise _Superseded(f"{what} abandoned in its {stage} ({done}/{total}): {waiting} more shots "
                                      f"arrived, it starts again from all {n_views + waiting}")
        return progress

    def _record_poses(self) -> None:
        """After an initialisation (engine lock held): the status's summary of its pose self-calibration, the
        warning for flagged views and, with ``poses_file``, the corrected poses on disk."""
        eng = self.engine
        summary = eng.calibration.summary
        if not summary:
            self._poses = {}
            return
        ids = [vid or f"#{i}" for i, vid in enumerate(self.view_ids)]
        ids += [f"#{i}" for i in range(len(ids), len(eng.views))]
        flagged = [ids[i] for i in summary.get("flagged", []) if i < len(ids)]
        self._poses = {k: summary[k] for k in ("decision", "applied", "views", "rms_shift_px", "max_rotation_deg",
                                               "max_translation_mm", "time_s") if k in summary}
        if "consistency" in summary:  # how much better a quick solve fits the images with the corrections
            self._poses["consistency_gain"] = summary["consistency"]["gain"]
        self._poses["flagged_view_ids"] = flagged
        if flagged:
            self.log("warn", f"pose refinement flagged {_plural(len(flagged), 'view')} as implausible (a moved "
                             f"patient or a wrong pose? check these shots): {', '.join(map(repr, flagged))}")
        if self.live.poses_file:
            try:
                doc = eng.calibration.to_json(eng)
                for entry in doc["views"]:
                    entry["view_id"] = ids[entry["index"]]
                doc["flagged_view_ids"] = flagged
                path = Path(self.live.poses_file).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(doc, indent=1))
                tmp.replace(path)
                self._poses["file"] = str(path)
            except Exception as exc:  # a full disk must not stop the reconstruction
                self.log("error", f"could not write the refined poses to {self.live.poses_file}: {exc}")

    def _waiting_training_views(self) -> int:
        """Queued views that will train (not held out); called with the engine lock held."""
        with self._cond:
            queued = len(self._pending)
        return max(0, queued - max(0, self.live.heldout_views - len(self.engine.holdout_indices)))

    def _train_ids(self) -> tuple[str, ...]:
        return tuple(vid for vid, vd in zip(self.view_ids, self.engine.views) if not vd.holdout)

    def _preview(self, mu, label: str) -> None:
        """The engine's ``preview`` during the first initialisation (worker thread, engine lock held)."""
        if self._stop or self._reset_requested:
            raise _Stopped()
        self._previews += 1
        snap = VolumeSnapshot(mu, "preview", label, self._train_ids(), self.engine.iteration)
        self._last_volume = snap
        try:
            self.on_volume(snap)
        except Exception as exc:
            self.log("debug", f"preview not delivered: {exc}")
            return
        self.log("info", f"published a preview volume: the {label}; the Gaussians follow")

    def _snapshot(self, stage: str) -> None:
        """Volume, held-out score and state save; the volume goes to ``on_volume``."""
        t0 = time.monotonic()
        with self.engine_lock:
            eng = self.engine
            mu = eng.volume()
            if eng.holdout_indices:
                self._heldout_psnr = float(eng.evaluate_holdout().psnr_mean)
            self._published_iteration = eng.iteration
            ids, it = self._train_ids(), eng.iteration
            self.save()
        snap = VolumeSnapshot(mu, stage, f"{stage} volume at iteration {it}", ids, it)
        self._last_volume = snap
        try:
            self.on_volume(snap)
        except Exception as exc:  # e.g. the ROS context is shutting down
            self.log("debug", f"volume not delivered: {exc}")
        self._last_publish_time = time.monotonic()
        self._snapshot_s = self._last_publish_time - t0

    def _safe_snapshot(self, stage: str) -> None:
        try:
            self._snapshot(stage)
        except Exception as exc:
            self._error = f"volume snapshot failed: {type(exc).__name__}: {exc}"
            self.log("error", self._error)

    def _wait(self, timeout: float) -> None:
        with self._cond:
            if not (self._stop or self._pending or self._reset_requested or self._reinit_requested):
                self._cond.wait(timeout)

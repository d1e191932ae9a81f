"""reconstruction_node: reconstructs the attenuation volume online from line-integral X-ray views.

A thin shell over :class:`ixgs_ros.core.engine.ReconstructionEngine`.

Interface (topic names are relative, so a namespace or remapping places them):

* subscribes ``xray_views`` (ixgs_ros/XrayView). A view is rejected, with an error in the log that names
  it and the problem, when it cannot be converted (:func:`~ixgs_ros.nodes.convert.xray_view_to_view`),
  when its ``image_kind`` is not ``IMAGE_KIND_LINE_INTEGRAL`` (raw images go through standardize_node
  first), when its ``header.frame_id`` is not ``world_frame``, when its non-empty ``view_id`` was already
  accepted, or when the engine refuses it (``EngineError``: image size, NaN/inf, negative values). A
  rejection never drops what was accepted before. The first ``heldout_views`` accepted views are held out
  of training and only scored (``heldout_psnr_2d``).
* publishes ``volume`` (ixgs_ros/Volume, mu in 1/mm on the axis-aligned grid ``volume_size`` x
  ``voxel_size_mm`` centred on ``volume_center_mm`` in ``world_frame``; QoS depth 1, transient local, so
  a late subscriber gets the latest snapshot) every ``volume_publish_period_s`` while optimising (stretched
  so that snapshots take at most 20 % of the time, logged once when it is; counted
  from the start of the optimisation, so an initialisation longer than the period is followed by a
  snapshot at once), once when the schedule (or a refinement) ends, before the status says CONVERGED, and
  once after a restart that restored a reconstruction;
* publishes ``reconstruction_status`` (ixgs_ros/ReconstructionStatus) at ``status_rate_hz``: IDLE (no
  view yet), WAITING_FOR_VIEWS (fewer than ``min_views`` training views), OPTIMIZING, CONVERGED (the
  schedule is done), ERROR (the message says what failed; the node retries when a new training view
  arrives); ``views_used`` = training views, ``iterations``, ``num_gaussians``, ``loss``,
  ``wall_time_s`` from the engine, ``heldout_psnr_2d`` evaluated with each published volume.

How it runs: the subscription callback only converts and checks a view and queues it, so it never waits
for the optimisation. A background worker thread owns the engine (every engine call holds ``engine_lock``):
it hands queued views to ``engine.add_view``, and once ``min_views`` training views are in it runs
``engine.step`` in chunks of :data:`CHUNK_ITERATIONS` until ``iterations`` are done, publishing snapshots
as above. The engine initialises (RTK SART + Gaussian fit, most of the accuracy) at the first step, from
the training views present then; views that arrive later join the optimisation's loss, which on a CPU
schedule barely moves the volume. So once the training views reach ``reinit_growth`` times the views the
current volume was initialised from (default 1.5: 3 -> 5 -> 8 -> 12 -> 18 -> 27 views), the worker calls
``engine.reinitialize()`` (the init again from all views, then a new schedule) and publishes the new volume
at once; the total cost stays within about three final inits. When the number of shots is known in
advance, set ``min_views`` to it and skip the intermediate inits. After the schedule, a new training view
that does not trigger a re-init makes the node run ``refine_iterations`` more iterations
(``ReconstructionEngine.step`` past the schedule keeps the learning rates at their final, decayed value: a
gentle refinement, not a new schedule; 0 = store such views without optimising).

With ``state_dir`` set, the engine state (views, model, optimiser, schedule position) plus the node's own
bookkeeping (``node_state.json``: the accepted ``view_id`` list and the schedule target) is written there
after every accepted batch of views, after every published volume and on shutdown, and restored at start
when it exists, so a restarted node loses nothing it had accepted. A restored state keeps its saved engine
configuration (bit-exact continuation); differences to the parameters are logged as a warning. The grid
must match the parameters.

Engine configuration: :class:`~ixgs_ros.core.engine.EngineConfig` defaults, then the file
``engine_config`` (YAML/JSON, as ``ixgs reconstruct --config``), then ``engine_overrides`` ("key=value"
strings, values parsed as JSON, e.g. ``init_sart_iterations=24``); ``iterations`` and ``device`` always come
from the node parameters of those names. Bad parameters raise ``ValueError``, which ``run_node`` turns into
one line on stderr and exit code 2.

While an initialisation runs (minutes on a CPU for full-body views at 128^3), the status message names its
stage and progress (e.g. "initialising from 25 training views: coarse TV-SART (2.75 mm) 12/20"), and the
first initialisation publishes its intermediate TV-SART solutions on ``volume`` as soon as they exist
(``ReconstructionEngine.step``'s ``preview``; logged), so a first volume appears minutes before the Gaussians.

Shutdown (SIGINT/SIGTERM) waits for the running chunk to end (seconds); an initialisation in progress stops
at the end of its current pass and is rolled back (the views stay: with ``state_dir`` the next start
initialises again from them; a stopped re-initialisation keeps the previous model), then the state is saved.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
from ixgs_ros.nodes._base import SHOT_QUEUE_DEPTH, declare_parameters, run_node
from ixgs_ros.nodes.convert import (ConversionError, status_to_msg, volume_to_msg, xray_view_image,
                                    xray_view_to_view)

NAME = "reconstruction_node"

#: Iterations per ``engine.step`` call of the worker: between chunks it takes new views, publishes and
#: notices shutdown.
CHUNK_ITERATIONS = 5
#: While optimising, snapshots (volume, held-out score, state save) may take at most this share of the
#: worker's time: the period between them stretches to ``snapshot time / SNAPSHOT_SHARE`` when longer
#: than ``volume_publish_period_s``.
SNAPSHOT_SHARE = 0.2
#: The node's own bookkeeping next to the engine state in ``state_dir``.
NODE_STATE_FILE = "node_state.json"


class _ShuttingDown(Exception):
    """Raised from the engine's progress callback to stop an initialisation at shutdown."""

PARAMETERS = {
    "world_frame": ("world", "Frame of the reconstructed volume (must match the views' header.frame_id)"),
    "min_views": (3, "Training views (held-out ones not counted) needed before optimisation starts; the "
                     "engine initialises from the training views present then"),
    "heldout_views": (0, "The first N accepted views are kept out of training to report heldout_psnr_2d"),
    "iterations": (100, "Optimisation iterations per reconstruction (the engine's schedule length, "
                        "EngineConfig.iterations)"),
    "reinit_growth": (1.5, "Re-initialise from all training views (the RTK init again: minutes on a CPU at "
                           "128^3) and restart the schedule once the training views reach this multiple of the "
                           "views the current volume was initialised from; 0 = never (later views then only join "
                           "the loss)"),
    "refine_iterations": (50, "Iterations run after the schedule each time new training views arrive "
                              "(at the schedule's final learning rate); 0 = store them without optimising"),
    "volume_size": ([128, 128, 128], "Output grid size in voxels (I, J, K)"),
    "voxel_size_mm": (1.0, "Output voxel size (mm)"),
    "volume_center_mm": ([0.0, 0.0, 0.0], "Output grid centre in world_frame (mm); the grid is axis-aligned"),
    "device": ("auto", "Torch device: 'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'"),
    "status_rate_hz": (2.0, "Rate of reconstruction_status messages"),
    "volume_publish_period_s": (5.0, "Period of volume snapshots while optimising"),
    "engine_config": ("", "Engine configuration file (YAML/JSON, EngineConfig keys, optionally under 'engine'); "
                          "'' = EngineConfig defaults"),
    "engine_overrides": ([""], "EngineConfig overrides as 'key=value' strings (value parsed as JSON, else a "
                               "string), applied after engine_config; empty strings are ignored ([''] = none)"),
    "state_dir": ("", "Directory for the engine state: restored at start when present, written after new "
                      "views, after each published volume and on shutdown; '' = no persistence"),
}


# ------------------------------------------------------------------------------------------ parameters
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a CUDA device, else 'cpu'; other values are checked."""
    import torch

    device = str(device).strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device (use 'auto' or 'cpu')")
    return device


def make_grid(size, voxel_size_mm: float, center_mm):
    """The output grid: ``size`` voxels (3 ints) of ``voxel_size_mm``, axis-aligned, centred on ``center_mm``."""
    from ixgs_ros.core.volume import Grid

    size = list(size)
    if len(size) != 3 or any(int(s) < 1 for s in size):
        raise ValueError(f"volume_size must be 3 positive integers (I, J, K), got {size}")
    if not (math.isfinite(voxel_size_mm) and voxel_size_mm > 0):
        raise ValueError(f"voxel_size_mm must be a positive number, got {voxel_size_mm}")
    center = [float(c) for c in center_mm]
    if len(center) != 3 or not all(math.isfinite(c) for c in center):
        raise ValueError(f"volume_center_mm must be 3 finite numbers (mm), got {list(center_mm)}")
    return Grid.centered([int(s) for s in size], float(voxel_size_mm), center)


def _check_config_types(data: dict[str, Any]) -> dict[str, Any]:
    """Values of the right type for each EngineConfig field (ints where ints are expected, floats also from
    ints, bools only as bools, None only where the field allows it), so that a typo in engine_config or
    engine_overrides fails at start rather than in the middle of an optimisation."""
    from ixgs_ros.core.engine import EngineConfig

    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}
    out = dict(data)
    for f in dataclasses.fields(EngineConfig):
        if f.name not in data:
            continue
        names = [n.strip() for n in str(f.type).split("|")]
        if any(n not in kinds for n in names):
            continue  # a type this check does not know: EngineConfig.validate decides
        value = data[f.name]
        allowed = tuple(t for n in names for t in kinds[n])
        if (isinstance(value, bool) and "bool" not in names) or not isinstance(value, allowed):
            raise ValueError(f"{f.name} must be of type {f.type}, got {value!r}")
        if "float" in names and "int" not in names and isinstance(value, int) and not isinstance(value, bool):
            out[f.name] = float(value)
    return out


def build_engine_config(engine_config: str, engine_overrides, iterations: int, device: str):
    """EngineConfig from defaults < ``engine_config`` file < ``engine_overrides`` < iterations/device."""
    from ixgs_ros.commands.bench import parse_engine_overrides
    from ixgs_ros.commands.reconstruct import load_engine_config
    from ixgs_ros.core.engine import EngineConfig

    items = [str(s).strip() for s in engine_overrides if str(s).strip()]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"engine_overrides: expected 'key=value', got {item!r}")
    overrides = parse_engine_overrides(items)
    clash = sorted({"iterations", "device"} & set(overrides))
    if clash:
        raise ValueError(f"engine_overrides: set {' and '.join(clash)} with the node parameter(s) of that name, "
                         "not as an override")
    try:
        base = load_engine_config(engine_config.strip() or None)
    except Exception as exc:  # missing file, bad YAML/JSON, unknown keys: one clear line
        raise ValueError(f"engine_config {engine_config!r}: {exc}") from None
    data = {**dataclasses.asdict(base), **overrides, "iterations": int(iterations), "device": device}
    try:
        return EngineConfig.from_dict(_check_config_types(data)).validate()
    except (ValueError, TypeError) as exc:  # EngineError is a ValueError
        raise ValueError(f"engine configuration: {exc}") from None


# ------------------------------------------------------------------------------------------------ node
class ReconstructionNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=`` to run in a given context)."""
        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        rate = float(p["status_rate_hz"])
        if not rate > 0:
            raise ValueError(f"status_rate_hz must be positive, got {rate}")
        period = float(p["volume_publish_period_s"])
        if not period > 0:
            raise ValueError(f"volume_publish_period_s must be positive, got {period}")
        if not str(p["world_frame"]).strip():
            raise ValueError("world_frame must not be empty")
        for name, low in (("min_views", 1), ("heldout_views", 0), ("iterations", 1), ("refine_iterations", 0)):
            if int(p[name]) < low:
                raise ValueError(f"{name} must be >= {low}, got {p[name]}")
        self.world_frame = str(p["world_frame"])
        self.min_views = int(p["min_views"])
        self.heldout_views = int(p["heldout_views"])
        self.refine_iterations = int(p["refine_iterations"])
        self.reinit_growth = float(p["reinit_growth"])
        if not (self.reinit_growth == 0 or self.reinit_growth > 1) or not math.isfinite(self.reinit_growth):
            raise ValueError(f"reinit_growth must be 0 (never) or > 1, got {self.reinit_growth}")
        self.publish_period = period
        self.grid = make_grid(p["volume_size"], float(p["voxel_size_mm"]), p["volume_center_mm"])
        self.device = resolve_device(p["device"])
        self.config = build_engine_config(p["engine_config"], p["engine_overrides"], int(p["iterations"]),
                                          self.device)
        self.state_dir = Path(p["state_dir"]).expanduser() if str(p["state_dir"]).strip() else None

        from ixgs_ros.core.engine import ReconstructionEngine

        self.engine_lock = threading.Lock()  # every engine call holds it
        self.view_ids: list[str] = []        # per engine view index, in the engine's order ("" = none given)
        self.target = self.config.iterations  # iterations the worker optimises up to (grows with refinement)
        self.engine = self._restore() if self.state_dir is not None else None
        if self.engine is None:
            self.engine = ReconstructionEngine(self.grid, self.config)

        # shared between the ROS callbacks and the worker (guarded by self._cond)
        self._cond = threading.Condition()
        # (view_id, label for the log, View, image) awaiting add_view; the worker removes them once added
        self._pending: collections.deque = collections.deque()
        self._known_ids = {v for v in self.view_ids if v}
        self._received = len(self.view_ids)
        self._stop = False
        # written by the worker, read by the status timer (replaced whole, never mutated)
        self._engine_status: dict[str, Any] = self.engine.status()
        self._init_progress: tuple[str, str, int, int] | None = None  # (what, stage, done, total) while initialising
        self._heldout_psnr = math.nan
        self._error: str | None = None
        self._last_publish_time: float | None = None
        self._snapshot_s = 0.0  # duration of the last snapshot
        self._stretch_logged = False
        self._published_iteration = -1

        self.status_pub = self.create_publisher(ReconstructionStatus, "reconstruction_status", 10)
        self.volume_pub = self.create_publisher(
            Volume, "volume", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                         durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.create_subscription(XrayView, "xray_views", self._on_view, SHOT_QUEUE_DEPTH)
        self.create_timer(1.0 / rate, self._publish_status)
        self._worker = threading.Thread(target=self._run_worker, name="ixgs_reconstruction", daemon=True)
        self._worker.start()
        if self.config.init == "rtk" and self.engine.model is None:
            # ITK loads RTK's wrappers on first use (10-20 s on 2 cores): do it while the shots arrive, in a
            # daemon thread that shutdown does not wait for, not inside the first initialisation's first pass
            threading.Thread(target=self._preload_rtk, name="ixgs_rtk_preload", daemon=True).start()
        g = self.grid
        self.get_logger().info(
            f"reconstructing on a {'x'.join(map(str, g.shape))} grid at {float(p['voxel_size_mm']):g} mm centred "
            f"on {[float(c) for c in p['volume_center_mm']]} mm in '{self.world_frame}', {self.target} "
            f"iterations on {self.device}; {len(self.view_ids)} views restored; waiting for xray_views")

    def _preload_rtk(self) -> None:
        from ixgs_ros.core import rtk_baseline

        try:
            self._log("debug", f"RTK loaded in {rtk_baseline.preload():.1f} s")
        except Exception as exc:  # the initialisation reports it when it needs RTK
            self._log("debug", f"RTK preload failed: {type(exc).__name__}: {exc}")

    def _log(self, level: str, text: str) -> None:
        """Log from the worker or during shutdown: after SIGINT/SIGTERM the context is gone and rclpy's logger
        would add a 'Failed to publish log message to rosout' line to every message, so print instead."""
        if self.context.ok():  # one call site per severity: rclpy refuses a call site that changes it
            if level == "error":
                self.get_logger().error(text)
            elif level == "info":
                self.get_logger().info(text)
            else:
                self.get_logger().debug(text)
        elif level != "debug":
            print(f"[{level.upper()}] [{self.get_name()}]: {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------ persistence
    def _restore(self):
        """The engine saved in ``state_dir`` (None when there is none yet)."""
        from ixgs_ros.core.engine import EngineError, ReconstructionEngine

        d = self.state_dir
        if not (d / "state.json").exists():
            return None
        try:
            eng = ReconstructionEngine.load(d, device=self.device)
        except (EngineError, OSError, KeyError, ValueError) as exc:
            raise ValueError(f"state_dir {str(d)!r}: cannot restore the engine state ({exc}); "
                             "move it away to start a new reconstruction") from None
        if eng.grid != self.grid:
            raise ValueError(f"state_dir {str(d)!r} holds a reconstruction on grid {eng.grid.shape} with affine "
                             f"{eng.grid.affine.tolist()}, not the grid of volume_size/voxel_size_mm/"
                             "volume_center_mm; change them or use another state_dir")
        saved = dataclasses.asdict(eng.config)
        wanted = dataclasses.asdict(self.config)
        diff = sorted(k for k in saved if k != "device" and saved[k] != wanted.get(k))
        if diff:
            self.get_logger().warning(
                f"state_dir {str(d)!r}: continuing with the saved engine configuration, which differs from the "
                "parameters in " + ", ".join(f"{k} (saved {saved[k]!r}, parameters {wanted[k]!r})" for k in diff))
        ids: list[str] = []
        target = eng.config.iterations
        side = d / NODE_STATE_FILE
        if side.exists():
            try:
                meta = json.loads(side.read_text())
                ids = [str(v) for v in meta.get("view_ids", [])]
                target = max(target, int(meta.get("target", target)))
            except (ValueError, TypeError, AttributeError) as exc:
                self.get_logger().warning(f"{side}: unreadable ({exc}); view ids of the restored views are unknown")
        if len(ids) != len(eng.views):
            self.get_logger().warning(f"{side}: {len(ids)} view ids for {len(eng.views)} saved views; "
                                   "the ids of the others are unknown (duplicates of them are not detected)")
            ids = (ids + [""] * len(eng.views))[: len(eng.views)]
        self.view_ids = ids
        self.target = target
        st = eng.status()
        self.get_logger().info(f"restored {len(eng.views)} views ({st['views_holdout']} held out) and "
                               f"{st['iterations']} iterations from {d}")
        return eng

    def _save(self) -> None:
        """Engine state + node bookkeeping into ``state_dir`` (caller holds ``engine_lock``)."""
        if self.state_dir is None:
            return
        try:
            self.engine.save(self.state_dir)
            tmp = self.state_dir / (NODE_STATE_FILE + ".tmp")
            tmp.write_text(json.dumps({"view_ids": self.view_ids, "target": self.target}))
            tmp.replace(self.state_dir / NODE_STATE_FILE)
        except Exception as exc:  # a full disk must not stop the reconstruction
            self._log("error", f"could not save the state to {self.state_dir}: {exc}")

    # ------------------------------------------------------------------------------------ ROS callbacks
    def _on_view(self, msg: XrayView) -> None:
        """Convert and check a view, queue it for the worker. Never touches the engine."""
        try:
            view = xray_view_to_view(msg)
            image = xray_view_image(msg)
        except ConversionError as exc:
            self.get_logger().error(f"rejected view: {exc}")
            return
        vid = msg.view_id
        name = repr(vid) if vid else f"#{self._received} (no view_id)"
        self._received += 1
        if msg.image_kind != XrayView.IMAGE_KIND_LINE_INTEGRAL:
            self.get_logger().error(
                f"rejected view {name}: image_kind {msg.image_kind} is not IMAGE_KIND_LINE_INTEGRAL "
                f"({XrayView.IMAGE_KIND_LINE_INTEGRAL}); raw images go through standardize_node first")
            return
        if msg.header.frame_id != self.world_frame:
            self.get_logger().error(f"rejected view {name}: header.frame_id {msg.header.frame_id!r} is not the "
                                    f"world_frame {self.world_frame!r}")
            return
        with self._cond:
            if vid and vid in self._known_ids:
                self.get_logger().error(f"rejected view {name}: duplicate view_id (a view with this id was "
                                        "already accepted)")
                return
            if vid:
                self._known_ids.add(vid)
            self._pending.append((vid, name, view, image))
            self._cond.notify_all()

    def _publish_status(self) -> None:
        try:
            msg = status_to_msg(self.node_status(), frame_id=self.world_frame, stamp=self.get_clock().now().to_msg())
        except ConversionError as exc:  # a bug here must not kill the node
            self.get_logger().error(f"status: {exc}")
            return
        self.status_pub.publish(msg)

    def node_status(self) -> dict[str, Any]:
        """The ``status_to_msg`` dict of the node's current state (no engine call: cached by the worker)."""
        st = self._engine_status
        pending = len(self._pending)
        n_train, n_hold = int(st["views_used"]), int(st["views_holdout"])
        out = {"views_used": n_train, "iterations": int(st["iterations"]),
               "num_gaussians": int(st["num_gaussians"]), "loss": float(st["loss"]),
               "wall_time_s": float(st["wall_time_s"]), "heldout_psnr_2d": self._heldout_psnr}
        accepted = f"{_plural(n_train + n_hold, 'view')} accepted ({n_train} training, {n_hold} held out)"
        if pending:
            accepted += f", {pending} queued"
        if self._error is not None:
            return {**out, "state": "error", "message": f"{self._error} ({accepted}; a new training view retries)"}
        if n_train + n_hold + pending == 0:
            return {**out, "state": "idle", "message": "no views received"}
        if n_train < self.min_views:
            more = self.min_views - n_train
            return {**out, "state": "waiting_for_views",
                    "message": f"{accepted}; waiting for {_plural(more, 'more training view')}"}
        prog = self._init_progress
        if prog is not None:
            what, stage, done, total = prog
            return {**out, "state": "optimizing", "message": f"{accepted}; {what}: {stage} {done}/{total}"}
        if st["num_gaussians"] == 0:
            return {**out, "state": "optimizing", "message": f"{accepted}; initialising"}
        if out["iterations"] < self.target or (pending and self.refine_iterations > 0):
            return {**out, "state": "optimizing",
                    "message": f"{accepted}; iteration {out['iterations']}/{self.target}"}
        return {**out, "state": "converged",
                "message": f"{accepted}; schedule done ({out['iterations']} iterations)"}

    # ------------------------------------------------------------------------------------ worker
    def _take_pending(self) -> bool:
        """Hand queued views to the engine; True when a training view was added."""
        from ixgs_ros.core.engine import EngineError

        with self._cond:
            batch = list(self._pending)  # removed below, after the cached status counts them as accepted
        if not batch:
            return False
        added_train = False
        added = 0
        with self.engine_lock:
            eng = self.engine
            schedule_done = eng.model is not None and eng.iteration >= self.target
            for vid, name, view, image in batch:
                holdout = len(eng.holdout_indices) < self.heldout_views
                try:
                    eng.add_view(view, image, holdout=holdout)
                except Exception as exc:  # EngineError: bad image; anything else: the view cannot be used
                    why = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                    self._log("error", f"rejected view {name}: the engine refused it: {why}")
                    with self._cond:
                        self._known_ids.discard(vid)
                    continue
                self.view_ids.append(vid)
                added += 1
                added_train |= not holdout
            if added_train and schedule_done and self.refine_iterations > 0:
                self.target = eng.iteration + self.refine_iterations
            self._engine_status = eng.status()
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
            if added:
                self._save()
        if added:
            st = self._engine_status
            self._log("info", f"accepted {_plural(added, 'view')}: {st['views_used']} training, "
                                   f"{st['views_holdout']} held out")
        return added_train

    def _publish_volume(self) -> None:
        """Snapshot: volume, held-out PSNR, state save (worker thread)."""
        t0 = time.monotonic()
        with self.engine_lock:
            eng = self.engine
            mu = eng.volume()
            if eng.holdout_indices:
                self._heldout_psnr = float(eng.evaluate_holdout()["psnr_mean"])
            self._published_iteration = eng.iteration
            self._save()
        msg = volume_to_msg(mu, self.grid, frame_id=self.world_frame, stamp=self.get_clock().now().to_msg())
        try:
            self.volume_pub.publish(msg)
        except Exception as exc:  # the context is shutting down
            self._log("debug", f"volume not published: {exc}")
        self._last_publish_time = time.monotonic()
        self._snapshot_s = self._last_publish_time - t0

    def snapshot_period(self) -> float:
        """Seconds between snapshots while optimising: ``volume_publish_period_s``, stretched so that
        snapshots take at most :data:`SNAPSHOT_SHARE` of the time."""
        return max(self.publish_period, self._snapshot_s * (1.0 - SNAPSHOT_SHARE) / SNAPSHOT_SHARE)

    def _run_worker(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
            try:
                self._work_once()
            except Exception as exc:  # never let the worker die silently
                self._error = f"reconstruction worker: {type(exc).__name__}: {exc}"
                self._log("error", self._error)
                self._wait(0.5)

    def _work_once(self) -> None:
        """One round of the worker: take new views, then one chunk of optimisation, one snapshot or a wait."""
        added_train = self._take_pending()
        st = self._engine_status
        if self._error is not None:
            if not added_train:  # after a failure, a new training view is the reason to try again
                self._wait(0.5)
                return
            self._error = None
        if self._reinit_due(st):
            self._reinitialise()
            return
        if int(st["views_used"]) >= self.min_views and int(st["iterations"]) < self.target:
            if self._last_publish_time is None:  # the snapshot period counts from the start
                self._last_publish_time = time.monotonic()
            initialising = st["num_gaussians"] == 0
            try:
                with self.engine_lock:
                    n = min(CHUNK_ITERATIONS, self.target - self.engine.iteration)
                    new_status = self.engine.step(n, progress=self._progress_callback(
                        f"initialising from {st['views_used']} training views") if initialising else None,
                        preview=self._publish_preview if initialising else None)
            except _ShuttingDown:
                self._log("info", "initialisation stopped by the shutdown; the views are kept (it starts again "
                                  "from them at the next start when state_dir is set)")
                return
            except Exception as exc:
                self._error = f"optimisation failed: {type(exc).__name__}: {exc}"
                self._log("error", self._error)
                return
            finally:
                self._init_progress = None
            if int(new_status["iterations"]) < self.target:
                self._engine_status = new_status
                period = self.snapshot_period()
                if period > self.publish_period and not self._stretch_logged:
                    self._stretch_logged = True
                    self._log("info", f"a volume snapshot takes {self._snapshot_s:.1f} s: publishing every "
                                      f"{period:.1f} s instead of {self.publish_period:g} s, so snapshots take "
                                      f"at most {100 * SNAPSHOT_SHARE:.0f} % of the optimisation time")
                if time.monotonic() - self._last_publish_time >= period:
                    self._safe_publish()
                return
            # schedule done: the final volume (and held-out score) goes out before CONVERGED does
            self._safe_publish()
            self._engine_status = new_status
            psnr = "" if math.isnan(self._heldout_psnr) else f", held-out 2D PSNR {self._heldout_psnr:.2f} dB"
            self._log("info", f"schedule done: {new_status['iterations']} iterations on "
                                   f"{new_status['views_used']} training views in "
                                   f"{new_status['wall_time_s']:.1f} s{psnr}")
            return
        if st["num_gaussians"] and self._published_iteration != int(st["iterations"]):
            self._safe_publish()  # e.g. a restored, finished reconstruction: publish it once
            return
        self._wait(0.5)

    def _reinit_due(self, st: dict[str, Any]) -> bool:
        return (self.reinit_growth > 0 and int(st["num_gaussians"]) > 0 and int(st["init_views"]) > 0
                and int(st["views_used"]) >= self.reinit_growth * int(st["init_views"]))

    def _reinitialise(self) -> None:
        """Initialise again from all training views and restart the schedule; the previous volume stays
        published until the next snapshot, and a failure keeps the previous model."""
        st = self._engine_status
        self._log("info", f"re-initialising from {st['views_used']} training views (the current volume was "
                          f"initialised from {st['init_views']})")
        t0 = time.monotonic()
        try:
            with self.engine_lock:
                new_status = self.engine.reinitialize(progress=self._progress_callback(
                    f"re-initialising from {st['views_used']} training views"))
                self.target = self.engine.iteration + self.engine.config.iterations
                self._save()
        except _ShuttingDown:
            self._log("info", "re-initialisation stopped by the shutdown; the previous model is kept")
            return
        except Exception as exc:
            self._error = f"re-initialisation failed: {type(exc).__name__}: {exc}"
            self._log("error", self._error)
            return
        finally:
            self._init_progress = None
        self._engine_status = new_status
        self._safe_publish()  # the new init's volume goes out at once
        self._log("info", f"re-initialised in {time.monotonic() - t0:.1f} s; schedule restarted "
                          f"({self.config.iterations} iterations)")

    def _progress_callback(self, what: str):
        """The engine's ``progress`` for an (re-)initialisation: shows the stage in the status message and stops
        the initialisation (:class:`_ShuttingDown`, the engine rolls it back) once the node shuts down."""
        def progress(stage: str, done: int, total: int) -> None:
            self._init_progress = (what, stage, done, total)
            if self._stop:
                raise _ShuttingDown()
        return progress

    def _publish_preview(self, mu, label: str) -> None:
        """The engine's ``preview`` during the first initialisation (worker thread, engine lock held): the
        intermediate solution goes out on ``volume`` at once, minutes before the Gaussians exist on a CPU."""
        if self._stop:
            raise _ShuttingDown()
        msg = volume_to_msg(mu, self.grid, frame_id=self.world_frame, stamp=self.get_clock().now().to_msg())
        try:
            self.volume_pub.publish(msg)
        except Exception as exc:  # the context is shutting down
            self._log("debug", f"preview not published: {exc}")
            return
        self._log("info", f"published a preview volume: the {label}; the Gaussians follow")

    def _safe_publish(self) -> None:
        try:
            self._publish_volume()
        except Exception as exc:
            self._error = f"volume snapshot failed: {type(exc).__name__}: {exc}"
            self._log("error", self._error)

    def _wait(self, timeout: float) -> None:
        with self._cond:
            if not self._stop and not self._pending:
                self._cond.wait(timeout)

    # ------------------------------------------------------------------------------------ shutdown
    def destroy_node(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=2.0)
            if self._worker.is_alive():
                self._log("info", "waiting for the running optimisation chunk to end")
                self._worker.join()
        self._take_pending()  # views that arrived during the last chunk are kept too
        with self.engine_lock:
            self._save()
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(ReconstructionNode, args)


if __name__ == "__main__":
    sys.exit(main())

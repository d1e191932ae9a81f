"""reconstruction_node: reconstructs the attenuation volume online from line-integral X-ray views.

A thin shell over :class:`ixgs_ros.engine.live.LiveSession`, which holds the scheduling policy (when to
initialise, re-initialise, refine, snapshot and save; see that module), run by
:mod:`ixgs_ros.engine.live_process` in a child process (``worker_process``, default) so that nothing the
optimiser does (RTK holds the interpreter lock for seconds) delays this node's heartbeat and services. This
node maps ROS parameters to the session's configuration, checks and converts messages, and publishes.

Interface (topic names are relative, so a namespace or remapping places them; details in docs/ros.md):

* subscribes ``xray_views`` (ixgs_ros/XrayView; QoS reliability ``qos_reliability``). Refused, each with an
  error in the log naming the view and the reason and counted in the status by reason key: a stamp of 0 or more
  than ``max_future_s`` ahead, an empty ``view_id``, a view that does not convert (including a zero or
  non-unit quaternion), ``image_kind`` other than line integrals, integer pixels labelled as line integrals, a
  ``header.frame_id`` other than ``world_frame``, an id already accepted, the content of an accepted view under
  another id, and views the engine refuses. A refusal never drops what was accepted before. The first
  ``heldout_views`` accepted views are only scored (``heldout_psnr_2d``).
* subscribes ``xray_views_bone`` (the bone-only line integrals of the same view ids; not with ``target: full``)
  and publishes ``bone_volume`` and ``bone_navigation`` (:mod:`.recon_bone`): after each final volume whose
  training views all have their bone image, the bone target runs off the critical path, and from then on
  ``bone_markers``, ``bone_meshes`` and ``bone_cloud`` come from the bone volume (with the gate's per-piece
  confidence on ``bone_navigation``). Bone images are refused, counted and logged as views are (plus
  ``bone_image``, ``bone_mismatch``) and kept under ``state_dir``.
* with ``record_dir`` (the ingest node's shot record) it takes up, at start and every ``takeup_period_s``, the
  recorded shots it has not received (:class:`ixgs_ros.engine.live_takeup.RecordTakeUp`), standardized with
  ``takeup_i0`` / ``takeup_downsample`` (set them as standardize_node's ``i0`` / ``downsample``).
* publishes ``volume`` (ixgs_ros/Volume, latched: mu on the grid ``volume_size`` x ``voxel_size_mm`` centred on
  ``volume_center_mm`` in ``world_frame``, with its stage and the ids of the views it comes from),
  ``reconstruction_status`` at ``status_rate_hz``, the outputs of each volume (:mod:`.recon_outputs`:
  ``bone_markers``, ``bone_meshes``, ``bone_cloud``, ``mpr/*``; latched), the volume frame ``volume_frame`` on
  ``/tf_static`` and ``/diagnostics``.
* services ``~/reset`` and ``~/reinit`` (std_srvs/Trigger) and ``~/save_snapshot`` (ixgs_ros/SaveSnapshot).

Engine configuration: :class:`~ixgs_ros.engine.EngineConfig` defaults, then the file ``engine_config``
(YAML/JSON, as ``ixgs reconstruct --config``), then ``engine_overrides`` ("key=value" strings, dotted keys such
as ``init.passes=24``, values parsed as JSON); ``iterations`` and ``device`` always come from the node
parameters of those names. Bad parameters raise ``ValueError``, which ``run_node`` turns into one line on stderr
and exit code 2; at run time the output parameters, ``status_rate_hz`` and ``max_future_s`` can be changed
(checked first), the others are refused with the reason.

Shutdown (SIGINT/SIGTERM) waits for the running chunk to end (seconds); an initialisation in progress stops
at the end of its current pass and is rolled back (the views stay), then the state is saved.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from ixgs_ros.core.shot_checks import DEFAULT_MAX_FUTURE_S
from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import Diagnostics, declare_parameters, guard_parameters, latched_qos, run_node, shot_qos
from ixgs_ros.nodes.recon_bone import BoneTargetPublisher, check_view_message
from ixgs_ros.nodes.recon_outputs import OutputPublisher
from ixgs_ros.srv import SaveSnapshot

NAME = "reconstruction_node"

PARAMETERS = {
    "world_frame": ("world", "Frame of the reconstructed volume (must match the views' header.frame_id)"),
    "volume_frame": ("ixgs_volume", "Frame of the volume's voxel grid, published on /tf_static under world_frame"),
    "min_views": (3, "Training views (held-out ones not counted) needed before optimisation starts; the "
                     "engine initialises from the training views present then"),
    "heldout_views": (0, "The first N accepted views are kept out of training to report heldout_psnr_2d"),
    "iterations": (100, "Optimisation iterations per reconstruction (the engine's schedule length, "
                        "EngineConfig.iterations)"),
    "reinit_growth": (1.5, "Re-initialise from all training views (the RTK init again: minutes on a CPU at "
                           "128^3) and restart the schedule once the training views reach this multiple of the "
                           "views the current volume was initialised from; 0 = never (later views then only join "
                           "the loss)"),
    "supersede_init": (True, "Abandon an initialisation for one from all shots when a shot arrives before its "
                             "first TV-SART solve has finished, or, until it has published a volume, when the shots "
                             "that arrived meanwhile would make it due again (reinit_growth): the work goes to the "
                             "latest shots"),
    "refine_iterations": (50, "Iterations run after the schedule each time new training views arrive "
                              "(at the schedule's final learning rate); 0 = store them without optimising"),
    "volume_size": ([128, 128, 128], "Output grid size in voxels (I, J, K)"),
    "voxel_size_mm": (1.0, "Output voxel size (mm)"),
    "volume_center_mm": ([0.0, 0.0, 0.0], "Output grid centre in world_frame (mm); the grid is axis-aligned"),
    "device": ("auto", "Torch device: 'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'"),
    "status_rate_hz": (2.0, "Rate of reconstruction_status messages"),
    "volume_publish_period_s": (5.0, "Period of volume snapshots while optimising"),
    "refine_poses": ("auto", "Pose self-calibration (EngineConfig calibration.mode): auto (corrections applied when "
                             "they matter), on or off; the corrected poses go to output_dir/refined_poses.json (else "
                             "state_dir's), their summary and the flagged shots to the status and /diagnostics"),
    "engine_config": ("", "Engine configuration file (YAML/JSON, EngineConfig keys, optionally under 'engine'); "
                          "'' = EngineConfig defaults"),
    "engine_overrides": ([""], "EngineConfig overrides as 'key=value' strings (value parsed as JSON, else a "
                               "string), applied after engine_config; empty strings are ignored ([''] = none)"),
    "state_dir": ("", "Directory for the engine state: restored at start when present, written after new "
                      "views, after each published volume and on shutdown; '' = no persistence"),
    "worker_process": (True, "Run the reconstruction in a child process, so that the optimiser never delays the "
                             "status heartbeat and services (false: a thread of this process)"),
    "qos_reliability": ("reliable", "QoS reliability of the xray_views subscription: 'reliable' or 'best_effort'"),
    "max_future_s": (DEFAULT_MAX_FUTURE_S, "Views stamped more than this many seconds ahead of the node's clock are "
                                           "refused (as are stamps of 0)"),
    "record_dir": ("", "The ingest node's shot record: shots recorded there that this node has not received are "
                       "taken up at start and every takeup_period_s; '' = none"),
    "takeup_i0": (0.0, "i0 for standardizing raw shots taken up from the record (as standardize_node's i0; 0 = the "
                       "shot's i0, else estimated)"),
    "takeup_downsample": (1, "Detector binning of shots taken up from the record (as standardize_node's "
                             "downsample)"),
    "takeup_period_s": (5.0, "How often the shot record is checked for shots that did not arrive"),
    "takeup_grace_s": (2.0, "Recorded shots younger than this are left to the live messages"),
    "outputs": (["mesh", "cloud", "mpr"], "Outputs computed from each volume: any of mesh (bone_markers, "
                                          "bone_meshes), cloud (bone_cloud), mpr (mpr/*); [''] = none"),
    "mesh_threshold_hu": (250.0, "Iso-level of the bone meshes (HU)"),
    "mesh_max_faces": (40000, "Triangles of all bone pieces together at most (decimation)"),
    "mesh_max_pieces": (32, "Largest connected bone pieces kept"),
    "mesh_smooth_iterations": (5, "Taubin smoothing iterations of the meshes"),
    "cloud_threshold_hu": (200.0, "Voxels above this (HU) go into bone_cloud"),
    "cloud_max_points": (100000, "Most points in bone_cloud (a regular thinning above it)"),
    "mpr_point_mm": (Parameter.Type.DOUBLE_ARRAY, "World point (mm, 3 numbers) the MPR slices pass through; unset "
                                                  "= the grid centre"),
    "mpr_max_size": (256, "MPR images have at most this many pixels a side"),
    "outputs_max_share": (0.1, "Share of the time (0-1] the outputs of intermediate Gaussian-stage volumes may take "
                               "(meshing takes seconds on 2 cores): later ones wait; previews and the final volume "
                               "get their outputs at once"),
    "output_dir": ("", "Folder for files of the latest outputs (bone.ply, named in bone_meshes.ply_path); '' = "
                       "none"),
    "target": ("auto", "Bone target (as ixgs reconstruct --target): auto = run it when bone views arrive on "
                       "xray_views_bone (after each final volume whose training views all have theirs), both = "
                       "always (the status says which bone views are missing), full = never (no subscription)"),
    "snapshot_root": ("~/.ros/ixgs_snapshots", "save_snapshot writes its folders below this directory"),
}
#: Parameters a running node takes without a restart.
LIVE = {"status_rate_hz", "max_future_s", "outputs", "mesh_threshold_hu", "mesh_max_faces", "mesh_max_pieces",
        "mesh_smooth_iterations", "cloud_threshold_hu", "cloud_max_points", "mpr_point_mm", "mpr_max_size",
        "outputs_max_share", "takeup_period_s", "takeup_grace_s"}
_OUTPUT_KEYS = ("mesh_threshold_hu", "mesh_max_faces", "mesh_max_pieces", "mesh_smooth_iterations",
                "cloud_threshold_hu", "cloud_max_points", "mpr_point_mm", "mpr_max_size", "outputs_max_share")


# ------------------------------------------------------------------------------------------ parameters
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


def build_engine_config(engine_config: str, engine_overrides, iterations: int, device: str,
                        refine_poses: str = "auto"):
    """EngineConfig from defaults < ``engine_config`` file < ``engine_overrides`` < iterations/device/refine_poses
    (``calibration.mode``)."""
    from ixgs_ros.engine import load_engine_config

    items = [str(s).strip() for s in engine_overrides if str(s).strip()]
    clash = sorted({"iterations", "device", "calibration.mode"} & {item.partition("=")[0].strip() for item in items})
    if clash:
        raise ValueError(f"engine_overrides: set {' and '.join(clash)} with the node parameter(s) iterations, "
                         "device, refine_poses, not as an override")
    try:
        return load_engine_config(engine_config.strip() or None, items, iterations=int(iterations), device=device,
                                  **{"calibration.mode": str(refine_poses)})
    except (ValueError, TypeError) as exc:  # EngineError is a ValueError: one clear line
        raise ValueError(f"engine configuration: {exc}") from None


def output_config(p: dict):
    """``(LiveOutputConfig, kinds)`` of the node parameters ``p``; ValueError naming a bad one."""
    from ixgs_ros.outputs.live import OUTPUT_KINDS, LiveOutputConfig

    kinds = tuple(str(k).strip() for k in p["outputs"] if str(k).strip())
    bad = sorted(set(kinds) - set(OUTPUT_KINDS))
    if bad:
        raise ValueError(f"outputs: unknown kind(s) {bad}; any of {list(OUTPUT_KINDS)}")
    point = p["mpr_point_mm"]
    cfg = LiveOutputConfig(**{k: p[k] for k in _OUTPUT_KEYS if k != "mpr_point_mm"},
                           mpr_point_mm=None if point is None or len(point) == 0 else tuple(point))
    return cfg.validate(), kinds


def check_parameter(name: str, value, params: dict) -> str | None:
    """Why ``value`` is not acceptable for ``name`` given the other current ``params`` (None when it is)."""
    try:
        if name in ("volume_size", "voxel_size_mm", "volume_center_mm"):
            new = dict(params, **{name: value})
            make_grid(new["volume_size"], float(new["voxel_size_mm"]), new["volume_center_mm"])
        elif name in _OUTPUT_KEYS or name == "outputs":
            output_config(dict(params, **{name: value}))
        elif name in ("status_rate_hz", "max_future_s", "takeup_period_s") and not value > 0:
            return f"{name} must be positive, got {value}"
        elif name in ("takeup_grace_s", "takeup_i0") and not value >= 0:
            return f"{name} must be >= 0, got {value}"
        elif name == "takeup_downsample" and value < 1:
            return f"takeup_downsample must be >= 1, got {value}"
        elif name in ("world_frame", "volume_frame") and not str(value).strip():
            return f"{name} must not be empty"
        elif name == "refine_poses" and value not in ("auto", "on", "off"):
            return f"refine_poses must be 'auto', 'on' or 'off', got {value!r}"
        elif name == "target" and value not in ("auto", "full", "both"):
            return f"target must be 'auto', 'full' or 'both', got {value!r}"
        elif name == "qos_reliability" and value not in ("reliable", "best_effort"):
            return f"qos_reliability must be 'reliable' or 'best_effort', got {value!r}"
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------------ node
class ReconstructionNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=`` to run in a given context)."""
        from ixgs_ros.engine.live import LiveConfig
        from ixgs_ros.engine.live_process import make_runner

        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        for name, value in p.items():
            why = check_parameter(name, value, p)
            if why:
                raise ValueError(why)
        self.world_frame = str(p["world_frame"])
        state_dir = str(p["state_dir"]).strip()
        poses_dir = str(p["output_dir"]).strip() or state_dir
        live = LiveConfig(min_views=int(p["min_views"]), heldout_views=int(p["heldout_views"]),
                          reinit_growth=float(p["reinit_growth"]), refine_iterations=int(p["refine_iterations"]),
                          publish_period_s=float(p["volume_publish_period_s"]),
                          supersede_init=bool(p["supersede_init"]),
                          poses_file=str(Path(poses_dir).expanduser() / "refined_poses.json") if poses_dir else "")
        if int(p["iterations"]) < 1:
            raise ValueError(f"iterations must be >= 1, got {p['iterations']}")
        live.validate()
        self.grid = make_grid(p["volume_size"], float(p["voxel_size_mm"]), p["volume_center_mm"])
        self.device = resolve_device(p["device"])
        config = build_engine_config(p["engine_config"], p["engine_overrides"], int(p["iterations"]), self.device,
                                     p["refine_poses"])
        out_cfg, kinds = output_config(p)

        # callback groups: the heartbeat never waits behind a view, a service or the outputs
        self._heartbeat_group = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        self.status_pub = self.create_publisher(ReconstructionStatus, "reconstruction_status", 10)
        self.volume_pub = self.create_publisher(Volume, "volume", latched_qos())
        self.outputs = OutputPublisher(self, self.grid, out_cfg, kinds, world_frame=self.world_frame,
                                       volume_frame=str(p["volume_frame"]), output_dir=str(p["output_dir"]).strip(),
                                       log=self._log)
        self.runner = make_runner(bool(p["worker_process"]), self.grid, config, live,
                                  state_dir=Path(state_dir).expanduser() if state_dir else None,
                                  on_volume=self._publish_volume, log=self._log)
        self.config = self.runner.info["config"]
        self.bone = BoneTargetPublisher(self, self.grid, self.config, target=str(p["target"]), outputs=self.outputs,
                                        state_dir=Path(state_dir).expanduser() if state_dir else None,
                                        process=bool(p["worker_process"]), reject=self.runner.reject,
                                        qos_reliability=p["qos_reliability"], log=self._log)
        self.takeup = None
        self._stop = threading.Event()
        if str(p["record_dir"]).strip():
            from ixgs_ros.engine.live_takeup import RecordTakeUp

            self.takeup = RecordTakeUp(self.runner, str(p["record_dir"]).strip(), i0=p["takeup_i0"],
                                       downsample=p["takeup_downsample"], grace_s=p["takeup_grace_s"],
                                       log=self._log)
            threading.Thread(target=self._takeup_loop, name="ixgs_takeup", daemon=True).start()
        self.create_subscription(XrayView, "xray_views", self._on_view, shot_qos(p["qos_reliability"]))
        self.create_service(Trigger, "~/reset", self._srv_reset, callback_group=services)
        self.create_service(Trigger, "~/reinit", self._srv_reinit, callback_group=services)
        self.create_service(SaveSnapshot, "~/save_snapshot", self._srv_save, callback_group=services)
        self._last_tick = None
        self.max_status_gap_s = 0.0
        self._status_timer = self.create_timer(1.0 / float(p["status_rate_hz"]), self._publish_status,
                                               callback_group=self._heartbeat_group)
        Diagnostics(self, self._diagnostics, callback_group=self._heartbeat_group)
        guard_parameters(self, lambda n, v: check_parameter(n, v, self.params), self._apply, LIVE)
        g = self.grid
        self.get_logger().info(
            f"reconstructing on a {'x'.join(map(str, g.shape))} grid at {float(p['voxel_size_mm']):g} mm centred "
            f"on {[float(c) for c in p['volume_center_mm']]} mm in '{self.world_frame}', "
            f"{self.runner.info['target']} iterations on {self.device} "
            f"({'child process' if p['worker_process'] else 'thread'}); "
            f"{self.runner.info['restored_views']} views restored; waiting for xray_views")

    @property
    def session(self):
        """The LiveSession (thread mode only; None when it runs in a child process)."""
        return getattr(self.runner, "session", None)

    def _log(self, level: str, text: str) -> None:
        """Log from any thread or during shutdown: after SIGINT/SIGTERM the context is gone and rclpy's logger
        would add a 'Failed to publish log message to rosout' line to every message, so print instead."""
        if self.context.ok():  # one call site per severity: rclpy refuses a call site that changes it
            if level == "error":
                self.get_logger().error(text)
            elif level == "warn":
                self.get_logger().warning(text)
            elif level == "info":
                self.get_logger().info(text)
            else:
                self.get_logger().debug(text)
        elif level != "debug":
            print(f"[{level.upper()}] [{self.get_name()}]: {text}", file=sys.stderr, flush=True)

    def _apply(self, changes: dict) -> None:
        new = dict(self.params, **changes)
        if any(k in changes for k in _OUTPUT_KEYS + ("outputs",)):
            self.outputs.set_config(*output_config(new))
        if "status_rate_hz" in changes:
            self.destroy_timer(self._status_timer)
            self._status_timer = self.create_timer(1.0 / float(changes["status_rate_hz"]), self._publish_status,
                                                   callback_group=self._heartbeat_group)
        if self.takeup is not None and "takeup_grace_s" in changes:
            self.takeup.grace_s = float(changes["takeup_grace_s"])
        self.params.update(changes)

    # ------------------------------------------------------------------------------------ views
    def _on_view(self, msg: XrayView) -> None:
        """Check and convert a view and queue it in the session. Never touches the engine."""
        vid = msg.view_id
        name = self.runner.next_name(vid)
        view, image, bad = check_view_message(self, msg, name, max_future_s=self.params["max_future_s"],
                                              world_frame=self.world_frame)
        if bad:
            return self.runner.reject(*bad)
        if not self.runner.knows(vid):  # a duplicate id must not replace the geometry its bone image is checked on
            self.bone.note_view(vid, view, image)
        self.runner.submit(vid, view, image, name=name)

    def _takeup_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.takeup.poll()
            except Exception as exc:  # a damaged record must not stop the node
                self._log("error", f"shot record take-up: {type(exc).__name__}: {exc}")
            self._stop.wait(float(self.params["takeup_period_s"]))

    # ------------------------------------------------------------------------------------ status, volume
    def node_status(self) -> dict:
        """The ``status_to_msg`` dict of the node's current state (no engine call); its message ends with the bone
        target's state unless the target is full (or auto and no bone view came)."""
        st = dict(self.runner.status())
        bone = self.bone.status()
        if bone["state"] != "off" and not (bone["target"] == "auto" and bone["state"] == "idle"
                                           and not bone["bone_views"]):
            st["message"] = f"{st.get('message', '')}; bone target: {bone['message']}".lstrip("; ")
        return st

    def _publish_status(self) -> None:
        now = time.monotonic()
        if self._last_tick is not None:
            self.max_status_gap_s = max(self.max_status_gap_s, now - self._last_tick)
        self._last_tick = now
        try:
            msg = cv.status_to_msg(self.node_status(), frame_id=self.world_frame,
                                   stamp=self.get_clock().now().to_msg())
        except cv.ConversionError as exc:  # a bug here must not kill the node
            self.get_logger().error(f"status: {exc}")
            return
        self.status_pub.publish(msg)

    def _publish_volume(self, snap) -> None:
        """The runner's ``on_volume``: the volume goes out at once, its outputs follow from their own thread."""
        stamp = self.get_clock().now().to_msg()
        msg = cv.volume_to_msg(snap.mu, self.grid, frame_id=self.world_frame, stamp=stamp, stage=snap.stage,
                               view_ids=snap.view_ids, iteration=snap.iteration)
        self.volume_pub.publish(msg)
        self.outputs.submit(snap, stamp)
        self.bone.on_volume(snap, stamp)

    def _diagnostics(self):
        st = self.node_status()
        rejected = st.get("rejected", {})
        values = {"state": st.get("state", ""), "views_used": st.get("views_used", 0),
                  "iterations": st.get("iterations", 0), "volume_stage": st.get("volume_stage", ""),
                  "volume_views": len(st.get("volume_view_ids", ())), "outputs_published": self.outputs.published,
                  "outputs_latency_s": self.outputs.last_latency_s, "status_max_gap_s": self.max_status_gap_s,
                  **{f"outputs_s.{k}": v for k, v in self.outputs.last_seconds.items()},
                  **{f"rejected.{k}": v for k, v in rejected.items()}}
        values.update(self.bone.diagnostics())
        if self.takeup is not None:
            values["taken_up_from_record"] = self.takeup.taken_up
        poses = st.get("pose_calibration") or {}
        values.update({f"pose_calibration.{k}": v if k != "flagged_view_ids" else ",".join(v)
                       for k, v in poses.items()})
        bone_warn = values["bone_target.state"] == "failed" or (values["bone_target"] == "both"
                                                                and values["bone_target.state"] == "waiting")
        level = "error" if st.get("state") == "error" else (
            "warn" if rejected or poses.get("flagged_view_ids") or bone_warn else "ok")
        return level, st.get("message", ""), values

    # ------------------------------------------------------------------------------------ services
    def _srv_reset(self, request, response):
        from ixgs_ros.engine.live_takeup import RESET_SEQ_KEY

        meta = {RESET_SEQ_KEY: self.takeup.last_seq()} if self.takeup is not None else {}
        done = self.runner.reset(timeout=60.0, meta=meta)
        if done:
            self.outputs.clear()
            self.bone.reset()
        response.success = bool(done)
        response.message = ("reset: every view dropped; a new reconstruction starts with the next view" if done else
                            "reset requested; it happens when the running step ends (more than 60 s away)")
        return response

    def _srv_reinit(self, request, response):
        why = self.runner.request_reinit()
        response.success = why is None
        response.message = why or "re-initialisation from all training views requested"
        return response

    def _srv_save(self, request, response):
        from ixgs_ros.nodes.snapshot import save_snapshot

        response.success, response.message, response.directory, response.files = save_snapshot(
            self, request.directory)
        return response

    # ------------------------------------------------------------------------------------ shutdown
    def destroy_node(self):
        t0 = time.monotonic()
        self._stop.set()
        self.runner.close(log_wait=lambda: self._log("info", "waiting for the running optimisation chunk to end"))
        self.outputs.stop()
        self.bone.close()
        self._log("info", f"reconstruction stopped and saved in {time.monotonic() - t0:.1f} s")
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(ReconstructionNode, args, threads=3)


if __name__ == "__main__":
    sys.exit(main())

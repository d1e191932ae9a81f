"""reconstruction_node: reconstructs the attenuation volume online from line-integral X-ray views.

A thin shell over :class:`ixgs_ros.engine.live.LiveSession`, which holds the scheduling policy (when to
initialise, re-initialise, refine, snapshot and save; see that module): this node maps ROS parameters to the
session's configuration, converts messages and publishes what the session hands it.

Interface (topic names are relative, so a namespace or remapping places them):

* subscribes ``xray_views`` (ixgs_ros/XrayView). A view is rejected, with an error in the log that names
  it and the problem, when it cannot be converted (:func:`~ixgs_ros.nodes.convert.xray_view_to_view`),
  when its ``image_kind`` is not ``IMAGE_KIND_LINE_INTEGRAL`` (raw images go through standardize_node
  first), when its ``header.frame_id`` is not ``world_frame``, when its non-empty ``view_id`` was already
  accepted, or when the engine refuses it (image size, NaN/inf, negative values). A rejection never drops
  what was accepted before. The first ``heldout_views`` accepted views are only scored (``heldout_psnr_2d``).
* publishes ``volume`` (ixgs_ros/Volume, mu in 1/mm on the axis-aligned grid ``volume_size`` x
  ``voxel_size_mm`` centred on ``volume_center_mm`` in ``world_frame``; QoS depth 1, transient local, so a
  late subscriber gets the latest snapshot): the init's TV-SART previews, snapshots every
  ``volume_publish_period_s`` while optimising, and the final volume before the status says CONVERGED;
* publishes ``reconstruction_status`` (ixgs_ros/ReconstructionStatus) at ``status_rate_hz``.

Engine configuration: :class:`~ixgs_ros.engine.EngineConfig` defaults, then the file ``engine_config``
(YAML/JSON, as ``ixgs reconstruct --config``), then ``engine_overrides`` ("key=value" strings, dotted keys such
as ``init.passes=24``, values parsed as JSON); ``iterations`` and ``device`` always come from the node
parameters of those names (:func:`ixgs_ros.engine.load_engine_config`). Bad parameters raise ``ValueError``,
which ``run_node`` turns into one line on stderr and exit code 2.

Shutdown (SIGINT/SIGTERM) waits for the running chunk to end (seconds); an initialisation in progress stops
at the end of its current pass and is rolled back (the views stay), then the state is saved.
"""
from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ixgs_ros.msg import ReconstructionStatus, Volume, XrayView
from ixgs_ros.nodes._base import SHOT_QUEUE_DEPTH, declare_parameters, run_node
from ixgs_ros.nodes.convert import (ConversionError, status_to_msg, volume_to_msg, xray_view_image,
                                    xray_view_to_view)

NAME = "reconstruction_node"

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


def build_engine_config(engine_config: str, engine_overrides, iterations: int, device: str):
    """EngineConfig from defaults < ``engine_config`` file < ``engine_overrides`` < iterations/device."""
    from ixgs_ros.engine import load_engine_config

    items = [str(s).strip() for s in engine_overrides if str(s).strip()]
    clash = sorted({"iterations", "device"} & {item.partition("=")[0].strip() for item in items})
    if clash:
        raise ValueError(f"engine_overrides: set {' and '.join(clash)} with the node parameter(s) of that name, "
                         "not as an override")
    try:
        return load_engine_config(engine_config.strip() or None, items, iterations=int(iterations), device=device)
    except (ValueError, TypeError) as exc:  # EngineError is a ValueError: one clear line
        raise ValueError(f"engine configuration: {exc}") from None


# ------------------------------------------------------------------------------------------------ node
class ReconstructionNode(Node):
    def __init__(self, **node_kwargs):
        """``node_kwargs`` go to ``rclpy.node.Node`` (e.g. ``context=`` to run in a given context)."""
        from ixgs_ros.engine.live import LiveConfig, LiveSession

        super().__init__(NAME, **node_kwargs)
        p = self.params = declare_parameters(self, PARAMETERS)
        rate = float(p["status_rate_hz"])
        if not rate > 0:
            raise ValueError(f"status_rate_hz must be positive, got {rate}")
        if not str(p["world_frame"]).strip():
            raise ValueError("world_frame must not be empty")
        self.world_frame = str(p["world_frame"])
        live = LiveConfig(min_views=int(p["min_views"]), heldout_views=int(p["heldout_views"]),
                          reinit_growth=float(p["reinit_growth"]), refine_iterations=int(p["refine_iterations"]),
                          publish_period_s=float(p["volume_publish_period_s"]))
        if int(p["iterations"]) < 1:
            raise ValueError(f"iterations must be >= 1, got {p['iterations']}")
        live.validate()
        self.grid = make_grid(p["volume_size"], float(p["voxel_size_mm"]), p["volume_center_mm"])
        self.device = resolve_device(p["device"])
        config = build_engine_config(p["engine_config"], p["engine_overrides"], int(p["iterations"]), self.device)
        state_dir = str(p["state_dir"]).strip()
        kwargs = dict(on_volume=self._publish_volume, log=self._log)
        if state_dir:
            self.session = LiveSession.restore(Path(state_dir).expanduser(), self.grid, config, live, **kwargs)
        else:
            self.session = LiveSession(self.grid, config, live, **kwargs)
        self.config = self.session.config

        self.status_pub = self.create_publisher(ReconstructionStatus, "reconstruction_status", 10)
        self.volume_pub = self.create_publisher(
            Volume, "volume", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                         durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.create_subscription(XrayView, "xray_views", self._on_view, SHOT_QUEUE_DEPTH)
        self.create_timer(1.0 / rate, self._publish_status)
        self._worker = threading.Thread(target=self.session.run, name="ixgs_reconstruction", daemon=True)
        self._worker.start()
        if self.session.engine.model is None:
            # ITK loads RTK's wrappers on first use (10-20 s on 2 cores): do it while the shots arrive, in a
            # daemon thread that shutdown does not wait for, not inside the first initialisation's first pass
            threading.Thread(target=self._preload_rtk, name="ixgs_rtk_preload", daemon=True).start()
        g = self.grid
        self.get_logger().info(
            f"reconstructing on a {'x'.join(map(str, g.shape))} grid at {float(p['voxel_size_mm']):g} mm centred "
            f"on {[float(c) for c in p['volume_center_mm']]} mm in '{self.world_frame}', {self.session.target} "
            f"iterations on {self.device}; {len(self.session.view_ids)} views restored; waiting for xray_views")

    @property
    def engine(self):
        return self.session.engine

    def _preload_rtk(self) -> None:
        from ixgs_ros.core import rtk

        try:
            self._log("debug", f"RTK loaded in {rtk.preload():.1f} s")
        except Exception as exc:  # the initialisation reports it when it needs RTK
            self._log("debug", f"RTK preload failed: {type(exc).__name__}: {exc}")

    def _log(self, level: str, text: str) -> None:
        """Log from the worker or during shutdown: after SIGINT/SIGTERM the context is gone and rclpy's logger
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

    # ------------------------------------------------------------------------------------ ROS callbacks
    def _on_view(self, msg: XrayView) -> None:
        """Convert and check a view, queue it in the session. Never touches the engine."""
        try:
            view = xray_view_to_view(msg)
            image = xray_view_image(msg)
        except ConversionError as exc:
            self.get_logger().error(f"rejected view: {exc}")
            return
        vid = msg.view_id
        name = self.session.next_name(vid)
        if msg.image_kind != XrayView.IMAGE_KIND_LINE_INTEGRAL:
            self.get_logger().error(
                f"rejected view {name}: image_kind {msg.image_kind} is not IMAGE_KIND_LINE_INTEGRAL "
                f"({XrayView.IMAGE_KIND_LINE_INTEGRAL}); raw images go through standardize_node first")
            return
        if msg.header.frame_id != self.world_frame:
            self.get_logger().error(f"rejected view {name}: header.frame_id {msg.header.frame_id!r} is not the "
                                    f"world_frame {self.world_frame!r}")
            return
        self.session.submit(vid, view, image, name=name)

    def node_status(self) -> dict:
        """The ``status_to_msg`` dict of the node's current state (no engine call)."""
        return self.session.status().to_dict()

    def _publish_status(self) -> None:
        try:
            msg = status_to_msg(self.node_status(), frame_id=self.world_frame, stamp=self.get_clock().now().to_msg())
        except ConversionError as exc:  # a bug here must not kill the node
            self.get_logger().error(f"status: {exc}")
            return
        self.status_pub.publish(msg)

    def _publish_volume(self, snap) -> None:
        """The session's ``on_volume`` (worker thread)."""
        msg = volume_to_msg(snap.mu, self.grid, frame_id=self.world_frame, stamp=self.get_clock().now().to_msg())
        self.volume_pub.publish(msg)

    def snapshot_period(self) -> float:
        return self.session.snapshot_period()

    # ------------------------------------------------------------------------------------ shutdown
    def destroy_node(self):
        self.session.stop()
        if self._worker.is_alive():
            self._worker.join(timeout=2.0)
            if self._worker.is_alive():
                self._log("info", "waiting for the running optimisation chunk to end")
                self._worker.join()
        self.session.close()  # views that arrived during the last chunk are kept too
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(ReconstructionNode, args)


if __name__ == "__main__":
    sys.exit(main())

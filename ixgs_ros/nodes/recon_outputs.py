"""reconstruction_node's outputs besides the volume: bone meshes, bone cloud, MPR slices, the volume frame on tf.

Meshing a 128^3 volume takes seconds, so the outputs are computed off the critical path: the node hands every
published volume to :class:`OutputPublisher` (:meth:`~OutputPublisher.submit`, which never waits) and its own
thread computes them (:func:`ixgs_ros.outputs.live.compute_live_outputs`, ROS-free) and publishes. When volumes
come faster than their outputs, the newest wins: a volume still waiting is replaced, so the outputs follow the
latest volume and never pile up. Every output topic is latched (reliable, transient local, depth 1): a
subscriber that comes later gets the outputs of the last volume at once. Each output message carries the
Volume's stamp, so a consumer can tell which volume it belongs to. The outputs of intermediate volumes (stage
``gaussian``, every few seconds while the Gaussians optimise and change little) take at most
``LiveOutputConfig.outputs_max_share`` of the time: after outputs that took ``t`` s the next such volume waits until
``t (1 - share) / share`` s have passed, so meshing does not take the CPU from the optimiser on a small machine;
previews and the final volume get theirs at once.

Once the bone target (:mod:`.recon_bone`) has published a bone volume, ``bone_markers``, ``bone_meshes`` and
``bone_cloud`` come from the bone volumes only (:meth:`OutputPublisher.publish_bone`) until a reset; the MPR
slices stay the full volume's.

Topics (relative): ``bone_markers`` (visualization_msgs/MarkerArray), ``bone_meshes`` (ixgs_ros/BoneMeshes),
``bone_cloud`` (sensor_msgs/PointCloud2), ``mpr/axial``, ``mpr/coronal``, ``mpr/sagittal`` (sensor_msgs/Image
32FC1, mu in 1/mm); and ``/tf_static`` (world_frame <- volume_frame).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from sensor_msgs.msg import Image, PointCloud2
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from ixgs_ros.core.volume import Grid
from ixgs_ros.msg import BoneMeshes
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes import convert_outputs as co
from ixgs_ros.nodes._base import latched_qos
from ixgs_ros.outputs import live as live_outputs
from ixgs_ros.outputs.mesh import write_mesh

__all__ = ["OutputPublisher", "volume_frame_transform", "MPR_PLANES"]

MPR_PLANES = ("axial", "coronal", "sagittal")


def volume_frame_transform(grid: Grid):
    """``T_world_volume`` (mm) of the volume frame: origin at the centre of voxel (0, 0, 0), axes along the grid's
    i, j, k (for a left-handed grid z points along -k), so voxel (i, j, k) lies at (i sx, j sy, k sz) mm when the
    grid is right-handed."""
    return cv.pose_to_matrix(cv._index_pose(grid.affine, grid.spacing), norm_tol=None)


class OutputPublisher:
    """Computes and publishes the outputs of the latest volume in its own thread (see the module docstring)."""

    def __init__(self, node, grid: Grid, config: live_outputs.LiveOutputConfig, kinds, *, world_frame: str,
                 volume_frame: str, output_dir: str = "", log=None):
        self.node = node
        self.grid = grid
        self.config = config
        self.kinds = tuple(kinds)
        self.world_frame = world_frame
        self.output_dir = Path(output_dir).expanduser() if output_dir else None
        self.log = log or (lambda level, text: None)
        qos = latched_qos()
        self.pub_markers = node.create_publisher(MarkerArray, "bone_markers", qos)
        self.pub_meshes = node.create_publisher(BoneMeshes, "bone_meshes", qos)
        self.pub_cloud = node.create_publisher(PointCloud2, "bone_cloud", qos)
        self.pub_mpr = {name: node.create_publisher(Image, f"mpr/{name}", qos) for name in MPR_PLANES}
        self.pub_tf_static = node.create_publisher(TFMessage, "/tf_static", qos)
        self.pub_tf_static.publish(co.tf_message([(world_frame, volume_frame, volume_frame_transform(grid),
                                                   node.get_clock().now().to_msg())]))
        self._cond = threading.Condition()
        self._next = None           # (snapshot, stamp): the newest volume waiting for its outputs
        self._not_before = 0.0      # monotonic time before which an intermediate volume's outputs wait
        self._stop = False
        self.bone_active = False    # the bone target owns bone_markers / bone_meshes / bone_cloud
        self._publish_lock = threading.Lock()
        self.latest = None          # (snapshot, stamp, LiveOutputs) of the last outputs published
        self.published = 0
        self.skipped = 0
        self.last_latency_s = float("nan")  # from the volume's publication to its outputs'
        self.last_seconds: dict = {}
        self._thread = threading.Thread(target=self._run, name="ixgs_outputs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ input
    def submit(self, snap, stamp) -> None:
        """A newly published volume (never waits; a volume still waiting is replaced by this one)."""
        with self._cond:
            if self._next is not None:
                self.skipped += 1
            self._next = (snap, stamp, time.monotonic())
            self._cond.notify_all()

    def set_config(self, config: live_outputs.LiveOutputConfig, kinds) -> None:
        """New parameters: applied to the next volume, and the last one is computed again with them."""
        with self._cond:
            self.config, self.kinds = config, tuple(kinds)
            self._not_before = 0.0  # the new parameters' outputs come at once
            if self._next is None and self.latest is not None:
                self._next = (self.latest[0], self.latest[1], time.monotonic())
            self._cond.notify_all()

    def clear(self) -> None:
        """After a reset: empty meshes and cloud replace the latched ones."""
        with self._cond:
            self._next = None
            self.latest = None
        with self._publish_lock:
            self.bone_active = False
        stamp = self.node.get_clock().now().to_msg()
        self.pub_markers.publish(co.pieces_to_markers([], frame_id=self.world_frame, stamp=stamp))
        self.pub_meshes.publish(co.pieces_to_bone_meshes([], frame_id=self.world_frame, stamp=stamp))
        empty = live_outputs.LiveOutputs()
        self.pub_cloud.publish(co.cloud_to_msg(empty.cloud_xyz, empty.cloud_mu, empty.cloud_hu,
                                               frame_id=self.world_frame, stamp=stamp))

    def stop(self) -> None:
        """Ends the thread once the outputs it is computing are done (they are not published)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=15.0)

    # ------------------------------------------------------------------------------------ worker
    def _run(self) -> None:
        if "mesh" in self.kinds:  # load the mesh libraries now (seconds), not when the first volume is waiting
            try:
                from ixgs_ros.outputs.mesh import _have_open3d
                from skimage import measure  # noqa: F401

                _have_open3d()
            except Exception:
                pass
        while True:
            with self._cond:
                while not (self._stop or self._due()):
                    wait = None if self._next is None else max(0.01, self._not_before - time.monotonic())
                    self._cond.wait(wait)
                if self._stop:
                    return
                (snap, stamp, t_in), self._next = self._next, None
                config, kinds = self.config, self.kinds
            t0 = time.monotonic()
            if self.bone_active:
                kinds = tuple(k for k in kinds if k not in ("mesh", "cloud"))
            try:
                outputs = self.compute(snap, config, kinds)
                if self._stop:
                    return
                self._publish(snap, stamp, outputs, config, kinds)
            except Exception as exc:  # one bad volume must not end the outputs
                self.log("error", f"outputs of the {snap.stage} volume at iteration {snap.iteration}: "
                                  f"{type(exc).__name__}: {exc}")
                continue
            finally:
                share, now = float(config.outputs_max_share), time.monotonic()
                self._not_before = now + (now - t0) * (1.0 - share) / share
            self.latest = (snap, stamp, outputs)
            self.published += 1
            self.last_latency_s = time.monotonic() - t_in
            self.last_seconds = dict(outputs.seconds)

    def _due(self) -> bool:
        """Whether the waiting volume's outputs are due (caller holds ``_cond``): at once for a preview or the
        final volume, for an intermediate one once the share's pause is over."""
        if self._next is None:
            return False
        return self._next[0].stage != "gaussian" or time.monotonic() >= self._not_before

    def compute(self, snap, config=None, kinds=None) -> live_outputs.LiveOutputs:
        return live_outputs.compute_live_outputs(snap.mu, self.grid, config or self.config,
                                                 self.kinds if kinds is None else kinds)

    def _publish(self, snap, stamp, out: live_outputs.LiveOutputs, config, kinds) -> None:
        with self._publish_lock:
            if self.bone_active:
                kinds = tuple(k for k in kinds if k not in ("mesh", "cloud"))
            self._publish_unlocked(snap, stamp, out, config, kinds)

    def publish_bone(self, snap, stamp, out: live_outputs.LiveOutputs, config, kinds) -> None:
        """The meshes and cloud of a bone volume (``snap``: its stage, view ids, iteration); from now on the full
        volumes' meshes and cloud are no longer published."""
        with self._publish_lock:
            self.bone_active = True
            self._publish_unlocked(snap, stamp, out, config, tuple(k for k in kinds if k in ("mesh", "cloud")))

    def _publish_unlocked(self, snap, stamp, out: live_outputs.LiveOutputs, config, kinds) -> None:
        frame = self.world_frame
        if "mpr" in kinds:
            for name, (image, _) in out.slices.items():
                self.pub_mpr[name].publish(co.slice_to_image(image, frame_id=frame, stamp=stamp))
        if "cloud" in kinds:
            self.pub_cloud.publish(co.cloud_to_msg(out.cloud_xyz, out.cloud_mu, out.cloud_hu, frame_id=frame,
                                                   stamp=stamp))
        if "mesh" in kinds:
            ply = ""
            if self.output_dir is not None and out.pieces:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.output_dir / ".bone.tmp.ply"
                write_mesh(live_outputs.merged_mesh(out.pieces), tmp)
                tmp.replace(self.output_dir / "bone.ply")
                ply = str((self.output_dir / "bone.ply").resolve())
            self.pub_markers.publish(co.pieces_to_markers(out.pieces, frame_id=frame, stamp=stamp))
            self.pub_meshes.publish(co.pieces_to_bone_meshes(
                out.pieces, frame_id=frame, stamp=stamp, stage=snap.stage, view_ids=snap.view_ids,
                iteration=snap.iteration, threshold_hu=config.mesh_threshold_hu, ply_path=ply))
        self.log("debug", f"outputs of the {snap.stage} volume (iteration {snap.iteration}): "
                          f"{len(out.pieces)} bone pieces, {out.n_faces} faces, {len(out.cloud_xyz)} cloud points "
                          f"in {sum(out.seconds.values()):.1f} s")

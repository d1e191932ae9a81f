"""reconstruction_node's bone target: ``xray_views_bone`` in, ``bone_volume``, the bone meshes and cloud from it
and ``bone_navigation`` out.

The logic (pairing bone images with their views, when to run, persistence, the run itself) is
:class:`ixgs_ros.engine.live_bone.LiveBoneTarget`; the pieces and their gate are
:func:`ixgs_ros.outputs.bone_live.bone_live_outputs`. This module checks and converts the messages and
publishes (from the bone target's worker thread; nothing here waits on the run).

Topics (relative): subscribes ``xray_views_bone`` (ixgs_ros/XrayView, the standardize node's bone-only line
integrals, same view id and pose as on ``xray_views``; not with ``target: full``); publishes, latched,
``bone_volume`` (ixgs_ros/Volume: bone mu in 1/mm, zero away from bone, on the grid and frame of ``volume``,
stage final, the training views and iteration of the full volume it belongs to, and that volume's stamp) and
``bone_navigation`` (std_msgs/String, JSON: per piece, by the id of its ``bone_meshes`` entry, the label,
centroid and bounding box in mm, volume, ``confidence``, ``for_navigation`` and the gate's terms, as the
``"bone"`` section of the file pipeline's navigation.json). Once a bone volume exists, ``bone_markers``,
``bone_meshes`` and ``bone_cloud`` come from it (:meth:`~.recon_outputs.OutputPublisher.publish_bone`).
"""
from __future__ import annotations

import json
from pathlib import Path

from std_msgs.msg import String

from ixgs_ros.core.shot_checks import line_integral_dtype_reason, stamp_reason, view_id_problem
from ixgs_ros.engine.live import VolumeSnapshot
from ixgs_ros.msg import Volume, XrayView
from ixgs_ros.nodes import convert as cv
from ixgs_ros.nodes._base import latched_qos, now_s, shot_qos

__all__ = ["check_view_message", "BoneTargetPublisher"]


def check_view_message(node, msg: XrayView, name: str, *, max_future_s: float, world_frame: str):
    """``(view, image, None)`` of a line-integral XrayView, or ``(None, None, (key, name, why))`` naming why it
    is refused (stamp, id, conversion, quaternion, image kind, encoding, frame)."""
    vid = msg.view_id
    bad = stamp_reason(cv.stamp_to_sec(msg.header.stamp), now_s(node), max_future_s, nanosec=msg.header.stamp.nanosec)
    if bad:
        return None, None, (bad[0], name, bad[1])
    bad = view_id_problem(vid)
    if bad:
        return None, None, (bad[0], name if bad[0] == "empty_id" else f"{vid[:40]!r}...", bad[1])
    try:
        view = cv.xray_view_to_view(msg)
        image = cv.xray_view_image(msg)
    except cv.QuaternionError as exc:
        return None, None, ("quaternion", name, f"source_pose: {exc}")
    except cv.ConversionError as exc:
        return None, None, ("conversion", name, str(exc))
    if msg.image_kind != XrayView.IMAGE_KIND_LINE_INTEGRAL:
        return None, None, ("image_kind", name, f"image_kind {msg.image_kind} is not IMAGE_KIND_LINE_INTEGRAL "
                                                f"({XrayView.IMAGE_KIND_LINE_INTEGRAL}); raw images go through "
                                                "standardize_node first")
    why = line_integral_dtype_reason(image.dtype)
    if why:
        return None, None, ("encoding", name, f"{why} (encoding {msg.image.encoding})")
    if msg.header.frame_id != world_frame:
        return None, None, ("frame", name, f"header.frame_id {msg.header.frame_id!r} is not the world_frame "
                                           f"{world_frame!r}")
    return view, image, None


class BoneTargetPublisher:
    """The node side of the bone target (module docstring). ``outputs``: the node's OutputPublisher."""

    def __init__(self, node, grid, config, *, target: str, outputs, state_dir, process: bool, reject,
                 qos_reliability: str, log):
        from ixgs_ros.engine.live_bone import LiveBoneTarget

        self.node, self.grid, self.outputs, self.log = node, grid, outputs, log
        self.runner_reject = reject
        self.pub_volume = node.create_publisher(Volume, "bone_volume", latched_qos())
        self.pub_nav = node.create_publisher(String, "bone_navigation", latched_qos())
        self.published = 0
        self.last_nav: dict = {}
        self.target = LiveBoneTarget(grid, config, target=target, state_dir=state_dir, reject=self._reject,
                                     log=log, on_result=self._publish, postprocess=self._postprocess,
                                     process=process)
        if target != "full":
            node.create_subscription(XrayView, "xray_views_bone", self._on_bone, shot_qos(qos_reliability))

    def _reject(self, key, name, why) -> None:
        self.runner_reject(key, f"{name} (xray_views_bone)", why)

    # ------------------------------------------------------------------------------------ input
    def note_view(self, view_id: str, view, image) -> None:
        self.target.note_view(view_id, view, image.shape)

    def on_volume(self, snap, stamp) -> None:
        self.target.on_volume(snap.stage, snap.view_ids, token=(stamp, snap.iteration))

    def _on_bone(self, msg: XrayView) -> None:
        p = self.node.params
        name = msg.view_id[:40] or "<no id>"
        view, image, bad = check_view_message(self.node, msg, name, max_future_s=p["max_future_s"],
                                              world_frame=str(p["world_frame"]))
        if bad:
            return self._reject(*bad)
        self.target.submit_bone(msg.view_id, view, image, name=name)

    # ------------------------------------------------------------------------------------ run, publish
    def _postprocess(self, mu, views):
        from ixgs_ros.outputs.bone_live import bone_live_outputs, navigation_note

        config, kinds = self.outputs.config, self.outputs.kinds
        out, nav = bone_live_outputs(mu, self.grid, views, config, kinds)
        return (out, nav, config, kinds), navigation_note(nav)

    def _publish(self, run) -> None:
        out, nav, config, kinds = run.extra
        stamp, iteration = run.token if run.token is not None else (self.node.get_clock().now().to_msg(), 0)
        frame = self.outputs.world_frame
        self.pub_volume.publish(cv.volume_to_msg(run.mu, self.grid, frame_id=frame, stamp=stamp, stage="final",
                                                 view_ids=run.view_ids, iteration=iteration))
        snap = VolumeSnapshot(run.mu, "final", "bone volume", tuple(run.view_ids), int(iteration))
        if out.pieces or "mesh" not in kinds:
            self.outputs.publish_bone(snap, stamp, out, config, kinds)
        else:
            # A bone volume with no surface at the mesh level (e.g. a weak bone channel) must not blank the
            # meshes a planner already has: those of the full volume stay, and the log says why.
            self.node.get_logger().warning("bone target: the bone volume has no surface at "
                                           f"{config.mesh_threshold_hu:g} HU; bone meshes stay the full volume's")
        doc = {"stamp": {"sec": int(stamp.sec), "nanosec": int(stamp.nanosec)}, "frame_id": frame,
               "view_ids": list(run.view_ids), "iteration": int(iteration), "volume_topic": "bone_volume",
               "seconds": run.seconds, **nav}
        text = json.dumps(doc, default=_json_default)
        self.pub_nav.publish(String(data=text))
        if self.outputs.output_dir is not None:
            d: Path = self.outputs.output_dir
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / ".bone_navigation.json.tmp"
            tmp.write_text(text)
            tmp.replace(d / "bone_navigation.json")
        self.last_nav = nav
        self.published += 1

    # ------------------------------------------------------------------------------------ status
    def status(self) -> dict:
        return self.target.status()

    def diagnostics(self) -> dict:
        st = self.status()
        values = {"bone_target": st["target"], "bone_target.state": st["state"],
                  "bone_target.bone_views": st["bone_views"], "bone_target.missing": st["missing"],
                  "bone_target.published": self.published}
        if self.last_nav:
            values["bone_target.pieces"] = len(self.last_nav.get("pieces", ()))
            values["bone_target.for_navigation"] = ",".join(self.last_nav.get("for_navigation", ()))
        return values

    def reset(self) -> None:
        self.target.reset()
        self.last_nav = {}

    def close(self) -> None:
        self.target.close()


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

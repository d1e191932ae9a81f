"""reconstruction_node's ``~/save_snapshot`` service: the latest volume, its bone meshes and a report in a folder.

The folder is ``snapshot_root / request.directory`` (a new time-stamped name when empty). Only relative names
without ``..`` are taken, so nothing is written outside ``snapshot_root``; an existing non-empty folder is
refused (a snapshot is never overwritten). The files are those of :func:`ixgs_ros.outputs.live.write_snapshot`
(``volume.nii.gz``, ``bone.ply`` and one PLY per piece, the MPR PNGs, ``report.json`` with the status, the
views the volume comes from and the node's parameters). The outputs of the latest volume are reused when the
output thread has them, else computed here (in the service's thread: the heartbeat goes on).
"""
from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from ixgs_ros.outputs import live as live_outputs

__all__ = ["save_snapshot", "snapshot_folder"]


def snapshot_folder(root, name: str) -> Path:
    """``root / name`` for a relative ``name`` without ``..`` (ValueError otherwise); "" -> a time-stamped name."""
    name = str(name).strip() or time.strftime("snapshot_%Y%m%d_%H%M%S")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise ValueError(f"directory {name!r} must be a relative folder name inside snapshot_root (no absolute "
                         "path, no '..')")
    return Path(root).expanduser().resolve() / rel


def save_snapshot(node, directory: str) -> tuple[bool, str, str, list[str]]:
    """``(success, message, folder, files)`` of writing the node's latest volume and outputs."""
    try:
        folder = snapshot_folder(node.params["snapshot_root"], directory)
    except ValueError as exc:
        return False, str(exc), "", []
    if folder.exists() and any(folder.iterdir()):
        return False, f"{folder} exists and is not empty; choose another directory", str(folder), []
    snap = node.runner.last_volume
    if snap is None:
        return False, "no volume yet: nothing to save", str(folder), []
    latest = node.outputs.latest
    try:
        if latest is not None and latest[0] is snap:
            outputs = latest[2]
        else:
            outputs = node.outputs.compute(snap, kinds=live_outputs.OUTPUT_KINDS)
        report = {"node": node.get_fully_qualified_name(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "volume": {"stage": snap.stage, "iteration": snap.iteration, "view_ids": list(snap.view_ids),
                             "view_count": len(snap.view_ids), "label": snap.label},
                  "status": node.node_status(), "world_frame": node.world_frame,
                  "parameters": {k: v if isinstance(v, (str, int, float, bool, type(None))) else list(v)
                                 for k, v in node.params.items()}}
        files = live_outputs.write_snapshot(folder, snap.mu, node.grid, outputs, report)
    except (OSError, ValueError) as exc:
        return False, f"could not write the snapshot to {folder}: {exc}", str(folder), []
    msg = (f"saved the {snap.stage} volume (iteration {snap.iteration}, {len(snap.view_ids)} views), "
           f"{len(outputs.pieces)} bone pieces and a report to {folder}")
    node.get_logger().info(msg)
    return True, msg, str(folder), [str(f) for f in files]

"""The live outputs of a bone volume (ROS-free): the bone pieces with their navigation gate, and the bone cloud.

What :func:`~.live.compute_live_outputs` makes from a full volume, made from the bone target's volume instead,
with the file pipeline's piece splitting and quality gate (:func:`~.bone.bone_pieces`, :mod:`.bone_gate`) so
that each piece carries the confidence and ``for_navigation`` decision ``navigation.json`` gives:

>>> out, nav = bone_live_outputs(bone_mu, grid, train_views, LiveOutputConfig(), kinds=("mesh", "cloud"))
>>> out.pieces        # [live.BonePiece] (id, label, mesh, centroid, bbox, area, volume) for the mesh messages
>>> nav["pieces"]     # per piece (same id): centroid, bbox, volume, confidence, for_navigation, terms
"""
from __future__ import annotations

import time

import numpy as np

from ..core.volume import Grid
from . import live
from .bone import bone_pieces
from .bone_gate import GateConfig
from .mesh import clean_mesh, threshold_to_mu

__all__ = ["bone_live_outputs", "navigation_note"]


def _budget(pieces, max_faces: int) -> None:
    """Decimate the pieces (in place) so that all together hold at most ``max_faces`` triangles, shared by area."""
    total = sum(p.mesh.n_faces for p in pieces)
    if total <= max_faces:
        return
    areas = np.array([max(p.mesh.area(), 1e-9) for p in pieces])
    for p, a in zip(pieces, areas):
        share = max(50, int(max_faces * a / areas.sum()))
        if p.mesh.n_faces > share:
            p.mesh = clean_mesh(p.mesh, min_component_fraction=0.0, smooth_iterations=0, target_faces=share)


def bone_live_outputs(bone_mu, grid: Grid, views, cfg: live.LiveOutputConfig, kinds=("mesh", "cloud"),
                      gate: GateConfig = GateConfig()):
    """``(LiveOutputs, navigation dict)`` of a bone volume (mu in 1/mm inside bone, 0 elsewhere, on ``grid``)
    reconstructed from ``views`` (the training views: they feed the gate). The pieces are always computed (the
    navigation summary needs them; ``out.pieces`` is empty unless ``"mesh"`` is in ``kinds``): at most
    ``cfg.mesh_max_pieces`` from the top of the spine, ``cfg.mesh_max_faces`` triangles in all. The cloud (with
    ``"cloud"``) holds the bone voxels above ``cfg.cloud_threshold_hu``. No MPR: the slices stay the full
    volume's."""
    out = live.LiveOutputs()
    t0 = time.perf_counter()
    pieces = bone_pieces(bone_mu, grid, threshold=cfg.mesh_threshold_hu, unit="hu", views=list(views), gate=gate,
                         smooth_iterations=cfg.mesh_smooth_iterations, target_faces=cfg.mesh_max_faces)
    pieces = pieces[: cfg.mesh_max_pieces]
    _budget(pieces, cfg.mesh_max_faces)
    summaries = [p.to_dict() for p in pieces]
    nav = {"threshold": {"value": float(cfg.mesh_threshold_hu), "unit": "hu",
                         "mu": threshold_to_mu(cfg.mesh_threshold_hu, "hu")},
           "gate": gate.to_dict(), "pieces": summaries,
           "for_navigation": [s["label"] for s in summaries if s["for_navigation"]]}
    if "mesh" in kinds:
        for p in pieces:
            lo, hi = p.mesh.bounds()
            out.pieces.append(live.BonePiece(p.id, p.label, p.mesh, np.asarray(p.centroid), lo, hi,
                                             float(p.mesh.area()), float(p.volume_mm3)))
    out.seconds["mesh"] = time.perf_counter() - t0
    if "cloud" in kinds:
        t0 = time.perf_counter()
        out.cloud_xyz, out.cloud_mu, out.cloud_hu, out.cloud_total = live.bone_cloud(
            bone_mu, grid, cfg.cloud_threshold_hu, cfg.cloud_max_points)
        out.seconds["cloud"] = time.perf_counter() - t0
    return out, nav


def navigation_note(nav: dict) -> str:
    """One line for the status: how many pieces, how many fit for navigation."""
    n = len(nav.get("pieces", ()))
    k = len(nav.get("for_navigation", ()))
    return f"{n} bone piece{'s' if n != 1 else ''}, {k} for navigation"

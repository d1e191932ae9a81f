"""The bone target of the file pipeline (``ixgs reconstruct --target bone|both``): a scan's bone channel in,
``bone.nii.gz``, the bone pieces' meshes, their centroids, bounding boxes and confidences in ``navigation.json``
(and the surface accuracy when a ground truth is known) out.

Outputs under ``OUT`` (beside what the full target writes)::

    bone.nii.gz                     bone mu (1/mm) inside bone, zero elsewhere, on the same grid as volume.nii.gz
    bone/bone.ply, bone/bone.stl    the whole bone surface at the threshold (250 HU)
    bone/pieces/<id>_<label>.ply    one mesh per bone piece
    bone/slices.png                 axial and sagittal slices through a pedicle with the bone contour
    navigation.json                 its "bone" section (pieces, gate, accuracy); the full target's keys are kept
    report.json                     its "bone" section (times, solve, pieces, accuracy)
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

from .core.bone_channel import load_bone_channel
from .core.volume import Grid, load_nifti, save_nifti
from .engine import EngineConfig
from .engine.bone import BoneReconstruction
from .outputs.bone import bone_pieces, bone_surface_volume, piece_summary
from .outputs.bone_gate import GateConfig, holdout_images
from .outputs.mesh import bone_surface, threshold_to_mu, write_mesh
from .outputs.navigation import json_default
from .pipeline import InitProgress, select_holdout

__all__ = ["TARGETS", "resolve_target", "BoneResult", "reconstruct_bone_scan", "write_bone_outputs"]

#: ``ixgs reconstruct --target``: auto = both when the scan carries a bone channel, else full.
TARGETS = ("auto", "full", "bone", "both")


def resolve_target(target: str, scan, bone_from_ideal: bool = False) -> str:
    """The target to run: ``auto`` becomes ``both`` when the scan names a bone channel (``"bone"`` in scan.json,
    or ``ideal/bone.npy`` with ``bone_from_ideal``; ``bone`` when its images are raw, which only the bone channel
    can use), else ``full``. Raises ValueError for an unknown target."""
    from .core.bone_channel import has_bone_channel

    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "auto":
        if not has_bone_channel(scan, bone_from_ideal):
            return "full"
        return "both" if scan.image_kind == "line_integral" else "bone"
    return target


class BoneResult:
    def __init__(self, rec: BoneReconstruction, volume: np.ndarray, report: dict, held: dict | None,
                 train_views: list):
        self.rec, self.volume, self.report, self.held, self.train_views = rec, volume, report, held, train_views


def reconstruct_bone_scan(scan, scan_dir, grid: Grid, config: EngineConfig, *, bone=None,
                          bone_from_ideal: bool = False, holdout: int = 0, progress: bool = True) -> BoneResult:
    """Reconstruct the bone volume of ``scan`` onto ``grid`` from its bone channel (``bone``, float32 [N, H, W],
    or read by :func:`~ixgs_ros.core.bone_channel.load_bone_channel` from ``scan_dir``). ``holdout`` views
    (the same ones :func:`~ixgs_ros.pipeline.reconstruct_scan` holds out) feed the gate's consistency term."""
    if bone is None:
        bone = load_bone_channel(scan_dir, scan, from_ideal=bone_from_ideal)
    rec = BoneReconstruction(grid, config)
    held = set(select_holdout(len(scan.views), holdout, config.seed))
    for i, (view, img) in enumerate(zip(scan.views, bone)):
        rec.add_view(view, img, holdout=i in held)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=1, desc="ixgs bone", unit="solve", dynamic_ncols=True)
    init = InitProgress(bar)
    t0 = time.perf_counter()
    info = rec.run(progress=init)
    volume = rec.volume()
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.update(1)
        bar.close()
    held_ev = None
    if held:
        idx = sorted(held)
        views = [scan.views[i] for i in idx]
        held_ev = holdout_images(views, np.stack([bone[i] for i in idx]), np.stack([rec.render_view(i) for i in idx]))
    report = {"wall_time_s": wall, "stages_s": init.stages, "solve": info, "views_train": len(rec.train_indices),
              "views_holdout": sorted(held), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "source": "ideal/bone.npy (evaluation)" if bone_from_ideal and "bone" not in (scan.extra or {})
              else "scan bone channel"}
    return BoneResult(rec, volume, report, held_ev, [scan.views[i] for i in rec.train_indices])


def _bone_accuracy(volume, grid: Grid, gt_path, labels) -> dict:
    from .evaluation.accuracy import bone_surface_distance
    from .evaluation.bone_accuracy import dice

    gt, gt_grid = load_nifti(gt_path)
    if gt_grid != grid:
        raise ValueError(f"ground truth {gt_path} is not on the reconstruction grid")
    level = threshold_to_mu(250.0, "hu")
    out = {"reference": str(gt_path), "dice": dice(volume >= level, gt >= level)}
    try:
        d = bone_surface_distance(volume, grid, gt, grid, labels=labels)
        out.update(mean_mm=d["mean"], hd95_mm=d["hd95"],
                   per_vertebra={k: {"mean_mm": v["mean"], "hd95_mm": v["hd95"]} for k, v in d["per_vertebra"].items()})
    except Exception as exc:  # noqa: BLE001 - no surface is a result to report, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def write_bone_outputs(result: BoneResult, out_dir, grid: Grid, *, labels=None, gt_path=None,
                       gate: GateConfig = GateConfig(), background=None, figure: bool = True) -> dict:
    """Write the bone outputs (module docstring; meshes and the accuracy use the bone volume with soft tissue
    filled in around it, :func:`~ixgs_ros.outputs.bone.bone_surface_volume`); merge the "bone" sections into ``navigation.json`` and
    ``report.json`` when they exist. ``labels``: a label map on ``grid`` naming the pieces; ``gt_path``: a
    ground-truth mu NIfTI on ``grid`` for the surface accuracy; ``background``: a volume on ``grid`` shown under
    the contours of the slice figure (e.g. the full volume). Returns ``{key: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vol = result.volume
    paths = {"bone": save_nifti(out / "bone.nii.gz", vol, grid, "bone mu [1/mm] (ixgs bone target)")}
    t0 = time.perf_counter()
    surf = bone_surface_volume(vol)  # soft tissue filled in around the bone: the CT's 250 HU surface
    whole = bone_surface(surf, grid, smooth_iterations=5, target_faces=200_000, min_component_fraction=0.0)
    if not whole.is_empty:
        for fmt in ("ply", "stl"):
            paths[f"bone_mesh_{fmt}"] = write_mesh(whole, out / "bone" / f"bone.{fmt}")
    pieces = bone_pieces(vol, grid, labels=labels, views=result.train_views, consistency=result.held, gate=gate)
    summaries = []
    for p in pieces:
        rel = f"bone/pieces/{p.id:02d}_{p.label}.ply"
        write_mesh(p.mesh, out / rel)
        summaries.append(p.to_dict(mesh_file=rel))
    t_mesh = time.perf_counter() - t0
    section = {"volume": "bone.nii.gz", "threshold": {"value": 250.0, "unit": "hu", "mu": threshold_to_mu(250.0)},
               "gate": gate.to_dict(), "pieces": summaries,
               "for_navigation": [s["label"] for s in summaries if s["for_navigation"]],
               "source": result.report.get("source")}
    if gt_path is not None:
        section["accuracy"] = _bone_accuracy(surf, grid, gt_path, labels)
    if figure:
        from .outputs.bone_figure import bone_slices_figure

        try:
            paths["bone_slices"] = bone_slices_figure(surf, grid, out / "bone" / "slices.png", background=background,
                                                      labels=labels, pieces=pieces)
        except Exception as exc:  # noqa: BLE001 - a figure is never worth losing the outputs for
            section["figure_error"] = f"{type(exc).__name__}: {exc}"
    nav_path = out / "navigation.json"
    nav = json.loads(nav_path.read_text()) if nav_path.exists() else {"grid": grid.to_dict()}
    nav["bone"] = section
    nav_path.write_text(json.dumps(nav, indent=2, default=json_default))
    paths["summary"] = nav_path
    rep_path = out / "report.json"
    rep = json.loads(rep_path.read_text()) if rep_path.exists() else {}
    bone_rep = dict(result.report)
    bone_rep.update(mesh_time_s=t_mesh, pieces=piece_summary(pieces))
    if "accuracy" in section:
        bone_rep["accuracy"] = section["accuracy"]
    rep["bone"] = bone_rep
    rep.setdefault("outputs", {}).update({k: str(v) for k, v in paths.items()})
    rep_path.write_text(json.dumps(rep, indent=2, default=json_default))
    paths["report"] = rep_path
    return {k: Path(v) for k, v in paths.items()}

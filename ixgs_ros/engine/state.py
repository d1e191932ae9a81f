"""Saving and restoring the engine's whole state (config, views and images, model, optimiser, densification
statistics, random state, history), so that a restored engine continues bit-exactly.

A state directory holds ``state.json`` (metadata; ``format: ixgs-engine-state``) and one safetensors file that
it names. Saving is crash-safe: the tensors go to a new file that only the new ``state.json`` names,
``state.json`` is replaced atomically, and only then is the previous tensor file removed, so an interrupted
save leaves the previous state loadable.

Versions: 3 (adds ``pose_calibration``: the corrections of pose self-calibration, :mod:`.calibration`; the
state's ``views`` stay the views as given); 2 (nested configuration, :class:`~ixgs_ros.engine.config.EngineConfig`)
and 1 (the first engine, flat configuration) are read and converted; anything else is refused with the version
found.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import torch

from ..core.geometry import View
from ..core.volume import Grid
from .calibration import PoseCalibration
from .config import EngineConfig, EngineError
from .model import GaussianModel
from .views import prepare_view

__all__ = ["STATE_VERSION", "save_state", "load_state"]

STATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def save_state(eng, directory) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    if eng.model is not None:
        for k, v in eng.model.state_tensors().items():
            tensors[f"model.{k}"] = v
        for k, v in eng.optim.state_tensors().items():
            tensors[f"adam.{k}"] = v
        for k, v in eng.densifier.state_tensors().items():
            tensors[f"densify.{k}"] = v
    for i, vd in enumerate(eng.views):
        tensors[f"view.{i}.image"] = (vd.image * eng.frame.projection_scale).cpu().contiguous()
        if vd.background is not None:
            tensors[f"view.{i}.background"] = vd.background.cpu().contiguous()
        if vd.mask is not None:  # validity masks: states without them load as before
            tensors[f"view.{i}.mask"] = (vd.mask > 0.5).to(torch.uint8).cpu().contiguous()
    if eng._exterior is not None:
        tensors["exterior.volume"] = torch.from_numpy(np.ascontiguousarray(eng._exterior[0]))
    tensors["rng"] = eng._gen.get_state()
    meta = {
        "format": "ixgs-engine-state", "version": STATE_VERSION,
        "config": eng.config.to_dict(), "grid": eng.grid.to_dict(), "frame": eng.frame.to_dict(),
        "views": [{**eng.calibration.given_view(i, vd.view).to_dict(), "holdout": vd.holdout}
                  for i, vd in enumerate(eng.views)],
        "pose_calibration": eng.calibration.to_dict(),
        "iteration": eng.iteration, "history": eng.history, "wall_time": eng.wall_time,
        "schedule_start": eng._schedule_start, "init_views": eng._init_views,
        "order": eng._order, "last_loss": eng._last_loss,
        "model_meta": None if eng.model is None else eng.model.metadata(),
        "exterior_grid": None if eng._exterior is None else eng._exterior[1].to_dict(),
        "material_ends_at_roi": eng._material_ends_at_roi,
    }
    old = None
    if (d / "state.json").exists():
        try:
            old = json.loads((d / "state.json").read_text()).get("tensors_file", "state.safetensors")
        except (ValueError, AttributeError):
            old = None
    name = f"state-{uuid.uuid4().hex[:12]}.safetensors"
    save_file(tensors, str(d / name))
    meta["tensors_file"] = name
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(d / "state.json")
    for stale in d.glob("state*.safetensors"):  # the previous file and any left by interrupted saves
        if stale.name != name and (stale.name == old or stale.name.startswith("state-")):
            stale.unlink(missing_ok=True)
    return d


def read_meta(directory) -> dict:
    """``state.json`` of a state directory, checked for format and version (EngineError otherwise)."""
    d = Path(directory)
    if not (d / "state.json").exists():
        raise EngineError(f"{d}: not an engine state directory (state.json missing)")
    try:
        meta = json.loads((d / "state.json").read_text())
    except ValueError as e:
        raise EngineError(f"{d}/state.json: not valid JSON ({e})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    ver = meta.get("version") if isinstance(meta, dict) else None
    if fmt != "ixgs-engine-state" or ver not in READABLE_VERSIONS:
        raise EngineError(f"{d}: unsupported state format {fmt!r} v{ver} (this engine reads ixgs-engine-state "
                          f"v{', v'.join(map(str, READABLE_VERSIONS))})")
    return meta


def load_state(cls, directory, device: str | None = None):
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_meta(d)
    tensors_file = d / meta.get("tensors_file", "state.safetensors")
    if not tensors_file.exists():
        raise EngineError(f"{d}: {tensors_file.name}, named by state.json, is missing")
    cfg = EngineConfig.from_dict(meta["config"], warn_legacy=False)  # v1: flat keys, mapped
    if device is not None:
        cfg.device = device
    eng = cls(Grid(meta["grid"]["shape"], np.array(meta["grid"]["affine"])), cfg)
    try:
        tensors = load_file(str(tensors_file))
    except Exception as exc:  # safetensors' errors on truncated or corrupt files
        raise EngineError(f"{d}: {tensors_file.name} is not readable ({type(exc).__name__}: {exc})") from None
    for i, vmeta in enumerate(meta["views"]):
        view = View(np.array(vmeta["K"]), np.array(vmeta["T_world_source"]), vmeta["width"], vmeta["height"])
        vd = prepare_view(view, tensors[f"view.{i}.image"], vmeta["holdout"], eng.frame, eng.device,
                          mask=tensors.get(f"view.{i}.mask"))
        if f"view.{i}.background" in tensors:
            vd.background = tensors[f"view.{i}.background"].to(eng.device)
        eng.views.append(vd)
    try:
        eng.calibration = PoseCalibration.from_dict(meta.get("pose_calibration"), [vd.view for vd in eng.views])
    except (ValueError, TypeError, AttributeError) as exc:
        raise EngineError(f"{d}/state.json: {exc}") from None
    eng.calibration.apply(eng)  # the views as corrected
    if meta.get("exterior_grid") is not None:
        eg = meta["exterior_grid"]
        eng._exterior = (tensors["exterior.volume"].numpy(), Grid(eg["shape"], np.array(eg["affine"])))
    if meta["model_meta"] is not None:
        mt = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        eng.model = GaussianModel.from_state(mt, meta["model_meta"], device=eng.device)
        eng.optim.load_state_tensors({k[len("adam."):]: v for k, v in tensors.items() if k.startswith("adam.")},
                                     eng.device)
        eng.densifier.reset(eng.model)
        eng.densifier.load_state_tensors({k[len("densify."):]: v for k, v in tensors.items()
                                          if k.startswith("densify.")}, eng.device)
    eng._material_ends_at_roi = bool(meta.get("material_ends_at_roi", False))
    eng._gen.set_state(tensors["rng"])
    eng.iteration = meta["iteration"]
    eng._schedule_start = int(meta.get("schedule_start", 0))
    eng._init_views = int(meta.get("init_views", len(eng.train_indices) if eng.model is not None else 0))
    eng.history = meta["history"]
    eng.wall_time = meta["wall_time"]
    eng._order = list(meta["order"])
    eng._last_loss = meta["last_loss"]
    return eng

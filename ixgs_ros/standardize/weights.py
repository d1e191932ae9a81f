"""Weights of the standardization model: a safetensors file plus a JSON record beside it. Never pickle.

``NAME.safetensors`` holds the network's tensors; ``NAME.json`` (same stem) holds::

    {"format": "ixgs-standardizer", "version": 1,
     "model": {"width": 16, "depth": 4, "work": 128},
     "sha256": "<hex digest of NAME.safetensors>",
     "n_parameters": ..., "training": {"command": "...", "data": {...}, "augment": {...}, "train": {...},
                                       "history": [...], "wall_time_s": ...}}

:func:`load_model` refuses a file that is not safetensors (a pickle or a torch zip archive is named as such,
before anything is deserialised), a checksum that does not match, a missing or foreign record, or tensors that
do not fit the recorded architecture. The weights shipped with the package are :data:`DEFAULT_WEIGHTS`.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from .model import ModelConfig, StandardizerNet

__all__ = ["FORMAT", "VERSION", "DEFAULT_WEIGHTS", "WeightsError", "record_path", "file_sha256", "save_model",
           "load_model", "read_record"]

FORMAT = "ixgs-standardizer"
VERSION = 1
#: The committed weights (trained on the slab z >= -95 mm of the bundled CT; see docs/standardization.md).
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "standardizer.safetensors"


class WeightsError(ValueError):
    """Weights that cannot be loaded safely (the message names the file and the problem)."""


def record_path(weights) -> Path:
    """The JSON record beside a weights file (same stem, ``.json``)."""
    return Path(weights).with_suffix(".json")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_safetensors_header(path: Path) -> None:
    """Refuse anything that is not a safetensors file, naming pickles and torch archives, without parsing them."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":
        raise WeightsError(f"{path}: a zip archive (torch.save format, pickle inside): refused, weights must be "
                           "safetensors")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}") and head[1:2] != b"\"":
        raise WeightsError(f"{path}: a Python pickle: refused, weights must be safetensors")
    if len(head) < 9:
        raise WeightsError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    if not 2 <= n <= size - 8 or head[8:9] != b"{":
        raise WeightsError(f"{path}: not a safetensors file (no JSON header)")


def read_record(weights) -> dict:
    """The JSON record of a weights file, checked for format and version (:class:`WeightsError`)."""
    rp = record_path(weights)
    if not rp.is_file():
        raise WeightsError(f"{rp}: missing (each weights file needs its JSON record with the checksum)")
    try:
        rec = json.loads(rp.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{rp}: invalid JSON: {exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise WeightsError(f"{rp}: not an {FORMAT} record")
    if rec.get("version") != VERSION:
        raise WeightsError(f"{rp}: unsupported version {rec.get('version')!r} (this reader supports {VERSION})")
    if not isinstance(rec.get("sha256"), str) or not isinstance(rec.get("model"), dict):
        raise WeightsError(f"{rp}: sha256 and model are required")
    return rec


def save_model(model: StandardizerNet, path, training: dict | None = None) -> dict:
    """Write ``path`` (safetensors) and its JSON record atomically; returns the record."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    os.replace(tmp, path)
    rec = {"format": FORMAT, "version": VERSION, "model": model.config.to_dict(), "sha256": file_sha256(path),
           "n_parameters": model.n_parameters, "training": training or {}}
    rp = record_path(path)
    tmp = rp.with_name(f".{rp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, rp)
    return rec


def load_model(path=None) -> tuple[StandardizerNet, dict]:
    """``(model in eval mode, record)`` from a weights file (default :data:`DEFAULT_WEIGHTS`), checked as the
    module docstring says."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if not path.is_file():
        hint = " (train them with `ixgs train-standardizer --out PATH`)" if path == DEFAULT_WEIGHTS else ""
        raise WeightsError(f"{path}: weights file not found{hint}")
    _check_safetensors_header(path)
    rec = read_record(path)
    digest = file_sha256(path)
    if digest != rec["sha256"]:
        raise WeightsError(f"{path}: checksum mismatch (file sha256 {digest[:12]}..., record "
                           f"{str(rec['sha256'])[:12]}...): refusing modified or foreign weights")
    try:
        cfg = ModelConfig.from_dict(rec["model"])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{record_path(path)}: model: {exc}") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors: {exc}") from None
    model = StandardizerNet(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: tensors do not fit the recorded architecture {cfg}: "
                           f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return model, rec

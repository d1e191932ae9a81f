"""Running the standardization model: one image, or a whole raw scan into a line-integral scan.

:class:`Standardizer` loads the weights (:func:`.weights.load_model`, default the committed ones) and turns a raw
image (any style) into :class:`StandardizedImage`: ``line`` (ideal line integral, >= 0), ``bone`` (bone-only
line integral, ``0 <= bone <= line``) and ``mask`` (uint8, 1 = valid). Invalid pixels of ``line`` and ``bone``
hold a smooth continuation of their valid neighbours (:func:`~ixgs_ros.core.radiograph.inpaint_invalid`), so a
consumer that ignores the mask still gets no garbage; the mask says which pixels carry information.

Input it refuses with :class:`StandardizeError` (a one-line reason): not a 2D real array, NaN or inf, fewer than
``MIN_SIDE`` or more than ``MAX_SIDE`` pixels per side, a blank image (all values equal), an image almost all at
its extreme codes (saturated / blank: less than ``MIN_USABLE`` of the pixels between them), and an output with
less than ``MIN_USABLE`` valid pixels.

:func:`standardize_scan` maps a raw :class:`~ixgs_ros.core.scan.Scan` to a line-integral scan: projections =
``line``, ``mask`` = the model's validity AND the scan's own mask (when it has one), scan.json extra key
``"standardization"`` (weights file, sha256, model) and ``"bone"`` naming the bone channel file
(:data:`BONE_FILE`, float32 ``[N, H, W]``, same views) that :func:`save_standardized_scan` writes beside it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ixgs_ros.core.radiograph import inpaint_invalid

from .weights import DEFAULT_WEIGHTS, load_model

__all__ = ["StandardizeError", "StandardizedImage", "Standardizer", "standardize_scan", "save_standardized_scan",
           "BONE_FILE", "MIN_SIDE", "MAX_SIDE", "MIN_USABLE"]

BONE_FILE = "bone.npy"
MIN_SIDE = 32
MAX_SIDE = 4096
#: Smallest fraction of usable pixels (not at an extreme code; valid in the output).
MIN_USABLE = 0.05


class StandardizeError(ValueError):
    """An image the model cannot standardize (the message says why)."""


@dataclass
class StandardizedImage:
    line: np.ndarray      # float32 [H, W], ideal line integral (mu 1/mm x mm)
    bone: np.ndarray      # float32 [H, W], bone-only line integral
    mask: np.ndarray      # uint8 [H, W], 1 = valid

    @property
    def valid_fraction(self) -> float:
        return float(self.mask.mean())


def check_image(image) -> np.ndarray:
    """``image`` as float32 [H, W] when the model can take it, else :class:`StandardizeError` naming why."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise StandardizeError(f"expected a 2D image (rows, columns), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise StandardizeError(f"expected real pixel values, got dtype {a.dtype}")
    if min(a.shape) < MIN_SIDE or max(a.shape) > MAX_SIDE:
        raise StandardizeError(f"image is {a.shape[0]}x{a.shape[1]} pixels: the model takes {MIN_SIDE} to "
                               f"{MAX_SIDE} pixels per side")
    top = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else None
    a = a.astype(np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        raise StandardizeError(f"image contains {int(bad.sum())} NaN or inf value(s)")
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        if top is not None and lo >= top:
            raise StandardizeError(f"saturated image: every pixel is at the detector's maximum {lo:g}")
        raise StandardizeError(f"blank image: every pixel is {lo:g}")
    tol = 1e-6 * (hi - lo)
    usable = float(np.mean((a > lo + tol) & (a < hi - tol)))
    if usable < MIN_USABLE:
        raise StandardizeError(f"only {100 * usable:.1f} % of the pixels lie between the lowest and highest code "
                               "(saturated or blank image)")
    return a


class Standardizer:
    """The standardization model ready to run (see the module docstring). ``weights``: a safetensors file
    (default the committed weights); ``threads``: torch threads for inference (None: leave as is)."""

    def __init__(self, weights=None, threads: int | None = None):
        self.weights = Path(DEFAULT_WEIGHTS if weights is None else weights)
        self.model, self.record = load_model(self.weights)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))

    @property
    def info(self) -> dict:
        return {"weights": str(self.weights), "sha256": self.record["sha256"], "model": self.record["model"]}

    def __call__(self, image, mask=None) -> StandardizedImage:
        """Standardize one image ``[H, W]``; ``mask`` (optional, 1 = valid) marks pixels already known invalid."""
        a = check_image(image)
        known = None
        if mask is not None:
            known = np.asarray(mask)
            if known.shape != a.shape:
                raise StandardizeError(f"mask shape {known.shape} does not match the image {a.shape}")
            known = known.astype(bool)
        with torch.no_grad():
            inv = None if known is None else torch.from_numpy(~known)[None]
            line, bone, logit = self.model(torch.from_numpy(a)[None], inv)
        line, bone, logit = (t[0].numpy().astype(np.float32) for t in (line, bone, logit))
        if not (np.isfinite(line).all() and np.isfinite(bone).all()):
            raise StandardizeError("the model produced NaN or inf for this image")
        valid = logit > 0
        if known is not None:
            valid &= known
        if valid.mean() < MIN_USABLE:
            raise StandardizeError(f"only {100 * valid.mean():.1f} % of the pixels are valid after "
                                   "standardization: the image carries too little information")
        line = np.maximum(line, 0.0)
        bone = np.clip(bone, 0.0, line)
        if not valid.all():
            line, bone = inpaint_invalid(np.stack([line, bone]), valid)
            line = np.maximum(line, 0.0)
            bone = np.clip(bone, 0.0, line)
        return StandardizedImage(line.astype(np.float32), bone.astype(np.float32), valid.astype(np.uint8))


def standardize_scan(scan, standardizer: Standardizer, use_scan_mask: bool = True, progress=None):
    """``(line-integral Scan, bone [N, H, W])`` of a raw scan (see the module docstring). ``use_scan_mask``:
    combine the scan's own validity mask with the model's (default). ``progress(i, n)`` after each view."""
    from ixgs_ros.core.scan import Scan

    if scan.image_kind != "raw":
        raise StandardizeError(f"scan image_kind is {scan.image_kind!r}: only raw scans are standardized")
    N = len(scan.views)
    line = np.empty(scan.projections.shape, np.float32)
    bone = np.empty_like(line)
    mask = np.empty(line.shape, np.uint8)
    for i in range(N):
        known = scan.mask[i] if (use_scan_mask and scan.mask is not None) else None
        try:
            out = standardizer(scan.projections[i], known)
        except StandardizeError as exc:
            raise StandardizeError(f"view {i}: {exc}") from None
        line[i], bone[i], mask[i] = out.line, out.bone, out.mask
        if progress is not None:
            progress(i + 1, N)
    extra = dict(scan.extra)
    extra["standardization"] = {**standardizer.info, "source_image_kind": "raw",
                                "scan_mask_used": bool(use_scan_mask and scan.mask is not None),
                                "valid_fraction": float(mask.mean())}
    extra["bone"] = BONE_FILE
    views = [type(v)(v.K, v.T_world_source, v.width, v.height, dict(v.meta)) for v in scan.views]
    return Scan(views, line, "line_integral", extra, mask), bone


def save_standardized_scan(scan, bone: np.ndarray, out_dir, source_dir=None) -> Path:
    """Write a standardized scan and its bone channel (``bone.npy``); from ``source_dir`` copy the files that
    evaluate it (``gt.nii.gz``, ``labels.nii.gz``, ``ideal/``) when they exist."""
    out = Path(out_dir)
    scan.extra = {**(scan.extra or {}), "bone": BONE_FILE}  # the bone channel of the scan format
    scan.save(out)
    np.save(out / BONE_FILE, np.ascontiguousarray(bone, dtype=np.float32), allow_pickle=False)
    if source_dir is not None:
        src = Path(source_dir)
        if src.resolve() != out.resolve():
            for name in ("gt.nii.gz", "labels.nii.gz"):
                if (src / name).is_file():
                    shutil.copy2(src / name, out / name)
            if (src / "ideal").is_dir():
                shutil.copytree(src / "ideal", out / "ideal", dirs_exist_ok=True)
    return out

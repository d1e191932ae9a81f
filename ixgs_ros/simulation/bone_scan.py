"""A full-body line-integral scan with its ideal bone-only projections beside it (the bone target's test data).

:func:`simulate_bone_scan` runs :func:`ixgs_ros.simulation.simulate.simulate_scan` (same ROI, trajectory, ground
truth and files) in full-body mode with the renderer replaced by :func:`render_path_lengths` (cached on disk),
so one Siddon pass gives both channels:

* ``projections.npy``: the ideal line integrals ``mu_water (soft + bone)`` (``image_kind: line_integral``, what
  ``ixgs simulate`` writes, up to float round-off);
* ``ideal/bone.npy`` (scan.json ``"ideal"``, as a styled scan has it): ``mu_water * bone``, the projection of
  the CT voxels above 200 HU with their mu, rendered from the CT's own grid; ``ideal/vertebrae.npy`` likewise;
* ``bone_gt.nii.gz``: the bone volume on the ROI grid (mu where the resampled CT exceeds 200 HU, else 0).

Unlike a styled scan the images stay ideal line integrals: the scan reconstructs as it is (``--target full``)
and carries the bone channel for ``--target bone --bone-from-ideal``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..core.anatomy import BONE_HU
from ..core.volume import MU_WATER, hu_to_mu, save_nifti

__all__ = ["simulate_bone_scan", "bone_volume"]


def bone_volume(mu: np.ndarray, bone_hu: float = BONE_HU, mu_water: float = MU_WATER) -> np.ndarray:
    """The bone part of a mu volume: mu where it exceeds ``bone_hu`` (as HU), else 0 (float32)."""
    mu = np.asarray(mu, dtype=np.float32)
    return np.where(mu > np.float32(hu_to_mu(bone_hu, mu_water)), mu, np.float32(0.0)).astype(np.float32)


def simulate_bone_scan(config, cache_dir="default", progress: Callable[[str], None] | None = None, ct=None):
    """A full-body scan of ``config`` (:class:`~ixgs_ros.simulation.simulate.SimulationConfig`) with ideal bone
    projections (see the module docstring). Returns ``(SimulationResult, PathLengths)``; ``cache_dir`` as
    :func:`render_path_lengths` (``"default"``: the X-ray cache, None: none)."""
    from .ct import load_ct
    from .pathlengths import render_path_lengths
    from .simulate import simulate_scan
    from .spectra import default_cache_dir
    from .styled_scan import write_ideal

    cfg = config.validate()
    if cfg.mode != "full-body":
        raise ValueError("bone projections are rendered through the whole CT: use mode full-body")
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    if ct is None:
        ct = load_ct(cfg.ct_path, cfg.labels_path)
    held: dict = {}

    def render(vol, grid, views, renderer, chunk_mb, progress_cb, compile="auto", log=None):
        pl = render_path_lengths(ct, views, None, renderer, cache_dir, chunk_mb=chunk_mb, compile=compile,
                                 progress=log)
        held["pl"] = pl
        return pl.line_integrals(MU_WATER)

    result = simulate_scan(cfg, progress=progress, ct=ct, render=render)
    pl = held["pl"]
    if cfg.out_dir is not None:
        out = Path(cfg.out_dir)
        result.scan.extra["ideal"] = write_ideal(out, pl)
        result.scan.save(out)
        result.files["ideal"] = str(out / "ideal")
        result.files["bone_gt"] = str(save_nifti(out / "bone_gt.nii.gz", bone_volume(result.gt), result.roi.grid,
                                                 "bone mu [1/mm] (> 200 HU)"))
    return result, pl

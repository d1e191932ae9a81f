"""File-based reconstruction (``ixgs reconstruct``): a scan in, the volume, Gaussians, report and navigation
outputs out.

Data flow: :class:`~ixgs_ros.core.scan.Scan` -> :func:`choose_grid` -> :class:`~ixgs_ros.engine.ReconstructionEngine`
(add_view / step, the same API the live session uses) -> :func:`write_outputs` (:mod:`ixgs_ros.outputs`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .core.resources import peak_rss_mb
from .engine import EngineConfig, EngineError, ReconstructionEngine
from .outputs.navigation import json_default
from .core.geometry import views_bounding_sphere
from .core.volume import Grid, load_nifti, save_nifti

__all__ = ["choose_grid", "select_holdout", "reconstruct_scan", "ReconstructionResult"]


def choose_grid(scan, like=None, size=None, spacing=None, center=None) -> Grid:
    """Output grid: exactly ``like``'s grid; else ``size``/``spacing``/``center`` with defaults from the scan's
    ``roi`` extra key (written by ``ixgs simulate``) or the views' common focus."""
    if like is not None:
        if any(v is not None for v in (size, spacing, center)):
            raise ValueError("--like cannot be combined with --size/--spacing/--center")
        path = Path(like)
        if not path.exists():
            raise FileNotFoundError(f"--like volume not found: {path}")
        return Grid.like(path)
    roi = (scan.extra or {}).get("roi")
    if roi and size is None and spacing is None and center is None:
        return Grid(tuple(roi["shape"]), np.array(roi["affine"]))
    if center is None:
        center = roi_center = None
        if roi:
            roi_center = Grid(tuple(roi["shape"]), np.array(roi["affine"])).center
        center = roi_center if roi_center is not None else views_bounding_sphere(scan.views)[0]
    size = 128 if size is None else int(size)
    spacing = 1.0 if spacing is None else float(spacing)
    if size < 2 or size > 1024:
        raise ValueError(f"--size must be between 2 and 1024 voxels, got {size}")
    if spacing <= 0:
        raise ValueError(f"--spacing must be positive, got {spacing}")
    return Grid.centered(size, spacing, center)


def select_holdout(n_views: int, n_holdout: int, seed: int) -> list[int]:
    """Indices of views held out from training (evenly spread, deterministic)."""
    if n_holdout <= 0:
        return []
    if n_holdout >= n_views:
        raise ValueError(f"cannot hold out {n_holdout} of {n_views} views: at least one must train")
    rng = np.random.default_rng(seed + 7919)
    offset = rng.uniform(0, n_views / n_holdout)
    idx = sorted({int(offset + k * n_views / n_holdout) % n_views for k in range(n_holdout)})
    return idx


class InitProgress:
    """``progress`` callback for :meth:`ReconstructionEngine.step`: records how long each initialisation stage
    took (``stages``: name -> seconds from its announcement to its last reported pass, in order) and, given a
    tqdm bar, shows the running stage on it."""

    def __init__(self, bar=None):
        self.bar = bar
        self._span: dict[str, list[float]] = {}

    @property
    def stages(self) -> dict[str, float]:
        return {k: round(b - a, 3) for k, (a, b) in self._span.items()}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        self._span.setdefault(stage, [now, now])[1] = now
        if self.bar is not None:
            self.bar.set_description_str(f"init: {stage}", refresh=False)
            self.bar.set_postfix_str(f"{done}/{total}", refresh=False)
            self.bar.refresh()

    def finish(self, desc: str) -> None:
        """Back to the optimisation's description on the bar."""
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=False)
            self.bar.set_postfix_str("", refresh=False)


class ReconstructionResult:
    def __init__(self, engine: ReconstructionEngine, volume: np.ndarray, report: dict):
        self.engine, self.volume, self.report = engine, volume, report


def reconstruct_scan(scan, grid: Grid, config: EngineConfig, *, holdout: int = 0, progress: bool = True,
                     log_every: int = 50, eval_callback=None) -> ReconstructionResult:
    """Reconstruct ``scan`` (line integrals) onto ``grid``. ``eval_callback(engine)`` may return a dict of
    metrics that is recorded in the report every ``log_every`` iterations (e.g. 3D PSNR vs a ground truth)."""
    if scan.image_kind != "line_integral":
        raise ValueError(f"scan image_kind is {scan.image_kind!r}: reconstruction needs line integrals "
                         "(standardize raw images with `ixgs standardize` or `ixgs reconstruct --standardize`, "
                         "or take -ln(I/I0) with `ixgs import --to-line-integral`)")
    engine = ReconstructionEngine(grid, config)
    held = set(select_holdout(len(scan.views), holdout, config.seed))
    for i, (view, img) in enumerate(zip(scan.views, scan.projections)):
        # the scan's validity mask (if any): invalid pixels are left out of the loss and the initial solve
        try:
            engine.add_view(view, img, holdout=i in held, mask=None if scan.mask is None else scan.mask[i])
        except EngineError as exc:
            raise EngineError(f"view {i}: {exc}") from None
    curve = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, desc="ixgs reconstruct", unit="it", dynamic_ncols=True)
    t0 = time.perf_counter()
    init = InitProgress(bar)
    done = 0
    while done < config.iterations:
        n = min(log_every, config.iterations - done)
        st = engine.step(n, progress=init)
        if done == 0:
            init.finish("ixgs reconstruct")
        done += n
        entry = {"iteration": st.iterations, "loss": st.loss, "num_gaussians": st.num_gaussians,
                 "elapsed_s": time.perf_counter() - t0}
        if eval_callback is not None:
            entry.update(eval_callback(engine))
        curve.append(entry)
        if bar is not None:
            bar.set_postfix(loss=f"{st.loss:.4f}", gaussians=st.num_gaussians, refresh=False)
            bar.update(n)
    if bar is not None:
        bar.close()
    t_vol = time.perf_counter()
    volume = engine.volume()
    wall = time.perf_counter() - t0
    status = engine.status()
    report = {
        "wall_time_s": wall,
        "optimisation_time_s": engine.wall_time,
        "volume_time_s": time.perf_counter() - t_vol,
        "iterations": status.iterations,
        "num_gaussians": status.num_gaussians,
        "num_context_gaussians": status.num_context_gaussians,
        "views_train": status.views_used,
        "views_holdout": sorted(held),
        "init_stages_s": init.stages,
        "loss_curve": curve,
        "peak_rss_mb": peak_rss_mb(),
        "config": config.to_dict(),
        "grid": grid.to_dict(),
    }
    if held:
        report["holdout_2d"] = engine.evaluate_holdout().to_dict()
    return ReconstructionResult(engine, volume, report)


def write_outputs(result: ReconstructionResult, out_dir, grid: Grid, *, scan=None, gt_path=None,
                  labels=None, navigation: bool = True) -> dict:
    """Write volume.nii.gz, gaussians.safetensors, report.json, mpr.png (and navigation outputs), and
    refined_poses.json when pose self-calibration ran."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"volume": str(save_nifti(out / "volume.nii.gz", result.volume, grid))}
    eng = result.engine
    paths["gaussians"] = str(eng.model.save(out / "gaussians.safetensors", eng.frame,
                                            extra={"iterations": eng.iteration}))
    report = result.report
    if eng.calibration.summary:  # pose self-calibration ran (engine/calibration.py): the corrected poses
        (out / "refined_poses.json").write_text(json.dumps(eng.calibration.to_json(eng), indent=1))
        paths["refined_poses"] = str(out / "refined_poses.json")
        report["pose_calibration"] = eng.calibration.summary
    if gt_path is not None:
        from .evaluation.metrics import psnr_3d, ssim_3d

        gt, gt_grid = load_nifti(gt_path)
        if gt_grid != grid:
            raise ValueError(f"ground truth {gt_path} is not on the reconstruction grid")
        report["metrics_3d"] = {"psnr": psnr_3d(result.volume, gt), "ssim": ssim_3d(result.volume, gt)}
    from .outputs.mpr import write_mpr_montage

    paths["mpr"] = str(write_mpr_montage(result.volume, grid, out / "mpr.png",
                                         title=f"ixgs reconstruction, {eng.iteration} iterations"))
    if navigation:
        from .outputs.navigation import NavigationConfig, write_navigation_outputs

        nav = write_navigation_outputs(result.volume, grid, out, views=None if scan is None else scan.views,
                                       labels=labels, metrics=report.get("metrics_3d"),
                                       config=NavigationConfig(export_nifti=False))
        paths.update({k: str(v) for k, v in nav.items()})
    report["outputs"] = paths
    (out / "report.json").write_text(json.dumps(report, indent=2, default=json_default))
    paths["report"] = str(out / "report.json")
    return paths


__all__ += ["write_outputs", "EngineError"]

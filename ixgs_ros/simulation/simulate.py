"""Realistic test scans from a real CT: trajectories, exact line integrals, ground truth on the ROI grid.

:func:`simulate_scan` (used by ``ixgs simulate``, the benchmark and the tests) does, in order:

1. load the CT (HU) and its label map (:mod:`ixgs_ros.simulation.ct`; world = the NIfTI affine, mm);
2. choose the ROI: a vertebra (centroid of its label) or a point + size, on a ``Grid.centered`` grid;
3. resample ``mu = hu_to_mu(HU)`` (trilinear) and the labels (nearest) onto the ROI grid (``gt.nii.gz``,
   ``labels.nii.gz``);
4. build the trajectory (:mod:`ixgs_ros.simulation.trajectories`);
5. render line integrals (mu in 1/mm times mm) with DiffDRR's exact Siddon ray tracer (or its trilinear
   one) along the rays of :meth:`View.ray_directions`:

   * ``full-body``: through the native CT (every material the rays meet, the body may exceed the detector);
   * ``roi-only``: through the ground-truth volume on the ROI grid (mu is zero outside the ROI box), i.e.
     the projections are exactly the forward projections of ``gt.nii.gz`` (for RTK/solver comparisons);

6. optionally perturb the poses written to the file (the images stay those of the true poses, which are
   kept in each view's ``meta['true_T_world_source']``);
7. write the ixgs-scan directory (``scan.json`` + ``projections.npy``), ``gt.nii.gz``, ``labels.nii.gz`` and
   ``preview.png``.

Rendering: :mod:`ixgs_ros.simulation.drr`; preview: :mod:`ixgs_ros.simulation.preview`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.geometry import View, rotvec_to_matrix
from ..core.volume import Grid, resample, save_nifti
from .ct import CT, ROI, load_ct, roi_from_label, roi_from_point, vertebra_label
from .drr import RENDERERS, render_line_integrals
from .preview import make_preview
from .trajectories import TrajectoryConfig, auto_pixel_mm, make_trajectory

__all__ = ["SimulationConfig", "SimulationResult", "simulate_scan", "render_line_integrals", "perturb_pose",
           "MODES", "RENDERERS", "make_preview"]

MODES = ("full-body", "roi-only")


# ================================================================================================ pose noise
def perturb_pose(T_world_source, rot_deg: float, trans_mm: float, pivot, rng: np.random.Generator):
    """A perturbed copy of a camera-to-world pose: a rigid motion ``X -> R (X - pivot) + pivot + t`` applied
    to the whole view, with ``R`` of rotation vector ~ N(0, rot_deg^2) per axis and ``t`` ~ N(0, trans_mm^2)
    per axis (world frame, rotation about ``pivot``, e.g. the ROI centre). Returns ``(T_noisy, info)``."""
    w = np.deg2rad(rng.normal(0.0, rot_deg, 3)) if rot_deg > 0 else np.zeros(3)
    t = rng.normal(0.0, trans_mm, 3) if trans_mm > 0 else np.zeros(3)
    R = rotvec_to_matrix(w)
    p = np.asarray(pivot, dtype=np.float64)
    D = np.eye(4)
    D[:3, :3] = R
    D[:3, 3] = p - R @ p + t
    T = D @ np.asarray(T_world_source, dtype=np.float64)
    # re-orthonormalise the rotation (round-off only)
    u, _, vt = np.linalg.svd(T[:3, :3])
    T[:3, :3] = u @ vt
    info = {"rotation_deg": float(np.rad2deg(np.linalg.norm(w))), "rotvec_deg": np.rad2deg(w).tolist(),
            "translation_mm": t.tolist(), "pivot": p.tolist()}
    return T, info


# ================================================================================================ config
@dataclass
class SimulationConfig:
    """All parameters of a simulated scan. ``roi`` is a vertebra name/label; ``center`` + ``size_mm`` give
    a point ROI instead (then ``roi`` must be None). ``roi_spacing`` None means 1 mm for a vertebra ROI and
    ``size_mm / roi_size`` for a point ROI."""

    out_dir: str | None = None
    ct_path: str | None = None               # None: DiffDRR's chest CT
    labels_path: str | None = None           # None: its label map (with the default CT)
    roi: str | int | None = "T12"
    center: tuple | None = None
    size_mm: float | None = None
    roi_size: int = 128
    roi_spacing: float | None = None
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    mode: str = "full-body"
    renderer: str = "siddon"
    pose_noise_deg: float = 0.0
    pose_noise_mm: float = 0.0
    seed: int = 0
    preview: bool = True
    chunk_mb: float = 256.0
    compile: bool | str = "auto"           # torch.compile the renderer: True, False or "auto" (large jobs)

    def validate(self) -> "SimulationConfig":
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {self.renderer!r}: choose one of {', '.join(RENDERERS)}")
        if self.center is not None:
            if self.size_mm is None:
                raise ValueError("a point ROI needs a size: --center X Y Z --size MM")
            if len(tuple(self.center)) != 3:
                raise ValueError("--center needs 3 numbers (world mm)")
        elif self.roi is None:
            raise ValueError("give an ROI: a vertebra (--roi T12) or a point (--center X Y Z --size MM)")
        if int(self.roi_size) < 1:
            raise ValueError(f"roi size must be positive, got {self.roi_size}")
        if self.roi_spacing is not None and not self.roi_spacing > 0:
            raise ValueError(f"roi spacing must be positive, got {self.roi_spacing}")
        if self.pose_noise_deg < 0 or self.pose_noise_mm < 0:
            raise ValueError("pose noise must be >= 0")
        self.trajectory.validate()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trajectory"] = asdict(self.trajectory)
        d["trajectory"]["arc_deg"] = self.trajectory.resolved_arc()
        if d["center"] is not None:
            d["center"] = [float(x) for x in d["center"]]
        return d


@dataclass
class SimulationResult:
    scan: object                        # ixgs_ros.core.scan.Scan
    gt: np.ndarray                      # mu (1/mm) on roi.grid
    labels: np.ndarray | None           # labels on roi.grid (int16)
    roi: ROI
    config: SimulationConfig
    timings: dict
    out_dir: Path | None = None
    files: dict = field(default_factory=dict)

    def summary(self) -> str:
        s = self.scan
        sim = s.extra["simulation"]
        traj = sim["trajectory"]
        lines = [
            f"CT        {sim['ct_path']}  ({' x '.join(map(str, sim['ct_shape']))} voxels)",
            f"ROI       {self.roi.name or 'point'}"
            + (f" (label {self.roi.label})" if self.roi.label is not None else "")
            + f": {' x '.join(map(str, self.roi.grid.shape))} at "
              f"{'/'.join(f'{x:.3g}' for x in self.roi.grid.spacing)} mm, centre "
              f"({', '.join(f'{x:.1f}' for x in self.roi.center)}) mm",
            f"views     {len(s)} x {s.width}x{s.height} px, {traj['kind']} over {traj['arc_deg']:.0f} deg, "
            f"SOD/SDD {traj['sod_mm']:.0f}/{traj['sdd_mm']:.0f} mm, pitch {sim['pixel_mm']:.3f} mm, "
            f"seed {sim['seed']}",
            f"render    {sim['mode']} with {sim['renderer']}; line integrals {float(s.projections.min()):.3f} .. "
            f"{float(s.projections.max()):.3f}",
        ]
        if sim["pose_noise_deg"] > 0 or sim["pose_noise_mm"] > 0:
            lines.append(f"pose noise {sim['pose_noise_deg']} deg / {sim['pose_noise_mm']} mm (file poses "
                         "perturbed; true poses in meta.true_T_world_source)")
        if self.out_dir is not None:
            lines.append(f"wrote     {self.out_dir}: " + ", ".join(sorted(Path(p).name for p in self.files.values())))
        t = self.timings
        lines.append("time      " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
        return "\n".join(lines)


# ================================================================================================ main entry
def _make_roi(cfg: SimulationConfig, ct: CT) -> ROI:
    if cfg.center is not None:
        roi = roi_from_point(cfg.center, cfg.size_mm, size=cfg.roi_size, spacing=cfg.roi_spacing)
    else:
        roi = roi_from_label(ct, vertebra_label(cfg.roi), cfg.roi_size,
                             1.0 if cfg.roi_spacing is None else cfg.roi_spacing)
    lo, hi = ct.grid.bounds()
    rlo, rhi = roi.grid.bounds()
    if np.any(rhi <= lo) or np.any(rlo >= hi):
        raise ValueError(f"the ROI ({np.round(rlo, 1).tolist()} .. {np.round(rhi, 1).tolist()} mm) does not "
                         f"overlap the CT ({np.round(lo, 1).tolist()} .. {np.round(hi, 1).tolist()} mm)")
    return roi


def simulate_scan(config: SimulationConfig, progress: Callable[[str], None] | None = None,
                  ct: CT | None = None, render: Callable | None = None) -> SimulationResult:
    """Simulate a scan (see the module docstring). Writes the outputs when ``config.out_dir`` is set.

    ``progress(message)`` receives progress lines; ``ct`` may pass an already loaded :class:`CT` (it must be
    the one ``config.ct_path`` names; its path is recorded). ``render`` replaces :func:`render_line_integrals`
    (same arguments and result; :mod:`ixgs_ros.simulation.styled_scan` renders path lengths through it)."""
    from ..core.scan import Scan

    cfg = config.validate()
    say = progress or (lambda msg: None)
    timings = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    if ct is None:
        ct = load_ct(cfg.ct_path, cfg.labels_path)
    roi = _make_roi(cfg, ct)
    roi_inside = roi.grid.beyond_mm(ct.grid) <= 1e-6
    if not roi_inside:
        say("note: the ROI extends beyond the CT; mu is 0 there (gt.nii.gz and roi-only projections)")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mu_ct = ct.mu()
    gt = resample(mu_ct, ct.grid, roi.grid, order=1)
    labels = resample(ct.labels, ct.grid, roi.grid, order=0).astype(np.int16) if ct.labels is not None else None
    timings["resample"] = time.perf_counter() - t0

    roi_radius = 0.5 * float(np.linalg.norm(roi.size_mm))
    traj_cfg = TrajectoryConfig(**{**asdict(cfg.trajectory), "seed": cfg.seed})
    views = make_trajectory(traj_cfg, roi.center, roi_radius)
    pixel_mm_nominal = traj_cfg.pixel_mm if traj_cfg.pixel_mm is not None else auto_pixel_mm(traj_cfg, roi_radius)

    t0 = time.perf_counter()
    if cfg.mode == "full-body":
        vol, vgrid = mu_ct, ct.grid
    else:
        vol, vgrid = gt, roi.grid
    n = len(views)
    say(f"rendering {n} views of {views[0].width}x{views[0].height} px ({cfg.mode}, {cfg.renderer})")

    def _progress(i, total, dt):
        say(f"  view {i + 1}/{total}: {dt:.1f} s")

    projections = (render or render_line_integrals)(vol, vgrid, views, cfg.renderer, cfg.chunk_mb, _progress,
                                                    compile=cfg.compile, log=say)
    timings["render"] = time.perf_counter() - t0
    del mu_ct

    # pose noise: the file gets perturbed poses, the images stay those of the true poses
    if cfg.pose_noise_deg > 0 or cfg.pose_noise_mm > 0:
        rng = np.random.default_rng([int(cfg.seed), 7919])
        noisy = []
        for v in views:
            T, info = perturb_pose(v.T_world_source, cfg.pose_noise_deg, cfg.pose_noise_mm, roi.center, rng)
            meta = dict(v.meta)
            if "carm" in meta:  # the C-arm parameters describe the true pose
                meta["true_carm"] = meta.pop("carm")
            meta["true_T_world_source"] = v.T_world_source.tolist()
            meta["pose_noise"] = info
            noisy.append(View(v.K, T, v.width, v.height, meta))
        views = noisy

    sim = cfg.to_dict()
    sim.pop("out_dir", None)
    sim.pop("preview", None)
    sim.pop("chunk_mb", None)
    sim.pop("compile", None)
    sim["trajectory"]["seed"] = int(cfg.seed)
    sim.update({
        "generator": "ixgs simulate",
        "ct_path": ct.path, "labels_path": ct.labels_path, "ct_shape": list(ct.grid.shape),
        "ct_affine": ct.grid.affine.tolist(), "pixel_mm": float(pixel_mm_nominal),
        "mu": "mu = mu_water * (1 + HU / 1000) clipped at 0 (1/mm), mu_water = 0.0195",
        "world": "NIfTI scanner frame of the CT (RAS+ mm); patient along world z",
        "rendered_volume": "ct" if cfg.mode == "full-body" else "gt.nii.gz (ROI grid)",
    })
    extra = {
        "simulation": sim,
        "roi": {**roi.to_dict(), "grid": roi.grid.to_dict(), "inside_ct": roi_inside},
        "ground_truth": {"mu": "gt.nii.gz", "labels": "labels.nii.gz" if labels is not None else None,
                         "units": "1/mm"},
    }
    scan = Scan(views, projections, "line_integral", extra)
    scan.validate()

    result = SimulationResult(scan, gt, labels, roi, cfg, timings)
    if cfg.out_dir is not None:
        t0 = time.perf_counter()
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        scan.save(out)
        files["scan"] = str(out / "scan.json")
        files["projections"] = str(out / "projections.npy")
        files["gt"] = str(save_nifti(out / "gt.nii.gz", gt, roi.grid, "mu [1/mm] (ixgs simulate ground truth)"))
        if labels is not None:
            files["labels"] = str(_save_labels(out / "labels.nii.gz", labels, roi.grid))
        if cfg.preview:
            try:
                files["preview"] = str(make_preview(scan, roi, out / "preview.png", ct_grid=ct.grid))
            except ImportError as exc:  # matplotlib missing: the scan is still complete
                say(f"preview skipped: {exc}")
        result.out_dir = out
        result.files = files
        timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return result


def _save_labels(path: Path, labels: np.ndarray, grid: Grid) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(labels, dtype=np.int16), np.asarray(grid.affine))
    img.set_sform(np.asarray(grid.affine), code=1)
    img.set_qform(np.asarray(grid.affine), code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"TotalSegmentator v2 labels (ixgs simulate)"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path

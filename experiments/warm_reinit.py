"""Warm re-initialisation: what starting a re-init from the last solution costs in quality and saves in time.

A live session initialises from the first shots and re-initialises once more have arrived. This compares, on a
scan with a ground truth, the re-initialisation from all views started warm (``init.warm_share`` of the passes
from the solution of the first ``--first`` views) with a cold one (the full pass counts from zero, which is what
the file-based reconstruction runs): wall time of the re-init alone and 3D PSNR of the volume right after it and
after ``--iterations`` Gaussian iterations. Prints JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/warm_reinit.py --scan SCAN --first 18 \\
        --shares 0,0.35 [--iterations 100] [--engine KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", required=True, help="ixgs-scan folder with gt.nii.gz")
    ap.add_argument("--first", type=int, default=18, help="views of the first initialisation")
    ap.add_argument("--shares", default="0,0.35", help="init.warm_share values (0 = cold)")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--order", choices=["arc", "spread"], default="arc",
                    help="arc: the first views are the first along the arc (as a C-arm sweep sends them); spread: "
                         "every other view first")
    ap.add_argument("--engine", nargs="*", default=[], help="engine KEY=VALUE overrides")
    a = ap.parse_args(argv)

    import torch

    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti
    from ixgs_ros.engine import ReconstructionEngine
    from ixgs_ros.engine.config import load_engine_config
    from ixgs_ros.evaluation.metrics import psnr_3d

    torch.set_num_threads(1)
    scan = Scan.load(a.scan)
    gt, grid = load_nifti(Path(a.scan) / "gt.nii.gz")
    n = len(scan.views)
    order = list(range(n)) if a.order == "arc" else list(range(0, n, 2)) + list(range(1, n, 2))
    out = {"scan": a.scan, "views": n, "first": a.first, "iterations": a.iterations, "engine": a.engine, "runs": []}
    for share in [float(s) for s in a.shares.split(",")]:
        cfg = load_engine_config(None, list(a.engine) + [f"init.warm_share={share}", f"iterations={a.iterations}"])
        eng = ReconstructionEngine(grid, cfg)
        for i in order[:a.first]:
            eng.add_view(scan.views[i], scan.projections[i])
        t = time.perf_counter()
        eng.step(1)
        t_first = time.perf_counter() - t
        for i in order[a.first:]:
            eng.add_view(scan.views[i], scan.projections[i])
        stages = {}
        t = time.perf_counter()
        eng.reinitialize(progress=lambda s, d, tot: stages.__setitem__(s, tot))
        t_re = time.perf_counter() - t
        eng.step(1)
        after_init = psnr_3d(eng.volume(), gt)
        t = time.perf_counter()
        eng.step(a.iterations - 1)
        run = {"warm_share": share, "first_init_s": round(t_first, 1), "reinit_s": round(t_re, 1),
               "stages": stages, "psnr_after_reinit": after_init, "psnr_final": psnr_3d(eng.volume(), gt),
               "iterations_s": round(time.perf_counter() - t, 1)}
        out["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

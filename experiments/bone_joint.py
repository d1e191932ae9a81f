"""Bone alone or jointly with the full volume: does the full line integral help the bone solve?

The joint variant lets the bone volume explain the high-frequency part of the full line integrals:

1. the full volume's TV-SART init (the engine's cascade: coarse exterior, fine re-solve) from the full line
   integrals: ``V`` (fine box and exterior);
2. the bone target alone on the bone channel: ``B0``;
3. the soft tissue ``S = smooth(V - B0)`` (Gaussian, ``--soft-sigma`` mm, clipped at 0): the low frequencies;
4. a second measurement of the bone projections ``r = p_full - P S``, averaged with the bone channel
   (``q = (p_bone + w r) / (1 + w)``, ``--weight``);
5. the bone target again on ``q``: ``B1``.

Run with the ideal bone channel and with a degraded one that stands in for a standardization model's output
(``--degrade``: a per-view gain error, a smooth additive bias and pixel noise, as fractions of the channel's
maximum), and scored as the benchmark scores (bone-surface distance against the CT, soft tissue filled in).

    python experiments/bone_joint.py SCAN_DIR [--views 25] [--degrade 0.05,0.03,0.01] [--weight 1]
        [--soft-sigma 2] [--json OUT.json]

SCAN_DIR: a scan with ideal/bone.npy (``ixgs simulate --ideal-bone`` or benchmarks/bench_bone.py's cache).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def degrade(bone: np.ndarray, gain: float, bias: float, noise: float, seed: int = 0) -> np.ndarray:
    """A bone channel with the errors a learned standardization leaves (fractions of the channel's max)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    peak = float(bone.max())
    out = np.empty_like(bone)
    for i, b in enumerate(bone):
        field = gaussian_filter(rng.normal(size=b.shape), sigma=b.shape[0] / 8)
        field *= bias * peak / max(float(np.abs(field).max()), 1e-12)
        out[i] = b * rng.normal(1.0, gain) + field + rng.normal(0.0, noise * peak, b.shape)
    return np.maximum(out, 0.0).astype(np.float32)


def full_init(views, proj, grid, cfg):
    """The engine's TV-SART cascade on the full line integrals: (fine volume, fine grid, exterior, solve grid)."""
    from ixgs_ros.engine import init_solve

    ini = init_solve.init_tv_sart(views, proj, grid, cfg)
    if not ini.exterior:
        return ini.volume, ini.solve, None, None
    passes = init_solve.init_passes(cfg, cfg.exterior.refine_passes, len(views))
    fine = init_solve.fine_box(grid, ini.solve, cfg, refine=passes > 0)
    e = cfg.exterior
    roi, outside = init_solve.make_solver(cfg).refine_inner(views, proj, ini.solve, ini.volume, fine, passes,
                                                            lam=e.refine_relaxation, tv_weight=e.refine_tv_weight,
                                                            tv_weight_final=e.refine_tv_weight_final)
    return roi, fine, outside, ini.solve


def bone_alone(views, data, grid, cfg):
    from ixgs_ros.engine.bone import BoneReconstruction

    rec = BoneReconstruction(grid, cfg)
    for v, b in zip(views, data):
        rec.add_view(v, b)
    rec.run()
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scan_dir")
    p.add_argument("--views", type=int, default=25)
    p.add_argument("--degrade", default="0.05,0.03,0.01", help="gain,bias,noise (fractions of the max)")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--soft-sigma", type=float, default=2.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from scipy.ndimage import gaussian_filter

    from ixgs_ros.core.rtk import forward_project
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.core.volume import load_nifti, resample
    from ixgs_ros.engine import EngineConfig
    from ixgs_ros.evaluation.bench.cases import primary_angles, training_subset
    from ixgs_ros.evaluation.bone_accuracy import reference_ct, score_bone
    from ixgs_ros.outputs.bone import bone_surface_volume
    from ixgs_ros.simulation.ct import load_ct

    d = Path(args.scan_dir)
    scan = Scan.load(d)
    _, grid = load_nifti(d / "gt.nii.gz")
    train, _ = training_subset(primary_angles(scan), args.views, 3, 0)
    views = [scan.views[i] for i in train]
    full = scan.projections[train]
    ideal = np.load(d / "ideal" / "bone.npy")[train].astype(np.float32)
    gain, bias, noise = (float(x) for x in args.degrade.split(","))
    cfg = EngineConfig()
    ref = reference_ct(load_ct(), grid)
    out = {"scan": str(d), "views": args.views, "degrade": [gain, bias, noise], "weight": args.weight,
           "soft_sigma_mm": args.soft_sigma, "runs": {}}

    def score(name, rec, t):
        s = score_bone(bone_surface_volume(rec.volume()), grid, ref)
        out["runs"][name] = {"mean": s["mean"], "hd95": s["hd95"], "dice": s["dice"], "s": time.perf_counter() - t}
        print(name, json.dumps(out["runs"][name]), flush=True)

    t = time.perf_counter()
    V, vgrid, Vext, sgrid = full_init(views, full, grid, cfg)
    out["full_init_s"] = time.perf_counter() - t
    for label, channel in (("ideal", ideal), ("degraded", degrade(ideal, gain, bias, noise))):
        t = time.perf_counter()
        b0 = bone_alone(views, channel, grid, cfg)
        score(f"{label}-alone", b0, t)
        t = time.perf_counter()
        s0 = b0.solve
        # soft tissue: the full volume minus the bone, smoothed (its low frequencies), on the full solve's grids
        bf = resample(s0.fine, s0.fine_grid, vgrid, order=1)
        soft = np.maximum(gaussian_filter(V - bf, args.soft_sigma / float(vgrid.spacing.min())), 0.0)
        ps = forward_project(soft.astype(np.float32), vgrid, views)
        if Vext is not None:
            bext = 0.0 if s0.exterior is None else resample(s0.exterior[0], s0.exterior[1], sgrid, order=1)
            sext = np.maximum(gaussian_filter(Vext - bext, args.soft_sigma / float(sgrid.spacing.min())), 0.0)
            sext[vgrid.contains(sgrid.world_coords())] = 0.0
            ps = ps + forward_project(sext.astype(np.float32), sgrid, views)
        r = np.maximum(full - ps, 0.0)
        q = ((channel + args.weight * r) / (1.0 + args.weight)).astype(np.float32)
        out["runs"][f"{label}-second-measurement-error"] = float(np.abs(r - ideal).mean() / ideal.mean())
        b1 = bone_alone(views, q, grid, cfg)
        score(f"{label}-joint", b1, t)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

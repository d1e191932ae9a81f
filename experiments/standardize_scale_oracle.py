"""Oracle: how much of the standardization model's 2D error is a per-view scale (or scale + offset) error?

For one vertebra's full-body views styled in one style, the model's line integrals and bone channel are
compared with the ideal ones (masked 2D PSNR, :mod:`ixgs_ros.evaluation.standardization`) as they come, after
the least-squares scale per view (``a * x``) and after a per-view affine map (``a * x + b``), both fitted
against the ideal view (an oracle: the ideal is not known in use). A large gain from the scale alone says a
scan-level scale calibration (views made consistent with each other) is worth building; a small one says the
error is in the image's shape, which only the model can fix. Prints a JSON summary.

With ``--recon`` the same views are also reconstructed (3D PSNR against the CT on the ROI grid) from: the ideal
line integrals with every pixel, the ideal ones with the style's own validity mask (what the style leaves to
recover at best), the standardized ones with the model's mask (the product), the standardized ones after the
per-view affine oracle, and the standardized ones with the true mask instead of the model's. ``--engine
KEY=VALUE`` sets the engine (e.g. fewer init passes for a quick look).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/standardize_scale_oracle.py \\
        --vertebra T12 --style heldout-vendor --views 25 --detector 128
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _fit(pred, ideal, m, offset: bool):
    x, y = pred[m].astype(np.float64), ideal[m].astype(np.float64)
    A = np.stack([x, np.ones_like(x)], 1) if offset else x[:, None]
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return coef[0] * pred + (coef[1] if offset else 0.0), coef


def _reconstruct_variants(args, res, views, ideal, true_mask, line, model_mask) -> dict:
    import sys
    import time

    from ixgs_ros.core.scan import Scan
    from ixgs_ros.engine.config import load_engine_config
    from ixgs_ros.evaluation.metrics import psnr_3d
    from ixgs_ros.pipeline import reconstruct_scan

    cfg = load_engine_config(None, args.engine, seed=args.seed)
    grid, gt = res.base.roi.grid, res.base.gt
    pred, affine = line
    variants = {"ideal": (ideal, None), "ideal_true_mask": (ideal, true_mask),
                "standardized": (pred, model_mask), "standardized_true_mask": (pred, true_mask),
                "standardized_view_affine_oracle": (affine, model_mask)}
    out = {"engine": list(args.engine)}
    for name, (proj, m) in variants.items():
        t = time.perf_counter()
        r = reconstruct_scan(Scan(views, np.asarray(proj, np.float32), "line_integral", {},
                                  None if m is None else (np.asarray(m) > 0).astype(np.uint8)),
                             grid, cfg, progress=False)
        out[name] = {"psnr_3d": psnr_3d(r.volume, gt), "time_s": round(time.perf_counter() - t, 1)}
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertebra", default="T12")
    ap.add_argument("--style", default="heldout-vendor")
    ap.add_argument("--views", type=int, default=25)
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recon", action="store_true", help="also reconstruct each variant (3D PSNR)")
    ap.add_argument("--size", type=int, default=64, help="ROI voxels per side (with --recon)")
    ap.add_argument("--spacing", type=float, default=2.0, help="ROI voxel size in mm (with --recon)")
    ap.add_argument("--engine", nargs="*", default=[], help="engine KEY=VALUE overrides (with --recon)")
    args = ap.parse_args(argv)

    import torch

    from ixgs_ros.evaluation.standardization import masked_psnr_2d
    from ixgs_ros.simulation.simulate import SimulationConfig
    from ixgs_ros.simulation.spectra import default_cache_dir
    from ixgs_ros.simulation.styled_scan import simulate_styled_scan
    from ixgs_ros.simulation.styles import get_style, style_images
    from ixgs_ros.simulation.trajectories import TrajectoryConfig
    from ixgs_ros.standardize.apply import Standardizer

    torch.set_num_threads(1)
    cache = default_cache_dir()
    sim = SimulationConfig(roi=args.vertebra, roi_size=args.size, roi_spacing=args.spacing, seed=args.seed,
                           trajectory=TrajectoryConfig(n_views=args.views, width=args.detector), preview=False,
                           compile=False)
    res = simulate_styled_scan(sim, "flatpanel-raw16", args.seed, cache_dir=cache)
    pl, views = res.path_lengths, res.base.scan.views
    channels = {"line": pl.line_integrals(), "bone": pl.bone_projection()}
    rng = np.random.default_rng([args.seed, 101, 0])
    images, mask, _ = style_images(pl, views, get_style(args.style), rng, cache_dir=cache)
    std = Standardizer()
    outs = [std(img) for img in images]
    summary = {"vertebra": args.vertebra, "style": args.style, "views": args.views,
               "true_valid_fraction": float(mask.mean())}
    fitted = {}
    for name, ideal in channels.items():
        pred = np.stack([getattr(o, name) for o in outs])
        scaled = np.empty_like(pred)
        affine = np.empty_like(pred)
        scales = []
        for i in range(len(pred)):
            m = mask[i] > 0
            scaled[i], c = _fit(pred[i], ideal[i], m, offset=False)
            affine[i], _ = _fit(pred[i], ideal[i], m, offset=True)
            scales.append(float(c[0]))
        one, _ = _fit(pred, ideal, mask > 0, offset=False)  # one scale for the whole scan
        summary[name] = {"psnr": masked_psnr_2d(pred, ideal, mask), "psnr_scan_scale": masked_psnr_2d(one, ideal, mask),
                         "psnr_view_scale": masked_psnr_2d(scaled, ideal, mask),
                         "psnr_view_affine": masked_psnr_2d(affine, ideal, mask),
                         "view_scale_mean": float(np.mean(scales)), "view_scale_cv": float(np.std(scales) / np.mean(scales)),
                         "peak_pred_over_ideal": float(np.percentile(pred, 99.9) / np.percentile(ideal, 99.9))}
        fitted[name] = (pred, affine)
    if args.recon:
        summary["recon"] = _reconstruct_variants(args, res, views, channels["line"], mask, fitted["line"],
                                                 np.stack([o.mask for o in outs]))
    print(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

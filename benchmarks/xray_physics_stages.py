"""Measured effect of each X-ray physics stage on -ln(I/I0) against the ideal line integral (2D PSNR).

Renders the path lengths of a small scan of the bundled CT once (cached), samples one scan of the
``flatpanel-raw16`` style, then adds its stages one at a time (flat field known: ``I/I0 = (ADU - offset) /
flat``) and finally runs every named style end to end, read with a plain log and I0 estimated from the image
(:func:`ixgs_ros.core.radiograph.estimate_i0`, as ``ixgs import`` would). PSNR is ixgs's 2D PSNR (per view,
ideal scaled to peak 1 by its max); "affine" is the PSNR after the best per-view affine fit of -ln(I/I0) to the
ideal (how much is a global scale/offset); "valid" restricts the plain PSNR to the validity mask.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xray_physics_stages.py --roi L1 --views 6 \
        --detector 128 --montage stages.png
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import numpy as np


def _psnr(pred, gt, mask=None) -> float:
    vals = []
    for p, g, m in zip(pred, gt, mask if mask is not None else [None] * len(gt)):
        s = 1.0 / float(g.max())
        d = (p - g) * s
        mse = float(np.mean(d[m > 0] ** 2)) if m is not None else float(np.mean(d ** 2))
        vals.append(10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf)
    return float(np.mean(vals))


def _affine(pred, gt):
    out = np.empty_like(gt)
    for i, (p, g) in enumerate(zip(pred, gt)):
        A = np.stack([p.ravel(), np.ones(p.size)], 1)
        coef, *_ = np.linalg.lstsq(A, g.ravel(), rcond=None)
        out[i] = (A @ coef).reshape(g.shape)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roi", default="L1")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="default", help="path-length cache (default: ~/.cache/ixgs_ros/xray)")
    ap.add_argument("--montage", default=None, help="write a PNG montage of every style here")
    args = ap.parse_args(argv)

    from ixgs_ros.core.radiograph import estimate_i0
    from ixgs_ros.simulation.simulate import SimulationConfig
    from ixgs_ros.simulation.trajectories import TrajectoryConfig
    from ixgs_ros.simulation.imaging import render_params
    from ixgs_ros.simulation.styled_scan import simulate_styled_scan
    from ixgs_ros.simulation.styles import STYLES, sample_params

    t0 = time.perf_counter()
    cfg = SimulationConfig(roi=args.roi, trajectory=TrajectoryConfig(n_views=args.views, width=args.detector),
                           seed=args.seed, preview=False, compile=False)
    res = simulate_styled_scan(cfg, "flatpanel-raw16", args.seed, cache_dir=args.cache)
    pl, views = res.path_lengths, res.base.scan.views
    ideal = pl.line_integrals()
    print(f"# {args.roi}, {args.views} views of {args.detector}^2 px, path lengths in "
          f"{time.perf_counter() - t0:.1f} s; ideal line integrals 0 .. {ideal.max():.2f}", file=sys.stderr)

    rng = np.random.default_rng([args.seed, 1])
    full = sample_params("flatpanel-raw16", pl, views, rng)
    full["views"] = [dict(v, shutters={"left": 0.1, "right": 0.0, "top": 0.08, "bottom": 0.0},
                          shutter_angle_deg=3.0, shutter_transmission=0.01) for v in full["views"]]

    def stage(spr=None, noise=False, blur=False, shutters=False, quantize=True, mono=False):
        p = copy.deepcopy(full)
        if mono:
            from ixgs_ros.simulation.spectra import reference_energy

            p["mono_kev"] = reference_energy()
        p["blur_mm"] = p["blur_mm"] if blur else 0.0
        if not noise:
            p["electronic_noise"] = 0.0
        for v in p["views"]:
            v["spr"] = 0.0 if spr is None else spr
            if not noise:
                v["aec_quanta"] = None
            if not shutters:
                for k in ("shutters", "shutter_angle_deg", "shutter_transmission"):
                    v.pop(k, None)
        parts: dict = {}
        img, mask = render_params(pl, views, p, np.random.default_rng([args.seed, 2]), parts=parts)
        rel = parts["relative"] if not quantize else (img - p["offset_adu"]) / (
            p["flat_fraction"] * (2 ** p["adu_bits"] - 1))
        return -np.log(np.clip(rel, 1e-6, None)), mask

    spr0 = full["spr"]
    rows = [("monochromatic at the CT's reference energy", dict(mono=True, quantize=False)),
            (f"spectrum {full['kvp']:.0f} kVp / {full['al_mm']:.1f} mm Al / {full['cu_mm']:.2f} mm Cu + CsI "
             f"{full['csi_mm']:.2f} mm (beam hardening)", dict(quantize=False)),
            ("+ scatter (kernel), SPR 0.8", dict(spr=0.8, quantize=False)),
            ("+ scatter (kernel), SPR 2.0", dict(spr=2.0, quantize=False)),
            (f"+ scatter at the sampled SPR {spr0:.2f}", dict(spr=spr0, quantize=False)),
            (f"+ quantum + electronic noise ({full['aec_quanta']:.0f} quanta/px behind the patient)",
             dict(spr=spr0, noise=True, quantize=False)),
            (f"+ detector blur ({full['blur_mm']:.2f} mm)", dict(spr=spr0, noise=True, blur=True, quantize=False)),
            ("+ collimator blades (10 % left, 8 % top)", dict(spr=spr0, noise=True, blur=True, shutters=True,
                                                             quantize=False)),
            ("+ 16-bit ADU (= the flatpanel-raw16 image, flat field known)",
             dict(spr=spr0, noise=True, blur=True, shutters=True))]
    print("| stage (cumulative) | PSNR dB | affine-fit dB | valid-mask dB |")
    print("|---|---|---|---|")
    for name, kw in rows:
        li, mask = stage(**kw)
        print(f"| {name} | {_psnr(li, ideal):.1f} | {_psnr(_affine(li, ideal), ideal):.1f} | "
              f"{_psnr(li, ideal, mask):.1f} |")

    print(f"\n| style (seed {args.seed}), plain log with I0 estimated from the image | PSNR dB | affine-fit dB | "
          "valid-mask dB | valid % |")
    print("|---|---|---|---|---|")
    shown = {}
    for name in STYLES:
        rng = np.random.default_rng([args.seed, 3])
        p = sample_params(name, pl, views, rng)
        img, mask = render_params(pl, views, p, rng)
        li = np.stack([-np.log(np.clip(im, 1.0, None) / estimate_i0(np.maximum(im, 0))) for im in img])
        li = np.maximum(li, 0.0)
        shown[name] = (img, mask)
        print(f"| {name} | {_psnr(li, ideal):.1f} | {_psnr(_affine(li, ideal), ideal):.1f} | "
              f"{_psnr(li, ideal, mask):.1f} | {100 * mask.mean():.0f} |")
    if args.montage:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(len(views), 4)
        fig, ax = plt.subplots(len(shown) + 1, n, figsize=(2.6 * n, 2.6 * (len(shown) + 1)), squeeze=False)
        for j in range(n):
            ax[0, j].imshow(ideal[j], cmap="gray")
            ax[0, j].set_title(f"ideal line integral, view {j}", fontsize=7)
        for r, (name, (img, mask)) in enumerate(shown.items(), start=1):
            for j in range(n):
                ax[r, j].imshow(img[j], cmap="gray")
                ax[r, j].contour(mask[j], levels=[0.5], colors="r", linewidths=0.4)
                ax[r, j].set_title(f"{name}, view {j}", fontsize=7)
        for a in ax.flat:
            a.axis("off")
        fig.suptitle("ixgs_ros.simulation styles (red: validity mask border)", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.montage, dpi=80)
        print(f"\nmontage: {args.montage}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

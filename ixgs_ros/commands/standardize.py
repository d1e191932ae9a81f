"""``ixgs standardize IN_SCAN --out OUT_SCAN``: a raw scan (any C-arm image style) -> a line-integral scan.

Runs the standardization model (:mod:`ixgs_ros.standardize`) on every view: ``projections.npy`` holds the
ideal-line-integral estimate, ``mask.npy`` the validity (the model's AND the input scan's own), ``bone.npy`` the
bone-only line integral (named by scan.json's ``"bone"``), ``"standardization"`` the weights used. The ground
truth files (``gt.nii.gz``, ``labels.nii.gz``, ``ideal/``) are copied when the input has them.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("standardize", help="raw X-ray scan -> line-integral scan with the standardization model",
                       description="Standardize a raw ixgs-scan (raw counts or vendor-processed images, any "
                                   "polarity and bit depth) into line integrals with the anatomy-guided model; "
                                   "writes the bone-only line integral (bone.npy) and the validity mask beside.")
    p.add_argument("scan_dir", help="raw ixgs-scan directory")
    p.add_argument("--out", required=True, help="output scan directory")
    p.add_argument("--weights", help="model weights (.safetensors with its .json; default: the committed ones)")
    p.add_argument("--ignore-scan-mask", action="store_true",
                   help="do not combine the input scan's validity mask with the model's")
    p.add_argument("--force", action="store_true", help="overwrite a scan in --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ixgs_ros.core.scan import SCAN_JSON, Scan
    from ixgs_ros.standardize.apply import Standardizer, save_standardized_scan, standardize_scan

    out = Path(args.out)
    if (out / SCAN_JSON).exists() and not args.force:
        raise ValueError(f"{out} already holds a scan; use --force to overwrite it")
    if Path(args.scan_dir).resolve() == out.resolve():
        raise ValueError("--out must differ from the input scan directory")
    scan = Scan.load(args.scan_dir)
    std = Standardizer(args.weights)
    res, bone = standardize_scan(scan, std, use_scan_mask=not args.ignore_scan_mask)
    save_standardized_scan(res, bone, out, source_dir=args.scan_dir)
    print(f"standardized {len(res)} view(s) of {res.width}x{res.height} -> {out} (line integrals "
          f"{float(res.projections.min()):.3f} .. {float(res.projections.max()):.3f}; "
          f"{100 * float(res.mask.mean()):.1f} % valid pixels; weights {std.weights.name} "
          f"{std.record['sha256'][:12]})", file=sys.stdout)
    return 0

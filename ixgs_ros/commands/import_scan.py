"""``ixgs import``: DICOM / PNG / TIFF images (+ a poses file) -> an ixgs-scan directory.

(The module is ``import_scan`` because ``import`` is a Python keyword; the subcommand is ``ixgs import``.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ixgs_ros.core.scan import SCAN_JSON

HELP = "import DICOM / PNG / TIFF X-ray images (+ a poses file) into an ixgs-scan directory"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import", help=HELP, description=HELP + ".",
        epilog="Without --poses, DICOM positioner attributes give the geometry (PositionerPrimaryAngle, "
               "PositionerSecondaryAngle, DistanceSourceToDetector, DistanceSourceToPatient, "
               "ImagerPixelSpacing). See ixgs_ros.core.importers for the poses file formats.")
    p.add_argument("source", help="folder of DICOM or PNG/TIFF images (searched recursively), or one DICOM file")
    p.add_argument("-o", "--out", required=True, help="output scan directory (scan.json + projections.npy)")
    p.add_argument("--poses", help="JSON or CSV poses file: per image file K + T_world_source, or C-arm angles")
    p.add_argument("--kind", choices=("raw", "line_integral"), default="raw",
                   help="what the stored pixel values are (default: raw intensities)")
    p.add_argument("--to-line-integral", action="store_true",
                   help="convert raw intensities to line integrals -log(I / I0) (needs --i0)")
    p.add_argument("--i0", type=float, help="unattenuated intensity I0 for --to-line-integral")
    p.add_argument("--mirror", choices=("auto", "yes", "no"), default="auto",
                   help="mirror left-right images whose geometry comes from C-arm angles (auto: DICOM "
                        "attributes only, as DICOM stores images as displayed, seen from the detector side)")
    p.add_argument("--force", action="store_true", help="overwrite an existing scan in --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ixgs_ros.core.importers import import_folder

    out = Path(args.out)
    if (out / SCAN_JSON).exists() and not args.force:
        raise ValueError(f"{out} already holds a scan; use --force to overwrite it")
    if args.i0 is not None and not args.to_line_integral:
        raise ValueError("--i0 is only used with --to-line-integral")
    scan = import_folder(args.source, poses=args.poses, kind=args.kind, to_line_integral=args.to_line_integral,
                         i0=args.i0, mirror=args.mirror)
    scan.save(out)
    info = scan.extra.get("import", {})
    print(f"imported {len(scan)} view(s) of {scan.width}x{scan.height} ({scan.image_kind}) -> {out}")
    if info.get("ignored"):
        names = info["ignored"]
        print(f"ignored {len(names)} file(s)/frame(s) not used: {', '.join(names[:5])}"
              f"{', ...' if len(names) > 5 else ''}", file=sys.stderr)
    conv = info.get("to_line_integral")
    if conv and (conv["clipped_low"] or conv["clipped_high"]):
        print(f"clipped {conv['clipped_low']} pixel(s) below I0*1e-6 and {conv['clipped_high']} above I0",
              file=sys.stderr)
    return 0

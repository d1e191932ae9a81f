"""``ixgs reconstruct SCAN_DIR --out OUT_DIR``: R²-Gaussian reconstruction of an ixgs-scan directory."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("reconstruct", help="reconstruct a volume from an ixgs-scan directory",
                       description="Reconstruct the attenuation volume (mu in 1/mm) of an ixgs-scan directory "
                                   "with R²-Gaussian splatting. Writes volume.nii.gz, gaussians.safetensors, "
                                   "report.json, mpr.png and the navigation outputs (mesh, slices, renderings).")
    p.add_argument("scan_dir", help="ixgs-scan directory (scan.json + projections.npy)")
    p.add_argument("--out", required=True, help="output directory")
    g = p.add_argument_group("output grid (default: the scan's ROI, else 128^3 at 1 mm on the views' focus)")
    g.add_argument("--like", help="reconstruct on exactly the grid of this NIfTI")
    g.add_argument("--size", type=int, help="voxels per side")
    g.add_argument("--spacing", type=float, help="voxel size in mm")
    g.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"), help="grid centre in world mm")
    # the engine's default, written out so that the parser does not import torch (a test keeps them equal)
    p.add_argument("--iterations", type=int, default=None,
                   help="optimisation iterations (default: the engine's, 100)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=0, help="views held out from training for 2D PSNR/SSIM")
    p.add_argument("--gt", help="ground-truth NIfTI on the same grid: report 3D PSNR/SSIM "
                                "(default: gt.nii.gz next to the scan when the grid matches)")
    p.add_argument("--config", help="YAML/JSON file with engine parameters (EngineConfig sections, optionally under engine:)")
    p.add_argument("--backend", choices=["auto", "torch", "cpp", "cuda"], default=None)
    p.add_argument("--refine-poses", choices=["auto", "on", "off"], default=None,
                   help="pose self-calibration: refine each view's pose against the volume while initialising "
                        "and write refined_poses.json (auto, the default: applied when the corrections matter; "
                        "calibration.mode in --config)")
    p.add_argument("--save-state", action="store_true", help="also save the whole engine state to OUT/state")
    p.add_argument("--no-navigation", action="store_true", help="skip meshes, renderings and the report page")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ixgs_ros.pipeline import choose_grid, reconstruct_scan, write_outputs
    from ixgs_ros.core.scan import Scan

    scan = Scan.load(args.scan_dir)
    grid = choose_grid(scan, like=args.like, size=args.size, spacing=args.spacing, center=args.center)
    from ixgs_ros.engine import load_engine_config

    cfg = load_engine_config(args.config, iterations=args.iterations, device=args.device, seed=args.seed,
                             backend=args.backend, **{"calibration.mode": args.refine_poses})
    gt = args.gt
    if gt is None:
        cand = Path(args.scan_dir) / "gt.nii.gz"
        if cand.exists():
            from ixgs_ros.core.volume import Grid

            gt = str(cand) if Grid.like(cand) == grid else None
    print(f"ixgs reconstruct: {len(scan.views)} views, grid {grid.shape} at {grid.spacing.round(3).tolist()} mm, "
          f"{cfg.iterations} iterations on {cfg.device}", file=sys.stderr)
    result = reconstruct_scan(scan, grid, cfg, holdout=args.holdout, progress=not args.quiet)
    paths = write_outputs(result, args.out, grid, scan=scan, gt_path=gt, navigation=not args.no_navigation)
    if args.save_state:
        result.engine.save(Path(args.out) / "state")
    rep = result.report
    cal = result.engine.calibration.summary
    if cal:
        flagged = ", ".join(map(str, cal["flagged"])) or "none"
        print(f"pose refinement: {cal['decision']}; RMS shift of the ROI centre {cal['rms_shift_px']:.2f} px, "
              f"largest rotation {cal['max_rotation_deg']:.2f} deg; flagged views: {flagged} -> "
              f"{paths['refined_poses']}")
    print(f"done in {rep['wall_time_s']:.1f} s: {rep['num_gaussians']} Gaussians, volume -> {paths['volume']}")
    if "metrics_3d" in rep:
        m = rep["metrics_3d"]
        print(f"3D PSNR {m['psnr']:.2f} dB, 3D SSIM {m['ssim']:.4f} (against {gt})")
    if "holdout_2d" in rep:
        h = rep["holdout_2d"]
        print(f"held-out views: 2D PSNR {h['psnr_mean']:.2f} dB, 2D SSIM {h['ssim_mean']:.4f} (n={h['n']})")
    return 0

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
    p.add_argument("--standardize", action="store_true",
                   help="standardize raw images with the anatomy-guided model first (automatic for a raw scan)")
    p.add_argument("--weights", help="standardization model weights (default: the committed ones)")
    p.add_argument("--refine-poses", choices=["auto", "on", "off"], default=None,
                   help="pose self-calibration: refine each view's pose against the volume while initialising "
                        "and write refined_poses.json (auto, the default: applied when the corrections matter; "
                        "calibration.mode in --config)")
    p.add_argument("--save-state", action="store_true", help="also save the whole engine state to OUT/state")
    p.add_argument("--no-navigation", action="store_true", help="skip meshes, renderings and the report page")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # ---- bone target
    g = p.add_argument_group("bone target (bone.nii.gz, bone pieces and their confidence in navigation.json)")
    g.add_argument("--target", choices=["auto", "full", "bone", "both"], default="auto",
                   help="full: the attenuation volume (volume.nii.gz); bone: the bone volume from the scan's bone "
                        "channel (bone.nii.gz, bone meshes); both; auto (default): both when the scan carries a bone "
                        "channel (scan.json \"bone\": \"bone.npy\"), else full")
    g.add_argument("--bone-from-ideal", action="store_true",
                   help="evaluation only: take the bone channel from a simulated scan's ideal/bone.npy")
    g.add_argument("--labels", help="vertebra label map (TotalSegmentator numbering) on the output grid: names the "
                                    "bone pieces (default: labels.nii.gz next to the scan when on the grid)")
    g.add_argument("--gate", type=float, default=None, metavar="C",
                   help="confidence a bone piece needs to be marked for navigation (default 0.5)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ixgs_ros.pipeline import choose_grid, reconstruct_scan, write_outputs
    from ixgs_ros.pipeline_bone import resolve_target
    from ixgs_ros.core.scan import Scan

    scan = Scan.load(args.scan_dir)
    scan_dir = args.scan_dir
    if scan.image_kind == "raw":  # raw images: the standardization model first (what --standardize asks for)
        from ixgs_ros.standardize.apply import Standardizer, save_standardized_scan, standardize_scan

        std = Standardizer(args.weights)
        print(f"ixgs reconstruct: standardizing {len(scan.views)} raw view(s) with {std.weights.name} "
              f"({std.record['sha256'][:12]})", file=sys.stderr)
        scan, std_bone = standardize_scan(scan, std)
        # the standardized scan (with its bone channel) is what the bone target reads from now on
        scan_dir = save_standardized_scan(scan, std_bone, Path(args.out) / "standardized")
    elif args.standardize or args.weights:
        raise ValueError("--standardize/--weights: the scan already holds line integrals (image_kind "
                         f"{scan.image_kind!r}); only raw scans are standardized")
    grid = choose_grid(scan, like=args.like, size=args.size, spacing=args.spacing, center=args.center)
    target = resolve_target(args.target, scan, args.bone_from_ideal)
    bone = None
    if target in ("bone", "both"):  # a missing or bad bone channel fails before any reconstruction
        from ixgs_ros.core.bone_channel import load_bone_channel

        bone = load_bone_channel(scan_dir, scan, from_ideal=args.bone_from_ideal)
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
          f"target {target}, {cfg.iterations} iterations on {cfg.device}", file=sys.stderr)
    result = None
    if target in ("full", "both"):
        result = reconstruct_scan(scan, grid, cfg, holdout=args.holdout, progress=not args.quiet)
        paths = write_outputs(result, args.out, grid, scan=scan, gt_path=gt, navigation=not args.no_navigation)
        if args.save_state:
            result.engine.save(Path(args.out) / "state")
    if target in ("bone", "both"):
        _run_bone(args, scan, scan_dir, grid, cfg, bone, gt, None if result is None else result.volume)
    if result is None:
        return 0
    rep = result.report
    cal = result.engine.calibration.summary
    if cal:
        flagged = ", ".join(map(str, cal["flagged"])) or "none"
        gain = (f"; data fit {100 * cal['consistency']['gain']:.1f} % better with the corrections"
                if "consistency" in cal else "")
        print(f"pose refinement: {cal['decision']}; RMS shift of the ROI centre {cal['rms_shift_px']:.2f} px, "
              f"largest rotation {cal['max_rotation_deg']:.2f} deg{gain}; flagged views: {flagged} -> "
              f"{paths['refined_poses']}")
    print(f"done in {rep['wall_time_s']:.1f} s: {rep['num_gaussians']} Gaussians, volume -> {paths['volume']}")
    if "metrics_3d" in rep:
        m = rep["metrics_3d"]
        print(f"3D PSNR {m['psnr']:.2f} dB, 3D SSIM {m['ssim']:.4f} (against {gt})")
    if "holdout_2d" in rep:
        h = rep["holdout_2d"]
        print(f"held-out views: 2D PSNR {h['psnr_mean']:.2f} dB, 2D SSIM {h['ssim_mean']:.4f} (n={h['n']})")
    return 0


def _run_bone(args, scan, scan_dir, grid, cfg, bone, gt, full_volume) -> None:
    """The bone target's part of ``ixgs reconstruct`` (:mod:`ixgs_ros.pipeline_bone`)."""
    import numpy as np

    from ixgs_ros.core.volume import Grid, load_nifti
    from ixgs_ros.outputs.bone_gate import GateConfig
    from ixgs_ros.pipeline_bone import reconstruct_bone_scan, write_bone_outputs

    labels = None
    lpath = args.labels or (Path(args.scan_dir) / "labels.nii.gz")
    if args.labels or Path(lpath).exists():
        if not Path(lpath).exists():
            raise FileNotFoundError(f"--labels: file not found: {lpath}")
        if Grid.like(lpath) == grid:
            labels = np.rint(load_nifti(lpath)[0]).astype(np.int32)
        elif args.labels:
            raise ValueError(f"--labels {lpath} is not on the output grid")
    gate = GateConfig() if args.gate is None else GateConfig(threshold=float(args.gate))
    res = reconstruct_bone_scan(scan, scan_dir, grid, cfg, bone=bone, bone_from_ideal=args.bone_from_ideal,
                                holdout=args.holdout, progress=not args.quiet)
    paths = write_bone_outputs(res, args.out, grid, labels=labels, gt_path=gt, gate=gate, background=full_volume)
    import json

    nav = json.loads(paths["summary"].read_text())["bone"]
    ok = nav["for_navigation"]
    print(f"bone target done in {res.report['wall_time_s']:.1f} s: {len(nav['pieces'])} piece(s), "
          f"{len(ok)} for navigation ({', '.join(ok) or 'none'}), volume -> {paths['bone']}")
    acc = nav.get("accuracy")
    if acc and "mean_mm" in acc:
        print(f"bone surface vs {acc['reference']}: mean {acc['mean_mm']:.2f} mm, HD95 {acc['hd95_mm']:.2f} mm, "
              f"Dice {acc['dice']:.3f}")

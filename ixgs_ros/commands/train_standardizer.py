"""``ixgs train-standardizer --out WEIGHTS``: train the standardization model on the training slab of a CT.

Renders (or reads from the cache) the path lengths of the training views of the slab ``z >= --z-min`` (never
below -95 mm: the rest of the bundled CT is evaluation anatomy), then trains with re-styled samples every epoch
and writes ``WEIGHTS`` (safetensors) and ``WEIGHTS`` with ``.json`` (checksum, this command, data, augmentation
and training settings, loss history). ``--quick`` is a seconds-long run on tiny data for tests.
"""
from __future__ import annotations

import shlex
import sys
import time


def add_parser(sub):
    p = sub.add_parser("train-standardizer", help="train the standardization model (raw X-ray -> line integral)",
                       description="Train the anatomy-guided standardization model on styled images rendered "
                                   "from the training slab (world z >= -95 mm) of the bundled CT, only. Writes "
                                   "safetensors weights and a JSON record (checksum, command, settings).")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors; the .json record beside)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, augmentation and network (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 1500)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 8)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    g = p.add_argument_group("training data (the slab z >= --z-min of the CT)")
    g.add_argument("--ct", help="CT in HU (default: the bundled chest CT)")
    g.add_argument("--labels", help="its vertebra label map (default: the bundled one)")
    g.add_argument("--z-min", type=float, default=None, help="lowest world z (mm) of the training slab; never "
                                                             "below -95 (default -95)")
    g.add_argument("--no-mirror", action="store_true", help="leave the slices below the slab empty instead of "
                                                            "filling them with mirror images of the slab")
    g.add_argument("--groups", type=int, default=None, help="trajectories (default 12)")
    g.add_argument("--views-per-group", type=int, default=None, help="views per trajectory (default 8)")
    g.add_argument("--detector", type=int, default=None, help="detector pixels per side (default 128)")
    g.add_argument("--cache", default="default", help="path-length and spectrum cache: a folder, 'default' "
                                                      "($IXGS_XRAY_CACHE or ~/.cache/ixgs_ros/xray) or 'none'")
    g = p.add_argument_group("model and machine")
    g.add_argument("--width", type=int, default=None, help="channels of the first U-Net level (default 16)")
    g.add_argument("--depth", type=int, default=None, help="U-Net levels (default 4)")
    g.add_argument("--work", type=int, default=None, help="working resolution, pixels (default 128)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g.add_argument("--workers", type=int, default=None, help="processes styling the next epoch (default 1; 0: "
                                                             "in this process)")
    p.add_argument("--quick", action="store_true", help="a few steps on tiny data (tests): 1 group of 2 views of "
                                                        "48 px, 4 steps of 2 images, a tiny network, no worker")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _settings(args):
    from ixgs_ros.standardize.augment import AugmentConfig
    from ixgs_ros.standardize.data import TRAIN_Z_MIN, DataConfig
    from ixgs_ros.standardize.model import ModelConfig
    from ixgs_ros.standardize.train import TrainConfig

    quick = args.quick
    data = DataConfig(z_min=TRAIN_Z_MIN if args.z_min is None else args.z_min, mirror=not args.no_mirror,
                      groups=args.groups or (1 if quick else 12),
                      views_per_group=args.views_per_group or (2 if quick else 8),
                      detector=args.detector or (48 if quick else 128), seed=args.seed)
    model = ModelConfig(width=args.width or (4 if quick else 16), depth=args.depth or (2 if quick else 4),
                        work=args.work or (32 if quick else 128))
    train = TrainConfig(steps=args.steps or (4 if quick else 1500), batch=args.batch or (2 if quick else 8),
                        lr=args.lr or 3e-3, seed=args.seed, threads=args.threads,
                        workers=(0 if quick else 1) if args.workers is None else args.workers,
                        warmup=2 if quick else 30)
    aug = AugmentConfig(views_per_style=2 if quick else 4, hires_prob=0.5 if quick else 0.25)
    for name, val in (("--steps", train.steps), ("--batch", train.batch), ("--threads", train.threads)):
        if val < 1:
            raise ValueError(f"{name} must be >= 1, got {val}")
    if train.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {train.workers}")
    return data.validate(), model, train, aug


def run(args) -> int:
    from ixgs_ros.simulation.ct import load_ct
    from ixgs_ros.simulation.spectra import default_cache_dir
    from ixgs_ros.standardize.data import render_training_set
    from ixgs_ros.standardize.model import ModelConfig
    from ixgs_ros.standardize.train import train
    from ixgs_ros.standardize.weights import save_model

    data, model_cfg, train_cfg, aug = _settings(args)
    ModelConfig.from_dict(model_cfg.to_dict())  # validates the architecture before anything is rendered
    cache = {"default": default_cache_dir(), "none": None}.get(args.cache, args.cache)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    ct = load_ct(args.ct, args.labels)
    ts = render_training_set(ct, data, cache, progress=say)
    t_data = time.perf_counter() - t0
    say(f"training data: {ts.n_views} views of {data.detector} px from the slab z >= {data.z_min:g} mm "
        f"({'mirror-filled below' if data.mirror else 'empty below'}) in {t_data:.0f} s")
    model, summary = train(ts, model_cfg, train_cfg, aug, cache_dir=cache, progress=not args.quiet,
                           log=None if args.quiet else say)
    argv = sys.argv[1:] if sys.argv[1:2] == ["train-standardizer"] else None  # None: called from Python
    record = {"command": "ixgs " + shlex.join(argv) if argv else None,
              "arguments": {k: v for k, v in vars(args).items() if k != "func"},
              "data": {**data.to_dict(), "ct": ct.path, "labels": ct.labels_path, "n_views": ts.n_views,
                       "split": "same patient, other vertebrae: trained on the bundled CT's slab "
                                f"z >= {data.z_min:g} mm (T4 and above); T6 to L3 never seen"},
              "augment": aug.to_dict(), "train": train_cfg.to_dict(), "data_time_s": round(t_data, 1), **summary}
    rec = save_model(model, args.out, record)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"wrote {args.out} ({rec['n_parameters']} parameters, sha256 {rec['sha256'][:12]}...) after "
          f"{summary['steps']} steps in {summary['wall_time_s']:.0f} s (+{t_data:.0f} s data); final loss: line "
          f"{last.get('line', float('nan')):.4f}, bone {last.get('bone', float('nan')):.4f}")
    return 0

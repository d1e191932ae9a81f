"""The ``ixgs`` command line. Each subcommand lives in ``ixgs_ros.commands.<name>`` and exposes
``add_parser(subparsers)`` (registering itself with ``set_defaults(func=run)``) and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

SUBCOMMANDS = ["demo", "simulate", "import_scan", "reconstruct", "bench", "live", "standardize",
               "train_standardizer"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ixgs", description="ixgs_ros: R2-Gaussian X-ray reconstruction")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"ixgs_ros.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("ixgs_ros.commands"):
                continue  # subcommand not available in this build
            raise
        mod.add_parser(sub)
    return parser


def _route_logging() -> None:
    """The library logs through ``logging`` (logger ``ixgs_ros``); on the command line its messages go to stderr
    as ``ixgs: LEVEL: message`` (level from ``IXGS_LOG_LEVEL``, default WARNING)."""
    logger = logging.getLogger("ixgs_ros")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ixgs: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("IXGS_LOG_LEVEL", "WARNING").upper())
        logger.propagate = False


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _route_logging()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:  # user errors: one clear line, no traceback
        print(f"ixgs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

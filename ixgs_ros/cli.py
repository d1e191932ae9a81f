"""The ``ixgs`` command line. Each subcommand lives in ``ixgs_ros.commands.<name>`` and exposes
``add_parser(subparsers)`` (registering itself with ``set_defaults(func=run)``) and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ["demo", "simulate", "import_scan", "reconstruct", "bench"]


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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

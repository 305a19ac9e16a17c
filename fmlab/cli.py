"""`fmlab <command>`: the terminal interface, with the Apple toolkit's flag names where it has them.

Each command is a `cmd_<name>(args)` function plus an `add_<name>(subparsers)` that declares its flags.
User errors (FmlabError) print one clear line and exit 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from .common import FmlabError


def add_info(sub):
    p = sub.add_parser("info", help="show versions, device and the assets directory in use")
    p.add_argument("--assets", help="assets directory (default: $FMLAB_ASSETS or the embedded fmlab-tiny)")
    p.set_defaults(func=cmd_info)


def cmd_info(args):
    from .report import environment_report

    for key, value in environment_report(args.assets).items():
        print(f"{key:>16}: {value}")


def add_demo(sub):
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default (notebooks, headless)")
    p.add_argument("--out", default="out", help="output directory (default: out/)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: finishes in about a minute")
    p.add_argument("--only", nargs="*", help="run only notebooks whose names start with these prefixes")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from .demo import run_notebooks

    for row in run_notebooks(args.out, smoke=args.smoke, only=args.only):
        print(f"{row['notebook']:>24}: {row['seconds']:7.1f} s")
    print(f"executed notebooks are in {args.out}/notebooks/")


# --- validate-data (data pipeline) ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in sorted(globals().items()):
        if name.startswith("add_") and callable(add):
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FmlabError as err:
        print(f"fmlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

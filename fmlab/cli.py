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


def add_validate_data(sub):
    p = sub.add_parser("validate-data", help="check every line of chat JSONL files and report their statistics")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, one conversation per line")
    p.add_argument("--mode", choices=["train", "prompt"], default="train",
                   help="train: samples end with assistant; prompt: with user (default: train)")
    p.add_argument("--max-sequence-length", type=int, help="report samples longer than this many tokens")
    p.add_argument("--assets", help="assets directory whose tokenizer.model gives the token statistics")
    p.set_defaults(func=cmd_validate_data)


def cmd_validate_data(args):
    import warnings

    from .common import assets_dir
    from .data import DataError, describe, read_messages, tokenize_dataset
    from .tokenizer import Tokenizer

    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise FmlabError(f"--max-sequence-length must be at least 1, got {args.max_sequence_length}")
    samples, errors = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in args.files:
            try:
                samples += read_messages(path, args.mode)
            except DataError as err:  # keep going: report the problems of every file at once
                errors += err.errors
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if errors:
        raise DataError(errors)
    try:  # an explicit --assets must exist; the default may not be built yet
        tokenizer_path = assets_dir(args.assets) / "tokenizer.model"
    except FmlabError:
        if args.assets:
            raise
        tokenizer_path = None
    print(f"files: {', '.join(args.files)} (mode {args.mode}): all lines valid")
    if tokenizer_path is None or not tokenizer_path.is_file():
        print(describe(samples).summary())
        print(f"no tokenizer at {tokenizer_path or 'the default assets'}: token statistics skipped")
        return 0
    dataset = tokenize_dataset(Tokenizer.from_file(tokenizer_path), samples, args.max_sequence_length)
    print(dataset.report.summary())
    print(f"tokenizer: {tokenizer_path}")
    return 0


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

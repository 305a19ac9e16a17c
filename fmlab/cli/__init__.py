"""`fmlab <command>`: the terminal interface, with the Apple toolkit's flag names where it has them.

Each command is a `cmd_<name>(args)` function plus an `add_<name>(subparsers)` that declares its flags.
User errors (FmlabError) and the machine's (OSError: disk full, no permission, a path that is a file)
print one clear line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from fmlab.errors import FmlabError

from . import basics, evaluation, export, inference, training

COMMANDS = [basics, training, inference, export, evaluation]


def _apply_config_file(parser, argv):
    """Flags given in --config become the parser's defaults, so explicit flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    import json
    from pathlib import Path

    path = Path(known.config)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else __import__("yaml").safe_load(text)
    except Exception as err:
        raise FmlabError(f"{path}: cannot read config file ({err})") from None
    if not isinstance(values, dict):
        raise FmlabError(f"{path}: a config file must be a mapping of flag names to values")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((c for c in argv if c in sub.choices), None)
    if command is None:
        return
    dests = {a.dest for a in sub.choices[command]._actions}
    values = {k.lstrip("-").replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise FmlabError(f"{path}: unknown option(s) {', '.join(unknown)} for fmlab {command}")
    for action in sub.choices[command]._actions:
        if action.dest in values:
            action.required = False
    sub.choices[command].set_defaults(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        for name, add in vars(module).items():
            if name.startswith("add_") and callable(add):
                add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        _apply_config_file(parser, argv)
    except FmlabError as err:
        print(f"fmlab: error: {err}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (FmlabError, OSError) as err:
        print(f"fmlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

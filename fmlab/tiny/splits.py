"""An example task's splits on disk: one JSONL file per split (a JSON list of messages per line), and the
small command line every task generator offers (`python -m fmlab.tiny.<task> --out data --seed 0`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from fmlab.files import atomic_write


def write_splits(out: str | Path, splits: dict[str, list], file_name: str) -> dict[str, Path]:
    """Write each split's samples to `out / file_name.format(name=split)`, atomically; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, samples in splits.items():
        paths[name] = out / file_name.format(name=name)
        with atomic_write(paths[name]) as f:
            f.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8"))
    return paths


def splits_main(prog: str, description: str, make_splits: Callable, argv: list[str] | None = None) -> None:
    """The generator's command line: `--out FOLDER --seed N`, then one line per split written."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--out", default="data", help="folder for the split files (default: data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, path in make_splits(args.out, args.seed).items():
        lines = path.read_text(encoding="utf-8").count("\n")
        print(f"{name}: {lines} samples -> {path}")

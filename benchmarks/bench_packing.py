"""Packing efficiency: Apple's greedy packing (docs/afm-format.md §5.4) against fmlab's best-fit decreasing.

Efficiency = real tokens / (rows × max length): the share of a fixed-size batch that is not padding, so
the share of compute that trains. "unpacked" is one sample per row padded to the max length (Apple's
`--fixed-sized-sequences`). Prints a markdown table.

    python benchmarks/bench_packing.py [data/train.jsonl] [--max-len 4095 1024]
    python benchmarks/bench_packing.py --synthetic 2000    # seeded log-normal lengths instead of a file

The tokenizer is the assets directory's `tokenizer.model`; without one, a small one is trained on the
dataset itself (into a temporary directory), which is enough to count tokens.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import tempfile
import time
from pathlib import Path

from fmlab.checkpoints.assets import assets_dir
from fmlab.data.chat_template import render_text
from fmlab.data.dataset import tokenize_dataset
from fmlab.data.packing import pack, packing_efficiency
from fmlab.data.tokenizer import Tokenizer, train_tokenizer
from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError

REPO = Path(__file__).resolve().parent.parent


def default_data() -> Path:
    train = REPO / "data" / "train.jsonl"
    return train if train.exists() else REPO / "data" / "sample.jsonl"


def load_tokenizer(samples, assets: str | None) -> tuple[Tokenizer, str]:
    try:
        path = assets_dir(assets) / "tokenizer.model"
    except FmlabError:
        path = None
    if path is not None and path.is_file():
        return Tokenizer.from_file(path), str(path)
    texts = [render_text(s.messages, s.tools) for s in samples]
    out = Path(tempfile.mkdtemp()) / "tokenizer.model"
    return train_tokenizer(texts, out, vocab_size=2000), "trained on the dataset (vocab ≤ 2000)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None, help="chat JSONL (default: data/train.jsonl or sample)")
    parser.add_argument("--max-len", type=int, nargs="+", default=[4095, 1024])
    parser.add_argument("--assets", help="assets directory with tokenizer.model")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="N lengths drawn from a log-normal (median 400 tokens, seed 0) instead of a file",
    )
    args = parser.parse_args()

    if args.synthetic:
        rng = random.Random(0)
        lengths = [max(8, int(rng.lognormvariate(math.log(400), 0.9))) for _ in range(args.synthetic)]
        name, source = f"synthetic log-normal, median 400, sigma 0.9 ({args.synthetic} samples)", "none"
    else:
        path = Path(args.data) if args.data else default_data()
        samples = read_messages(path)
        tokenizer, source = load_tokenizer(samples, args.assets)
        lengths = [len(s.input_ids) for s in tokenize_dataset(tokenizer, samples).samples]
        name = f"{path} ({len(samples)} samples)"
    print(
        f"dataset: {name}, {sum(lengths)} tokens, longest {max(lengths)}; tokenizer: {source}; {platform.platform()}\n"
    )
    print("| max length | strategy | rows | efficiency | time (ms) |")
    print("|---:|---|---:|---:|---:|")
    for max_len in args.max_len:
        clipped = [min(n, max_len) for n in lengths]
        print(f"| {max_len} | unpacked | {len(clipped)} | {sum(clipped) / (len(clipped) * max_len):.1%} | - |")
        for strategy in ("greedy", "best-fit"):
            start = time.perf_counter()
            packs = pack(clipped, max_len, strategy)
            ms = (time.perf_counter() - start) * 1000
            eff = packing_efficiency(clipped, packs, max_len)
            print(f"| {max_len} | {strategy} | {len(packs)} | {eff:.1%} | {ms:.1f} |")


if __name__ == "__main__":
    main()

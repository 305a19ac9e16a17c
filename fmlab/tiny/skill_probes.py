"""The default out-of-domain probe set of `fmlab eval --ood`: short general-skills chats (facts, sums,
spelling, copying names in capitals, repeating a sentence, small talk) drawn from fmlab-tiny's own
pretraining corpus (`fmlab.tiny.corpus.chat_samples`), so the base answers them and an adapter that has
forgotten them shows a drop.

Only single-exchange chats whose question has one answer in the corpus are kept (so "Name three fruits.",
which the corpus answers several ways, is not), each question once, with the corpus' answer as the
reference. Deterministic; drawn with a seed the base was not trained on.

`python -m fmlab.tiny.skill_probes [--out data]` writes `skills_probe.jsonl` (see `data/README.md`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmlab.tiny.corpus import chat_samples

PROBES = 48
POOL = 1500  # corpus chats to draw from
SEED = 1009  # the embedded base was pretrained on seed 0's chats
MAX_WORDS = 14  # short answers: exact match is a fair score for them


def probe_samples(n: int = PROBES, seed: int = SEED) -> list[list[dict]]:
    """`n` [user, assistant] chats, in the order the corpus first asks them."""
    answers: dict[str, set[str]] = {}
    for messages in chat_samples(POOL, seed):
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) == 2:
            answers.setdefault(turns[0]["content"], set()).add(turns[1]["content"])
    unique = [(q, a.pop()) for q, a in answers.items() if len(a) == 1]
    chosen = [(q, a) for q, a in unique if len(a.split()) <= MAX_WORDS][:n]
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in chosen]


def write_probes(out: str | Path = "data") -> Path:
    path = Path(out) / "skills_probe.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in probe_samples()), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fmlab.tiny.skill_probes", description="write the OOD probe set")
    ap.add_argument("--out", default="data", help="folder for skills_probe.jsonl")
    print(f"{PROBES} probes -> {write_probes(ap.parse_args(argv).out)}")


if __name__ == "__main__":
    main()

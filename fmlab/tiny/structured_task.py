"""The structured-output example task: from a kids' play request, answer with the play's outline as JSON
under a schema, the way an app asks through guided generation (docs/afm-format.md §4):

    user:      Write a two-scene play about a dragon and a baker on a beach.
               + the `response format in json.` block of `OUTLINE_SCHEMA`
    assistant: {"title": "The Dragon and the Baker", "characters": ["dragon", "baker"], "setting": "beach", "scenes": 2}

Every field follows from the request: the characters (lower case, in the order named), the setting, the
scene count, and the title, named after the characters in that order. The requests come from
`fmlab.tiny.plays.generate_requests` with the task's own seed, so they are unique across the three splits.
The schema is a plain JSON schema augmented by `fmlab.data.schema` (the generator needs no pydantic).

`python -m fmlab.tiny.structured_task [--out data] [--seed 0]` writes `guided_{train,valid,test}.jsonl`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fmlab.data.schema import from_json_schema
from fmlab.tiny.play_text import PlayRequest, request_text
from fmlab.tiny.plays import generate_requests
from fmlab.tiny.splits import splits_main, write_splits

SPLITS = {"train": 600, "valid": 60, "test": 100}
FIELDS = ("title", "characters", "setting", "scenes")

# The schema as an app would write it by hand (short: the tiny tokenizer spends a token on most JSON
# characters, and every prompt carries it); `fmlab.data.schema` augments it as the toolkit does.
PLAY_OUTLINE_JSON_SCHEMA = {
    "title": "PlayOutline",
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 48},
        "characters": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2, "maxItems": 3},
        "setting": {"type": "string", "maxLength": 16},
        "scenes": {"type": "integer", "minimum": 1, "maximum": 3},
    },
    "required": list(FIELDS),
}
# The bounds make every output under the constraint finish: a model that never closes a string is cut at
# its maxLength. The longest output is 169 characters, so 176 new tokens always suffice for ASCII text.
MAX_OUTLINE_TOKENS = 176


OUTLINE_FORMAT = from_json_schema(PLAY_OUTLINE_JSON_SCHEMA)  # name "ResponsePlayOutline"
OUTLINE_SCHEMA = OUTLINE_FORMAT["json_schema"]["schema"]


def outline_title(req: PlayRequest) -> str:
    """("dragon", "owl", "baker") -> "The Dragon, the Owl and the Baker"."""
    names = ["the " + c.title() for c in req.characters]
    title = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return title[0].upper() + title[1:]


def outline(req: PlayRequest) -> dict:
    """The reference answer, keys in the schema's `x-order`."""
    return {
        "title": outline_title(req),
        "characters": list(req.characters),
        "setting": req.setting,
        "scenes": req.scenes,
    }


def outline_text(req: PlayRequest) -> str:
    return json.dumps(outline(req), ensure_ascii=False)


def sample_for(req: PlayRequest, rng: random.Random) -> list[dict]:
    """One chat in Apple's format: the request carrying the schema, then the outline."""
    return [
        {"role": "user", "content": request_text(req, rng), "response_format": OUTLINE_FORMAT},
        {"role": "assistant", "content": outline_text(req)},
    ]


def split_requests(seed: int = 0) -> dict[str, list[PlayRequest]]:
    """Each split's requests; no request (characters, setting, scenes) appears in two splits."""
    requests = generate_requests(sum(SPLITS.values()), seed=f"fmlab.guided:{seed}")
    out, start = {}, 0
    for name, size in SPLITS.items():
        out[name], start = requests[start : start + size], start + size
    return out


def split_samples(seed: int = 0) -> dict[str, list[list[dict]]]:
    return {
        name: [sample_for(req, rng) for req in requests]
        for name, requests in split_requests(seed).items()
        for rng in [random.Random(f"fmlab.guided:{seed}:{name}")]  # str seeds are stable across runs
    }


def make_splits(out: str | Path = "data", seed: int = 0) -> dict[str, Path]:
    """Write `guided_train.jsonl`, `guided_valid.jsonl`, `guided_test.jsonl` to `out`."""
    return write_splits(out, split_samples(seed), "guided_{name}.jsonl")


def main(argv: list[str] | None = None) -> None:
    splits_main("python -m fmlab.tiny.structured_task", "write the guided splits", make_splits, argv)


if __name__ == "__main__":
    main()

"""The toy dataset: kids' plays requested in chat form, the train / valid / test splits, and the metric
`play_format_score` that checks a reply against the strict format and the request.

A request names 2-3 characters, a setting and 1-3 scenes; the reply is (`fmlab.tiny.play_text` writes it):

    TITLE: The Dragon and the Baker
    CAST: DRAGON, BAKER
    SETTING: a bakery
    SCENE 1
    (The dragon and the baker meet in the bakery.)
    DRAGON: Oh no! I lost my kite in the bakery.
    BAKER: Do not worry, Dragon. We will find it together.
    SCENE 2
    (The sun is setting in the bakery.)
    ...
    THE END

`python -m fmlab.tiny.plays [--out data] [--seed 0]` writes the splits to `data/` (see `data/README.md`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from fmlab.tiny.play_text import (
    CHARACTERS,
    SETTINGS,
    SYSTEM_PROMPTS,
    PlayRequest,
    play_text,
    request_text,
)
from fmlab.tiny.splits import splits_main, write_splits

SPLITS = {"train": 1500, "valid": 150, "test": 100}
SYSTEM_FRACTION = 0.7


# --- the dataset -----------------------------------------------------------------------------------


def random_request(rng: random.Random) -> PlayRequest:
    characters = tuple(rng.sample(CHARACTERS, rng.choice((2, 2, 3))))
    return PlayRequest(characters, rng.choice(SETTINGS), rng.randint(1, 3))


def _key(req: PlayRequest) -> tuple:
    """What makes two requests the same play: the order the characters are named in does not."""
    return frozenset(req.characters), req.setting, req.scenes


def generate_requests(n: int, seed: int = 0) -> list[PlayRequest]:
    """`n` requests, no two alike (same characters, setting and scene count)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        req = random_request(rng)
        if _key(req) not in seen:
            seen.add(_key(req))
            out.append(req)
    return out


def sample_for(req: PlayRequest, rng: random.Random) -> list[dict]:
    """One chat: an optional system turn, the request, the reference play."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_FRACTION else []
    messages.append({"role": "user", "content": request_text(req, rng)})
    messages.append({"role": "assistant", "content": play_text(req, rng)})
    return messages


def _text_rng(seed: int, part: str) -> random.Random:
    # Wording is drawn apart from the requests, so a split's requests do not depend on its wording.
    return random.Random(f"fmlab.plays:{seed}:{part}")  # str seeds are hashed with sha512: stable across runs


def generate_samples(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` chat samples (lists of messages) with distinct requests; deterministic for `seed`."""
    rng = _text_rng(seed, "samples")
    return [sample_for(req, rng) for req in generate_requests(n, seed)]


def split_requests(seed: int = 0) -> dict[str, list[PlayRequest]]:
    """The requests of each split; no request appears in two splits."""
    requests, out, start = generate_requests(sum(SPLITS.values()), seed), {}, 0
    for name, size in SPLITS.items():
        out[name], start = requests[start : start + size], start + size
    return out


def split_samples(seed: int = 0) -> dict[str, list[list[dict]]]:
    return {
        name: [sample_for(req, rng) for req in requests]
        for name, requests in split_requests(seed).items()
        for rng in [_text_rng(seed, name)]
    }


def make_splits(out: str | Path = "data", seed: int = 0) -> dict[str, Path]:
    """Write `train.jsonl`, `valid.jsonl`, `test.jsonl` (one JSON list of messages per line) to `out`."""
    return write_splits(out, split_samples(seed), "{name}.jsonl")


# --- reading a request back ------------------------------------------------------------------------

_NUMBERS = {"one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}
_CHARACTER_RE = re.compile(r"\b(" + "|".join(CHARACTERS) + r")\b")
_SETTING_RE = re.compile(r"\b(" + "|".join(sorted(SETTINGS, key=len, reverse=True)) + r")\b")
# "two-scene", "3 scenes", "Three scenes please", "Scenes: 2"
_SCENES_RE = re.compile(r"\b(one|two|three|[123])[- ]scenes?\b|\bscenes?:\s*(one|two|three|[123])\b")


def last_user_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


# A typed list of characters: "a fox and a crow", "an owl, a cat and a bee", after a cue word or two long.
_ITEM = r"(?:an?|the) [a-z]+"
_LIST_RE = re.compile(
    rf"(\b(?:about|with|starring|stars?|characters:|characters are) )?({_ITEM}(?:(?:,? and |, ){_ITEM})*)"
)
_NOT_NAMES = {w for place in SETTINGS for w in place.split()} | {"play", "story", "scene", "kids", "children", "class"}


def _named_characters(text: str) -> list[tuple[int, str]]:
    """(position, name) of every character the lower-cased request names: the toy's own anywhere, and
    any other noun in a list of characters, so a name the toy does not know is still asked for."""
    found = [(m.start(1), m.group(1)) for m in _CHARACTER_RE.finditer(text)]
    for m in _LIST_RE.finditer(text):
        items = list(re.finditer(r"(?:an?|the) ([a-z]+)", m.group(2)))
        if m.group(1) or len(items) > 1:
            found += [(m.start(2) + i.start(1), i.group(1)) for i in items if i.group(1) not in _NOT_NAMES]
    return sorted(found)


def unknown_characters(prompt) -> tuple[str, ...]:
    """The characters a request names that are not among the toy's `CHARACTERS` ("crow" in "a play about
    a fox and a crow"). They are still requested: a reply must put them in its cast."""
    return tuple(c for c in parse_request(prompt).characters if c not in CHARACTERS)


def describe_request(prompt) -> str:
    """One line saying what `play_format_score` reads from a request, so a typed prompt's score can be
    checked: the characters (those the toy does not know marked), the setting and the scene count."""
    req, text = parse_request(prompt), last_user_text(prompt).lower()
    names = [c.upper() + ("" if c in CHARACTERS else " (not a toy character)") for c in req.characters]
    scenes = str(req.scenes) if _SCENES_RE.search(text) else "1 (none named)"
    return (
        f"characters: {', '.join(names) or 'none named: any cast counts'} · "
        f"setting: {req.setting or 'none of the toy settings: any counts'} · scenes: {scenes}"
    )


def parse_request(prompt) -> PlayRequest:
    """The characters (in the order named), setting and scene count a request asks for. `prompt` is the
    request text or a message list (its last user turn). Characters are the toy's own wherever named plus
    any other noun in a list of characters ("a fox and a crow"); unknown parts come back empty; scenes
    default to 1."""
    text = last_user_text(prompt).lower()
    characters = tuple(dict.fromkeys(name for _, name in _named_characters(text)))
    setting = _SETTING_RE.search(text)
    scenes = _SCENES_RE.search(text)
    return PlayRequest(
        characters, setting.group(1) if setting else "", _NUMBERS[scenes.group(1) or scenes.group(2)] if scenes else 1
    )


# --- the metric ------------------------------------------------------------------------------------

_TITLE_RE = re.compile(r"TITLE: \S.*")
_CAST_RE = re.compile(r"CAST: ([A-Z]+(?:, [A-Z]+)*)")
_SETTING_LINE_RE = re.compile(r"SETTING: (\S.*)")
_SCENE_RE = re.compile(r"SCENE (\d+)")
_DIRECTION_RE = re.compile(r"\(\S.*\)")
_DIALOGUE_RE = re.compile(r"([A-Z]+): \S.*")
END = "THE END"


def _read_play(text: str) -> dict:
    """The parts of a reply that the checks need. Blank lines and surrounding spaces are ignored. The
    header is everything before the first `SCENE` line, so a missing header line costs its own check and
    does not shift the others."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    ends = bool(lines) and lines[-1] == END
    if ends:
        lines = lines[:-1]  # a missing THE END should not also break the last scene
    first_scene = next((i for i, line in enumerate(lines) if _SCENE_RE.fullmatch(line)), len(lines))
    header, body = lines[:first_scene], lines[first_scene:]
    cast = next((m for line in header if (m := _CAST_RE.fullmatch(line))), None)
    setting = next((m for line in header if (m := _SETTING_LINE_RE.fullmatch(line))), None)
    numbers, speakers, scenes = [], set(), []  # scenes: the kinds of line in each, "d"irection or "s"peech
    for line in body:
        if m := _SCENE_RE.fullmatch(line):
            numbers.append(int(m.group(1)))
            scenes.append("")
        elif _DIRECTION_RE.fullmatch(line):
            scenes[-1] += "d"
        elif m := _DIALOGUE_RE.fullmatch(line):
            scenes[-1] += "s"
            speakers.add(m.group(1).lower())
        else:
            scenes[-1] += "?"
    return {
        "header_in_order": len(header) == 3
        and all(pattern.fullmatch(line) for pattern, line in zip((_TITLE_RE, _CAST_RE, _SETTING_LINE_RE), header)),
        "cast": [name.lower() for name in cast.group(1).split(", ")] if cast else [],
        "setting": setting.group(1).lower() if setting else None,
        "scene_numbers": numbers,
        # each scene: exactly one stage direction, first, then at least one line of dialogue
        "scenes_well_formed": bool(scenes) and all(re.fullmatch("ds+", s) for s in scenes),
        "speakers": speakers,
        "ends": ends,
    }


def play_format_checks(prompt, text: str) -> dict[str, float]:
    """The four parts of `play_format_score`, each in 0..1 (see there)."""
    req, play = parse_request(prompt), _read_play(text)
    cast, numbers = play["cast"], play["scene_numbers"]
    format_checks = [
        play["header_in_order"],
        bool(cast),
        play["setting"] is not None,
        bool(numbers) and numbers == list(range(1, len(numbers) + 1)),
        play["scenes_well_formed"],
        bool(play["speakers"]) and play["speakers"] <= set(cast),
        play["ends"],
    ]
    if req.characters:
        characters = sum(c in cast for c in req.characters) / len(req.characters)
    else:  # the request named no known character: any cast will do
        characters = float(bool(cast))
    if play["setting"] is None:
        setting = 0.0
    else:  # "a bakery", "the old bakery": the setting's word is enough
        setting = float(not req.setting or re.search(rf"\b{re.escape(req.setting)}\b", play["setting"]) is not None)
    return {
        "format": sum(format_checks) / len(format_checks),
        "characters": characters,
        "setting": setting,
        "scenes": float(len(numbers) == req.scenes),
    }


def play_format_score(prompt, text: str) -> float:
    """How well `text` follows the play format and the request in `prompt` (the request text or a message
    list, whose last user turn is used): the mean of four parts, each in 0..1 —

    - **format**: the fraction of seven checks passed: (1) the header (the lines before the first
      `SCENE`) is exactly `TITLE: ...`, `CAST: ...`, `SETTING: ...` in that order; (2) it has a cast line
      `CAST: NAME, NAME` in upper case; (3) it has a `SETTING: ...` line; (4) scenes are headed
      `SCENE 1`, `SCENE 2`, ... in order; (5) every scene opens with one stage direction in parentheses
      followed by at least one `NAME: line` of dialogue, and holds nothing else; (6) every speaker is in
      the cast; (7) the last line is `THE END`. Blank lines and surrounding spaces are ignored.
    - **characters**: the fraction of the requested characters named in the cast;
    - **setting**: 1 if the requested setting is named on the setting line;
    - **scenes**: 1 if the play has exactly the requested number of scenes.

    A reference play scores exactly 1.0; prose, an empty reply or a refusal score 0.0.
    """
    parts = play_format_checks(prompt, text)
    return sum(parts.values()) / len(parts)


def play_format_table(results):
    """Per model of a `fmlab.infer.compare.compare` result (one row per prompt and model, with its `prompt`
    and reply `text`): the mean over the prompts of each part of `play_format_checks`, and
    `play_format_score`, their mean. One row per model, in the results' order."""
    import pandas as pd

    parts = pd.DataFrame(
        [play_format_checks(p, t) for p, t in zip(results["prompt"], results["text"])], index=results.index
    )
    order = list(dict.fromkeys(results["model"]))
    table = parts.groupby(results["model"], sort=False).mean().loc[order]
    table["play_format_score"] = table.mean(axis=1)
    table.index.name = None
    return table


def main(argv: list[str] | None = None) -> None:
    splits_main("python -m fmlab.tiny.plays", "write the toy play-writing splits", make_splits, argv)


if __name__ == "__main__":
    main()

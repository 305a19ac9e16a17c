"""The toy dataset: kids' play scripts requested in chat form, in a strict, checkable format, and the
metric `play_format_score`.

A request names 2-3 characters, a setting and 1-3 scenes; the reply is:

    TITLE: The Dragon and the Baker
    CAST: DRAGON, BAKER
    SETTING: a bakery
    SCENE 1
    (The dragon peeks in at the door of the bakery.)
    DRAGON: Something smells sweet in here!
    BAKER: Fresh bread, but no fire please.
    SCENE 2
    ...
    THE END

`python -m fmlab.plays` writes the train / valid / test splits to `data/`.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

CHARACTERS = ["dragon", "baker", "robot", "cat", "pirate", "owl", "wizard", "princess", "knight", "fox",
              "rabbit", "bear", "mouse", "giant", "fairy", "unicorn", "frog", "penguin", "lion", "monkey",
              "astronaut", "dog", "elephant", "ghost", "king", "queen", "turtle", "squirrel", "witch", "chef",
              "farmer", "teacher", "dinosaur", "goat", "duck", "tiger", "panda", "snail", "bee", "whale"]
SETTINGS = ["bakery", "beach", "library", "castle", "forest", "school", "garden", "kitchen", "farm", "zoo",
            "park", "spaceship", "cave", "river", "mountain", "market", "museum", "train station", "island",
            "playground", "pond", "desert", "meadow", "lighthouse", "treehouse", "toy shop", "village",
            "circus", "swamp", "snowy hill"]
SCENE_WORDS = {1: "one", 2: "two", 3: "three"}
SYSTEM_PROMPTS = ["You are a playwright who writes short plays for children.",
                  "You write short, cheerful plays for kids.",
                  "You are a helpful assistant that writes children's plays in a strict script format."]
REQUESTS = [
    "Write a {n_word}-scene play about {a} in {s}.",
    "Can you write a play for kids with {a}, set in {s}? {n_cap} scenes please.",
    "I need a {n_word}-scene play: characters are {a}; setting: {s}.",
    "Please write a short children's play with {n} scene{plural}. Characters: {a}. Setting: {s}.",
    "Write a kids' play set in {s} starring {a}, in {n_word} scene{plural}.",
    "Make a play for children about {a}. It happens in {s} and has {n} scene{plural}.",
]
OPENINGS = ["(The {c} walks into the {s}.)", "(The {c} peeks around a corner of the {s}.)",
            "(The {c} and the {d} meet in the {s}.)", "(Morning light fills the {s}.)",
            "(The {c} is busy in the {s}.)", "(A soft wind blows through the {s}.)"]
LINES = ["Hello, {d}! What are you doing here?", "I am looking for something fun to do.",
         "Look at this {s}! It is full of surprises.", "Can you help me, {d}?", "Of course I can help you.",
         "I lost my hat somewhere in the {s}.", "Let us look for it together.", "What a wonderful day!",
         "I am a little bit scared.", "Do not worry, I am right here.", "I found it! It was under a leaf.",
         "Thank you, {d}. You are a good friend.", "Shall we have a picnic?", "I brought some snacks.",
         "Listen! Did you hear that noise?", "It is only the wind.", "Let us sing a happy song.",
         "I can dance better than anyone!", "That was the best adventure ever.", "Time to go home now."]


@dataclass(frozen=True)
class PlayRequest:
    characters: tuple[str, ...]
    setting: str
    scenes: int


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(names: list[str]) -> str:
    names = [_article(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def request_text(req: PlayRequest, rng: random.Random) -> str:
    n = req.scenes
    return rng.choice(REQUESTS).format(n=n, n_word=SCENE_WORDS[n], n_cap=SCENE_WORDS[n].capitalize(),
                                       plural="" if n == 1 else "s", a=_join(list(req.characters)),
                                       s=_article(req.setting))


def play_text(req: PlayRequest, rng: random.Random) -> str:
    names = list(req.characters)
    title = "The " + " and the ".join(c.title() for c in names[:2]) + (" and Friends" if len(names) > 2 else "")
    lines = [f"TITLE: {title}", "CAST: " + ", ".join(c.upper() for c in names), f"SETTING: {_article(req.setting)}"]
    for scene in range(1, req.scenes + 1):
        lines.append(f"SCENE {scene}")
        c, d = rng.sample(names, 2)
        lines.append(rng.choice(OPENINGS).format(c=c, d=d, s=req.setting))
        for i in range(rng.randint(2, 4)):
            speaker, other = (c, d) if i % 2 == 0 else (d, c)
            lines.append(f"{speaker.upper()}: " + rng.choice(LINES).format(d=other, s=req.setting))
    lines.append("THE END")
    return "\n".join(lines)


def random_request(rng: random.Random) -> PlayRequest:
    return PlayRequest(tuple(rng.sample(CHARACTERS, rng.choice((2, 2, 3)))), rng.choice(SETTINGS), rng.randint(1, 3))


def sample_for(req: PlayRequest, rng: random.Random) -> list[dict]:
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.7 else []
    messages.append({"role": "user", "content": request_text(req, rng)})
    messages.append({"role": "assistant", "content": play_text(req, rng)})
    return messages


def generate_samples(n: int, seed: int = 0, exclude: set | None = None) -> list[list[dict]]:
    """`n` samples with distinct requests (characters, setting, scenes), none of them in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude or ()), []
    while len(out) < n:
        req = random_request(rng)
        key = (frozenset(req.characters), req.setting, req.scenes)
        if key not in seen:
            seen.add(key)
            out.append(sample_for(req, rng))
    return out


SPLITS = {"train": 1500, "valid": 150, "test": 100}


def make_splits(out: str | Path = "data", seed: int = 0) -> dict[str, Path]:
    """Write train / valid / test JSONL with no request shared between splits."""
    samples = generate_samples(sum(SPLITS.values()), seed)
    out, paths, start = Path(out), {}, 0
    out.mkdir(parents=True, exist_ok=True)
    for name, size in SPLITS.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples[start:start + size]))
        start += size
    return paths


# --- the metric ------------------------------------------------------------------------------------

_NUMBER = {"one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}


def parse_request(prompt) -> PlayRequest:
    """Recover the requested characters, setting and scene count from a request (text or messages)."""
    if not isinstance(prompt, str):
        prompt = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    text = prompt.lower()
    characters = tuple(sorted((c for c in CHARACTERS if re.search(rf"\b{c}\b", text)), key=text.index))
    setting = next((s for s in sorted(SETTINGS, key=len, reverse=True) if re.search(rf"\b{s}\b", text)), "")
    m = re.search(r"\b(one|two|three|1|2|3)[- ]scene", text) or re.search(r"\b(one|two|three|1|2|3)\b scenes?", text)
    return PlayRequest(characters, setting, _NUMBER[m.group(1)] if m else 1)


def _format_checks(lines: list[str]) -> tuple[list[bool], list[str], list[int]]:
    """(checks, cast, scene numbers) of the strict format."""
    cast = [c.strip().lower() for c in lines[1][5:].split(",")] if len(lines) > 1 and lines[1].startswith("CAST: ") else []
    scenes, speakers, ok_scenes = [], set(), True
    body = lines[3:-1] if len(lines) > 4 else []
    current = None
    for line in body:
        m = re.fullmatch(r"SCENE (\d+)", line)
        if m:
            scenes.append(int(m.group(1)))
            current = {"direction": False, "dialogue": 0}
            continue
        if current is None:
            ok_scenes = False
            continue
        if re.fullmatch(r"\(.+\)", line) and current["dialogue"] == 0:
            current["direction"] = True
        elif re.fullmatch(r"[A-Z][A-Z ]*: .+", line) and current["direction"]:
            current["dialogue"] += 1
            speakers.add(line.split(":", 1)[0].lower())
        else:
            ok_scenes = False
    checks = [
        len(lines) > 0 and lines[0].startswith("TITLE: ") and len(lines[0]) > 7,
        bool(cast),
        len(lines) > 2 and lines[2].startswith("SETTING: "),
        bool(scenes) and scenes == list(range(1, len(scenes) + 1)) and ok_scenes,
        bool(speakers) and speakers <= set(cast),
        bool(lines) and lines[-1] == "THE END",
    ]
    return checks, cast, scenes


def play_format_score(prompt, text: str) -> float:
    """Score a reply in 0..1: the mean of
    - format: six checks (title line, cast line, setting line, scenes numbered 1..n each opening with a
      stage direction then `NAME: line` dialogue, every speaker in the cast, last line `THE END`), as a
      fraction;
    - characters: the fraction of requested characters in the cast;
    - setting: the requested setting on the setting line;
    - scenes: the requested number of scenes.
    A reference reply scores 1.0; prose scores near 0."""
    req = parse_request(prompt)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    checks, cast, scenes = _format_checks(lines)
    format_score = sum(checks) / len(checks)
    characters = sum(c in cast for c in req.characters) / max(len(req.characters), 1)
    setting = float(len(lines) > 2 and lines[2].startswith("SETTING: ") and req.setting in lines[2].lower())
    scene_count = float(len(scenes) == req.scenes)
    return (format_score + characters + setting + scene_count) / 4


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="write the toy play-writing splits")
    ap.add_argument("--out", default="data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name, path in make_splits(args.out, args.seed).items():
        print(f"{name}: {path}")

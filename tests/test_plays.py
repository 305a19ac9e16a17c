"""The toy play dataset and its metric: deterministic, parseable, scored 1.0 when right and lower when not,
and the committed splits are exactly the generator's output."""

import json
import random
from pathlib import Path

import pytest

from fmlab.tiny.play_text import play_text, request_text
from fmlab.tiny.plays import (
    SPLITS,
    PlayRequest,
    generate_requests,
    generate_samples,
    make_splits,
    parse_request,
    play_format_checks,
    play_format_score,
    play_format_table,
    split_requests,
    split_samples,
)
from fmlab.tiny.stories import story

DATA = Path(__file__).resolve().parent.parent / "data"
REQUEST = PlayRequest(("dragon", "baker"), "bakery", 2)
PROMPT = "Write a two-scene play about a dragon and a baker in a bakery."


def test_generator_is_deterministic():
    assert generate_samples(50, seed=3) == generate_samples(50, seed=3)
    assert generate_samples(50, seed=3) != generate_samples(50, seed=4)
    assert split_samples(1) == split_samples(1)


def test_reference_plays_score_one():
    samples = generate_samples(400, seed=1)
    assert all(play_format_score(s, s[-1]["content"]) == 1.0 for s in samples)
    assert 0.6 < sum(s[0]["role"] == "system" for s in samples) / len(samples) < 0.8


def test_plays_are_short_and_follow_the_request():
    for req, s in zip(generate_requests(300, seed=2), generate_samples(300, seed=2)):
        lines = s[-1]["content"].splitlines()
        assert lines[1] == "CAST: " + ", ".join(c.upper() for c in req.characters)
        assert lines[2].endswith(" " + req.setting)
        scenes = [i for i, line in enumerate(lines) if line.startswith("SCENE ")] + [len(lines) - 1]
        assert len(scenes) - 1 == req.scenes
        speakers = []
        for a, b in zip(scenes, scenes[1:]):
            scene = [line.split(":")[0] for line in lines[a + 2 : b]]  # after SCENE n and the direction
            assert 2 <= len(scene) <= 4
            assert all(x != y for x, y in zip(scene, scene[1:]))  # no one speaks twice in a row
            speakers += scene
        assert {c.upper() for c in req.characters} <= set(speakers)  # everyone in the cast speaks
        assert 40 <= len(s[-1]["content"].split()) <= 160


def _corruptions(good: str, rng: random.Random) -> dict[str, str]:
    lines = good.splitlines()
    first_direction = next(i for i, line in enumerate(lines) if line.startswith("("))
    return {
        "no THE END": "\n".join(lines[:-1]),
        "wrong scene count": play_text(PlayRequest(REQUEST.characters, REQUEST.setting, 3), rng),
        "missing character": good.replace("CAST: DRAGON, BAKER", "CAST: DRAGON"),
        "wrong setting": good.replace("SETTING: a bakery", "SETTING: a beach"),
        "misnumbered scenes": good.replace("SCENE 2", "SCENE 3"),
        "no stage direction": "\n".join(lines[:first_direction] + lines[first_direction + 1 :]),
        "speaker not in cast": good.replace("DRAGON:", "WIZARD:", 1),
        "no title": "\n".join(lines[1:]),
        "lower-case cast": good.replace("CAST: DRAGON, BAKER", "CAST: dragon, baker"),
        "prose": story(rng, "dragon", "bakery"),
        "empty": "",
    }


def test_corruptions_score_lower():
    rng = random.Random(0)
    good = play_text(REQUEST, rng)
    assert play_format_score(PROMPT, good) == 1.0
    for name, text in _corruptions(good, rng).items():
        assert play_format_score(PROMPT, text) < 1.0, name
    assert play_format_score(PROMPT, story(rng, "dragon", "bakery")) < 0.3
    assert play_format_score(PROMPT, "") == 0.0


def test_score_parts_and_tolerated_whitespace():
    good = play_text(REQUEST, random.Random(1))
    assert play_format_checks(PROMPT, good) == {"format": 1.0, "characters": 1.0, "setting": 1.0, "scenes": 1.0}
    assert play_format_checks(PROMPT, good.replace("CAST: DRAGON, BAKER", "CAST: DRAGON"))["characters"] == 0.5
    no_title = "\n".join(good.splitlines()[1:])  # costs one of seven format checks, nothing else
    assert play_format_checks(PROMPT, no_title) == {"format": 6 / 7, "characters": 1.0, "setting": 1.0, "scenes": 1.0}
    assert play_format_score(PROMPT, "\n" + good.replace("\n", "\n\n") + "\n  ") == 1.0  # blank lines are fine
    messages = [{"role": "system", "content": "You write plays about a wizard."}, {"role": "user", "content": PROMPT}]
    assert play_format_score(messages, good) == 1.0  # the last user turn is the request


@pytest.mark.parametrize("name", list(SPLITS))
def test_parse_request_recovers_every_request_of_a_split(name):
    requests, samples = split_requests(0)[name], split_samples(0)[name]
    assert [parse_request(s) for s in samples] == requests


def test_parse_request_reads_every_wording():
    rng = random.Random(5)
    for req in generate_requests(2000, seed=5):
        assert parse_request(request_text(req, rng)) == req


def test_committed_splits_are_the_generator_output(tmp_path):
    make_splits(tmp_path, seed=0)
    keys = {}
    for name, size in SPLITS.items():
        committed = (DATA / f"{name}.jsonl").read_bytes()
        assert committed == (tmp_path / f"{name}.jsonl").read_bytes(), (
            f"data/{name}.jsonl is stale: run `python -m fmlab.tiny.plays`"
        )
        samples = [json.loads(line) for line in committed.decode().splitlines()]
        assert len(samples) == size
        keys[name] = {(frozenset(r.characters), r.setting, r.scenes) for r in map(parse_request, samples)}
        assert len(keys[name]) == size
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
    train_requests = {s[-2]["content"] for s in split_samples(0)["train"]}
    assert not train_requests & {s[-2]["content"] for s in split_samples(0)["test"]}


def test_play_format_table_averages_each_part_per_model():
    import pandas as pd

    good = play_text(REQUEST, random.Random(0))
    results = pd.DataFrame(
        {
            "prompt": [PROMPT, PROMPT, PROMPT, PROMPT],
            "model": ["base", "adapter", "base", "adapter"],
            "text": ["Once upon a time.", good, "", good],
        }
    )
    table = play_format_table(results)
    assert list(table.index) == ["base", "adapter"]
    assert list(table.columns) == ["format", "characters", "setting", "scenes", "play_format_score"]
    assert table.loc["adapter", "play_format_score"] == pytest.approx(play_format_score(PROMPT, good))
    assert table.loc["base", "play_format_score"] == 0.0
    assert table["play_format_score"].tolist() == pytest.approx(table.iloc[:, :4].mean(axis=1).tolist())

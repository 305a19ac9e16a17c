"""The toy dataset and its metric."""
import json
import random

from fmlab.plays import (SPLITS, PlayRequest, generate_samples, make_splits, parse_request, play_format_score,
                         play_text)
from fmlab.corpus import story


def test_generator_is_deterministic():
    assert generate_samples(50, seed=3) == generate_samples(50, seed=3)
    assert generate_samples(50, seed=3) != generate_samples(50, seed=4)


def test_reference_answers_score_one_and_requests_parse():
    for messages in generate_samples(300, seed=1):
        prompt, reply = messages[-2]["content"], messages[-1]["content"]
        assert play_format_score(prompt, reply) == 1.0, (prompt, reply)
        req = parse_request(messages)
        assert f"SETTING: a{'n' if req.setting[0] in 'aeiou' else ''} {req.setting}" in reply
        assert reply.count("SCENE ") == req.scenes


def test_corruptions_score_lower():
    rng = random.Random(0)
    req = PlayRequest(("dragon", "baker"), "bakery", 2)
    prompt = "Write a two-scene play about a dragon and a baker in a bakery."
    good = play_text(req, rng)
    lines = good.splitlines()
    corrupted = {
        "no end": "\n".join(lines[:-1]),
        "wrong scene count": play_text(PlayRequest(req.characters, req.setting, 3), rng),
        "missing character": good.replace("CAST: DRAGON, BAKER", "CAST: DRAGON"),
        "wrong setting": good.replace("SETTING: a bakery", "SETTING: a beach"),
        "prose": story(rng, "dragon", "bakery"),
        "empty": "",
    }
    assert play_format_score(prompt, good) == 1.0
    for name, text in corrupted.items():
        assert play_format_score(prompt, text) < 1.0, name
    assert play_format_score(prompt, corrupted["prose"]) < 0.3
    assert play_format_score(prompt, "") == 0.0


def test_committed_splits_are_the_generator_output(tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data"
    make_splits(tmp_path, seed=0)
    requests = {}
    for name, size in SPLITS.items():
        committed = (data / f"{name}.jsonl").read_bytes()
        assert committed == (tmp_path / f"{name}.jsonl").read_bytes(), f"data/{name}.jsonl is stale"
        samples = [json.loads(line) for line in committed.decode().splitlines()]
        assert len(samples) == size
        requests[name] = {parse_request(s) for s in samples}
    assert not requests["train"] & requests["test"] and not requests["train"] & requests["valid"]

"""The one acceptance-and-speedup measurement (fmlab.infer.acceptance) on tiny random models."""

import pytest
import torch
from conftest import sharp

from fmlab.infer.acceptance import decode_cost_ratio, measure_acceptance, sweep_k
from fmlab.infer.generate import generate_ids
from fmlab.infer.sampling import Sampling
from fmlab.model.config import preset
from fmlab.model.transformer import build_model


@pytest.fixture(scope="module")
def pair():
    target = sharp(build_model(preset("tiny"), seed=0).eval())
    draft = sharp(build_model(preset("tiny-draft"), seed=1).eval())
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(2, 512, (5,), generator=g).tolist() for _ in range(3)]
    return target, draft, prompts


def test_a_draft_equal_to_the_target_is_always_accepted(pair):
    target, _, prompts = pair
    m = measure_acceptance(target, target, prompts, 3, 10)
    plain = [generate_ids(target, [p], set(), 10, Sampling(temperature=0.0))[0][0] for p in prompts]
    assert m["acceptance_rate"] == 1.0 and m["identical"] and m["outputs"] == plain
    assert m["new_tokens"] == sum(len(o) for o in plain) == 30
    assert m["speedup"] == pytest.approx(m["plain_seconds"] / m["speculative_seconds"])
    assert len(m["per_prompt"]) == 3 and all(r["latency_s"] > 0 for r in m["per_prompt"])
    assert m["tokens_per_round"] == pytest.approx(m["new_tokens"] / m["rounds"])


def test_untimed_and_given_plain_time(pair):
    target, draft, prompts = pair
    untimed = measure_acceptance(target, draft, prompts, 2, 8, time_plain=False)
    assert untimed["speedup"] is None and untimed["plain_seconds"] is None and untimed["identical"] is None
    assert (
        0 <= untimed["acceptance_rate"] <= 1 and untimed["proposed"] <= 2 * untimed["rounds"]
    )  # the last rounds count fewer (as tamm)
    given = measure_acceptance(target, draft, prompts, 2, 8, plain_seconds=2.0)
    assert given["plain_seconds"] == 2.0 and given["speedup"] == pytest.approx(2.0 / given["speculative_seconds"])
    assert given["outputs"] == untimed["outputs"]  # greedy: the same tokens however it is timed


def test_sweep_over_k_shares_one_plain_decoding(pair):
    target, draft, prompts = pair
    rows = sweep_k(target, draft, prompts, [1, 3], 8, repeats=2, warmup=1, cost_ratio=0.5)
    assert [r["k"] for r in rows] == [1, 3]
    assert len({r["plain_seconds"] for r in rows}) == 1
    assert all(r["identical"] for r in rows)  # T = 0: token for token the plain greedy output
    for r in rows:
        assert r["expected_speedup"] == pytest.approx(r["tokens_per_round"] / (r["k"] * 0.5 + 1))
        assert r["proposed"] <= r["k"] * r["rounds"]


def test_decode_cost_ratio(pair):
    target, draft, prompts = pair
    cost = decode_cost_ratio(target, draft, prompts[:2], 6)
    assert cost["cost_ratio"] == pytest.approx(cost["draft_s_per_token"] / cost["target_s_per_token"])
    assert cost["cost_ratio"] > 0

"""Speculative decoding parity with tamm 0.1.0's `SpeculativeDecodingTokenGenerator` (the test oracle;
fmlab never imports tamm), same draft and target on both sides.

- T = 0, the shipped fmlab-tiny base and draft on a shipped prompt: the same tokens (tamm: greedy
  next-token logic, a greedy draft generator, Apple's stop ids). The suggested and accepted counts
  are counted as tamm counts them, also at the end of a reply (tamm shortens the last rounds).
- Sampled: the two draw their random numbers differently (tamm seeds a fresh torch generator per draw
  from a Python `random.Random`; fmlab uses one torch generator), so matched seeds cannot match draws.
  Instead, over many seeded runs, the first round's number of accepted drafts and the first token must
  follow the exact distributions, computed here by enumerating the draft's choices: P(accept d_1) =
  sum min(p_1, q_1), P(accept d_1 and d_2) = sum_x min(p_1, q_1)(x) * sum min(p_2(.|x), q_2(.|x)), and
  the first token ~ p_1 (speculative sampling is exact). Small random models keep this fast.
"""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("tamm")
import tamm.utils.json as tamm_json
from tamm.generation.token_generators.greedy import GreedyNextTokenLogic, GreedyTokenGenerator
from tamm.generation.token_generators.sampling import SamplingNextTokenLogic, SamplingTokenGenerator
from tamm.generation.token_generators.speculative import SpeculativeDecodingTokenGenerator

from fmlab.checkpoints.apple_format import to_apple
from fmlab.checkpoints.assets import (
    BASE_CONFIG,
    BASE_WEIGHTS,
    DRAFT_CONFIG,
    DRAFT_WEIGHTS,
    REPO_ASSETS,
    load_base,
    load_draft,
    load_tokenizer,
)
from fmlab.data.chat_template import encode_prompt
from fmlab.infer.sampling import Sampling, probabilities
from fmlab.infer.speculative import speculative_generate
from fmlab.model.config import preset, to_tamm_json
from fmlab.model.transformer import build_model

ROOT = Path(__file__).resolve().parents[1]
K = 4  # drafts per round at T = 0


def tamm_from_assets(config: str, weights: str):
    model = tamm_json.loads((REPO_ASSETS / config).read_text()).create_model()
    model.load_state_dict(torch.load(REPO_ASSETS / weights, weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def greedy_runs():
    """(fmlab tokens, fmlab stats, tamm output) at T = 0 for the first shipped test prompt whose rounds
    include one with every draft rejected and one with every draft accepted (so the checks below are
    not vacuous whichever base and draft are shipped)."""
    tok = load_tokenizer()
    stop = [tok.eos_id, tok.turn_end_id]  # Apple's generate stops on both
    fm_base, fm_draft = load_base().eval(), load_draft().eval()
    for line in (ROOT / "data" / "test.jsonl").read_text().splitlines()[:20]:
        prompt = encode_prompt(tok, [m for m in json.loads(line) if m["role"] != "assistant"])
        tokens, stats = speculative_generate(
            fm_base, fm_draft, prompt, set(stop), 20, K, Sampling(temperature=0.0), "f32"
        )
        if {0, K} <= set(stats["accepted_per_round"]):
            break
    draft = GreedyTokenGenerator(tamm_from_assets(DRAFT_CONFIG, DRAFT_WEIGHTS), eos_id=stop, pad_id=tok.pad_id)
    target = tamm_from_assets(BASE_CONFIG, BASE_WEIGHTS)
    generator = SpeculativeDecodingTokenGenerator(target, GreedyNextTokenLogic(), draft, max_draft_tokens=K)
    out = generator.generate(torch.tensor([prompt]), max_new_tokens=20, seed=0)
    return tok, tokens, stats, out


def test_greedy_tokens_match_tamm(greedy_runs):
    tok, tokens, stats, out = greedy_runs
    expected = [t for t in out.token_ids[0].tolist() if t != tok.pad_id]
    assert tokens == expected, f"fmlab {tok.decode(tokens)!r}\ntamm  {tok.decode(expected)!r}"
    accepted = out.accepted_token_counts[0].tolist()
    assert 0 in accepted and K in accepted  # not vacuous: rounds with every draft rejected and accepted


def test_greedy_suggested_and_accepted_counts_match_tamm(greedy_runs):
    _, _, stats, out = greedy_runs
    assert (stats["proposed"], stats["accepted"]) == (
        int(out.suggested_token_counts.sum()),
        int(out.accepted_token_counts.sum()),
    )


# --- sampled: the accept/resample rule against the exact distributions --------------------------

VOCAB, RUNS, DRAFTS = 32, 200, 2
SAMPLED = Sampling(temperature=1.0, top_k=None)


def _pair(name: str, seed: int):
    """An fmlab model with sharpened random weights (moderately peaked next-token distributions) and the
    same weights in tamm's AFMTextV7."""
    cfg = preset(name, vocab_size=VOCAB, kv_quant=False)
    fm = build_model(cfg, seed=seed).eval()
    with torch.no_grad():
        fm.embedding.weight.mul_(3.0)
    tm = tamm_json.loads(json.dumps(to_tamm_json(cfg))).create_model()
    tm.load_state_dict(to_apple(fm.state_dict(), cfg), strict=True)
    return fm, tm.eval()


@pytest.fixture(scope="module")
def sampled():
    (ft, tt), (fd, td) = _pair("tiny", 0), _pair("tiny-draft", 1)
    prompt = [1] + torch.randint(5, VOCAB, (7,), generator=torch.Generator().manual_seed(0)).tolist()
    x = torch.tensor([prompt])
    with torch.no_grad():  # exact first-round distributions, enumerating the first draft token
        p1, q1 = probabilities(ft(x)[0, -1], SAMPLED), probabilities(fd(x)[0, -1], SAMPLED)
        both = torch.cat([x.repeat(VOCAB, 1), torch.arange(VOCAB)[:, None]], 1)
        p2, q2 = probabilities(ft(both)[:, -1], SAMPLED), probabilities(fd(both)[:, -1], SAMPLED)
    first = torch.minimum(p1, q1)
    two = float((first * torch.minimum(p2, q2).sum(-1)).sum())
    accepted = [1 - float(first.sum()), float(first.sum()) - two, two]
    fmlab_runs, tamm_runs = Counter(), Counter()
    for seed in range(RUNS):
        s = Sampling(temperature=1.0, top_k=None, seed=seed)
        # as tamm below: room for a whole first round, whose accepted drafts are counted
        tokens, stats = speculative_generate(ft, fd, prompt, set(), DRAFTS + 1, DRAFTS, s, "f32")
        fmlab_runs[("accepted", stats["accepted_per_round"][0])] += 1
        fmlab_runs[("first", tokens[0])] += 1
        draft = SamplingTokenGenerator(td, eos_id=[1], pad_id=0, temperature=1.0)
        generator = SpeculativeDecodingTokenGenerator(tt, SamplingNextTokenLogic(temperature=1.0), draft, DRAFTS)
        out = generator.generate(x, max_new_tokens=DRAFTS + 1, seed=seed)  # its first round drafts DRAFTS
        tamm_runs[("accepted", int(out.accepted_token_counts[0, 0]))] += 1
        tamm_runs[("first", int(out.token_ids[0, 0]))] += 1
    return accepted, p1, {"fmlab": fmlab_runs, "tamm": tamm_runs}


def _within(count: int, p: float, n: int) -> bool:
    """A binomial count within 4.5 standard deviations (+1 for tiny p): fails by chance ~1e-5 per category."""
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("side", ["fmlab", "tamm"])
def test_sampled_accepted_drafts_follow_the_exact_distribution(sampled, side):
    accepted, _, runs = sampled
    assert 0.15 < accepted[0] < 0.85  # not vacuous: drafts are neither always nor never accepted
    counts = [runs[side][("accepted", n)] for n in range(DRAFTS + 1)]
    assert sum(counts) == RUNS
    assert all(_within(c, p, RUNS) for c, p in zip(counts, accepted)), f"{side} {counts}, exact {accepted}"


@pytest.mark.parametrize("side", ["fmlab", "tamm"])
def test_sampled_first_token_follows_the_target(sampled, side):
    _, p1, runs = sampled
    counts = [runs[side][("first", t)] for t in range(VOCAB)]
    assert all(_within(c, float(p), RUNS) for c, p in zip(counts, p1)), side
    tv = 0.5 * sum(abs(c / RUNS - float(p)) for c, p in zip(counts, p1))
    assert tv < 0.15, f"{side}: total variation {tv:.3f} from the target's distribution"


def test_sampled_fmlab_and_tamm_agree(sampled):
    """The two samplers side by side: accepted-draft frequencies within sampling noise of each other."""
    _, _, runs = sampled
    for n in range(DRAFTS + 1):
        a, b = runs["fmlab"][("accepted", n)], runs["tamm"][("accepted", n)]
        pooled = (a + b) / (2 * RUNS)
        assert abs(a - b) <= 4.5 * math.sqrt(2 * RUNS * pooled * (1 - pooled)) + 1, (n, a, b)

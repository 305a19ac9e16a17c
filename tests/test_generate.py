"""Generation invariants: cached decode = full-forward argmax path, stops, left-padded batches,
speculative greedy = greedy, and speculative sampling matches the target distribution."""

import pytest
import torch
from conftest import sharp

from fmlab.errors import FmlabError
from fmlab.infer.generate import generate_ids
from fmlab.infer.sampling import Sampling, probabilities
from fmlab.infer.speculative import speculative_generate
from fmlab.model.config import preset
from fmlab.model.transformer import build_model

GREEDY = Sampling(temperature=0.0)


@pytest.fixture
def target(tiny_model):
    return sharp(tiny_model)


@pytest.fixture
def draft():
    return sharp(build_model(preset("tiny-draft"), seed=1).eval())


def full_forward_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_greedy_equals_full_forward_argmax(target):
    prompt = [1, 5, 9, 33, 7]
    out, reasons, _ = generate_ids(target, [prompt], stop=set(), max_new_tokens=12, sampling=GREEDY)
    assert out[0] == full_forward_greedy(target, prompt, 12) and reasons == ["length"]


def test_stops_on_stop_token(target):
    prompt = [1, 5, 9, 33, 7]
    free = full_forward_greedy(target, prompt, 8)
    out, reasons, _ = generate_ids(target, [prompt], stop={free[3]}, max_new_tokens=8, sampling=GREEDY)
    assert out[0] == free[: free.index(free[3]) + 1] and reasons == ["stop"]


def test_left_padded_batch_equals_one_by_one(target):
    prompts = [[1, 5, 9], [1, 40, 41, 42, 43, 44, 45], [1, 7]]
    batch, _, _ = generate_ids(target, prompts, stop=set(), max_new_tokens=6, sampling=GREEDY)
    for p, row in zip(prompts, batch):
        assert row == generate_ids(target, [p], stop=set(), max_new_tokens=6, sampling=GREEDY)[0][0]


def test_batch_drops_finished_rows_and_still_equals_one_by_one(target, monkeypatch):
    from fmlab.model.kv_cache import KVCache

    prompts = [[1, 5 + i, 9, 3 * i + 2] for i in range(8)]
    free = [full_forward_greedy(target, p, 12) for p in prompts]
    stop = {free[0][1], free[1][3], free[2][5]}  # (the sharp model repeats) rows 0-2 stop, 3-7 reach the limit
    kept, keep_rows = [], KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, rows: kept.append(len(rows)) or keep_rows(self, rows))
    streamed = {}
    batch, reasons, _ = generate_ids(
        target, prompts, stop, 12, GREEDY, on_token=lambda i, t: streamed.setdefault(i, []).append(t)
    )
    assert kept == [5]  # the batch dropped its three finished rows and decoded the rest to the end
    for p, row, reason in zip(prompts, batch, reasons):
        alone, why, _ = generate_ids(target, [p], stop, 12, GREEDY)
        assert row == alone[0] and reason == why[0]
    assert streamed == dict(enumerate(batch))  # callbacks name each row's prompt, before and after


def test_context_overflow_is_a_clear_error(target):
    with pytest.raises(FmlabError, match="exceeds the model's context"):
        generate_ids(target, [[1] * 10], stop=set(), max_new_tokens=target.config.context_length)


@pytest.mark.parametrize("same", [False, True], ids=["random-draft", "draft-is-target"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_greedy(target, draft, same, k):
    prompt = [1, 5, 9, 33, 7, 100]
    plain = generate_ids(target, [prompt], stop=set(), max_new_tokens=20, sampling=GREEDY)[0][0]
    spec, stats = speculative_generate(
        target, target if same else draft, prompt, stop=set(), max_new_tokens=20, num_draft_tokens=k, sampling=GREEDY
    )
    assert spec == plain
    assert stats["proposed"] > 0
    if same:
        assert stats["acceptance_rate"] == 1.0


def test_speculative_stops_like_greedy(target, draft):
    prompt = [1, 5, 9, 33, 7]
    free = full_forward_greedy(target, prompt, 10)
    spec, _ = speculative_generate(target, draft, prompt, stop={free[4]}, max_new_tokens=10, sampling=GREEDY)
    assert spec == free[: free.index(free[4]) + 1]


@torch.no_grad()
def test_speculative_sampling_matches_target_distribution():
    """Over many seeds, the first two sampled tokens follow the target's joint distribution (tiny vocab)."""
    cfg = preset("tiny", vocab_size=6)
    target = build_model(cfg, seed=0).eval()
    draft = build_model(preset("tiny-draft", vocab_size=6), seed=3).eval()
    with torch.no_grad():  # spread-out distributions that differ between draft and target
        target.embedding.weight.mul_(2)
        draft.embedding.weight.mul_(2)
    s = Sampling(temperature=1.0, top_k=None)
    prompt = [1, 2, 3]

    def joint(model):  # exact joint distribution of the next two tokens
        p1 = probabilities(model(torch.tensor([prompt]))[0, -1], s)
        return torch.stack([p1[a] * probabilities(model(torch.tensor([prompt + [a]]))[0, -1], s) for a in range(6)])

    joint_target, joint_draft = joint(target), joint(draft)
    assert 0.5 * (joint_target - joint_draft).abs().sum() > 0.3  # so the test can tell them apart
    n = 2000
    counts = torch.zeros(6, 6)
    for seed in range(n):
        out, _ = speculative_generate(
            target,
            draft,
            prompt,
            stop=set(),
            max_new_tokens=2,
            num_draft_tokens=2,
            sampling=Sampling(temperature=1.0, top_k=None, seed=seed),
        )
        counts[out[0], out[1]] += 1
    empirical = counts / n
    tv = 0.5 * (empirical - joint_target).abs().sum()
    assert tv < 0.06, f"total variation {tv:.3f}"  # sampling noise at n=2000 is about 0.02


PADDED = 8  # vocabulary rows past a tokenizer's pieces, as the embedded base pads 8,000 pieces to 8,192
PROMPT = [1, 5, 9, 33, 7]


@pytest.fixture
def padding_favoured(tiny_model):
    """A model whose padded vocabulary rows beat every real token after the test prompt, as an adapter can
    make them (a greedy f32 demo once picked one and the tokenizer could not decode it)."""
    model = sharp(tiny_model)
    with torch.no_grad():
        h = model(torch.tensor([PROMPT]), return_hidden=True)[0, -1]
        best = model.logits(h).max()
        model.embedding.weight[-PADDED:] = 2 * best.abs() * h / h.square().sum()
    return model


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(temperature=1.0, top_k=None)], ids=["greedy", "sampled"])
def test_padded_vocabulary_rows_are_never_generated(padding_favoured, draft, sampling):
    vocab = padding_favoured.config.vocab_size
    real = vocab - PADDED
    assert generate_ids(padding_favoured, [PROMPT], set(), 6, GREEDY)[0][0][0] >= real  # the test bites
    out = generate_ids(padding_favoured, [PROMPT], set(), 12, sampling, vocab_limit=real)[0][0]
    spec, _ = speculative_generate(padding_favoured, draft, PROMPT, set(), 12, 3, sampling, "f32", vocab_limit=real)
    assert max(out + spec) < real
    if sampling.greedy:  # the masked argmax of the full forward, token by token
        ids = list(PROMPT)
        for _ in range(12):
            ids.append(int(padding_favoured(torch.tensor([ids]))[0, -1, :real].argmax()))
        assert out == spec == ids[len(PROMPT) :]

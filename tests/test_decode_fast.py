"""The fast decoding paths compute what the reference paths compute: the fused RoPE, the static-shape
cache attention, the compiled decode step (greedy tokens identical, logits within float tolerance),
compiled speculative decoding, and the branch-free KV quantiser under torch.compile."""

import pytest
import torch
from conftest import sharp
from helpers import randomize_lora

from fmlab.infer.generate import decode_one, extend, generate_ids, new_cache, prefill
from fmlab.infer.sampling import Sampling
from fmlab.infer.speculative import speculative_generate
from fmlab.model.config import preset
from fmlab.model.transformer import apply_rope, build_model, rope_tables, rotate, rotation_tables

GREEDY = Sampling(temperature=0.0)


@pytest.fixture
def quantised(tiny_model):
    """The tiny model with calibrated int8 KV ranges, so the quantiser is part of every path."""
    with torch.no_grad():
        for block in tiny_model.layers:
            if block.attn.kv_quant:
                block.attn.k_range.copy_(torch.tensor([-3.0, 3.0]))
                block.attn.v_range.copy_(torch.tensor([-1.0, 1.0]))
    return sharp(tiny_model)


def test_fused_rope_equals_reference_bit_for_bit():
    x = torch.randn(2, 7, 3, 16)  # (B, T, heads, hd)
    positions = torch.randint(0, 4000, (2, 7))
    reference = apply_rope(x.transpose(1, 2), *rope_tables(positions, 16, 500000.0)).transpose(1, 2)
    assert torch.equal(rotate(x, rotation_tables(positions, 16, 500000.0)), reference)


def test_decode_over_all_slots_equals_full_forward(quantised):
    """Decode steps and a speculative-sized block attend over the whole static cache with a mask."""
    x = torch.randint(1, 512, (2, 16))
    full = quantised(x)
    cache = new_cache(quantised, 2, 40, "f32", compiled=True)  # rounded up: unused slots masked
    steps = [quantised(x[:, :6], cache=cache)]
    steps += [decode_one(quantised, x[:, t], cache)[:, None] for t in range(6, 10)]
    steps.append(extend(quantised, x[:, 10:], cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_decode_equals_eager(quantised):
    torch._dynamo.reset()
    x = torch.randint(1, 512, (1, 12))
    caches = [new_cache(quantised, 1, 12, "f32", compiled=True) for _ in range(2)]
    logits = []
    with torch.inference_mode():
        for compiled, cache in zip((False, True), caches):
            out = [prefill(quantised, x[:, :5], None, cache)]
            out += [decode_one(quantised, x[:, t], cache, compiled) for t in range(5, 12)]
            logits.append(torch.stack(out, 1))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
    prompts = [[1, 5, 9, 33, 7], [1, 40, 41]]  # left-padded batch; f32: bf16 may break near-ties either way
    eager = generate_ids(quantised, prompts, set(), 16, GREEDY, precision="f32")[0]
    assert generate_ids(quantised, prompts, set(), 16, GREEDY, precision="f32", compile_model=True)[0] == eager
    wrapped = torch.compile(quantised)  # the CLI's wrapper
    assert generate_ids(wrapped, prompts, set(), 16, GREEDY, precision="f32")[0] == eager
    randomize_lora(quantised, 1.0)  # an adapter update between calls is seen by the next one
    changed = generate_ids(quantised, prompts, set(), 16, GREEDY, precision="f32")[0]
    assert changed != eager
    assert generate_ids(quantised, prompts, set(), 16, GREEDY, precision="f32", compile_model=True)[0] == changed


@pytest.mark.slow
def test_compiled_speculative_equals_greedy(quantised):
    torch._dynamo.reset()
    draft = sharp(build_model(preset("tiny-draft"), seed=1).eval())
    prompt = [1, 5, 9, 33, 7, 100]
    plain = generate_ids(quantised, [prompt], set(), 20, GREEDY)[0][0]
    spec, stats = speculative_generate(quantised, draft, prompt, set(), 20, 3, GREEDY, compile_model=True)
    assert spec == plain and stats["proposed"] > 0


def test_compiled_fake_quant_is_the_aten_kernel_bit_for_bit():
    from fmlab.model.transformer import fake_quant_int8

    x = torch.randn(5000) * 3
    for r in ([-2.0, 2.5], [-0.37, 0.9]):
        value_range = torch.tensor(r)
        with torch.no_grad():
            assert torch.equal(torch.compile(fake_quant_int8)(x, value_range), fake_quant_int8(x, value_range))


def test_compiled_step_takes_more_graphs_than_dynamos_default(quantised, monkeypatch):
    """A session compiles one decode-step graph per model, token count, cache bucket and precision (a
    k sweep alone makes nine): `compiled_step` lifts dynamo's per-function limit (8 by default; 1 here,
    so that three graphs show it) instead of failing with "recompile limit exceeded"."""
    import fmlab.infer.generate as generate

    torch._dynamo.reset()
    monkeypatch.setattr(generate, "_compiled_step", None)
    # dynamo's own patch, not monkeypatch: monkeypatch's undo deletes the attribute, which hides the
    # option from dynamo for the rest of the session
    with torch._dynamo.config.patch(recompile_limit=1), torch.inference_mode():
        cache = new_cache(quantised, 1, 16, "f32", compiled=True)
        prefill(quantised, torch.tensor([[1, 5, 9]]), None, cache)
        for T in (1, 2, 3):
            extend(quantised, torch.full((1, T), 7), cache, compiled=True)
        assert torch._dynamo.config.recompile_limit >= generate.STEP_GRAPHS

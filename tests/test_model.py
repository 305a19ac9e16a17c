"""Invariants of the AFM model: exact parameter counts, RoPE convention, cache and packing equivalences."""

import torch

from fmlab.model.config import LoRAConfig, preset
from fmlab.model.transformer import apply_rope, build_model, count_parameters, rope_tables


def test_afm_3b_parameter_counts_match_apple():
    counts = count_parameters(build_model(preset("afm-3b"), device="meta"))
    assert counts["base_total"] == 3_111_368_064
    assert counts["lora"] == 66_633_728


def test_afm_draft_parameter_count():
    counts = count_parameters(build_model(preset("afm-draft"), device="meta"))
    assert counts["base_total"] == 48_765_952 and counts["lora"] == 0 and counts["segment_1"] == 0


def test_rope_is_interleaved_gptj():
    hd, theta, pos = 4, 10000.0, 3
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, hd)
    cos, sin = rope_tables(torch.tensor([[pos]]), hd, theta)
    out = apply_rope(x, cos, sin).flatten()
    expected = []
    for k, (x0, x1) in enumerate(((1.0, 2.0), (3.0, 4.0))):  # pairs are adjacent dims (2k, 2k+1)
        angle = torch.tensor(pos * theta ** (-2 * k / hd))
        expected += [x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()]
    torch.testing.assert_close(out, torch.stack(expected))


def test_rope_position_zero_is_identity():
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_tables(torch.zeros(2, 5, dtype=torch.long), 8, 500000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), x)


def test_zero_b_lora_changes_nothing(tiny_config):
    with_lora = build_model(tiny_config, seed=0).eval()
    plain = build_model(preset("tiny", lora=None), seed=0).eval()
    state = {k: v for k, v in with_lora.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(state)
    x = torch.randint(1, 512, (2, 12))
    torch.testing.assert_close(with_lora(x), plain(x))


def test_cached_decode_equals_full_forward(tiny_model):
    x = torch.randint(1, 512, (2, 14))
    full = tiny_model(x)
    cache = tiny_model.new_cache(2, 14)
    steps = [tiny_model(x[:, :6], cache=cache)]  # prefill
    for t in range(6, 14):  # decode one token at a time
        steps.append(tiny_model(x[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_rollback_then_replay(tiny_model):
    x = torch.randint(1, 512, (1, 12))
    full = tiny_model(x)
    cache = tiny_model.new_cache(1, 16)
    tiny_model(x[:, :8], cache=cache)
    tiny_model(torch.randint(1, 512, (1, 4)), cache=cache)  # a rejected speculative block
    cache.rollback(8)
    torch.testing.assert_close(tiny_model(x[:, 8:], cache=cache), full[:, 8:], atol=1e-5, rtol=1e-5)


def test_packed_documents_do_not_see_each_other(tiny_model):
    a, b = torch.randint(1, 512, (1, 7)), torch.randint(1, 512, (1, 5))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[2] * 7 + [3] * 5])
    out = tiny_model(packed, segment_ids=seg)
    torch.testing.assert_close(out[:, :7], tiny_model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 7:], tiny_model(b), atol=1e-5, rtol=1e-5)


def test_left_padded_prefill_matches_unpadded(tiny_model):
    x = torch.randint(1, 512, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    seg = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 2]])
    cache = tiny_model.new_cache(1, 12)
    out = tiny_model(padded, segment_ids=seg, cache=cache)[:, 3:]
    torch.testing.assert_close(out, tiny_model(x), atol=1e-5, rtol=1e-5)
    nxt = torch.randint(1, 512, (1, 1))
    step = tiny_model(nxt, cache=cache)
    torch.testing.assert_close(step, tiny_model(torch.cat([x, nxt], 1))[:, -1:], atol=1e-5, rtol=1e-5)


def test_kv_reuse_layers_read_segment0_kv(tiny_model):
    """Changing the last regular layer's K projection must change the KV-reuse layers' output."""
    x = torch.randint(1, 512, (1, 8))
    before = tiny_model(x)
    last_regular = tiny_model.layers[tiny_model.config.num_regular_layers - 1].attn
    assert not hasattr(tiny_model.layers[-1].attn, "qkv")  # no K/V projections of their own
    with torch.no_grad():
        last_regular.k_norm.weight.mul_(3.0)
    assert not torch.allclose(before, tiny_model(x), atol=1e-4)


def test_kv_fake_quant_rounds_to_int8_grid(tiny_model):
    attn = tiny_model.layers[0].attn
    x = torch.randint(1, 512, (1, 8))
    before = tiny_model(x)
    with torch.no_grad():
        attn.k_range.copy_(torch.tensor([-0.5, 0.5]))
        attn.v_range.copy_(torch.tensor([-0.5, 0.5]))
    assert attn.kv_quant_active()
    after = tiny_model(x)
    assert not torch.allclose(before, after)
    # cached decode must quantise identically
    cache = tiny_model.new_cache(1, 8)
    torch.testing.assert_close(
        torch.cat(
            [tiny_model(x[:, :5], cache=cache), tiny_model(x[:, 5:6], cache=cache), tiny_model(x[:, 6:], cache=cache)],
            1,
        ),
        after,
        atol=1e-5,
        rtol=1e-5,
    )


def test_activation_checkpointing_keeps_lora_gradients(tiny_model):
    from fmlab.model.lora import mark_only_lora_trainable

    mark_only_lora_trainable(tiny_model)
    tiny_model.train()
    x = torch.randint(1, 512, (2, 10))
    grads = []
    for every in (0, 1):
        tiny_model.checkpoint_every = every
        tiny_model.zero_grad()
        tiny_model(x).float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.requires_grad})
    assert all(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n])


def test_lora_targets_are_configurable():
    cfg = preset("tiny", lora=LoRAConfig(rank=2, alpha=4, targets=("q", "v")))
    names = [n for n, _ in build_model(cfg, device="meta").named_parameters() if ".lora_a." in n]
    assert names and all(n.endswith((".q", ".v")) for n in names)

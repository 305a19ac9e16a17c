"""LoRA invariants: Apple's init and scale, merge == unmerged, only LoRA trainable."""

import math

import pytest
import torch
from helpers import randomize_lora

from fmlab.model.config import LoRAConfig, preset
from fmlab.model.lora import (
    LoRALinear,
    lora_modules,
    mark_only_lora_trainable,
    merge_lora,
    parameter_split,
    replace_lora,
    unmerge_lora,
)
from fmlab.model.transformer import build_model


def test_apple_defaults_and_init():
    model = build_model(preset("tiny", lora=preset("afm-3b").lora), seed=0)
    m = model.layers[0].attn.qkv
    assert isinstance(m, LoRALinear) and m.scale == 0.5
    assert m.adapted == ["q", "k", "v"]
    assert all(not b.detach().any() for b in m.lora_b.values())
    a = torch.cat([p.flatten() for mod in lora_modules(model) for p in mod.lora_a.values() if mod.in_features == 64])
    assert abs(a.std().item() - math.sqrt(1 / 64)) < 0.01
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if ".lora_" in n)


def test_merged_equals_unmerged(tiny_model):
    x = torch.randint(1, 512, (2, 9))
    before = tiny_model(x)
    merge_lora(tiny_model)
    assert all(m.merged for m in lora_modules(tiny_model))
    torch.testing.assert_close(tiny_model(x), before, atol=1e-5, rtol=1e-4)
    unmerge_lora(tiny_model)
    torch.testing.assert_close(tiny_model(x), before, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("targets", [None, ("q", "v", "gate")])  # None: every part; else some parts plain
def test_fused_lora_equals_separate_parts(tiny_model, targets):
    if targets is not None:
        replace_lora(tiny_model, LoRAConfig(rank=4, alpha=8.0, targets=targets))
        randomize_lora(tiny_model, 0.1, seed=1)
    for m in (tiny_model.layers[0].attn.qkv, tiny_model.layers[0].mlp.gate_up):
        x = torch.randn(3, m.in_features)
        sizes = list(m.parts.values())
        expected = []
        for part, base_rows in zip(m.parts, m.weight.split(sizes)):
            delta = m.scale * (x @ m.lora_a[part]) @ m.lora_b[part] if part in m.lora_a else 0
            expected.append(x @ base_rows.t() + delta)
        # training computes the parts one by one, inference through one block-diagonal B
        torch.testing.assert_close(m(x), torch.cat(expected, -1))
        with torch.no_grad():
            torch.testing.assert_close(m(x), torch.cat(expected, -1))


def test_only_lora_is_trainable(tiny_model):
    counts = mark_only_lora_trainable(tiny_model)
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert counts == parameter_split(tiny_model) and counts["frozen"] > counts["trainable"] > 0


def test_afm_3b_lora_per_layer_counts():
    model = build_model(preset("afm-3b"), device="meta")

    def lora_in(block):
        return sum(p.numel() for n, p in block.named_parameters() if ".lora_" in n or n.startswith("lora_"))

    assert lora_in(model.layers[0]) == 1_245_184
    assert lora_in(model.layers[-1]) == 1_097_728


def test_inference_cache_follows_in_place_updates(tiny_model):
    x = torch.randint(1, 512, (1, 6))
    with torch.inference_mode():
        before = tiny_model(x)
    with torch.no_grad():
        tiny_model.layers[0].attn.qkv.lora_b["v"].add_(0.5)  # as an optimizer step would
    with torch.inference_mode():
        after = tiny_model(x)
    with torch.enable_grad():
        reference = tiny_model(x).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference)

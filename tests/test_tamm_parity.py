"""Parity with Apple's reference library tamm 0.1.0 (the test oracle; fmlab never imports it).

Configs: the assets' JSON loads with tamm's own loader and builds tamm's AFMTextV7; fmlab reads the JSON
tamm writes. Weights: tamm strict-loads `base-model.pt` / `draft-model.pt`. Numerics: fp32 logits of
tamm's model and fmlab's on a chat prompt, bit for bit (base with its calibrated int8 KV fake-quant, the
draft, a non-zero adapter, packed documents, padded rows). Structure: afm-3b and afm-draft on the meta
device have tamm's key names, order, shapes and parameter counts.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import randomize_lora

tamm = pytest.importorskip("tamm")
import tamm.utils.json as tamm_json  # noqa: E402
from tamm.ao.layers.functional import fake_quantize as tamm_fake_quantize  # noqa: E402

from fmlab.checkpoints.apple_format import apple_key_map, to_apple  # noqa: E402
from fmlab.checkpoints.assets import (  # noqa: E402
    BASE_CONFIG,
    BASE_WEIGHTS,
    DRAFT_CONFIG,
    DRAFT_WEIGHTS,
    REPO_ASSETS,
    load_base,
    load_draft,
    load_tokenizer,
)
from fmlab.data.chat_template import encode_prompt  # noqa: E402
from fmlab.model.config import TAMM_FIELDS, from_tamm_json, preset, to_tamm_json  # noqa: E402
from fmlab.model.transformer import build_model, fake_quant_int8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (BASE_CONFIG, DRAFT_CONFIG)
WEIGHTS = {BASE_CONFIG: BASE_WEIGHTS, DRAFT_CONFIG: DRAFT_WEIGHTS}
FMLAB_EXTENSIONS = ("norm_eps", "context_length")  # read by from_tamm_json, unknown to tamm 0.1.0


def tamm_config(raw: dict):
    """tamm's own JSON loader on a config dict (fmlab writes tamm's fields only)."""
    return tamm_json.loads(json.dumps(raw))


def asset_json(name: str) -> dict:
    return json.loads((REPO_ASSETS / name).read_text())


def tamm_model(config_name: str, state: dict | None = None):
    """tamm's model for an assets config, strict-loaded with `state` (default: the assets' weights)."""
    model = tamm_config(asset_json(config_name)).create_model()
    if state is None:
        state = torch.load(REPO_ASSETS / WEIGHTS[config_name], weights_only=True)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor):
    diff = (a - b).abs().max().item()
    assert torch.equal(a, b), f"max abs logit difference {diff}"


@pytest.fixture(scope="module")
def prompts():
    tokenizer = load_tokenizer()
    rows = [json.loads(line) for line in (ROOT / "data" / "test.jsonl").read_text().splitlines()[:2]]
    return [encode_prompt(tokenizer, [m for m in row if m["role"] != "assistant"]) for row in rows]


@pytest.fixture(scope="module")
def base_pair():
    return tamm_model(BASE_CONFIG), load_base().eval()


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_asset_config_loads_in_tamm_as_written(name):
    tamm_json.loads((REPO_ASSETS / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_asset_config_builds_in_tamm_and_agrees_with_fmlab(name):
    raw = asset_json(name)
    assert not set(raw) & set(FMLAB_EXTENSIONS)  # the shipped configs hold tamm's fields only
    cfg = from_tamm_json(REPO_ASSETS / name)
    tc = tamm_config(raw)
    assert type(tc).__name__ == "AFMTextV7Config"
    assert {k: getattr(tc, k) for k in TAMM_FIELDS} == {k: getattr(cfg, k) for k in TAMM_FIELDS}
    adapters = tc.adapters or {}
    if cfg.lora is None:
        assert not adapters
    else:
        (adapter,) = adapters.values()
        assert (adapter.rank, adapter.alpha, adapter.dropout_p) == (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
    assert ("kvquant" in (tc.arch_optimizers or {})) == cfg.kv_quant
    model = tc.create_model()
    assert type(model).__name__ == "AFMTextV7"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build_model(cfg, "meta").parameters())


@pytest.mark.parametrize("source", [*CONFIGS, "afm-3b", "afm-draft", "tiny", "tiny-draft"])
def test_from_tamm_json_reads_what_tamm_writes(source, tmp_path):
    if source in CONFIGS:
        raw, expected = asset_json(source), from_tamm_json(REPO_ASSETS / source)
    else:
        expected = preset(source)
        raw = to_tamm_json(expected)
    written = tamm_json.dumps(tamm_config(raw))  # tamm leaves out fields at their defaults
    (tmp_path / "config.json").write_text(written)
    assert from_tamm_json(tmp_path / "config.json") == expected


# --- weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_tamm_strict_loads_asset_weights_in_its_own_order(name):
    state = torch.load(REPO_ASSETS / WEIGHTS[name], weights_only=True)
    model = tamm_model(name, state)  # strict; asserts no missing or unexpected keys
    assert list(model.state_dict()) == list(state)
    assert model.embedding.weight is model.output_transform.weight  # tied, as in fmlab


# --- logits ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_logits(base_pair, prompts):
    tm, fm = base_pair
    x = torch.tensor([prompts[0]])
    with torch.no_grad():
        return tm(x).predictions, fm(x)


def test_base_logits_bit_equal(base_pair, base_logits):
    _, fm = base_pair
    assert all(layer.attn.kv_quant_active() for layer in fm.layers[: fm.config.num_regular_layers])
    assert_bit_equal(*base_logits)


@torch.no_grad()
def test_base_logits_depend_on_kv_quant(base_pair, base_logits, prompts):
    """Not vacuous: the calibrated int8 KV fake-quant changes the logits, so the parity above covers it."""
    _, fm = base_pair
    attns = [layer.attn for layer in fm.layers[: fm.config.num_regular_layers]]
    saved = [(a.k_range.clone(), a.v_range.clone()) for a in attns]
    try:
        for a in attns:  # all-zero ranges: fmlab's quantiser off
            a.k_range.zero_()
            a.v_range.zero_()
        plain = fm(torch.tensor([prompts[0]]))
    finally:
        for a, (k, v) in zip(attns, saved):
            a.k_range.copy_(k)
            a.v_range.copy_(v)
    assert (base_logits[0] - plain).abs().max() > 1e-3


@torch.no_grad()
def test_draft_logits_bit_equal(prompts):
    x = torch.tensor([prompts[0]])
    assert_bit_equal(tamm_model(DRAFT_CONFIG)(x).predictions, load_draft().eval()(x))


@pytest.fixture(scope="module")
def adapted_pair():
    fm = randomize_lora(load_base(), 0.02, seed=0)
    return tamm_model(BASE_CONFIG, to_apple(fm.state_dict(), fm.config)), fm


@torch.no_grad()
def test_adapter_logits_bit_equal(adapted_pair, base_logits, prompts):
    tm, fm = adapted_pair
    x = torch.tensor([prompts[0]])
    out = fm.eval()(x)
    assert_bit_equal(tm.eval()(x).predictions, out)
    assert (out - base_logits[1]).abs().max() > 1e-2  # the adapter does change the logits


@torch.no_grad()
def test_packed_and_padded_logits_bit_equal(base_pair, prompts):
    """tamm takes segment ids as fmlab does: attention within a segment, positions restarting per segment."""
    tm, fm = base_pair
    a, b = prompts
    packed = torch.tensor([a + b])
    seg = torch.tensor([[1] * len(a) + [2] * len(b)])
    assert_bit_equal(tm(packed, segment_ids=seg).predictions, fm(packed, segment_ids=seg))
    T = max(len(a), len(b))
    ids, seg = torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], seg[i, : len(p)] = torch.tensor(p), 1
    assert_bit_equal(tm(ids, segment_ids=seg).predictions, fm(ids, segment_ids=seg))


# --- training --------------------------------------------------------------------------------------


def _train_step(pair, x):
    """(max abs logit difference in training mode, max relative LoRA gradient difference)."""
    tm, fm = pair
    for m in (tm, fm):
        m.train()
        for name, p in m.named_parameters():
            p.requires_grad_(".adapters." in name or ".lora_" in name)
            p.grad = None
    try:
        ta, fa = tm(x).predictions, fm(x)
        ta.pow(2).mean().backward()
        fa.pow(2).mean().backward()
        lora = {k: p.grad for k, p in fm.named_parameters() if p.requires_grad}
        fg = to_apple(lora | {k: v for k, v in fm.state_dict().items() if k not in lora}, fm.config)
        worst = max(
            ((p.grad - fg[k]).abs().max() / fg[k].abs().max()).item()
            for k, p in tm.named_parameters()
            if p.requires_grad
        )
        return (ta - fa).abs().max().item(), worst
    finally:
        for m in (tm, fm):
            m.eval().zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def trained(adapted_pair, prompts):
    return _train_step(adapted_pair, torch.tensor([prompts[0]]))


def test_training_forward_matches(trained):
    # fmlab trains through its chunked CPU attention (fmlab.model.attention): float rounding only
    assert trained[0] < 1e-4


def test_training_gradients_match(trained):
    """Before the fix fmlab's backward (ATen's fake-quant op) zeroed the gradient of K/V values clipped to
    the int8 range, where tamm's `FakeQuantize.backward` passes it through: 1.6e-2 relative difference."""
    assert trained[1] < 1e-4


def test_fake_quant_gradient_is_tamm_identity_at_clipped_values():
    r = torch.tensor([-1.0, 1.0])
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    y = torch.randn(101, generator=torch.Generator().manual_seed(0))
    (fake_quant_int8(x, r) * y).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (_tamm_quantizer(r)(x2) * y).sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(x.grad, y)  # clipped ones included


# --- int8 KV fake-quant ----------------------------------------------------------------------------


def _tamm_quantizer(value_range):
    """tamm's own KV key quantizer (FakeQuantize + frozen observer), as KVQuantArchOptimizer builds it."""
    model = tamm_config(asset_json(BASE_CONFIG)).create_model().eval()
    quantizer = model.get_submodule("layers.segment_0.layer_0.attention.kv_quantizer.key_quantizer")
    quantizer.activation_post_process.range.copy_(value_range)
    return quantizer


@torch.no_grad()
def test_fake_quant_matches_tamm():
    """Ranges where max/127 dominates the scale: `range[1] / 127` was one ulp off tamm's `range * (1/127)`
    for ~2.5% of ranges, moving every dequantised value (2.2% of all elements differed before the fix)."""
    g = torch.Generator().manual_seed(0)
    quantizer = _tamm_quantizer(torch.tensor([-1.0, 1.0]))
    mismatched = total = 0
    for _ in range(500):
        r = torch.stack([-torch.rand((), generator=g) * 8 - 0.1, torch.rand((), generator=g) * 8 + 0.1])
        quantizer.activation_post_process.range.copy_(r)
        x = torch.randn(2048, generator=g) * 3
        mismatched += int((quantizer(x) != fake_quant_int8(x, r)).sum())
        total += x.numel()
    assert torch.equal(quantizer.activation_post_process.range, r)  # frozen: the observer never updates
    assert mismatched == 0, f"{mismatched} of {total}"  # before the fix: 2.2e-2, then ~1e-6 at ties


@torch.no_grad()
def test_fake_quant_matches_tamm_at_rounding_ties():
    """Before the fix fmlab rounded x * (1/scale) (ATen's kernel), tamm rounds x / scale: values within an
    ulp of a .5 step went to neighbouring int8 levels (~1e-6 of random K/V elements)."""
    r = torch.tensor([-4.070052623748779, 6.245774269104004])
    scale, _ = _tamm_quantizer(r).activation_post_process.calculate_qparams()
    ties = (torch.arange(-130, 130) + 0.5) * scale
    x = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
    expected = tamm_fake_quantize(
        x, scale=scale, zero_point=torch.tensor([0]), quant_min=-128, quant_max=127, cast_dtype=torch.float32
    )
    assert torch.equal(expected, fake_quant_int8(x, r))


# --- structure of the full-size presets ------------------------------------------------------------


@pytest.mark.parametrize("name", ["afm-3b", "afm-draft"])
def test_meta_presets_match_tamm(name):
    cfg = preset(name)
    tm = tamm_config(to_tamm_json(cfg)).create_model(device="meta")
    fm = build_model(cfg, device="meta")
    assert next(tm.parameters()).device.type == "meta"
    tamm_shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    fmlab_state = fm.state_dict()
    entries = apple_key_map(cfg)
    assert [e.apple for e in entries] == list(tamm_shapes)  # names and order
    fmlab_shapes = {
        e.apple: tuple((fmlab_state[e.fmlab] if e.rows is None else fmlab_state[e.fmlab][e.rows]).shape)
        for e in entries
    }
    assert fmlab_shapes == tamm_shapes
    assert sum(p.numel() for p in tm.parameters()) == sum(p.numel() for p in fm.parameters())
    tamm_lora = sum(p.numel() for k, p in tm.named_parameters() if ".adapters." in k)
    assert tamm_lora == sum(p.numel() for k, p in fm.named_parameters() if ".lora_" in k)
    assert [k for k, _ in tm.named_buffers()] == [e.apple for e in entries if "kv_quantizer" in e.apple]

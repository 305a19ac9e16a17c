"""Apple's key layout both ways, adapter files in both formats, atomic writes."""

import pytest
import torch

from fmlab.checkpoints.apple_format import apple_key_map, from_apple, load_adapter, save_adapter, to_apple
from fmlab.errors import FmlabError
from fmlab.files import atomic_write
from fmlab.model.config import preset
from fmlab.model.lora import lora_state_dict, reset_lora
from fmlab.model.transformer import build_model


def _keys(cfg):
    return list(build_model(cfg, device="meta").state_dict())


@pytest.mark.parametrize("name", ["afm-3b", "afm-draft"])
def test_key_map_covers_every_key_both_ways(name):
    cfg = preset(name)
    entries = apple_key_map(cfg)
    assert set(e.fmlab for e in entries) == set(_keys(cfg))
    apple = [e.apple for e in entries]
    assert len(apple) == len(set(apple))


def test_afm_3b_key_names_and_counts():
    apple = [e.apple for e in apple_key_map(preset("afm-3b"))]
    assert "layers.segment_0.layer_34.attention.qkv_transform.wrapped.fused_linear.weight" in apple
    assert "layers.segment_0.layer_0.attention.qkv_transform.adapters.base_adapter.lora_2.b_transpose" in apple
    assert "layers.segment_1.layer_20.attention.q_transform.adapters.base_adapter.a_transpose" in apple
    assert "layers.segment_1.layer_0.attention.q_norm.query_norm.weight" in apple
    assert "layers.segment_0.layer_3.attention.kv_quantizer.value_quantizer.activation_post_process.range" in apple
    assert "layers.segment_1.layer_2.feed_forward.hidden_transform.linear_1.wrapped.weight" in apple
    assert apple[-2:] == ["output_norm.weight", "output_transform.weight"]
    assert sum(".adapters." in k for k in apple) == 700
    assert not any("segment_1" in k and "kv_quantizer" in k for k in apple)


def test_draft_key_names():
    apple = [e.apple for e in apple_key_map(preset("afm-draft"))]
    assert "layers.layer_11.attention.qkv_transform.fused_linear.weight" in apple
    assert "layers.layer_0.feed_forward.hidden_transform.linear_0.weight" in apple
    assert not any("wrapped" in k or "adapters" in k or "segment" in k for k in apple)


def test_apple_layout_round_trip_gives_identical_logits(tiny_model, tmp_path):
    cfg = tiny_model.config
    path = tmp_path / "base-model.pt"
    torch.save(to_apple(tiny_model.state_dict(), cfg), path)
    loaded = build_model(cfg, device="meta")
    loaded.load_state_dict(from_apple(torch.load(path, weights_only=True), cfg), assign=True)
    x = torch.randint(1, 512, (2, 10))
    torch.testing.assert_close(loaded.eval()(x), tiny_model(x), atol=0, rtol=0)


def test_apple_linear_0_is_the_gate(tiny_model):
    state = to_apple(tiny_model.state_dict(), tiny_model.config)
    gate_up = tiny_model.layers[0].mlp.gate_up.weight
    F = tiny_model.config.ffn_dim
    key = "layers.segment_0.layer_0.feed_forward.hidden_transform.linear_0.wrapped.weight"
    assert torch.equal(state[key], gate_up[:F])


def test_strict_load_lists_missing_and_unexpected(tiny_model):
    cfg = tiny_model.config
    state = to_apple(tiny_model.state_dict(), cfg)
    del state["layers.segment_0.layer_0.attention.norm.weight"]
    state["layers.segment_0.layer_0.attention.bogus"] = torch.zeros(1)
    with pytest.raises(FmlabError, match="missing 1 key.*attention.norm.weight(.|\n)*unexpected 1 key.*bogus"):
        from_apple(state, cfg, "x.pt")


def test_wrong_shapes_are_named(tiny_model):
    cfg = tiny_model.config
    state = to_apple(tiny_model.state_dict(), cfg)
    other = preset("tiny", hidden_dim=32, num_heads=2, num_kv_heads=1)
    with pytest.raises(FmlabError, match="shape"):
        from_apple(state, other, "x.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_adapter_round_trip_is_lossless(tiny_model, tmp_path, suffix):
    path = save_adapter(tiny_model, tmp_path / f"adapter{suffix}")
    saved = lora_state_dict(tiny_model)
    reset_lora(tiny_model, seed=1)
    load_adapter(tiny_model, path)
    for k, v in lora_state_dict(tiny_model).items():
        assert torch.equal(v, saved[k])


def test_apple_adapter_file_layout(tiny_model, tmp_path):
    path = save_adapter(tiny_model, tmp_path / "adapter-final.pt")
    raw = torch.load(path, weights_only=True)
    assert all(".adapters.base_adapter." in k and v.dtype == torch.float32 for k, v in raw.items())
    canonical = [e.apple for e in apple_key_map(tiny_model.config) if ".lora_" in e.fmlab]
    assert list(raw) == canonical
    a = raw["layers.segment_0.layer_0.attention.qkv_transform.adapters.base_adapter.lora_0.a_transpose"]
    assert a.shape == (tiny_model.config.hidden_dim, tiny_model.config.lora.rank)


def test_adapter_for_other_config_is_refused(tiny_model, tmp_path):
    path = save_adapter(tiny_model, tmp_path / "a.safetensors")
    other = build_model(preset("tiny", lora=preset("afm-3b").lora), device="meta")
    with pytest.raises(FmlabError, match="LoRA config"):
        load_adapter(other, path)


def test_pickle_payload_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Payload()}))
    from fmlab.checkpoints.apple_format import load_torch

    with pytest.raises(FmlabError, match="weights-only"):
        load_torch(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]

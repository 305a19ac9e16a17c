"""Mismatched assets: each error names the file and what differs (vocabulary, keys, shapes, special
pieces, the base an adapter was trained for)."""

import pytest
import torch
from helpers import VOCAB, plain_tokenizer, write_assets

from fmlab.checkpoints.apple_format import save_adapter, to_apple
from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer
from fmlab.errors import FmlabError
from fmlab.model.config import LoRAConfig, preset
from fmlab.model.transformer import build_model


def test_matching_assets_load(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    assert load_tokenizer(d).vocab_size == 600 and load_base(d).config.vocab_size == VOCAB


def test_tokenizer_larger_than_the_config_vocabulary(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer, cfg=preset("tiny", vocab_size=512))
    with pytest.raises(FmlabError) as err:
        load_tokenizer(d)
    message = str(err.value)
    assert "tokenizer.model has 600 pieces" in message and "base-model-config.json has vocab_size 512" in message


def test_weights_for_another_vocabulary_name_the_tensor_and_shapes(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer, weights_cfg=preset("tiny", vocab_size=512))
    with pytest.raises(FmlabError) as err:
        load_base(d)
    message = str(err.value)
    assert f"{d / 'base-model.pt'} (against base-model-config.json)" in message
    assert "embedding.weight: file (512, 64) vs model (640, 64)" in message


def test_missing_and_extra_keys_are_listed(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    state = torch.load(d / "base-model.pt", weights_only=True)
    gone = next(k for k in state if "norm" in k)
    del state[gone]
    state["layers.segment_0.layer_9.extra.weight"] = torch.zeros(1)
    torch.save(state, d / "base-model.pt")
    with pytest.raises(FmlabError) as err:
        load_base(d)
    message = str(err.value)
    assert str(d / "base-model.pt") in message
    assert (
        f"missing 1 key(s): {gone}" in message
        and "unexpected 1 key(s): layers.segment_0.layer_9.extra.weight" in message
    )


def test_tokenizer_without_the_special_pieces(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    (d / "tokenizer.model").write_bytes(plain_tokenizer(tmp_path / "plain.model").read_bytes())
    with pytest.raises(FmlabError) as err:
        load_tokenizer(d)
    message = str(err.value)
    assert str(d / "tokenizer.model") in message and "lacks the required pieces" in message
    assert "<n>" in message and "<turn_start>" in message and "<pad>" in message
    (d / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(FmlabError, match="tokenizer.model is not a SentencePiece model"):
        load_tokenizer(d)


def adapter_of(cfg, path, seed=2):
    model = build_model(cfg, seed=seed)
    return save_adapter(model, path)


def test_apple_adapter_for_another_base_names_the_shapes(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    other = adapter_of(preset("tiny", vocab_size=VOCAB, hidden_dim=32), tmp_path / "other.pt")
    with pytest.raises(FmlabError) as err:
        load_base(d, checkpoint=other)
    message = str(err.value)
    assert str(other) in message and "tensor shape(s) differ" in message and "file (32, 4) vs model (64, 4)" in message
    deeper = adapter_of(preset("tiny", vocab_size=VOCAB, num_layers=5), tmp_path / "deeper.pt")
    with pytest.raises(FmlabError, match="unexpected .* key"):
        load_base(d, checkpoint=deeper)


def test_native_adapter_records_its_base(tmp_path, tiny_tokenizer):
    """Same LoRA shapes, another vocabulary: only the recorded config can tell, and it does."""
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    other = adapter_of(preset("tiny", vocab_size=512), tmp_path / "other.safetensors")
    with pytest.raises(FmlabError) as err:
        load_base(d, checkpoint=other)
    assert f"{other}: adapter was trained for another base model: vocab_size 512 (adapter) vs 640 (model)" in str(
        err.value
    )
    rank = adapter_of(preset("tiny", vocab_size=VOCAB, lora=LoRAConfig(rank=8, alpha=8)), tmp_path / "r8.safetensors")
    with pytest.raises(FmlabError, match="r8.safetensors: adapter LoRA config .*rank=8.* differs"):
        load_base(d, checkpoint=rank)
    same = adapter_of(preset("tiny", vocab_size=VOCAB), tmp_path / "same.safetensors")
    assert load_base(d, checkpoint=same) is not None


def test_draft_checkpoint_for_another_draft(tmp_path, tiny_tokenizer):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    other_cfg = preset("tiny-draft", vocab_size=VOCAB, hidden_dim=64)
    other = tmp_path / "draft-other.pt"
    torch.save(to_apple(build_model(other_cfg, seed=0).state_dict(), other_cfg), other)
    with pytest.raises(FmlabError) as err:
        load_draft(d, checkpoint=other)
    assert str(other) in str(err.value) and "differ from the config" in str(err.value)


@pytest.mark.parametrize(
    "text,phrase",
    [
        ("{broken", "cannot read model config"),
        ('{"__tamm_type__": "models:Other"}', "__tamm_type__ is 'models:Other'"),
        ('{"__tamm_type__": "models:AFMTextV7Config", "vocab": 5}', "unknown config field(s) vocab"),
    ],
)
def test_config_that_does_not_parse(tmp_path, tiny_tokenizer, text, phrase):
    d = write_assets(tmp_path / "a", tiny_tokenizer)
    (d / "base-model-config.json").write_text(text)
    with pytest.raises(FmlabError) as err:
        load_base(d)
    assert str(d / "base-model-config.json") in str(err.value) and phrase in str(err.value)

"""The memory estimate against memory measured on the tiny model: parameters, LoRA gradients and AdamW
state counted exactly, activations as the bytes autograd saves during a real training step."""

import torch

from fmlab.model.config import LoRAConfig, preset
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.precision import cast_frozen
from fmlab.model.transformer import build_model
from fmlab.train.losses import chunk_rows, token_loss
from fmlab.train.memory import estimate_generation, estimate_training


def measured_training_bytes(cfg, batch, seq):
    model = build_model(cfg, seed=0)
    mark_only_lora_trainable(model)
    cast_frozen(model, torch.bfloat16)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq))
    labels = ids.clone()
    labels[:, : int(seq * 0.3)] = -100
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = token_loss(model, {"input_ids": ids, "label_ids": labels})
    rows = min(int(n), chunk_rows(cfg.vocab_size))
    logits_chunk = rows * cfg.vocab_size * (4 + 2)  # fp32 logits + bf16 gradient, end of forward
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights + 16 * lora + sum(saved.values()) + logits_chunk


def test_training_estimate_within_20_percent_of_measured():
    cfg = preset("tiny", vocab_size=2048, hidden_dim=128, num_heads=4, num_kv_heads=2, lora=LoRAConfig(rank=8))
    measured = measured_training_bytes(cfg, 4, 256)
    est = estimate_training(cfg, 4, 256, "bf16-mixed", device="cpu", target_fraction=0.7)
    predicted = est.total - est.overhead
    assert abs(predicted - measured) / measured < 0.2, (predicted, measured)


def test_afm_3b_estimates_are_sane():
    cfg = preset("afm-3b")
    gen = estimate_generation(cfg, 1, 4096, "bf16-mixed")
    assert 6e9 < gen.weights < 7e9  # 3.18B parameters in bf16
    ckpt = estimate_training(cfg, 4, 2048, activation_checkpointing=True)
    full = estimate_training(cfg, 4, 2048)
    assert ckpt.activations < full.activations and ckpt.trainable_state == 66_633_728 * 16

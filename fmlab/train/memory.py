"""`fmlab estimate`: predicted peak memory for training and generation, before anything is loaded.

Training peak = weights (frozen at the precision's storage dtype, LoRA fp32) + LoRA gradients and AdamW
state (fp32: 4 + 4 + 8 bytes per trainable parameter) + saved activations + the LM-head working set.
Saved activations are counted per token and layer from what autograd keeps in fmlab's blocks; with
activation checkpointing only every n-th block's input is kept and one block is recomputed at a time.
Generation peak = weights + the static KV cache (regular layers only: KV-reuse layers keep none) + one
step's logits. Device overhead (CUDA context, allocator slack, MPS caching) is added per device.
"""

from __future__ import annotations

from dataclasses import dataclass

from fmlab.model.attention import CHUNK, chunks_pay_off
from fmlab.model.config import ModelConfig
from fmlab.model.lora import is_lora_name
from fmlab.model.precision import AUTO, resolve_precision
from fmlab.model.transformer import build_model
from fmlab.train.losses import chunk_rows

GiB = 2**30
DEVICE_OVERHEAD = {"cpu": 0.25 * GiB, "cuda": 0.6 * GiB, "mps": 0.5 * GiB}  # runtime + allocator slack


@dataclass
class Estimate:
    weights: float
    trainable_state: float
    activations: float
    head: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + self.head + self.overhead

    def rows(self) -> dict[str, float]:
        return {
            "weights": self.weights,
            "LoRA grads + AdamW": self.trainable_state,
            "activations": self.activations,
            "LM head": self.head,
            "device overhead": self.overhead,
            "total": self.total,
        }


def _param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """(matrix parameters, vector parameters, LoRA parameters) without building the model."""

    model = build_model(cfg, device="meta")
    mats = vecs = lora = 0
    for name, p in model.named_parameters():
        if is_lora_name(name):
            lora += p.numel()
        elif p.ndim == 2:
            mats += p.numel()
        else:
            vecs += p.numel()
    return mats, vecs, lora


def activation_bytes_per_token(cfg: ModelConfig, reuse: bool, act: int, chunked_seq_len: int = 0) -> int:
    """Bytes autograd keeps per token for one block (act = bytes of the compute dtype). `chunked_seq_len`:
    rows of this length attend by chunks (CPU), which keeps the attention probabilities."""
    C, F, hd = cfg.hidden_dim, cfg.ffn_dim, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    proj = q if reuse else q + 2 * kv
    rank = cfg.lora.rank if cfg.lora else 0
    n_lora = (1 if reuse else 3) + 1 + 2 + 1 if cfg.lora else 0
    return (
        4 * C * 2  # residual inputs of both norms (fp32)
        + act * C * 2  # normed inputs to attention and MLP projections
        + act * proj
        + 4 * (q + kv) * 2  # projection output; RoPE / QK-norm in fp32
        + act * q * 2  # attention output and its logsumexp-sized state
        + act * 2 * F
        + act * F * 2  # gate/up output, silu, product (input to down)
        + act * rank * n_lora  # LoRA x @ A intermediates
        + attention_probability_bytes(cfg, chunked_seq_len, act)
    )


def attention_probability_bytes(cfg: ModelConfig, seq_len: int, act: int) -> int:
    """Per token and layer: `fmlab.model.attention.causal_attention_by_chunks` keeps H (T + chunk) / 2 probabilities a
    token for backward, in fp32 and again in the compute dtype (once when that is fp32)."""
    if not seq_len:
        return 0
    return cfg.num_heads * (seq_len + CHUNK) // 2 * (4 + (act if act != 4 else 0))


def estimate_training(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str = AUTO,
    activation_checkpointing: bool = False,
    every_n: int = 2,
    device: str = "cuda",
    target_fraction: float = 0.7,
) -> Estimate:
    precision = resolve_precision(precision, device)  # `auto` as training on that device would pick
    mats, vecs, lora = _param_counts(cfg)
    frozen_bytes = 2 if precision in ("bf16-mixed", "bf16") else 4
    act = 2 if precision in ("bf16-mixed", "bf16", "f16-mixed") else 4
    weights = mats * frozen_bytes + vecs * 4 + lora * (2 if precision == "bf16" else 4)
    trainable_state = lora * 16
    tokens = batch_size * seq_len
    chunked = seq_len if device == "cpu" and chunks_pay_off(batch_size, cfg.num_heads, seq_len) else 0
    per_block = [
        activation_bytes_per_token(cfg, i >= cfg.num_regular_layers, act, chunked) for i in range(cfg.num_layers)
    ]
    if activation_checkpointing:
        kept = sum(4 * cfg.hidden_dim if i % every_n == 0 else per_block[i] for i in range(cfg.num_layers))
        activations = tokens * (kept + max(per_block) * every_n)
    else:
        activations = tokens * sum(per_block)
    kv_export = tokens * 2 * cfg.num_kv_heads * cfg.head_dim * act  # K/V shared with segment_1
    targets = int(tokens * target_fraction)
    # token_loss (linear_ce): the target rows and their saved gradient, plus one chunk of fp32 logits and
    # their compute-dtype gradient at a time; no (targets, vocab) tensor outlives the forward
    rows = min(targets, chunk_rows(cfg.vocab_size))
    head = targets * cfg.hidden_dim * (4 + act) + rows * cfg.vocab_size * (4 + act)
    return Estimate(weights, trainable_state, activations + kv_export, head, DEVICE_OVERHEAD.get(device, 0))


def estimate_generation(
    cfg: ModelConfig, batch_size: int, context: int, precision: str = AUTO, device: str = "cuda"
) -> Estimate:
    precision = resolve_precision(precision, device)
    mats, vecs, lora = _param_counts(cfg)
    weight_bytes = 2 if precision in ("bf16", "bf16-mixed") else 4
    weights = (mats + lora) * weight_bytes + vecs * 4
    cache = 2 * cfg.num_regular_layers * batch_size * cfg.num_kv_heads * context * cfg.head_dim * weight_bytes
    logits = batch_size * cfg.vocab_size * 4 * 2
    return Estimate(weights, 0, cache, logits, DEVICE_OVERHEAD.get(device, 0))

"""The model both sides of a benchmark build: a Llama-style config with fmlab-tiny's sizes (fmlab with
no KV-reuse layers and no KV quantisation), and the same config as a transformers LlamaForCausalLM."""

from __future__ import annotations

import dataclasses

import torch

from fmlab.model.config import LoRAConfig, ModelConfig
from fmlab.tiny.build import TINY_BASE


def llama_like(lora: LoRAConfig | None = None) -> ModelConfig:
    return dataclasses.replace(TINY_BASE, num_kv_reuse_layers=0, kv_quant=False, lora=lora)


def hf_llama(cfg: ModelConfig, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=cfg.rope_theta,
        attention_bias=False,
        mlp_bias=False,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_cfg)

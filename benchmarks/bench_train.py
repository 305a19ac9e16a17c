"""LoRA training throughput: fmlab against Hugging Face transformers + peft on the same work.

A Llama-style model with fmlab-tiny's sizes (hidden, layers, heads, KV heads, FFN, vocabulary) is built
in both libraries with the same weights: fmlab with its KV-reuse layers set to 0 for the comparison
(its default AFM layout is reported beside it). Same LoRA rank/alpha on every projection, same batch,
sequence length, assistant-only labels, precision (bf16 autocast, or plain f32 on both sides) and
AdamW; one optimizer step is timed, eager and compiled, interleaved, median of repeats. Reported as
tokens/s, the ratio fmlab / peer, and fmlab's MFU: model FLOP/s over this machine's measured matmul peak in
that precision. FLOP convention for LoRA training: the frozen base's forward and input-gradient backward,
4N per token (N: the parameters used in matmuls, the tied LM head included), plus causal attention,
6·L·T·d per token (QKᵀ and PV forward at half the square, backward twice that).

    python benchmarks/bench_train.py [--batch 8 --seq 512 --repeats 5 --no-compile --dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from fmlab.data.chat_template import IGNORE
from fmlab.model.config import LoRAConfig
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.precision import cast_frozen, matmul_gflops
from fmlab.model.transformer import build_model
from fmlab.tiny.build import TINY_BASE
from fmlab.train.losses import token_loss

try:
    from benchmarks.llama import hf_llama, llama_like
    from benchmarks.timing import interleaved, machine
except ImportError:  # run as a script
    from llama import hf_llama, llama_like
    from timing import interleaved, machine


def fmlab_step(cfg, batch, compile_model: bool, dtype: str = "bf16"):
    model = build_model(cfg, seed=0)
    mark_only_lora_trainable(model)
    if dtype == "bf16":
        cast_frozen(model, torch.bfloat16)  # fmlab's bf16-mixed: frozen weights stored in bf16
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    fm_batch = {"input_ids": batch["input_ids"], "label_ids": batch["shifted"]}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, n = token_loss(run, fm_batch)
            (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peft_step(cfg, batch, compile_model: bool, dtype: str = "bf16"):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        hf_llama(cfg),
        LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = run(input_ids=batch["input_ids"], labels=batch["labels"])
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_batch(vocab: int, batch: int, seq: int, prompt_fraction: float = 0.3):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : int(seq * prompt_fraction)] = IGNORE  # assistant-only loss, as in adapter training
    shifted = torch.full_like(labels, IGNORE)
    shifted[:, :-1] = labels[:, 1:]  # fmlab/Apple labels are pre-shifted
    return {"input_ids": ids, "labels": labels, "shifted": shifted}


def flops_per_token(cfg, seq: int) -> float:
    """Model FLOPs of one LoRA training token (the convention in the module docstring)."""
    model = build_model(cfg, device="meta")
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "lora" not in n)
    return 4 * matmul_params + 6 * cfg.num_layers * seq * cfg.hidden_dim


def run(batch_size=8, seq=512, repeats=5, modes=("eager", "compiled"), dtype: str = "bf16") -> dict:
    lora = LoRAConfig(rank=TINY_BASE.lora.rank, alpha=TINY_BASE.lora.alpha)
    llama = llama_like(lora)
    afm = dataclasses.replace(TINY_BASE, lora=lora)
    batch = make_batch(TINY_BASE.vocab_size, batch_size, seq)
    tokens = batch_size * seq
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    peak = matmul_gflops(torch.device("cpu"), torch_dtype, size=1024, rows=512, repeats=10, budget_s=5.0)
    flops = flops_per_token(llama, seq)
    results = {"machine": machine(), "batch": batch_size, "seq": seq, "dtype": dtype, "modes": {}}
    results |= {"peak_gflops": peak, "flops_per_token": flops}
    for mode in modes:
        compiled = mode == "compiled"
        times = interleaved(
            {
                "fmlab": fmlab_step(llama, batch, compiled, dtype),
                "fmlab (AFM default)": fmlab_step(afm, batch, compiled, dtype),
                "transformers+peft": peft_step(llama, batch, compiled, dtype),
            },
            repeats=repeats,
        )
        tps = {k: tokens / v for k, v in times.items()}
        mfu = tps["fmlab"] * flops / (peak * 1e9)
        results["modes"][mode] = {"tokens_per_s": tps, "ratio": tps["fmlab"] / tps["transformers+peft"], "mfu": mfu}
        print(
            f"{dtype} {mode}: "
            + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in tps.items())
            + f"  → fmlab / peer = {results['modes'][mode]['ratio']:.2f}x; fmlab MFU {mfu:.0%} of {peak:.0f} GFLOP/s",
            flush=True,
        )
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="the same precision on both sides")
    a = ap.parse_args()
    modes = ("eager",) if a.no_compile else ("eager", "compiled")
    print(json.dumps(run(a.batch, a.seq, a.repeats, modes, a.dtype), indent=2))

"""Batch-1 decoding throughput: fmlab's static-cache decode against Hugging Face transformers
`generate` with its static cache, on a Llama-style model of fmlab-tiny's sizes (same weights), in fp32
and in bf16 (both models cast with `.to(torch.bfloat16)`), eager and compiled:

- fmlab compiled: `generate_ids(..., compile_model=True)` (the decode step under torch.compile);
- transformers compiled: its static-cache recipe, `model.forward = torch.compile(model.forward,
  mode="reduce-overhead", fullgraph=True)` (on CPU, generate's own auto-compile needs a private flag and
  measured no faster).

Plus, on the embedded base and its draft: the draft's cost per token against the target's, and
speculative decoding's speedup over fmlab's plain decoding (output identical), eager and compiled.

Every side generates exactly N new tokens greedily from the same prompt (no early stop); warm-up first
(it absorbs compilation), interleaved repeats, median.

    python benchmarks/bench_decode.py [--tokens 128 --prompt 64 --repeats 5 --no-compile]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fmlab.infer.generate import generate_ids
from fmlab.infer.sampling import Sampling
from fmlab.model.transformer import build_model

try:
    from benchmarks.llama import hf_llama, llama_like
    from benchmarks.timing import interleaved, machine
except ImportError:
    from llama import hf_llama, llama_like
    from timing import interleaved, machine

GREEDY = Sampling(temperature=0.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def decode_vs_transformers(
    tokens: int, prompt_len: int, repeats: int, dtype: str = "fp32", compiled: bool = True
) -> dict:
    """tokens/s of fmlab and transformers (eager, and compiled unless `compiled` is False) in `dtype`."""
    cfg = llama_like()
    ours = build_model(cfg, seed=0).eval().to(DTYPES[dtype])
    prompt = torch.randint(5, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def fmlab_run(compile_model):
        return lambda: generate_ids(ours, [prompt[0].tolist()], set(), tokens, GREEDY, compile_model=compile_model)

    def hf_run(compile_model):
        peer = hf_llama(cfg).eval().to(DTYPES[dtype])
        if compile_model:
            peer.forward = torch.compile(peer.forward, mode="reduce-overhead", fullgraph=True)

        def run():
            with torch.inference_mode():
                peer.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                    cache_implementation="static",
                    pad_token_id=0,
                )

        return run

    fns = {"fmlab eager": fmlab_run(False), "transformers eager": hf_run(False)}
    if compiled:
        fns |= {"fmlab compiled": fmlab_run(True), "transformers compiled": hf_run(True)}
    times = interleaved(fns, repeats=repeats)
    tps = {k: tokens / v for k, v in times.items()}
    ratios = {"eager": tps["fmlab eager"] / tps["transformers eager"]}
    if compiled:
        ratios["compiled"] = tps["fmlab compiled"] / tps["transformers compiled"]
        ratios["fmlab compiled / transformers eager"] = tps["fmlab compiled"] / tps["transformers eager"]
    return {"dtype": dtype, "tokens_per_s": tps, "ratio": ratios}


def _embedded(assets=None, draft_checkpoint=None, adapter=None):
    from fmlab.checkpoints.assets import REPO_ASSETS, load_base, load_draft, load_tokenizer
    from fmlab.data.validate import read_messages
    from fmlab.infer.generate import encode_prompts, stop_ids

    tokenizer = load_tokenizer(assets)
    target, draft = load_base(assets, checkpoint=adapter), load_draft(assets, checkpoint=draft_checkpoint)
    prompts = encode_prompts(
        tokenizer, [s.prompt for s in read_messages(REPO_ASSETS.parent / "data" / "test.jsonl")[:4]]
    )
    return target, draft, prompts, stop_ids(tokenizer)


def draft_cost(tokens: int, repeats: int, compiled: bool, k: int = 5, assets=None) -> dict:
    """The draft's cost per token over the target's (one decode step each, same loop), and the target's
    check of k + 1 tokens over one of its decode steps: what a speculative round costs."""
    from fmlab.infer.generate import extend, new_cache, prefill

    target, draft, prompts, _ = _embedded(assets)
    prompt = torch.tensor([prompts[0]])

    def steps(model, T):
        def run():  # `tokens` calls of T tokens each, advancing one slot per call as decoding does
            cache = new_cache(model, 1, prompt.shape[1] + tokens + k + 1, "f32", compiled)
            prefill(model, prompt, None, cache)
            ids = torch.full((1, T), 7)
            for _ in range(tokens):
                extend(model, ids, cache, compiled)
                cache.rollback(cache.end - T + 1)

        return run

    with torch.inference_mode():
        for model, T in ((draft, 2), (target, 1)):  # the shapes the timed runs do not compile
            steps(model, T)()
        times = interleaved(
            {"draft": steps(draft, 1), "target": steps(target, 1), "target check": steps(target, k + 1)},
            repeats=repeats,
            warmup=1,
        )
    per_token = {name: t / tokens * 1e3 for name, t in times.items()}  # ms per call
    return {
        "ms_per_call": per_token,
        "draft_over_target": per_token["draft"] / per_token["target"],
        "check_over_step": per_token["target check"] / per_token["target"],
        "k": k,
    }


def speculative_speedup(
    tokens: int, repeats: int, assets=None, draft_checkpoint=None, adapter=None, k: int = 5, compiled: bool = False
) -> dict:
    """Plain vs speculative greedy decoding of the base (+ adapter) with the (distilled) draft, on
    held-out play prompts, both eager or both compiled; checks the outputs are identical."""
    from fmlab.infer.acceptance import measure_acceptance

    target, draft, prompts, stop = _embedded(assets, draft_checkpoint, adapter)
    m = measure_acceptance(
        target,
        draft,
        prompts,
        k,
        tokens,
        stop=stop,
        sampling=GREEDY,
        compile_model=compiled,
        repeats=repeats,
        warmup=2 if compiled else 1,
    )
    return {
        "speedup": m["speedup"],
        "identical": m["identical"],
        "acceptance_rate": m["acceptance_rate"],
        "k": k,
        "compiled": compiled,
    }


def run(
    tokens=128, prompt=64, repeats=5, compiled=True, adapter=None, draft_checkpoint=None, dtypes=tuple(DTYPES)
) -> dict:
    modes = (False, True) if compiled else (False,)
    result = {"machine": machine(), "decode": [], "draft_cost": [], "speculative": []}
    for dtype in dtypes:
        start = time.perf_counter()
        r = decode_vs_transformers(tokens, prompt, repeats, dtype, compiled)
        result["decode"].append(r)
        print(
            f"decode {dtype}: "
            + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in r["tokens_per_s"].items())
            + "  → "
            + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio"].items())
            + f"  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    for c in modes:
        result["draft_cost"].append(dict(draft_cost(tokens, repeats, c), compiled=c))
        result["speculative"].append(
            speculative_speedup(tokens, repeats, adapter=adapter, draft_checkpoint=draft_checkpoint, compiled=c)
        )
        print(
            f"{'compiled' if c else 'eager'}: draft/target per token "
            f"{result['draft_cost'][-1]['draft_over_target']:.3f}, speculative "
            f"{result['speculative'][-1]['speedup']:.2f}x",
            flush=True,
        )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--adapter", help="adapter checkpoint for the target (e.g. out/adapter/adapter-final.pt)")
    ap.add_argument("--draft-checkpoint", help="distilled draft (e.g. out/draft/draft-model-final.pt)")
    a = ap.parse_args()
    print(json.dumps(run(a.tokens, a.prompt, a.repeats, not a.no_compile, a.adapter, a.draft_checkpoint), indent=2))

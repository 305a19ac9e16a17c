"""Batch-1 decoding throughput: fmlab's static-cache decode against Hugging Face transformers
`generate` with its static cache, on a Llama-style model of fmlab-tiny's sizes; plus speculative
decoding's speedup over fmlab's plain decoding with the embedded base and its draft (output identical).

Both sides generate exactly N new tokens greedily from the same prompt length (no early stop),
warm-up first, interleaved repeats, median.

    python benchmarks/bench_decode.py [--tokens 128 --prompt 64 --repeats 5]
"""
from __future__ import annotations

import argparse
import json

import torch

from fmlab.generate import generate_ids
from fmlab.model import build_model
from fmlab.sampling import Sampling

try:
    from benchmarks.llama import hf_llama, llama_like
    from benchmarks.timing import interleaved, machine
except ImportError:
    from llama import hf_llama, llama_like
    from timing import interleaved, machine

GREEDY = Sampling(temperature=0.0)


def decode_vs_transformers(tokens: int, prompt_len: int, repeats: int) -> dict:
    cfg = llama_like()
    ours = build_model(cfg, seed=0).eval()
    peer = hf_llama(cfg).eval()
    prompt = torch.randint(5, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def fmlab_run():
        generate_ids(ours, [prompt[0].tolist()], set(), tokens, GREEDY)

    def hf_run():
        with torch.inference_mode():
            peer.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                          min_new_tokens=tokens, do_sample=False, cache_implementation="static",
                          pad_token_id=0)
    times = interleaved({"fmlab": fmlab_run, "transformers": hf_run}, repeats=repeats)
    tps = {k: tokens / v for k, v in times.items()}
    return {"tokens_per_s": tps, "ratio": tps["fmlab"] / tps["transformers"]}


def speculative_speedup(tokens: int, repeats: int, assets=None, draft_checkpoint=None, adapter=None,
                        k: int = 5) -> dict:
    """Plain vs speculative greedy decoding of the base (+ adapter) with the (distilled) draft, on
    held-out play prompts; checks the outputs are identical."""
    from fmlab.assets import load_base, load_draft, load_tokenizer
    from fmlab.common import REPO_ASSETS
    from fmlab.data import read_messages
    from fmlab.generate import encode_prompts, stop_ids
    from fmlab.speculative import speculative_generate

    tokenizer = load_tokenizer(assets)
    target, draft = load_base(assets, checkpoint=adapter), load_draft(assets, checkpoint=draft_checkpoint)
    prompts = encode_prompts(tokenizer, [s.messages[:-1] for s in
                                         read_messages(REPO_ASSETS.parent / "data" / "test.jsonl")[:4]])
    stop = stop_ids(tokenizer)
    outs = {}

    def plain():
        outs["plain"] = [generate_ids(target, [p], stop, tokens, GREEDY)[0][0] for p in prompts]

    def spec():
        results = [speculative_generate(target, draft, p, stop, tokens, k, GREEDY) for p in prompts]
        outs["spec"] = [r[0] for r in results]
        outs["acceptance"] = sum(r[1]["accepted"] for r in results) / sum(r[1]["proposed"] for r in results)
    times = interleaved({"plain": plain, "speculative": spec}, repeats=repeats, warmup=1)
    return {"speedup": times["plain"] / times["speculative"], "identical": outs["plain"] == outs["spec"],
            "acceptance_rate": outs["acceptance"], "k": k}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--adapter", help="adapter checkpoint for the target (e.g. out/adapter/adapter-final.pt)")
    ap.add_argument("--draft-checkpoint", help="distilled draft (e.g. out/draft/draft-model-final.pt)")
    a = ap.parse_args()
    result = {"machine": machine(), "decode": decode_vs_transformers(a.tokens, a.prompt, a.repeats),
              "speculative": speculative_speedup(a.tokens, a.repeats, adapter=a.adapter,
                                                 draft_checkpoint=a.draft_checkpoint)}
    print(json.dumps(result, indent=2))

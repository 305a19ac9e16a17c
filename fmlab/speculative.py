"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k tokens,
the target scores them all in one forward, and the accept rule keeps the output distributed exactly
as the target's. At temperature 0 the result is token-for-token plain greedy decoding.

Accept rule, for each proposed token x_i with draft probability q_i(x) and target probability p_i(x):
accept with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection, sample a replacement
from norm(max(0, p_i - q_i)) and stop; if all k are accepted, sample a bonus token from p_{k+1}.
Rejected tokens are rolled back by moving each cache's end slot; nothing is copied.
"""
from __future__ import annotations

import time

import torch

from .generate import check_context, precision_context
from .sampling import Sampling, probabilities, sample


@torch.inference_mode()
def speculative_generate(target, draft, prompt: list[int], stop: set[int], max_new_tokens: int = 50,
                         num_draft_tokens: int = 5, sampling: Sampling | None = None,
                         precision: str = "f32") -> tuple[list[int], dict]:
    """Generate for one prompt; returns (new token ids, acceptance statistics)."""
    s = sampling or Sampling()
    k = max(1, num_draft_tokens)
    device = target.embedding.weight.device
    check_context(target, len(prompt), max_new_tokens)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    size = len(prompt) + max_new_tokens + k + 1
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    t_cache, d_cache = target.new_cache(1, size, dtype), draft.new_cache(1, size, dtype)
    out: list[int] = []
    # tokens each model has not yet seen; the last one is the "pending" token whose successor comes next
    d_todo = t_todo = torch.tensor([prompt], device=device)
    proposed = accepted = rounds = 0
    start = time.perf_counter()
    ttft = None
    with precision_context(precision, device):
        while len(out) < max_new_tokens:
            # 1. draft proposes k tokens, one forward each (the first also catches up on unseen tokens)
            drafted, q = [], []
            d_logits = draft(d_todo, cache=d_cache)[:, -1]
            for i in range(k):
                q.append(probabilities(d_logits, s)[0])
                drafted.append(int(sample(d_logits, s, gen)[0]) if not s.greedy else int(q[-1].argmax()))
                if i < k - 1:
                    d_logits = draft(torch.tensor([[drafted[-1]]], device=device), cache=d_cache)[:, -1]
            # 2. target scores pending + drafts in one forward: k + 1 distributions
            block = torch.cat([t_todo, torch.tensor([drafted], device=device)], dim=1)
            t_len_before = t_cache.end
            p = probabilities(target(block, cache=t_cache)[0, -(k + 1):], s)
            # 3. accept a prefix of the drafts, then one corrected or bonus token
            n = 0
            while n < k:
                x = drafted[n]
                if s.greedy:
                    ok = bool(p[n].argmax() == x)
                else:
                    ok = bool(torch.rand((), generator=gen, device=device) * q[n][x] <= p[n][x])
                if not ok:
                    break
                n += 1
            if n < k:
                residual = (p[n] - q[n]).clamp_min(0) if not s.greedy else p[n]
                if residual.sum() <= 0:     # p == q exactly: any token of p is a valid replacement
                    residual = p[n]
                nxt = int(residual.argmax()) if s.greedy else int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
            else:
                nxt = int(p[k].argmax()) if s.greedy else int(torch.multinomial(p[k], 1, generator=gen))
            proposed, accepted, rounds = proposed + k, accepted + n, rounds + 1
            new = drafted[:n] + [nxt]
            ttft = ttft if ttft is not None else time.perf_counter() - start
            # 4. roll back what was rejected: target keeps [pending, d_1..d_n]; draft saw d_1..d_{k-1}
            kept_end = t_len_before + t_todo.shape[1] + n
            t_cache.rollback(kept_end)
            d_seen = min(n, k - 1)
            d_cache.rollback(kept_end - (n - d_seen))
            t_todo = torch.tensor([[nxt]], device=device)
            d_todo = torch.tensor([drafted[d_seen:n] + [nxt]], device=device)
            for t in new:
                out.append(t)
                if t in stop or len(out) >= max_new_tokens:
                    break
            if out[-1] in stop:
                break
    seconds = time.perf_counter() - start
    stats = {"proposed": proposed, "accepted": accepted, "rounds": rounds,
             "acceptance_rate": accepted / max(proposed, 1),
             "mean_accepted_length": accepted / max(rounds, 1),
             "tokens_per_round": len(out) / max(rounds, 1),
             "seconds": seconds, "ttft_s": ttft or 0.0, "new_tokens": len(out)}
    return out, stats

"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k tokens,
the target scores them all in one forward, and the accept rule keeps the output distributed exactly
as the target's. At temperature 0 the result is token-for-token plain greedy decoding.

Accept rule, for each proposed token x_i with draft probability q_i(x) and target probability p_i(x):
accept with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection, sample a replacement
from norm(max(0, p_i - q_i)) and stop; if all k are accepted, sample a bonus token from p_{k+1}.
Rejected tokens are rolled back by moving each cache's end slot; nothing is copied.

Under a constraint (`fmlab.infer.constrained`) both p_i and q_i are the masked distributions of the same
grammar state (the prefix before x_i), so the rule stays exact for the constrained target; the draft's
masks are reused for the target's check, and the grammar state rolls back with the caches.
"""

from __future__ import annotations

import time

import torch

from fmlab.infer.constrained import Grammar, TokenMask
from fmlab.infer.generate import (
    check_context,
    decode_one,
    extend,
    new_cache,
    real_tokens,
    unwrap_compiled,
)
from fmlab.infer.sampling import Sampling, probabilities
from fmlab.model.lora import frozen_adapters
from fmlab.model.precision import AUTO, autocast, resolve_precision


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    prompt: list[int],
    stop: set[int],
    max_new_tokens: int = 50,
    num_draft_tokens: int = 5,
    sampling: Sampling | None = None,
    precision: str = AUTO,
    compile_model: bool = False,
    constraint: Grammar | None = None,
    vocab_limit: int | None = None,
) -> tuple[list[int], dict]:
    """Generate for one prompt; returns (new token ids, acceptance statistics). `compile_model` compiles
    both models' decode steps (as `generate` does): the draft's one-token step and the target's
    (k + 1)-token check.

    A round costs k draft steps plus one target forward, so the draft's cost per token against the
    target's decides the speedup: drafted tokens stay tensors between draft steps and are read back
    once per round, and at T=0 no distribution is materialised (argmax of the logits only).
    With `constraint` the output matches the grammar: exactly constrained `generate`'s at T=0.
    `vocab_limit` (the tokenizer's piece count) keeps both models' padded vocabulary rows unchosen."""
    s = sampling or Sampling()
    k = max(1, num_draft_tokens)
    target, compiled = unwrap_compiled(target, compile_model)
    draft, _ = unwrap_compiled(draft, compiled)
    device = target.embedding.weight.device
    precision = resolve_precision(precision, device, decoding=True)
    check_context(target, len(prompt), max_new_tokens)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    size = len(prompt) + max_new_tokens + k + 1
    t_cache = new_cache(target, 1, size, precision, compiled)
    d_cache = new_cache(draft, 1, size, precision, compiled)

    def run(model, ids, cache):  # logits (1, T, V) for ids (1, T) appended to the cache
        logits = model(ids, cache=cache) if cache.end == 0 else extend(model, ids, cache, compiled)
        return real_tokens(logits, vocab_limit)

    matcher = constraint.matcher() if constraint is not None else None
    # row i: the tokens allowed after d_1..d_i; the draft step and the target's check use the same rows
    vocab = vocab_limit or target.config.vocab_size
    mask = TokenMask(constraint, k + 1, vocab) if constraint is not None else None

    def constrain(logits, row: int, consumed: int, all_rows: bool = False):  # after a drafted stop: stops only
        mask.fill(row, matcher) if consumed == row else mask.fill_stop(row)
        return mask.apply(logits, None if all_rows else row)

    out: list[int] = []
    # tokens each model has not yet seen; the last one is the "pending" token whose successor comes next
    d_todo = t_todo = torch.tensor([prompt], device=device)
    proposed = accepted = rounds = 0
    per_round: list[int] = []  # accepted drafts per round, as tamm's accepted_token_counts
    start = time.perf_counter()
    ttft = None
    with autocast(precision, device), frozen_adapters(target), frozen_adapters(draft):
        while len(out) < max_new_tokens:
            # 1. draft proposes k tokens, one forward each (the first also catches up on unseen tokens)
            d_logits = run(draft, d_todo, d_cache)[:, -1]
            tokens, q, consumed = [], [], 0
            for i in range(k):
                if mask is not None:
                    d_logits = constrain(d_logits, i, consumed)
                if s.greedy:
                    tokens.append(d_logits.argmax(-1))  # (1,)
                else:
                    q.append(probabilities(d_logits, s)[0])
                    tokens.append(torch.multinomial(q[-1], 1, generator=gen))
                if matcher is not None and consumed == i and int(tokens[-1]) not in stop:
                    matcher.advance(int(tokens[-1]))
                    consumed += 1
                if i < k - 1:
                    d_logits = real_tokens(decode_one(draft, tokens[-1], d_cache, compiled), vocab_limit)
            block = torch.cat([t_todo, torch.cat(tokens)[None]], dim=1)
            drafted = block[0, -k:].tolist()  # the round's one read-back
            # 2. target scores pending + drafts in one forward: k + 1 distributions
            t_len_before = t_cache.end
            t_logits = run(target, block, t_cache)[0, -(k + 1) :]
            if mask is not None:  # rows 0..k-1 as the draft saw them, row k after all k drafts
                t_logits = constrain(t_logits, k, consumed, all_rows=True)
            # 3. accept a prefix of the drafts, then one corrected or bonus token
            if s.greedy:
                best = t_logits.argmax(-1).tolist()
                n = 0
                while n < k and best[n] == drafted[n]:
                    n += 1
                nxt = best[n]
            else:
                p = probabilities(t_logits, s)
                n = 0
                while n < k and bool(
                    torch.rand((), generator=gen, device=device) * q[n][drafted[n]] <= p[n][drafted[n]]
                ):
                    n += 1
                if n < k:
                    residual = (p[n] - q[n]).clamp_min(0)
                    if residual.sum() <= 0:  # p == q exactly: any token of p is a valid replacement
                        residual = p[n]
                    nxt = int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
                else:
                    nxt = int(torch.multinomial(p[k], 1, generator=gen))
            # counted as tamm counts: a round drafts no more than the reply still needs after the
            # target's own token, and nothing after the draft's stop (the block keeps k drafts, so the
            # compiled check keeps one shape)
            counted = min(k, max_new_tokens - len(out) - 1)
            counted = next((i + 1 for i, t in enumerate(drafted[:counted]) if t in stop), counted)
            per_round.append(min(n, counted))
            proposed, accepted, rounds = proposed + counted, accepted + per_round[-1], rounds + 1
            new = drafted[:n] + [nxt]
            if matcher is not None:  # back to the state after d_1..d_n, then on with the corrected token
                matcher.rollback(consumed - min(n, consumed))
                if nxt not in stop and n <= consumed:
                    matcher.advance(nxt)
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
    stats = {
        "proposed": proposed,
        "accepted": accepted,
        "rounds": rounds,
        "accepted_per_round": per_round,
        "acceptance_rate": accepted / max(proposed, 1),
        "mean_accepted_length": accepted / max(rounds, 1),
        "tokens_per_round": len(out) / max(rounds, 1),
        "seconds": seconds,
        "ttft_s": ttft or 0.0,
        "new_tokens": len(out),
    }
    return out, stats

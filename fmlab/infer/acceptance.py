"""How good a draft is for a target: the speculative acceptance rate, and the wall-clock speedup over
plain decoding of the same prompts with the same sampling. The one measurement behind `fmlab
train-draft`'s draft scores, `fmlab generate --draft-checkpoint`'s statistics, `fmlab verify-fmadapter`'s
4-bit check, notebook 05's sweep over k and `benchmarks/bench_decode.py`.

Prompts are decoded one at a time. Plain and speculative decoding are timed round-robin, after `warmup`
untimed rounds, `repeats` times, and the median time of each is reported (drift hits every side alike).
At temperature 0 the speculative output must be the plain greedy output token for token (`identical`).
"""

from __future__ import annotations

import statistics
import time

from fmlab.infer.generate import generate_ids
from fmlab.infer.sampling import Sampling
from fmlab.infer.speculative import speculative_generate
from fmlab.model.precision import AUTO

GREEDY = Sampling(temperature=0.0)
COUNTS = ("proposed", "accepted", "rounds", "new_tokens")


def _plain(target, prompts, stop, max_new_tokens, sampling, precision, compile_model, vocab) -> list[list[int]]:
    outputs = []
    for p in prompts:
        ids, _, _ = generate_ids(
            target,
            [p],
            stop,
            max_new_tokens,
            sampling,
            precision=precision,
            compile_model=compile_model,
            vocab_limit=vocab,
        )
        outputs.append(ids[0])
    return outputs


def _speculative(target, draft, prompts, stop, k, max_new_tokens, sampling, precision, compile_model, vocab):
    outputs, runs = [], []
    for p in prompts:
        start = time.perf_counter()
        out, stats = speculative_generate(
            target, draft, p, stop, max_new_tokens, k, sampling, precision, compile_model, vocab_limit=vocab
        )
        runs.append({**stats, "latency_s": time.perf_counter() - start})
        outputs.append(out)
    return outputs, runs


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def sweep_k(
    target,
    draft,
    prompts: list[list[int]],
    ks,
    max_new_tokens: int = 64,
    *,
    stop=(),
    sampling: Sampling | None = None,
    precision: str = AUTO,
    compile_model: bool = False,
    time_plain: bool = True,
    plain_seconds: float | None = None,
    repeats: int = 1,
    warmup: int = 0,
    cost_ratio: float | None = None,
    vocab_limit: int | None = None,
) -> list[dict]:
    """`measure_acceptance` for every k in `ks`, all timed against the same plain decoding (one plain run
    per round, then one speculative run per k). With `cost_ratio` c (the draft's time per token over the
    target's, see `decode_cost_ratio`), each row also has the expected speedup tokens_per_round / (k·c + 1):
    a round costs k draft passes and one target pass."""

    sampling, stop, ks = sampling or GREEDY, set(stop), list(ks)
    time_plain = time_plain and plain_seconds is None
    plain_out, plain_times, spec_times, last = None, [], {k: [] for k in ks}, {}
    for r in range(warmup + max(repeats, 1)):
        if time_plain:
            plain_out, seconds = _timed(
                lambda: _plain(target, prompts, stop, max_new_tokens, sampling, precision, compile_model, vocab_limit)
            )
            if r >= warmup:
                plain_times.append(seconds)
        for k in ks:
            last[k], seconds = _timed(
                lambda k=k: _speculative(
                    target, draft, prompts, stop, k, max_new_tokens, sampling, precision, compile_model, vocab_limit
                )
            )
            if r >= warmup:
                spec_times[k].append(seconds)
    if time_plain:
        plain_seconds = statistics.median(plain_times)
    rows = []
    for k in ks:
        outputs, runs = last[k]
        totals = {key: sum(run[key] for run in runs) for key in COUNTS}
        spec_seconds = statistics.median(spec_times[k])
        row = {
            "k": k,
            **totals,
            "acceptance_rate": totals["accepted"] / max(totals["proposed"], 1),
            "mean_accepted_length": totals["accepted"] / max(totals["rounds"], 1),
            "tokens_per_round": totals["new_tokens"] / max(totals["rounds"], 1),
            "plain_seconds": plain_seconds,
            "speculative_seconds": spec_seconds,
            "speedup": plain_seconds / spec_seconds if plain_seconds is not None else None,
            "identical": outputs == plain_out if plain_out is not None else None,
            "outputs": outputs,
            "per_prompt": runs,
        }
        if cost_ratio is not None:
            row["expected_speedup"] = row["tokens_per_round"] / (k * cost_ratio + 1)
        rows.append(row)
    return rows


def measure_acceptance(
    target,
    draft,
    prompts: list[list[int]],
    k: int = 5,
    max_new_tokens: int = 64,
    *,
    stop=(),
    sampling: Sampling | None = None,
    precision: str = AUTO,
    compile_model: bool = False,
    time_plain: bool = True,
    plain_seconds: float | None = None,
    repeats: int = 1,
    warmup: int = 0,
    vocab_limit: int | None = None,
) -> dict:
    """Speculative decoding of `prompts` (token ids) with `draft` proposing `k` tokens per round for
    `target`, against plain decoding of the same prompts. Returns

    - `acceptance_rate` (accepted / proposed drafted tokens), `proposed`, `accepted`, `rounds`,
      `new_tokens`, `mean_accepted_length` (accepted per round), `tokens_per_round` (per target pass);
    - `plain_seconds`, `speculative_seconds` (medians) and `speedup` = plain / speculative;
    - `identical`: the outputs equal plain decoding's; `outputs` (ids per prompt) and `per_prompt` (each
      prompt's `speculative_generate` statistics plus its `latency_s`).

    `stop`: stop token ids; `sampling`: default greedy; `repeats`, `warmup`: timing rounds;
    `plain_seconds`: a plain time measured before (plain decoding is not run again, `identical` is None);
    `time_plain=False`: no plain decoding at all (`speedup`, `plain_seconds` and `identical` are None);
    `vocab_limit`: the tokenizer's piece count, past which the models' padded rows are never chosen.
    """
    return sweep_k(
        target,
        draft,
        prompts,
        [k],
        max_new_tokens,
        stop=stop,
        sampling=sampling,
        precision=precision,
        compile_model=compile_model,
        time_plain=time_plain,
        plain_seconds=plain_seconds,
        repeats=repeats,
        warmup=warmup,
        vocab_limit=vocab_limit,
    )[0]


def decode_cost_ratio(
    target,
    draft,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    *,
    precision: str = AUTO,
    repeats: int = 1,
) -> dict:
    """Per-token decode cost of the draft over the target's, c: both decode every prompt for a fixed
    number of tokens (no stop tokens), the prefill (time to first token) left out, after a warm-up; the
    median per-token time of each. A speculative round costs k·c + 1 target passes."""

    for model in (target, draft):  # warm-up
        generate_ids(model, prompts[:1], set(), 4, GREEDY, precision=precision)
    cost = {"target": [], "draft": []}
    for _ in range(max(repeats, 1)):
        for name, model in (("target", target), ("draft", draft)):
            for p in prompts:
                start = time.perf_counter()
                out, _, ttft = generate_ids(model, [p], set(), max_new_tokens, GREEDY, precision=precision)
                cost[name].append((time.perf_counter() - start - ttft) / max(len(out[0]) - 1, 1))
    target_s, draft_s = statistics.median(cost["target"]), statistics.median(cost["draft"])
    return {"target_s_per_token": target_s, "draft_s_per_token": draft_s, "cost_ratio": draft_s / target_s}

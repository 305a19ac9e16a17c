"""Generation over the static KV cache (gpt-fast style): `prefill` the prompt, then `decode_one`
token at a time. Batched prompts are left-padded; a row stops at eos or `<turn_end>`. Prompts are
rendered by `fmlab.data.chat_template.encode_prompt`, the same code that renders training samples.

Batch-1 decoding of a small model is bound by per-op overhead, not arithmetic. With `compile_model`
the decode step (`Transformer.step` on one token) is captured once by torch.compile: the cache gives
it the same shapes at every token (see `fmlab.model.kv_cache`), and cache lengths are rounded up to a multiple
of `CACHE_BUCKET` so that prompts of different lengths share the compiled graph. The prefill stays
eager (its length changes with every prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fmlab.data.chat_template import encode_prompt
from fmlab.errors import FmlabError
from fmlab.infer.constrained import Grammar, TokenMask
from fmlab.infer.sampling import Sampling, sample
from fmlab.model.lora import frozen_adapters
from fmlab.model.precision import AUTO, autocast, cache_dtype, resolve_precision
from fmlab.model.transformer import Transformer


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    ttft_s: float  # time to first token (prefill + first sample)
    latency_s: float  # whole request
    finish_reason: str  # "stop" (eos / <turn_end>) or "length"
    stats: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / max(self.latency_s - self.ttft_s, 1e-9) if len(self.token_ids) > 1 else 0.0


def stop_ids(tokenizer) -> set[int]:
    return {tokenizer.eos_id, tokenizer.turn_end_id}


def left_pad(prompts: list[list[int]], pad_id: int, eos_id: int):
    """(input_ids, segment_ids) with every prompt right-aligned; pads get segment 0 (Apple's layout)."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
    pad = torch.arange(T)[None, :] < torch.tensor([T - len(p) for p in prompts])[:, None]
    seg = torch.where(pad, 0, 1 + torch.cumsum(ids == eos_id, dim=1))
    return ids, seg


CACHE_BUCKET = 256
STEP_GRAPHS = 128  # compiled decode-step graphs kept per process (see `compiled_step`)
_compiled_step = None


def compiled_step():
    """`Transformer.step` under torch.compile (one graph per model structure and token count)."""
    global _compiled_step
    # one graph per (model, token count, cache bucket, precision): a session that decodes a target and
    # its draft in both precisions, or sweeps k, needs more than dynamo's default of 8. Checked at every
    # call, since a caller may have put the process-wide limit back since the first
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, STEP_GRAPHS)
    if _compiled_step is None:
        # dynamo's guards already pin every input's shape and strides: the graph's own checks of them
        # (one per weight, about 200 Python calls) cost 0.2 ms of a 2.3 ms step of the embedded base
        _compiled_step = torch.compile(
            Transformer.step, fullgraph=True, dynamic=False, options={"size_asserts": False, "alignment_asserts": False}
        )
    return _compiled_step


def unwrap_compiled(model, compile_model: bool):
    """A model wrapped by `torch.compile(model)` (e.g. the CLI's --compile-model) decodes through the
    compiled decode step instead: compiling the whole forward would recompile at every cache length."""
    if hasattr(model, "_orig_mod"):
        return model._orig_mod, True
    return model, compile_model


def new_cache(model, batch_size: int, length: int, precision: str, compiled: bool):
    if compiled:  # shared graph across prompt lengths; the extra slots are masked out
        length = -(-length // CACHE_BUCKET) * CACHE_BUCKET
    return model.new_cache(batch_size, length, dtype=cache_dtype(precision))


def prefill(model, ids: torch.Tensor, seg: torch.Tensor | None, cache) -> torch.Tensor:
    """Run the prompt (B, T) into an empty cache; the logits of its last position (B, V)."""
    return model(ids, segment_ids=seg, cache=cache)[:, -1]


def extend(model, ids: torch.Tensor, cache, compiled: bool = False) -> torch.Tensor:
    """Append ids (B, T) to a filled cache (a decoded token, a speculative block); logits (B, T, V)."""
    positions, mask, slots = cache.advance(None, ids.shape[1], static=compiled)
    step = compiled_step() if compiled else type(model).step
    return step(model, ids, model.rope(positions, cache.max_len), mask, cache, slots)


def decode_one(model, token: torch.Tensor, cache, compiled: bool = False) -> torch.Tensor:
    """Next-token logits (B, V) after `token` (B,)."""
    return extend(model, token[:, None], cache, compiled)[:, -1]


def real_tokens(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """Logits over the tokenizer's pieces only. A model's vocabulary is padded past them (Apple's to 153,600
    rows, fmlab's to 8,192) and a padded row is no token: the tokenizer cannot decode it."""
    return logits if vocab_limit is None else logits[..., :vocab_limit]


def check_context(model, prompt_len: int, max_new_tokens: int):
    limit = model.config.context_length
    if prompt_len + max_new_tokens > limit:
        raise FmlabError(
            f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} exceeds the model's context of {limit}; "
            f"shorten the prompt or lower --max-new-tokens"
        )


@torch.inference_mode()
def generate_ids(
    model,
    prompts: list[list[int]],
    stop: set[int],
    max_new_tokens: int = 50,
    sampling: Sampling | None = None,
    *,
    pad_id: int = 0,
    eos_id: int = 1,
    precision: str = AUTO,
    on_token: Callable[[int, int], None] | None = None,
    compile_model: bool = False,
    constraint: Grammar | None = None,
    vocab_limit: int | None = None,
):
    """Token-level generation for a batch of prompt ids. Returns (new ids per row, finish reasons, ttft).
    With `constraint` every row's reply matches the grammar (`fmlab.infer.constrained`), then stops.
    `vocab_limit` (the tokenizer's piece count) keeps the model's padded vocabulary rows unchosen."""
    sampling = sampling or Sampling()
    model, compiled = unwrap_compiled(model, compile_model)
    device = model.embedding.weight.device
    precision = resolve_precision(precision, device, decoding=True)
    ids, seg = left_pad(prompts, pad_id, eos_id)
    check_context(model, ids.shape[1], max_new_tokens)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    cache = new_cache(model, len(prompts), ids.shape[1] + max_new_tokens, precision, compiled)
    out = [[] for _ in prompts]
    done = [False] * len(prompts)
    matchers = [constraint.matcher() for _ in prompts] if constraint is not None else None
    vocab = vocab_limit or model.config.vocab_size
    mask = TokenMask(constraint, len(prompts), vocab) if constraint is not None else None
    rows = list(range(len(prompts)))  # the prompt each batch row decodes
    # greedy, eager, unconstrained decoding drops finished rows: the compiled step has one batch shape,
    # a grammar mask one row per prompt, and sampling draws from one generator across the whole batch
    compact = sampling.greedy and not compiled and constraint is None
    start = time.perf_counter()
    ttft = None
    with autocast(precision, device), frozen_adapters(model):
        logits = real_tokens(prefill(model, ids.to(device), seg.to(device), cache), vocab_limit)
        for _ in range(max_new_tokens):
            if matchers is not None:  # only the grammar's allowed tokens, before any sampling transform
                for i, m in enumerate(matchers):
                    mask.fill(i, None if done[i] else m)
                logits = mask.apply(logits)
            nxt = sample(logits, sampling, gen)
            ttft = ttft if ttft is not None else time.perf_counter() - start
            for i, t in zip(rows, nxt.tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t in stop
                    if matchers is not None and not done[i]:
                        matchers[i].advance(t)
                    if on_token:
                        on_token(i, t)
            if all(done):
                break
            keep = [j for j, i in enumerate(rows) if not done[i]]
            if compact and len(keep) <= 3 * len(rows) // 4:
                # a quarter of the batch has stopped: drop those rows instead of decoding them to the end
                rows = [rows[j] for j in keep]
                keep = torch.tensor(keep, device=device)
                cache.keep_rows(keep)
                nxt = nxt.index_select(0, keep)
            logits = real_tokens(decode_one(model, nxt, cache, compiled), vocab_limit)
    reasons = ["stop" if row and row[-1] in stop else "length" for row in out]
    return out, reasons, ttft or 0.0


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Message lists, plain strings (one user turn) or token-id lists → prompt ids."""

    encoded = []
    for p in prompts:
        if isinstance(p, str):
            p = [{"role": "user", "content": p}]
        encoded.append(list(p) if p and isinstance(p[0], int) else encode_prompt(tokenizer, p))
    return encoded


def generate(
    model,
    tokenizer,
    prompts,
    max_new_tokens: int = 50,
    sampling: Sampling | None = None,
    *,
    batch_size: int = 1,
    precision: str = AUTO,
    stream: Callable[[int, str], None] | None = None,
    compile_model: bool = False,
    constraint: Grammar | None = None,
) -> list[Generation]:
    """Generate a reply for each prompt (message list or plain user text), `batch_size` at a time.
    `stream(i, text)` is called with each new piece of text of prompt i. `compile_model` compiles
    the decode step (pays off over a few hundred tokens; the first call compiles for tens of seconds).
    `constraint` (a `fmlab.infer.constrained` grammar for this tokenizer) makes every reply match it."""
    encoded = encode_prompts(tokenizer, prompts)
    stop = stop_ids(tokenizer)
    results = []
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b : b + batch_size]
        pieces = [[] for _ in chunk]

        def on_token(i, t, b=b, pieces=pieces):
            if stream and t not in stop:
                before = tokenizer.decode(pieces[i])
                pieces[i].append(t)
                stream(b + i, tokenizer.decode(pieces[i])[len(before) :])

        start = time.perf_counter()
        out, reasons, ttft = generate_ids(
            model,
            chunk,
            stop,
            max_new_tokens,
            sampling,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            precision=precision,
            on_token=on_token if stream else None,
            compile_model=compile_model,
            constraint=constraint,
            vocab_limit=len(tokenizer),
        )
        latency = time.perf_counter() - start
        for ids, prompt, reason in zip(out, chunk, reasons):
            text_ids = [t for t in ids if t not in stop]
            results.append(Generation(tokenizer.decode(text_ids), ids, len(prompt), ttft, latency, reason))
    return results

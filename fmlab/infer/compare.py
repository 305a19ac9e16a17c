"""Side-by-side comparison: the base and N adapter checkpoints on the same prompts with the same seed.

The base is loaded once; each checkpoint's LoRA tensors are swapped into it in turn, and "base" is the
base with every LoRA B zeroed (an untrained adapter changes nothing, Hu et al. 2021). The model's own
LoRA state is restored afterwards. Results are a long pandas DataFrame, one row per (prompt, model):

    prompt_id, prompt, model, text, tokens, finish_reason, ttft_s, latency_s, tokens_per_s, score
    (+ reference: the held-out answer, when the prompts were training-format samples)

`flips` marks each example improved / regressed / same against the base with a pass threshold on the
score, `summary` gives one row per model, and `to_html` a static side-by-side table (escaped, pre-wrap)
that needs no widget front end.
"""

from __future__ import annotations

import contextlib
import difflib
import html
import math
import re
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import load_adapter
from fmlab.checkpoints.assets import load_base
from fmlab.checkpoints.run_dir import BASE, resolve_checkpoint
from fmlab.errors import FmlabError
from fmlab.infer.constrained import Grammar
from fmlab.infer.generate import generate
from fmlab.infer.sampling import Sampling
from fmlab.model.lora import is_lora_b, is_lora_name, lora_modules, merge_lora, unmerge_lora
from fmlab.model.precision import AUTO

COLUMNS = [
    "prompt_id",
    "prompt",
    "model",
    "text",
    "tokens",
    "finish_reason",
    "ttft_s",
    "latency_s",
    "tokens_per_s",
    "score",
]


def split_prompt(prompt) -> tuple[object, str | None]:
    """(what to generate from, reference answer or None). Accepts plain text, message lists, `Sample`s
    and token-id lists; a message list that ends with the assistant loses that turn, which becomes the
    reference (so a held-out training file serves as prompts)."""
    prompt = getattr(prompt, "messages", prompt)
    if (
        isinstance(prompt, (list, tuple))
        and prompt
        and isinstance(prompt[-1], dict)
        and prompt[-1].get("role") == "assistant"
    ):
        return list(prompt[:-1]), prompt[-1].get("content") or ""
    return prompt, None


def prompt_text(prompt) -> str:
    """The text a person reads for a prompt: the last user turn of a message list."""
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], dict):
        users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    return f"<{len(prompt)} token ids>"


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The lock a `compare` run holds on each model it decodes with, for the whole run, and that every
    `adapter_swapping` block holds on its model (so `fmlab.eval`'s runs are covered too). Widget
    callbacks run on a kernel thread of their own, so a comparison view's Generate and a cell's
    `compare` or `evaluate` can use the same base at once; without the lock one would decode with the
    adapter the other swapped in. (A plain `generate` on a model that is being swapped into is not
    covered.)"""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def adapter_swapping(model):
    """Restore the model's LoRA tensors (and merged state) however the block exits; yields `restore()`,
    which puts the model's own adapter back in the middle of the block. The block holds the model's
    `model_lock`: no other thread swaps into it meanwhile."""

    with model_lock(model):
        merged = any(m.merged for m in lora_modules(model))
        unmerge_lora(model)  # swapping B under a merged weight would double-count it
        saved = {n: p.detach().clone() for n, p in model.named_parameters() if is_lora_name(n)}

        @torch.no_grad()
        def restore():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])

        try:
            yield restore
        finally:
            restore()
            if merged:
                merge_lora(model)


def use_adapter(model, adapter: str | Path | None) -> None:
    """Put `adapter` (a file, or a run directory: its best checkpoint) into `model`; None zeroes every
    LoRA B, which gives exactly the base."""

    if model.config.lora is None:
        if adapter is not None:
            raise FmlabError(f"{adapter}: this model has no LoRA adapter to load a checkpoint into")
        return
    if adapter is None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if is_lora_b(n):
                    p.zero_()
        return
    path = resolve_checkpoint(adapter, missing="no such adapter checkpoint")
    load_adapter(getattr(model, "_orig_mod", model), path)


def compare(
    models: dict,
    tokenizer,
    prompts,
    *,
    max_new_tokens: int = 50,
    sampling: Sampling | None = None,
    score_fn: Callable[[object, str], float] | None = None,
    batch_size: int = 1,
    base_model=None,
    assets=None,
    precision: str = AUTO,
    warmup: bool = True,
    stream: Callable[[str, int, str], None] | None = None,
    constraint: Grammar | None = None,
):
    """Generate every prompt with every model; one DataFrame row per (prompt, model).

    models: name → a model object (used as is), an adapter path (or a run directory: its best
    checkpoint) swapped into the base, or None / "base" for the base with zero LoRA. The base comes from
    `base_model`, else it is loaded once from `assets`. Every model gets the same sampling seed.
    score_fn(prompt, text) → float scores each reply (prompt as given: text or messages).
    stream(model, prompt_index, piece) receives text as it is generated.
    constraint: a `fmlab.infer.constrained` grammar every reply of every model must match.
    """
    import pandas as pd

    if not models:
        raise FmlabError("compare needs at least one model")
    prompts = list(prompts)
    if not prompts:
        raise FmlabError("compare needs at least one prompt")
    split = [split_prompt(p) for p in prompts]
    inputs = [s[0] for s in split]
    references = [s[1] for s in split]
    sampling = sampling or Sampling(temperature=0.0)
    needs_base = any(not isinstance(v, torch.nn.Module) for v in models.values())
    if needs_base and base_model is None:
        base_model = load_base(assets)
    rows = []
    with contextlib.ExitStack() as stack:
        used = {id(m): m for m in [*models.values(), base_model] if isinstance(m, torch.nn.Module)}
        for _, m in sorted(used.items()):  # one order for every caller: two runs cannot deadlock
            stack.enter_context(model_lock(m))
        restore = stack.enter_context(adapter_swapping(base_model)) if needs_base else None
        for k, (name, spec) in enumerate(models.items()):
            if isinstance(spec, torch.nn.Module):
                model = spec
                if spec is base_model and restore is not None:  # the base object itself: as given
                    restore()
            else:
                model = base_model
                use_adapter(model, None if spec is None or spec == BASE else spec)
            model.eval()
            if warmup and k == 0:  # the first model should not pay for allocator and kernel warm-up
                generate(model, tokenizer, inputs[:1], 2, sampling, precision=precision)
            on_piece = (lambda i, piece, name=name: stream(name, i, piece)) if stream else None
            outs = generate(
                model,
                tokenizer,
                inputs,
                max_new_tokens,
                sampling,
                batch_size=batch_size,
                precision=precision,
                stream=on_piece,
                constraint=constraint,
            )
            for i, g in enumerate(outs):
                score = float(score_fn(inputs[i], g.text)) if score_fn else math.nan
                rows.append(
                    {
                        "prompt_id": i,
                        "prompt": prompt_text(inputs[i]),
                        "model": name,
                        "text": g.text,
                        "tokens": len(g.token_ids),
                        "finish_reason": g.finish_reason,
                        "ttft_s": g.ttft_s,
                        "latency_s": g.latency_s,
                        "tokens_per_s": g.tokens_per_s,
                        "score": score,
                    }
                )
                if any(r is not None for r in references):
                    rows[-1]["reference"] = references[i]
    return pd.DataFrame(rows).sort_values(["prompt_id"], kind="stable").reset_index(drop=True)


def wide(results, value: str = "text"):
    """prompt × model table of one column (text, score, latency_s, ...), models in their given order."""
    table = results.pivot(index=["prompt_id", "prompt"], columns="model", values=value)
    return table[list(dict.fromkeys(results["model"]))]


def _flip(base_pass: bool, model_pass: bool) -> str:
    return "same" if base_pass == model_pass else ("improved" if model_pass else "regressed")


def flips(results, base: str = BASE, threshold: float = 0.5):
    """Per example and non-base model: base score, score, delta and the flip against the base. A reply
    passes when its score ≥ threshold; "improved" = the base failed and this model passes, "regressed"
    = the other way round, "same" otherwise."""
    import pandas as pd

    if base not in set(results["model"]):
        raise FmlabError(f"no {base!r} model in the results to compare against")
    if results["score"].isna().all():
        raise FmlabError("the results have no scores: pass score_fn to compare()")
    base_scores = results[results["model"] == base].set_index("prompt_id")["score"]
    others = results[results["model"] != base]
    out = pd.DataFrame(
        {
            "prompt_id": others["prompt_id"].values,
            "prompt": others["prompt"].values,
            "model": others["model"].values,
            "base_score": base_scores.loc[others["prompt_id"]].values,
            "score": others["score"].values,
        }
    )
    out["delta"] = out["score"] - out["base_score"]
    out["flip"] = [_flip(b >= threshold, s >= threshold) for b, s in zip(out["base_score"], out["score"])]
    return out


def score_table(results, base: str = BASE, threshold: float = 0.5):
    """One row per model: mean score and pass rate, flips against the base, reply length and speed."""
    import pandas as pd

    order = list(dict.fromkeys(results["model"]))
    g = results.groupby("model", sort=False)
    table = pd.DataFrame(
        {
            "mean_score": g["score"].mean(),
            "pass_rate": g["score"].apply(lambda s: (s >= threshold).mean()),
            "mean_tokens": g["tokens"].mean(),
            "mean_latency_s": g["latency_s"].mean(),
            "mean_ttft_s": g["ttft_s"].mean(),
            "tokens_per_s": g["tokens_per_s"].mean(),
        }
    ).loc[order]
    if results["score"].isna().all():
        table = table.drop(columns=["mean_score", "pass_rate"])
    elif base in order:
        f = flips(results, base, threshold)
        counts = f.groupby("model")["flip"].value_counts().unstack(fill_value=0)
        for kind in ("improved", "regressed"):
            table[kind] = counts[kind] if kind in counts else 0
        table.loc[base, ["improved", "regressed"]] = 0
        table[["improved", "regressed"]] = table[["improved", "regressed"]].fillna(0).astype(int)
    table.index.name = "model"
    return table


def _diff_html(text: str, base_text: str | None) -> str:
    """Escaped text; words that differ from the base reply are highlighted."""
    if base_text is None or text == base_text:
        return html.escape(text)
    words, base_words = re.split(r"(\s+)", text), re.split(r"(\s+)", base_text)
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(None, base_words, words, autojunk=False).get_opcodes():
        piece = html.escape("".join(words[j1:j2]))
        out.append(piece if op == "equal" or not piece.strip() else f'<span style="background:#fff2a8">{piece}</span>')
    return "".join(out)


FLIP_COLORS = {"improved": "#e3f6e3", "regressed": "#fbe3e3"}
_CELL = "text-align:left;vertical-align:top;border:1px solid #ccc;padding:6px;"
_PRE = "white-space:pre-wrap;word-break:break-word;margin:0;font-family:ui-monospace,monospace;font-size:12px"


def to_html(results, base: str = BASE, threshold: float = 0.5, diff: bool = True, max_chars: int | None = None) -> str:
    """A static side-by-side table: one row per prompt, one column per model (plus the reference when
    there is one). Text is HTML-escaped and wraps; cells show score, tokens and latency; a green or
    red cell is an improved or regressed example; with `diff`, words differing from the base are marked."""
    models = list(dict.fromkeys(results["model"]))
    has_ref = "reference" in results and results["reference"].notna().any()
    has_score = not results["score"].isna().all()
    flip = {}
    if has_score and base in models:
        flip = {(r.prompt_id, r.model): r.flip for r in flips(results, base, threshold).itertuples()}
    cut = lambda t: t if max_chars is None or len(t) <= max_chars else t[:max_chars] + "…"
    head = ["prompt"] + (["reference"] if has_ref else []) + models
    parts = ['<table style="border-collapse:collapse;table-layout:fixed;width:100%">', "<thead><tr>"]
    parts += [f'<th style="{_CELL}">{html.escape(h)}</th>' for h in head]
    parts.append("</tr></thead><tbody>")
    for pid, rows in results.groupby("prompt_id", sort=True):
        by_model = {r.model: r for r in rows.itertuples()}
        first = rows.iloc[0]
        base_text = by_model[base].text if diff and base in by_model else None
        parts.append(f'<tr><td style="{_CELL}"><pre style="{_PRE}">{html.escape(cut(first["prompt"]))}</pre></td>')
        if has_ref:
            reference = html.escape(cut(first["reference"] or ""))
            parts.append(f'<td style="{_CELL}color:#555"><pre style="{_PRE}">{reference}</pre></td>')
        for m in models:
            r = by_model.get(m)
            if r is None:
                parts.append(f'<td style="{_CELL}"></td>')
                continue
            text = _diff_html(cut(r.text), cut(base_text) if m != base and base_text is not None else None)
            stats = (f"score {r.score:.2f} · " if has_score else "") + f"{r.tokens} tok · {r.latency_s:.2f} s"
            if (pid, m) in flip and flip[(pid, m)] != "same":
                stats += f" · <b>{flip[(pid, m)]}</b>"
            bg = FLIP_COLORS.get(flip.get((pid, m)), "")
            parts.append(
                f'<td style="{_CELL}{"background:" + bg if bg else ""}"><pre style="{_PRE}">{text}</pre>'
                f'<div style="color:#666;font-size:11px;margin-top:4px">{stats}</div></td>'
            )
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)

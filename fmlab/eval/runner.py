"""The generation half of `fmlab eval`: held-out samples → prompts and references, and every model's
replies to them under one decoding setting.

A sample's reference is its last assistant turn as the template writes it (text, then its tool calls:
`fmlab.eval.tool_calls.reference_text`); the prompt is everything before it, tools included, rendered by
the same `encode_prompt` as training. The base is loaded once; each checkpoint's LoRA tensors are swapped
into it in turn and the base is the zero-LoRA model (`fmlab.infer.compare.adapter_swapping`, `use_adapter`,
as `compare` does). Every model gets the same prompts in the same batches with the same sampling seed;
prompts are batched by length (left padding leaves a prompt's logits unchanged) or, with a draft,
decoded one at a time speculatively (`fmlab.infer.speculative`; greedy output is unchanged by it).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fmlab.checkpoints.assets import shipped_dir
from fmlab.checkpoints.run_dir import BASE, run_checkpoints
from fmlab.data.chat_template import encode_prompt
from fmlab.data.validate import DataError, Sample, check_sample, read_messages
from fmlab.errors import FmlabError
from fmlab.eval.tool_calls import reference_text
from fmlab.infer.compare import adapter_swapping, prompt_text, use_adapter
from fmlab.infer.generate import generate, stop_ids
from fmlab.infer.sampling import Sampling
from fmlab.infer.speculative import speculative_generate
from fmlab.model.precision import AUTO
from fmlab.tiny.skill_probes import probe_samples

TASK, OOD = "task", "ood"
DEFAULT_OOD = "default"  # `--ood` alone: fmlab-tiny's general-skills probes
PROBE_FILE = "skills_probe.jsonl"


@dataclass
class EvalSet:
    """Held-out samples split into what the models see and what they should answer."""

    split: str  # TASK or OOD
    source: str
    prompts: list[list[dict]]  # messages before the reference
    tools: list[list | None]
    references: list[str]
    where: list[str]  # file:line of each sample

    def __len__(self) -> int:
        return len(self.references)


def eval_set(data, split: str = TASK, limit: int | None = None) -> EvalSet:
    """An EvalSet from a chat JSONL path or a list of samples (message lists or `Sample`s); every sample
    must end with an assistant turn (its reference). `limit`: the first N samples."""
    if isinstance(data, (str, Path)):
        samples, source = read_messages(data, mode="train"), str(data)
    else:
        samples, source, errors = [], "<memory>", []
        for i, obj in enumerate(data):
            if isinstance(obj, Sample):
                obj = {"messages": obj.messages, **({"tools": obj.tools} if obj.tools else {})}
            sample, problems, _ = check_sample(obj, "train")  # the same checks as a file's lines
            errors += [f"<memory>:{i + 1}: {p}" for p in problems]
            if sample is not None:
                sample.line = i + 1
                samples.append(sample)
        if errors:
            raise DataError(errors)
    if limit is not None:
        if limit < 1:
            raise FmlabError("--limit must be at least 1")
        samples = samples[:limit]
    return EvalSet(
        split,
        source,
        [s.messages[:-1] for s in samples],
        [s.tools for s in samples],
        [reference_text(s.messages[-1]) for s in samples],
        [s.where for s in samples],
    )


def ood_set(ood, limit: int | None = None) -> EvalSet | None:
    """The out-of-domain set: None (none), "default" (the shipped probes), or data as for `eval_set`."""
    if ood is None:
        return None
    if isinstance(ood, str) and ood == DEFAULT_OOD:
        shipped = shipped_dir("data") / PROBE_FILE
        return eval_set(shipped if shipped.is_file() else probe_samples(), OOD, limit)
    return eval_set(ood, OOD, limit)


def auto_max_new_tokens(tokenizer, references: list[str]) -> int:
    """Room for the longest reference and a quarter more (+ its `<turn_end>` and slack): a reply longer
    than that would not match anyway, and a base that rambles should not set the run's cost."""
    longest = max(len(tokenizer.encode(r)) for r in references) if references else 1
    return math.ceil(1.25 * longest) + 8


def expand_models(specs) -> dict[str, Path | None]:
    """{"base": None, name: checkpoint, ...} from checkpoint files and run directories (each run: all its
    kept checkpoints and its final one, `run_checkpoints`). Names are file stems, prefixed with the run's
    folder name when several sources would give the same name."""
    found: list[tuple[str, str, Path]] = []  # (source label, name, path)
    for spec in specs or []:
        path = Path(spec)
        if path.is_dir():
            found += [(path.name, name, p) for name, p in run_checkpoints(path, include_base=False).items()]
        elif path.is_file():
            found.append((path.parent.name, path.stem, path))
        else:
            raise FmlabError(f"{spec}: no such checkpoint file or run directory")
    stems = [name for _, name, _ in found]
    models: dict[str, Path | None] = {BASE: None}
    for source, name, path in found:
        label = f"{source}/{name}" if stems.count(name) > 1 or name == BASE else name
        if label in models:
            continue  # the same checkpoint given twice is run once
        models[label] = path
    return models


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="reply", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _decode(model, tokenizer, ids, max_new_tokens, sampling, batch_size, precision, draft, k, bar):
    """Replies (one dict each) for prompt ids, in their order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    out: list[dict | None] = [None] * len(ids)
    if draft is None:
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            gens = generate(
                model,
                tokenizer,
                [ids[i] for i in chunk],
                max_new_tokens,
                sampling,
                batch_size=len(chunk),
                precision=precision,
            )
            for i, g in zip(chunk, gens):
                out[i] = {
                    "text": g.text,
                    "tokens": len(g.token_ids),
                    "finish_reason": g.finish_reason,
                    "latency_s": g.latency_s,
                }
            bar.update(len(chunk))
        return out
    stop = stop_ids(tokenizer)
    for i in order:
        start = time.perf_counter()
        new, stats = speculative_generate(
            model, draft, ids[i], stop, max_new_tokens, k, sampling, precision, vocab_limit=len(tokenizer)
        )
        out[i] = {
            "text": tokenizer.decode([t for t in new if t not in stop]),
            "tokens": len(new),
            "finish_reason": "stop" if new and new[-1] in stop else "length",
            "latency_s": time.perf_counter() - start,
            "proposed": stats["proposed"],
            "accepted": stats["accepted"],
        }
        bar.update(1)
    return out


def run_models(
    base_model,
    tokenizer,
    models: dict,
    sets: list[EvalSet],
    max_new_tokens: dict[str, int],
    *,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    precision: str = AUTO,
    draft=None,
    num_draft_tokens: int = 5,
    progress: bool = True,
) -> tuple[list[dict], dict[str, dict]]:
    """Every model's reply to every prompt of every set: (rows, timing per model). `models`: name →
    None / "base" (zero LoRA) or an adapter checkpoint (a file or a run directory's best)."""
    if batch_size < 1:
        raise FmlabError("--batch-size must be at least 1")
    sampling = sampling or Sampling(temperature=0.0)
    ids = {s.split: [encode_prompt(tokenizer, p, t) for p, t in zip(s.prompts, s.tools)] for s in sets}
    rows, timing = [], {}
    bar = _progress(len(models) * sum(len(s) for s in sets), progress)
    with adapter_swapping(base_model):
        if sets and len(sets[0]):  # so the first model's time does not include allocator and kernel warm-up
            generate(base_model, tokenizer, ids[sets[0].split][:1], 2, sampling, precision=precision)
        for name, spec in models.items():
            use_adapter(base_model, None if spec is None or spec == BASE else spec)
            base_model.eval()
            start, stats = time.perf_counter(), {"proposed": 0, "accepted": 0}
            for s in sets:
                bar.set_postfix_str(f"{name} · {s.split}", refresh=False)
                replies = _decode(
                    base_model,
                    tokenizer,
                    ids[s.split],
                    max_new_tokens[s.split],
                    sampling,
                    batch_size,
                    precision,
                    draft,
                    num_draft_tokens,
                    bar,
                )
                for i, r in enumerate(replies):
                    stats["proposed"] += r.pop("proposed", 0)
                    stats["accepted"] += r.pop("accepted", 0)
                    rows.append(
                        {
                            "split": s.split,
                            "prompt_id": i,
                            "where": s.where[i],
                            "model": name,
                            "prompt": prompt_text(s.prompts[i]),
                            "reference": s.references[i],
                            **r,
                        }
                    )
            timing[name] = {"generate_s": round(time.perf_counter() - start, 3)}
            if draft is not None:
                timing[name]["acceptance_rate"] = stats["accepted"] / max(stats["proposed"], 1)
    bar.close()
    return rows, timing

"""Draft training as one call (Apple: examples.train_draft_model): the teacher is the base plus an
adapter (by default the *best* checkpoint by eval loss of an adapter run), the student starts from the
assets' `draft-model.pt`, and every saved draft is then scored by what it is for: speculative
acceptance rate and wall-clock speedup against that teacher on held-out prompts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import save_model
from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer
from fmlab.checkpoints.run_dir import CheckpointManager, resolve_adapter
from fmlab.errors import FmlabError
from fmlab.infer.acceptance import measure_acceptance
from fmlab.infer.generate import encode_prompts, stop_ids
from fmlab.model.precision import AUTO, resolve_device, resolve_precision
from fmlab.train.adapter import DataConfig, load_batches
from fmlab.train.distill import DistillLoss, write_teacher_replies
from fmlab.train.loop import TrainConfig, train
from fmlab.train.teacher_cache import TeacherTopK, teacher_fingerprint


def load_teacher(assets=None, checkpoint=None, device="cpu"):
    adapter = resolve_adapter(checkpoint)
    if adapter is None:
        warnings.warn("no --checkpoint: distilling against the base without an adapter", stacklevel=2)
    return load_base(assets, checkpoint=adapter, device=device), adapter


def train_draft(
    train_data,
    checkpoint_dir,
    eval_data=None,
    *,
    checkpoint=None,
    config=None,
    data=None,
    assets=None,
    divergence: str = "reverse_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    on_policy: float = 0.0,
    target_precision: str = AUTO,
    compile_target: bool = False,
    score_prompts=None,
    num_draft_tokens: int = 5,
    device=None,
    callbacks=(),
    resume: bool = False,
    teacher_replies: bool = False,
    cache_teacher_topk: int = 0,
) -> dict:
    """Distil the assets' draft against base + adapter; then score every saved draft by acceptance.
    With `teacher_replies`, the draft learns on the teacher's own greedy replies to the training prompts
    (written once to CHECKPOINT_DIR/teacher-replies.jsonl and reused on resume) instead of the references.
    With `cache_teacher_topk` = k, the teacher's top-k log-probabilities are computed once per document and
    reused by later epochs (kept in CHECKPOINT_DIR/teacher-topk.pt for a resume or a re-run; see
    `teacher_cache`)."""

    device = resolve_device(device)
    target_precision = resolve_precision(target_precision, device)  # the teacher cache records it
    config = config or TrainConfig(prefix="draft-model", schedule="constant", checkpoint_every_n=1)
    data = data or DataConfig()
    tokenizer = load_tokenizer(assets)
    teacher, adapter = load_teacher(assets, checkpoint, device)
    student = load_draft(assets, device=device).train()
    if student.config.vocab_size != teacher.config.vocab_size:
        raise FmlabError(
            f"draft vocabulary {student.config.vocab_size} != base vocabulary "
            f"{teacher.config.vocab_size}: they cannot be distilled or used together"
        )
    for p in student.parameters():
        p.requires_grad_(True)
    if compile_target:
        teacher = torch.compile(teacher)
    cache = None
    if cache_teacher_topk:
        cache = TeacherTopK(
            cache_teacher_topk, Path(checkpoint_dir) / "teacher-topk.pt", teacher_fingerprint(teacher), target_precision
        )
    loss = DistillLoss(
        teacher,
        divergence,
        temperature=temperature,
        beta=beta,
        on_policy=on_policy,
        teacher_precision=target_precision,
        stop=stop_ids(tokenizer),
        seed=config.seed,
        cache=cache,
        vocab_limit=len(tokenizer),
    )
    if teacher_replies:
        replies = Path(checkpoint_dir) / "teacher-replies.jsonl"
        if not (resume and replies.exists()):
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            counts = write_teacher_replies(teacher, tokenizer, train_data, replies, precision=target_precision)
            print(
                f"teacher replies: {counts['samples']} written to {replies} ({counts['stopped']} ended by "
                "the teacher, the rest at the length limit)"
            )
        train_data = replies
    batches = load_batches(tokenizer, train_data, data, config.batch_size, config.seed)
    evals = None
    if eval_data:
        evals = list(load_batches(tokenizer, eval_data, data, config.batch_size, None, train=False).epoch(0))
    summary = train(
        student,
        loss,
        batches,
        evals,
        config,
        checkpoint_dir,
        save_weights=save_model,
        callbacks=callbacks,
        resume=resume,
    )
    if cache is not None:
        cache.save()
        summary["teacher_cache"] = {
            "k": cache.k,
            "documents": len(cache.docs),
            "megabytes": cache.megabytes(),
            "batches_from_cache": cache.hits,
            "batches_through_teacher": cache.misses,
        }
    summary["teacher_adapter"] = str(adapter) if adapter else None
    if score_prompts:
        summary["scores"] = score_drafts(
            checkpoint_dir, teacher, tokenizer, score_prompts, assets, num_draft_tokens=num_draft_tokens
        )
    return summary


SCORES = ("acceptance_rate", "speedup", "plain_seconds", "speculative_seconds")  # per draft, as recorded


def score_drafts(
    checkpoint_dir,
    teacher,
    tokenizer,
    prompts,
    assets=None,
    num_draft_tokens=5,
    max_new_tokens=64,
    include_start: bool = True,
) -> list[dict]:
    """Score the starting draft and every saved draft of a run; record the numbers in its manifest and
    mark the best by acceptance rate. Warns when the best draft does not speed decoding up."""

    ids = encode_prompts(tokenizer, prompts)
    stop = stop_ids(tokenizer)
    manager = CheckpointManager(checkpoint_dir, "draft-model", save_model)
    entries = manager.manifest["checkpoints"] + ([manager.manifest["final"]] if manager.manifest["final"] else [])
    candidates = [("start", None, None)] if include_start else []
    candidates += [(c["path"], Path(checkpoint_dir) / c["path"], c.get("sha256")) for c in entries]
    plain = None
    results, measured = [], {}  # sha256 -> scores: the final draft is often the last epoch's, byte for byte
    for name, path, sha in candidates:
        if sha is None or sha not in measured:
            draft = load_draft(assets, checkpoint=path, device=next(teacher.parameters()).device)
            m = measure_acceptance(
                teacher,
                draft,
                ids,
                num_draft_tokens,
                max_new_tokens,
                stop=stop,
                plain_seconds=plain,
                vocab_limit=len(tokenizer),
            )
            plain = m["plain_seconds"]
            measured[sha] = {key: m[key] for key in SCORES}
        m = measured[sha]
        results.append({"draft": name, **m})
        if path is not None:
            manager.annotate(name, acceptance_rate=m["acceptance_rate"], speedup=m["speedup"])
    saved = [r for r in results if r["draft"] != "start"]
    if saved:
        best = max(saved, key=lambda r: r["acceptance_rate"])
        manager.manifest["best_by_acceptance"] = best["draft"]
        manager.annotate(best["draft"])
        if best["speedup"] < 1.0:
            warnings.warn(
                f"the best draft ({best['draft']}) is slower than plain decoding "
                f"(speedup {best['speedup']:.2f}x): don't ship it as is",
                stacklevel=2,
            )
    return results

"""Draft-model distillation for speculative decoding: the draft (student) learns to match the base +
adapter (teacher) on assistant target tokens, through the same `fmlab.train.loop.train` loop as adapters.

Divergences (per token, over the vocabulary): reverse KL(q_draft || p_teacher), Apple's default
(docs/afm-format.md §7); forward KL(p || q); and the generalised JSD(beta) of GKD (Agarwal et al. 2024).
An optional on-policy fraction scores the student's own continuations with the teacher
(GKD; DistillSpec, Zhou et al. 2023), which aligns the draft with what it will actually propose.
`write_teacher_replies` makes sequence-level distillation data (Kim & Rush 2016): the training
prompts answered by the teacher itself, the text a draft has to predict when it speculates.
"""

from __future__ import annotations

import random

import torch

from fmlab.data.chat_template import IGNORE, encode_prompt
from fmlab.data.packing import collate
from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError
from fmlab.files import atomic_write
from fmlab.infer.generate import generate, generate_ids
from fmlab.infer.sampling import Sampling
from fmlab.model.precision import AUTO, autocast, resolve_precision
from fmlab.model.transformer import unwrap
from fmlab.train.losses import DIVERGENCES, target_mask
from fmlab.train.teacher_cache import coarsen


class DistillLoss:
    """`loss_fn` for `fmlab.train.loop.train`: summed divergence between the student and a frozen teacher."""

    def __init__(
        self,
        teacher,
        divergence: str = "reverse_kl",
        *,
        temperature: float = 1.0,
        beta: float = 0.5,
        on_policy: float = 0.0,
        teacher_precision: str = AUTO,
        stop: set[int] | None = None,
        seed: int = 0,
        cache=None,
        vocab_limit: int | None = None,
    ):
        if divergence not in DIVERGENCES:
            raise FmlabError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
        if not 0.0 <= on_policy <= 1.0 or not 0.0 < beta < 1.0 or temperature <= 0:
            raise FmlabError("need 0 <= on_policy <= 1, 0 < beta < 1 and temperature > 0")
        if cache is not None and temperature != 1.0:
            raise FmlabError(
                "the teacher's top-k cache holds temperature-1 probabilities: use a distillation "
                "temperature of 1 with it, or no cache"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.divergence, self.temperature, self.beta = DIVERGENCES[divergence], temperature, beta
        self.on_policy, self.stop, self.rng = on_policy, stop or set(), random.Random(seed)
        self.vocab_limit = vocab_limit  # the tokenizer's pieces: rollouts never sample a padded row
        device = next(teacher.parameters()).device
        self.teacher_precision = resolve_precision(teacher_precision, device)
        self.cache = cache  # a teacher_cache.TeacherTopK: the teacher's top-k per document

    def _teacher_logits(self, batch, mask):
        device = batch["input_ids"].device
        ctx = (
            autocast(self.teacher_precision, device)
            if self.teacher_precision != "f32"
            else torch.autocast(device.type, enabled=False)
        )
        with torch.no_grad(), ctx:
            hidden = self.teacher(batch["input_ids"], segment_ids=batch.get("segment_ids"), return_hidden=True)
            return self.teacher.logits(hidden[mask]).float()

    def __call__(self, student, batch):
        rollout = self.on_policy and student.training and self.rng.random() < self.on_policy
        if rollout:
            seed = self.rng.randrange(2**31)
            batch = student_rollouts(unwrap(student), batch, self.stop, seed=seed, vocab_limit=self.vocab_limit)
        mask = target_mask(batch["label_ids"])
        documents = self.cache.documents(batch, mask) if self.cache is not None and not rollout else None
        cached = self.cache.lookup(documents, mask.device) if documents is not None else None
        if cached is None:
            teacher_logits = self._teacher_logits(batch, mask)
            if documents is not None:
                cached = self.cache.store(documents, teacher_logits)
        hidden = student(batch["input_ids"], segment_ids=batch.get("segment_ids"), return_hidden=True)
        student_logits = unwrap(student).logits(hidden[mask]).float()
        if cached is not None:  # both distributions over the teacher's top-k tokens + the rest
            student_logits, teacher_logits = coarsen(student_logits, *cached)
        if self.temperature != 1.0:
            student_logits, teacher_logits = student_logits / self.temperature, teacher_logits / self.temperature
        return self.divergence(student_logits, teacher_logits, self.beta).sum(), mask.sum()


def student_rollouts(
    student, batch, stop: set[int], seed: int = 0, temperature: float = 1.0, vocab_limit: int | None = None
):
    """Replace each row's assistant reply with the student's own sampled continuation of its prompt
    (same length budget); the new tokens become the targets. Rows must hold one sample each."""

    if bool((batch["segment_ids"].max(1).values > 2).any()):
        raise FmlabError("on-policy distillation needs unpacked batches (drop --pack-sequences)")
    rows = []
    for i, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["label_ids"].tolist())):
        targets = [t for t, y in enumerate(labels) if y not in (IGNORE, 0)]
        prompt = ids[: targets[0] + 1]
        out, _, _ = generate_ids(
            student,
            [prompt],
            stop,
            max_new_tokens=len(targets),
            sampling=Sampling(temperature=temperature, top_k=None, seed=seed + i),
            vocab_limit=vocab_limit,
        )
        new = out[0]
        rows.append((prompt + new, [IGNORE] * (len(prompt) - 1) + new + [IGNORE]))
    out = collate(rows, pad_id=0, eos_id=1)
    return {k: v.to(batch["input_ids"].device) for k, v in out.items()}


def write_teacher_replies(
    teacher,
    tokenizer,
    train_data,
    out_path,
    max_new_tokens: int = 320,
    batch_size: int = 32,
    precision: str = AUTO,
) -> dict:
    """Write `train_data` (chat JSONL) to `out_path` with each sample's final assistant reply replaced by
    the teacher's greedy reply to the same prompt (an empty reply keeps the reference). Returns counts.
    At T=0 speculative decoding accepts a drafted token only when it *is* the teacher's greedy choice, so
    these replies are the exact text the draft must learn to predict; the references only approximate it."""
    import json

    from tqdm.auto import tqdm

    samples = read_messages(train_data)  # training samples: each ends with an assistant reply
    lines, stopped, empty = [], 0, 0
    for b in tqdm(range(0, len(samples), batch_size), desc="teacher replies", unit="batch"):
        chunk = samples[b : b + batch_size]
        prompt_ids = [encode_prompt(tokenizer, s.prompt, s.tools) for s in chunk]
        replies = generate(
            teacher,
            tokenizer,
            prompt_ids,
            max_new_tokens,
            Sampling(temperature=0.0),
            batch_size=batch_size,
            precision=precision,
        )
        for sample, reply in zip(chunk, replies):
            stopped += reply.finish_reason == "stop"
            record = sample.messages
            if reply.text.strip():
                record = record[:-1] + [{"role": "assistant", "content": reply.text}]
            else:
                empty += 1
            lines.append(
                json.dumps({"messages": record, "tools": sample.tools} if sample.tools else record, ensure_ascii=False)
            )
    with atomic_write(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"samples": len(lines), "stopped": stopped, "empty": empty}

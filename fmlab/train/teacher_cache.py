"""The teacher's top-k log-probabilities, cached per document, so that repeated distillation epochs (and
re-runs on the same data) skip the teacher's forward pass.

A document's teacher outputs depend only on its own tokens: attention is document-masked and positions
restart per document, so the cache is keyed by each document's tokens and target mask, and any packing,
padding or shuffling of later epochs finds the same entries. Memory: k + 1 log-probabilities (fp16)
and k token ids (int32) per target token, 6k + 2 bytes; k = 32 is 194 bytes a token (35 MB for the toy
set's 1,500 teacher replies; 0.9 GB for 5M target tokens).

With the cache the divergence is taken between the two distributions coarsened to k + 1 outcomes: the
teacher's top-k tokens and "any other token". That is exact when "any other" is a single token, never more
than the full divergence (coarsening cannot increase an f-divergence), and close to it when the teacher
is confident. Only temperature 1 can be cached: a temperature changes the teacher's whole softmax.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fmlab.errors import FmlabError
from fmlab.files import atomic_torch_save


def teacher_fingerprint(teacher) -> list[float]:
    """A cheap identity of the teacher's weights (sums and norms), stored with the cache: a cache written
    for another adapter or base is not reused."""
    with torch.no_grad():
        return [
            round(float(sum(p.double().sum() for p in teacher.parameters())), 6),
            round(float(sum(p.double().square().sum() for p in teacher.parameters())), 6),
        ]


class TeacherTopK:
    """Document key → (k + 1 log-probs fp16, k token ids int32) per target token; loaded from and saved
    to `path`. The file is disposable: a damaged one, or one for another teacher, is rebuilt."""

    def __init__(self, k: int, path: str | Path | None = None, fingerprint=None, precision: str = ""):
        if k < 1:
            raise FmlabError(f"the teacher cache needs k >= 1 top tokens, not {k}")
        self.k, self.path = k, Path(path) if path else None
        self.identity = {"k": k, "fingerprint": fingerprint, "precision": precision}
        self.docs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0
        if self.path and self.path.exists():
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated or not a torch file: only a cache, so start again
                state = {"identity": f"unreadable ({type(err).__name__})"}
            if state.get("identity") == self.identity:
                self.docs = state["docs"]
            else:
                print(f"{self.path}: written for another teacher, precision or k, or unreadable; rebuilding it")

    @staticmethod
    def documents(batch, mask) -> list[tuple[str, int]]:
        """(key, number of targets) of each document holding targets, in the order of `hidden[mask]`."""
        ids, seg = batch["input_ids"].cpu(), batch.get("segment_ids")
        seg = (ids != 0).long() if seg is None else seg.cpu()
        mask = mask.cpu()
        out = []
        for b in range(ids.shape[0]):
            for s in torch.unique_consecutive(seg[b][seg[b] > 0]).tolist():
                pos = (seg[b] == s).nonzero().squeeze(1)
                targets = mask[b, pos]
                if targets.any():
                    key = hashlib.sha1(ids[b, pos].numpy().tobytes() + targets.numpy().tobytes()).hexdigest()
                    out.append((key, int(targets.sum())))
        return out

    def lookup(self, documents: list[tuple[str, int]], device):
        """The cached (log-probs, token ids) of every target token of `documents`, or None if one is missing."""
        if any(key not in self.docs for key, _ in documents):
            self.misses += 1
            return None
        self.hits += 1
        found = [self.docs[key] for key, _ in documents]
        return (
            torch.cat([f[0].float() for f in found]).to(device),  # (CPU autocast refuses fp16 cat)
            torch.cat([f[1].long() for f in found]).to(device),
        )

    def store(self, documents: list[tuple[str, int]], teacher_logits: torch.Tensor):
        """Top-k of the teacher's logits at the targets of `documents` (rows in `hidden[mask]` order)."""
        k = min(self.k, teacher_logits.shape[-1] - 1)  # "the rest" must hold a token
        logp, ids = coarse_teacher(teacher_logits, k)
        start = 0
        for key, n in documents:
            self.docs[key] = (logp[start : start + n].half().cpu(), ids[start : start + n].int().cpu())
            start += n
        return logp, ids

    def save(self):
        if self.path:
            atomic_torch_save({"identity": self.identity, "docs": self.docs}, self.path)

    def megabytes(self) -> float:
        return sum(t.numel() * t.element_size() for pair in self.docs.values() for t in pair) / 2**20


def _top_and_rest(log_p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p of the tokens `ids` (n, k), then log p of all the others (a logsumexp, no cancellation)."""
    rest = torch.logsumexp(log_p.scatter(-1, ids, -math.inf), -1, keepdim=True)
    return torch.cat([log_p.gather(-1, ids), rest], -1)


def coarse_teacher(teacher_logits: torch.Tensor, k: int):
    """The teacher's k + 1 log-probs (its top-k tokens, then the rest) and the top-k token ids."""
    log_p = F.log_softmax(teacher_logits.float(), -1)
    ids = log_p.topk(k, -1).indices
    return _top_and_rest(log_p, ids), ids


def coarsen(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor):
    """(student, teacher) log-probs over the k + 1 outcomes of `coarse_teacher`."""
    return _top_and_rest(F.log_softmax(student_logits.float(), -1), teacher_ids), teacher_logp

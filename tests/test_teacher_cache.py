"""The teacher's top-k cache: later epochs skip the teacher and see the same targets, documents are found
again whatever row or padding they land in, and the coarsened divergence is a faithful lower bound."""

import pytest
import torch
from test_distill import _pair

from fmlab.errors import FmlabError
from fmlab.train.distill import DistillLoss
from fmlab.train.losses import forward_kl, reverse_kl
from fmlab.train.teacher_cache import TeacherTopK, coarse_teacher, coarsen, teacher_fingerprint


def _batch(rows, width):
    """Right-padded rows of (tokens, number of trailing target tokens); one document per row."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    seg = torch.zeros_like(ids)
    for r, (tokens, targets) in enumerate(rows):
        n = len(tokens)
        ids[r, :n], seg[r, :n] = torch.tensor(tokens), 1
        labels[r, n - 1 - targets : n - 1] = torch.tensor(tokens[n - targets :])
    return {"input_ids": ids, "label_ids": labels, "segment_ids": seg}


class CountingTeacher(torch.nn.Module):
    """Wraps a teacher and counts its forward passes."""

    def __init__(self, teacher):
        super().__init__()
        self.inner, self.calls = teacher, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def logits(self, hidden):
        return self.inner.logits(hidden)


def test_second_epoch_comes_from_the_cache_with_the_same_loss():
    teacher, student = _pair()
    counting = CountingTeacher(teacher)
    loss = DistillLoss(counting, "forward_kl", teacher_precision="f32", cache=TeacherTopK(8))
    g = torch.Generator().manual_seed(0)
    docs = [(torch.randint(2, 512, (n,), generator=g).tolist(), 4) for n in (9, 12, 7)]
    first = loss(student, _batch(docs[:2], 12))[0]
    assert counting.calls == 1
    # the same documents, in another order, with other padding and another batch-mate
    batch = _batch([docs[1], docs[0]], 16)
    again = loss(student, batch)[0]
    assert counting.calls == 1 and loss.cache.hits == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as under --draft-precision bf16-mixed
        assert loss.cache.lookup(loss.cache.documents(batch, batch["label_ids"] != -100), "cpu") is not None
    torch.testing.assert_close(again, first, rtol=2e-3, atol=1e-4)  # fp16 log-probs on disk
    loss(student, _batch([docs[0], docs[2]], 12))  # one new document: teacher runs
    assert counting.calls == 2


def test_coarsened_divergence_is_a_lower_bound_and_exact_when_nothing_is_merged():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 20), 3 * torch.randn(6, 20)
    for fn in (forward_kl, reverse_kl):
        full = fn(student, teacher)
        assert (fn(*coarsen(student, *coarse_teacher(teacher, 5))) <= full + 1e-5).all()
        logp, ids = coarse_teacher(teacher, 19)  # "the rest" is then one token: nothing merged
        torch.testing.assert_close(fn(*coarsen(student, logp, ids)), full, rtol=1e-4, atol=1e-4)


def test_cache_file_is_reused_only_for_the_same_teacher(tmp_path):
    teacher, student = _pair()
    other, _ = _pair(seed=5)
    path = tmp_path / "teacher-topk.pt"
    batch = _batch([(list(range(2, 14)), 4)], 12)
    cache = TeacherTopK(4, path, teacher_fingerprint(teacher), "f32")
    DistillLoss(teacher, "forward_kl", teacher_precision="f32", cache=cache)(student, batch)
    cache.save()
    assert len(TeacherTopK(4, path, teacher_fingerprint(teacher), "f32").docs) == 1
    assert TeacherTopK(4, path, teacher_fingerprint(other), "f32").docs == {}
    assert TeacherTopK(8, path, teacher_fingerprint(teacher), "f32").docs == {}
    path.write_bytes(path.read_bytes()[:100])  # truncated: rebuilt, no crash
    assert TeacherTopK(4, path, teacher_fingerprint(teacher), "f32").docs == {}


def test_cache_refuses_a_temperature():
    teacher, _ = _pair()
    with pytest.raises(FmlabError, match="temperature"):
        DistillLoss(teacher, temperature=2.0, cache=TeacherTopK(4))

"""Distillation: divergences, gradients reach only the student, the loss mask, and acceptance rises."""

import math

import pytest
import torch
from helpers import randomize_lora

from fmlab.checkpoints.apple_format import save_model
from fmlab.model.config import preset
from fmlab.model.transformer import build_model
from fmlab.train.distill import DistillLoss
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import forward_kl, jsd, reverse_kl, target_mask


def test_divergences_vanish_on_identical_distributions():
    logits = torch.randn(5, 11)
    for fn in (reverse_kl, forward_kl, jsd):
        torch.testing.assert_close(fn(logits, logits.clone()), torch.zeros(5), atol=1e-6, rtol=0)


def test_reverse_kl_matches_hand_computation():
    q = torch.tensor([0.7, 0.2, 0.1])
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = sum(qi * math.log(qi / pi) for qi, pi in zip(q.tolist(), p.tolist()))
    got = reverse_kl(q.log()[None], p.log()[None])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert forward_kl(q.log()[None], p.log()[None]).item() != pytest.approx(expected, rel=1e-3)


def test_jsd_is_symmetric_at_half():
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    torch.testing.assert_close(jsd(a, b, 0.5), jsd(b, a, 0.5))


def test_mask_keeps_only_assistant_targets():
    labels = torch.tensor([[-100, -100, 5, 6, 0, -100]])
    assert target_mask(labels).tolist() == [[False, False, True, True, False, False]]


def _pair(seed=0):
    teacher = build_model(preset("tiny"), seed=seed).eval()
    student = build_model(preset("tiny-draft"), seed=seed + 1).train()
    with torch.no_grad():  # a teacher with sharp, non-trivial preferences (a trained adapter)
        teacher.embedding.weight.mul_(10)
    randomize_lora(teacher, 1.0)
    return teacher, student


def test_gradients_reach_only_the_student():
    teacher, student = _pair()
    ids = torch.randint(2, 512, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, 4:8] = ids[:, 5:9]
    loss, n = DistillLoss(teacher, teacher_precision="f32")(student, {"input_ids": ids, "label_ids": labels})
    loss.backward()
    assert n == 8 and loss.item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.ndim == 2)


def test_on_policy_rollouts_score_the_students_own_tokens():
    from fmlab.train.distill import student_rollouts

    teacher, student = _pair()
    ids = torch.randint(2, 512, (2, 10))
    ids[:, 0] = 1
    labels = torch.full_like(ids, -100)
    labels[:, 5:9] = ids[:, 6:10]
    out = student_rollouts(
        student, {"input_ids": ids, "label_ids": labels, "segment_ids": torch.full_like(ids, 2)}, stop=set()
    )
    assert torch.equal(out["input_ids"][:, :6], ids[:, :6])  # same prompts
    assert int(target_mask(out["label_ids"]).sum()) == 8  # same target budget
    assert torch.equal(out["label_ids"][:, 5:9], out["input_ids"][:, 6:10])  # targets = own tokens


class Fixed:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, n):
        return iter(self.batches)


def test_distillation_raises_acceptance(tmp_path):
    from fmlab.infer.acceptance import measure_acceptance

    teacher, student = _pair()
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(2, 512, (5,), generator=g).tolist() for _ in range(6)]
    # distil on the teacher's own greedy continuations of these prompts
    from fmlab.infer.generate import generate_ids
    from fmlab.infer.sampling import Sampling

    rows = []
    for p in prompts:
        out = generate_ids(teacher, [p], set(), 16, Sampling(temperature=0))[0][0]
        ids = torch.tensor(p + out)
        labels = torch.full_like(ids, -100)
        labels[len(p) - 1 : -1] = ids[len(p) :]
        rows.append((ids, labels))
    batch = {"input_ids": torch.stack([r[0] for r in rows]), "label_ids": torch.stack([r[1] for r in rows])}
    before = measure_acceptance(teacher, student.eval(), prompts, 4, 16, time_plain=False)["acceptance_rate"]
    student.train()
    train(
        student,
        DistillLoss(teacher, teacher_precision="f32"),
        Fixed([batch] * 200),
        None,
        TrainConfig(epochs=1, learning_rate=3e-2, precision="f32", schedule="constant", prefix="draft-model"),
        tmp_path,
        save_weights=save_model,
    )
    after = measure_acceptance(teacher, student.eval(), prompts, 4, 16, time_plain=False)["acceptance_rate"]
    assert after > before + 0.3, (before, after)


def _chat_file(path, replies):
    import json

    prompts = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi to the king."}],
        [{"role": "user", "content": "Name a city."}],
    ]
    samples = [p + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies)]
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return samples


def test_teacher_replies_replace_only_the_final_reply(tmp_path, tiny_tokenizer):
    import dataclasses

    from fmlab.data.chat_template import encode_chat
    from fmlab.data.packing import collate
    from fmlab.data.validate import read_messages
    from fmlab.infer.generate import generate
    from fmlab.infer.sampling import Sampling
    from fmlab.train.distill import write_teacher_replies
    from fmlab.train.losses import token_loss

    # a teacher that learned other replies than the file's references
    teacher = build_model(dataclasses.replace(preset("tiny"), vocab_size=640, lora=None), seed=0)
    learned = _chat_file(tmp_path / "learned.jsonl", ["Hi, king.", "Paris."])
    batch = collate([encode_chat(tiny_tokenizer, s) for s in learned], pad_id=0, eos_id=1)
    train(
        teacher,
        token_loss,
        Fixed([batch] * 60),
        None,
        TrainConfig(epochs=1, learning_rate=1e-2, precision="f32"),
        tmp_path / "teacher",
        save_weights=save_model,
    )
    samples = _chat_file(tmp_path / "train.jsonl", ["Hello there, your majesty.", "A city is Rome."])
    counts = write_teacher_replies(
        teacher.eval(),
        tiny_tokenizer,
        tmp_path / "train.jsonl",
        tmp_path / "out.jsonl",
        max_new_tokens=12,
        batch_size=2,
        precision="f32",
    )
    written = read_messages(tmp_path / "out.jsonl")
    greedy = generate(teacher, tiny_tokenizer, [s[:-1] for s in samples], 12, Sampling(temperature=0))
    assert counts == {"samples": 2, "stopped": 2, "empty": 0}
    for sample, new, reply in zip(samples, written, greedy):
        assert new.prompt == sample[:-1]  # prompts untouched
        assert new.messages[-1] == {"role": "assistant", "content": reply.text}  # the teacher's greedy reply
    assert [m.messages[-1]["content"] for m in written] == ["Hi, king.", "Paris."]


def test_empty_teacher_replies_keep_the_reference(tmp_path, tiny_tokenizer):
    import dataclasses

    from fmlab.data.validate import read_messages
    from fmlab.train.distill import write_teacher_replies

    teacher = build_model(dataclasses.replace(preset("tiny"), vocab_size=640), seed=0).eval()  # says only "\n"
    samples = _chat_file(tmp_path / "train.jsonl", ["Hi, king.", "Paris."])
    counts = write_teacher_replies(
        teacher,
        tiny_tokenizer,
        tmp_path / "train.jsonl",
        tmp_path / "out.jsonl",
        max_new_tokens=4,
        batch_size=2,
        precision="f32",
    )
    assert counts["empty"] == 2 and [s.messages for s in read_messages(tmp_path / "out.jsonl")] == samples

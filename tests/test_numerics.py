"""Numerical faults: divergence (loss rising far above its start) is reported with a hint and the run
goes on; NaN still stops it; a resume takes the learning rate given now, as the hints advise."""

import json
import warnings

import pytest
import torch
from crash_worker import Rows

from fmlab.errors import FmlabError
from fmlab.model.config import preset
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.transformer import build_model
from fmlab.train.loop import DivergenceCheck, DivergenceWarning, TrainConfig, lr_lambda, train
from fmlab.train.losses import token_loss


def feed(losses, **kw):
    check = DivergenceCheck(**kw)
    return [step for step, loss in enumerate(losses, 1) if check.update(loss)]


def test_rule_fires_once_on_a_sustained_rise_only():
    assert feed([5.0 - 0.1 * i for i in range(40)]) == []  # falling
    assert feed([1.0] * 40) == []  # flat
    assert feed([1.0] * 10 + [10.0] + [1.0] * 30) == []  # one hard batch: smoothed 1.9 < 2
    rising = [1.0] * 5 + [3.0] * 30  # 3x its start from step 6
    fired = feed(rising)
    assert len(fired) == 1 and 6 < fired[0] < 20
    assert feed([1.0] * 5 + [1.8] * 50) == []  # under 2x: fine
    assert feed([1.0] * 5 + [1.8] * 50, factor=1.5) != []


def model():
    m = build_model(preset("tiny"), seed=0)
    with torch.no_grad():
        m.embedding.weight.mul_(25)
    mark_only_lora_trainable(m)
    return m


def test_training_warns_with_a_hint_and_goes_on(tmp_path):
    """A loss that jumps 5x after step 6 (as an exploding learning rate makes it): one warning, the
    run finishes and keeps its checkpoints."""
    calls = [0]

    def rising_loss(m, batch):
        calls[0] += 1
        loss, n = token_loss(m, batch)
        return loss * (5.0 if calls[0] > 6 else 1.0), n

    cfg = TrainConfig(epochs=3, precision="f32", learning_rate=1e-4)
    with pytest.warns(DivergenceWarning) as caught:
        summary = train(model(), rising_loss, Rows(), None, cfg, tmp_path)
    diverging = [str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)]
    assert len(diverging) == 1
    assert (
        "Lower the learning rate" in diverging[0] and "--precision f32" in diverging[0] and "--resume" in diverging[0]
    )
    assert summary["steps"] == 12 and summary["diverged_at_step"] > 6
    assert (tmp_path / "adapter-final.pt").is_file()


def test_a_healthy_run_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        summary = train(model(), token_loss, Rows(), None, TrainConfig(epochs=2, precision="f32"), tmp_path)
    assert "diverged_at_step" not in summary


def test_resume_takes_the_new_learning_rate(tmp_path):
    class Stop:
        def on_step(self, row):
            if row["step"] == 3:
                raise KeyboardInterrupt

    first = TrainConfig(epochs=2, precision="f32", learning_rate=1e-2)
    with pytest.raises(KeyboardInterrupt):
        train(model(), token_loss, Rows(), None, first, tmp_path, callbacks=[Stop()], save_every=1)
    lower = TrainConfig(epochs=2, precision="f32", learning_rate=1e-3)
    train(model(), token_loss, Rows(), None, lower, tmp_path, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    factor = lr_lambda(lower, 4)
    assert rows[0]["lr"] == pytest.approx(1e-2 * lr_lambda(first, 4)(0))  # before the crash
    assert [r["lr"] for r in rows[3:]] == pytest.approx([1e-3 * factor(s) for s in range(3, 8)])


def test_nan_in_the_loss_stops_before_the_step(tmp_path):
    calls = [0]

    def nan_at_5(m, batch):
        calls[0] += 1
        loss, n = token_loss(m, batch)
        return (loss * float("nan") if calls[0] == 5 else loss), n

    with pytest.raises(FmlabError, match="non-finite loss at step 5"):
        train(model(), nan_at_5, Rows(), None, TrainConfig(epochs=2, precision="f32"), tmp_path, save_every=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["position"]["step"] == 4 and all(torch.isfinite(t).all() for t in state["trainable"].values())

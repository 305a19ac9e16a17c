"""The training loop: token-normalised accumulation, exact resume, checkpoints, NaN guard, schedules, DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Rows

from fmlab.checkpoints.apple_format import read_adapter
from fmlab.checkpoints.run_dir import best_checkpoint, read_manifest
from fmlab.errors import FmlabError
from fmlab.model.config import preset
from fmlab.model.lora import lora_state_dict, mark_only_lora_trainable
from fmlab.model.transformer import build_model
from fmlab.train.loop import TrainConfig, lr_lambda, train
from fmlab.train.losses import token_loss


def fresh_model():
    model = build_model(preset("tiny"), seed=0)
    with torch.no_grad():
        model.embedding.weight.mul_(25)  # logits with room to move, so a tiny LoRA can fit the data
    mark_only_lora_trainable(model)
    return model


def run(tmp, data, eval_data=None, **overrides):
    cfg = TrainConfig(**{"epochs": 2, "precision": "f32", "learning_rate": 1e-2, **overrides})
    model = fresh_model()
    summary = train(model, token_loss, data, eval_data, cfg, tmp)
    return model, summary


def test_accumulation_equals_big_batch(tmp_path):
    big, _ = run(tmp_path / "a", Rows(batch_size=4), epochs=1)
    small, _ = run(tmp_path / "b", Rows(batch_size=2), epochs=1, gradient_accumulation_steps=2)
    for k, v in lora_state_dict(big).items():
        torch.testing.assert_close(lora_state_dict(small)[k], v, atol=1e-6, rtol=1e-5)


def test_loss_falls_and_files_are_written(tmp_path):
    data = Rows(n=4, batch_size=2)
    _, summary = run(tmp_path, data, eval_data=list(data.epoch(0)), epochs=30, learning_rate=5e-2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb"} <= set(rows[0])
    assert any("eval_loss" in r for r in rows)
    manifest = read_manifest(tmp_path)
    assert len(manifest["checkpoints"]) == 2 and manifest["final"]["path"] == "adapter-final.pt"
    kept = sorted(p.name for p in tmp_path.glob("adapter-epoch*.pt"))
    assert kept == sorted(c["path"] for c in manifest["checkpoints"])
    best = min(manifest["checkpoints"], key=lambda c: c["eval_loss"])
    assert best_checkpoint(tmp_path).name == best["path"]


def test_resumed_run_equals_uninterrupted(tmp_path):
    data = Rows(n=8, batch_size=2)
    full, _ = run(tmp_path / "full", data, epochs=2)

    class Crash:
        def on_step(self, row):
            if row["step"] == 5:
                raise KeyboardInterrupt

    cfg = TrainConfig(epochs=2, precision="f32", learning_rate=1e-2)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(), token_loss, data, None, cfg, tmp_path / "crash", callbacks=[Crash()], save_every=1)
    resumed = fresh_model()
    train(resumed, token_loss, data, None, cfg, tmp_path / "crash", resume=True)
    for k, v in lora_state_dict(full).items():
        assert torch.equal(lora_state_dict(resumed)[k], v), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated rows after the crash


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = Rows(n=4, batch_size=2)
    model = fresh_model()
    cfg = TrainConfig(epochs=1, precision="f32")
    train(model, token_loss, data, None, cfg, tmp_path)
    good = read_adapter(tmp_path / "adapter-final.pt", model.config)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if ".lora_a." in n).fill_(float("nan"))
    with pytest.raises(FmlabError, match="non-finite"):
        train(model, token_loss, data, None, cfg, tmp_path)
    after = read_adapter(tmp_path / "adapter-final.pt", model.config)
    assert all(torch.equal(after[k], v) for k, v in good.items())


def test_schedules():
    cfg = TrainConfig(epochs=2, warmup_epochs=1)
    f = lr_lambda(cfg, 10)
    assert f(0) < f(5) < f(9) <= 1.0 and f(10) == pytest.approx(1.0) and f(19) < 0.05
    const = lr_lambda(TrainConfig(epochs=2, warmup_fraction=0.25, schedule="constant"), 10)
    assert const(2) < 1.0 and const(5) == const(19) == 1.0


def test_bad_config_is_a_clear_error():
    with pytest.raises(FmlabError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(FmlabError, match="batch-size"):
        TrainConfig(batch_size=0)


def test_bf16_mixed_trains_fp32_lora_over_bf16_base(tmp_path):
    model, _ = run(tmp_path, Rows(n=4), epochs=1, precision="bf16-mixed")
    assert model.layers[0].attn.qkv.weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in lora_state_dict(model).values())


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) at the same global batch gives the same adapter."""
    one, _ = run(tmp_path / "one", Rows(n=8, batch_size=2), epochs=1, gradient_accumulation_steps=2)
    script = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    with socket.socket() as s:  # a free port: a fixed one can still be held from an earlier run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(script),
            str(tmp_path / "two"),
        ],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = read_adapter(tmp_path / "two" / "adapter-final.pt", one.config)
    for k, v in lora_state_dict(one).items():
        torch.testing.assert_close(two[k], v, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_keys(tmp_path):
    data = Rows(n=4, batch_size=2)
    eager, _ = run(tmp_path / "eager", data, epochs=1)
    compiled, _ = run(tmp_path / "compiled", data, epochs=1, compile_model=True)
    saved = read_adapter(tmp_path / "compiled" / "adapter-final.pt", compiled.config)
    for k, v in lora_state_dict(eager).items():
        assert not k.startswith("_orig_mod.")
        torch.testing.assert_close(saved[k], v, atol=1e-4, rtol=1e-3)


def test_fresh_run_in_a_used_directory_starts_a_fresh_ranking(tmp_path):
    data = Rows(n=4, batch_size=2)
    run(tmp_path, data, epochs=2)
    run(tmp_path, data, epochs=1)
    assert [c["epoch"] for c in read_manifest(tmp_path)["checkpoints"]] == [1]

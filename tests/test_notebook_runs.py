"""The notebooks' shared helpers (fmlab.lab.notebook_runs): SMOKE subsets and the standalone adapter run."""

import json

import fmlab.lab.notebook_runs as nr


def test_smoke_subset_keeps_the_first_lines(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps([{"role": "user", "content": str(i)}]) + "\n" for i in range(10)))
    subset = nr.smoke_subset(src, tmp_path / "out", 3)
    assert subset == tmp_path / "out" / "smoke_train.jsonl"
    assert subset.read_text().splitlines() == src.read_text().splitlines()[:3]


def test_an_existing_run_is_used_as_is(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints.json").write_text("{}")
    monkeypatch.setattr(nr, "train_adapter", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert nr.adapter_run(tmp_path / "run", tmp_path / "fallback") == tmp_path / "run"


def test_a_missing_run_is_trained_into_the_fallback(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(nr, "train_adapter", lambda *a, **k: calls.append((a, k)))
    got = nr.adapter_run(tmp_path / "missing", tmp_path / "fallback", smoke=True)
    assert got == tmp_path / "fallback" and len(calls) == 1
    (train, out, valid), kwargs = calls[0]
    config = kwargs["config"]
    assert out == tmp_path / "fallback" and config.precision == "auto" and config.epochs == 1
    assert len(train.read_text().splitlines()) == nr.SMOKE_SAMPLES["train"]
    assert len(valid.read_text().splitlines()) == nr.SMOKE_SAMPLES["valid"]
    full = nr.adapter_config(smoke=False)
    assert (full.epochs, full.learning_rate, full.batch_size, full.precision) == (4, 3e-3, 8, "auto")

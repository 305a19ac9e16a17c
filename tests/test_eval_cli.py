"""`fmlab eval` end to end on a tiny run (train-adapter with --report-to, then eval with a metric and
--ood), its errors, the shipped labelled dataset and OOD probes (the generators' output, splits
disjoint), and training telemetry: TensorBoard and MLflow get the steps, callbacks get an ETA."""

import json
import re
from pathlib import Path

import pytest
from helpers import Rows, write_assets

from fmlab.cli import main
from fmlab.errors import FmlabError
from fmlab.model.config import preset
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.transformer import build_model
from fmlab.tiny import label_task
from fmlab.tiny.skill_probes import probe_samples
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss
from fmlab.train.reporters import parse_report_to

DATA = Path(__file__).resolve().parent.parent / "data"


def write_jsonl(path, samples):
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def label_samples(n):
    words = ["king", "queen"]
    return [
        [
            {"role": "user", "content": f"Who is in the {'castle' if i % 2 else 'play'}?"},
            {"role": "assistant", "content": words[i % 2]},
        ]
        for i in range(n)
    ]


def test_train_then_eval_end_to_end(tmp_path, tiny_tokenizer, capsys):
    pytest.importorskip("tensorboard")
    assets = write_assets(tmp_path / "assets", tiny_tokenizer, cfg=preset("tiny", vocab_size=tiny_tokenizer.vocab_size))
    train_file = write_jsonl(tmp_path / "train.jsonl", label_samples(8))
    test_file = write_jsonl(tmp_path / "test.jsonl", label_samples(6))
    ood_file = write_jsonl(
        tmp_path / "ood.jsonl", [[{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello"}]]
    )
    run = tmp_path / "run"
    flags = ["--assets", str(assets), "--precision", "f32"]
    assert (
        main(
            ["train-adapter", "--train-data", str(train_file), "--checkpoint-dir", str(run), "--epochs", "2"]
            + flags
            + ["--report-to", "tensorboard"]
        )
        == 0
    )
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--data",
        str(test_file),
        "-c",
        str(run),
        "--metric",
        "label",
        "--ood",
        str(ood_file),
        "--out",
        str(out),
        "--baseline-train",
        str(train_file),
        "-q",
    ]
    assert main(argv + flags + ["-m", "4"]) == 0
    printed = capsys.readouterr().out
    assert "task · label (n = 6)" in printed and "ood · exact (n = 1)" in printed and "drop" in printed
    assert re.search(r"bag-of-words\s+1\.000", printed)  # the castle / play words predict the answer
    assert "loaded the base once" in printed
    data = json.loads((out / "eval.json").read_text())
    assert list(data["info"]["models"]) == ["base", "adapter-epoch1", "adapter-epoch2 (= final)", "bag-of-words"]
    assert {r["split"] for r in data["summary"]} == {"task", "ood"}
    assert data["info"]["decoding"]["max_new_tokens"] == {"task": 4, "ood": 4}
    assert (out / "report.html").read_text().count("<h3>") >= 2


def test_eval_errors_are_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "t.jsonl", label_samples(4))
    assert main(["eval", "--data", str(data), "--metric", "bleu", "-q"]) == 1
    assert "unknown metric 'bleu'" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "-c", str(tmp_path / "nowhere"), "-q"]) == 1
    assert "no such checkpoint file or run directory" in capsys.readouterr().err
    prompts = write_jsonl(tmp_path / "p.jsonl", [[{"role": "user", "content": "hi"}]])
    assert main(["eval", "--data", str(prompts), "-q"]) == 1
    assert f"{prompts}:1" in capsys.readouterr().err  # a sample without an answer, named by file:line
    assert main(["eval", "--data", str(data), "--batch-size", "0", "-q"]) == 1


def test_label_dataset_is_the_generators_output_with_disjoint_splits(tmp_path):
    label_task.make_splits(tmp_path, seed=0)
    for name, size in label_task.SPLITS.items():
        committed = (DATA / f"labels_{name}.jsonl").read_text()
        assert committed == (tmp_path / f"labels_{name}.jsonl").read_text()
        assert len(committed.splitlines()) == size
    splits = label_task.split_samples(0)
    stories = {name: {_story(s) for s in samples} for name, samples in splits.items()}
    assert not stories["train"] & stories["test"] and not stories["train"] & stories["valid"]
    assert not stories["valid"] & stories["test"]
    for samples in splits.values():
        labels = [s[-1]["content"] for s in samples]
        assert set(labels) == set(label_task.LABELS)
        assert min(labels.count(x) for x in label_task.LABELS) > len(samples) / 8  # no label is rare


def _story(sample) -> str:
    """The story lines of a request (the line that starts with 'The <who>' or follows 'Story: ')."""
    lines = sample[-2]["content"].replace("Story: ", "").split("\n")
    return next(line for line in lines if line.startswith("The "))


def test_probe_set_is_drawn_from_the_corpus_and_shipped():
    probes = probe_samples()
    committed = [json.loads(line) for line in (DATA / "skills_probe.jsonl").read_text().splitlines()]
    assert committed == probes and len(probes) == 48
    questions = [p[0]["content"] for p in probes]
    assert len(set(questions)) == len(questions)
    assert all(p[-1]["role"] == "assistant" and len(p[-1]["content"].split()) <= 14 for p in probes)


def test_reporters_get_every_step_and_callbacks_an_eta(tmp_path, monkeypatch):
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind a flag
    model = build_model(preset("tiny", vocab_size=512), seed=0)
    mark_only_lora_trainable(model)
    seen = []

    class Recorder:
        def on_step(self, row):
            seen.append(row)

    config = TrainConfig(epochs=1, batch_size=2, report_to="tensorboard, mlflow", precision="f32")
    assert config.report_to == ("tensorboard", "mlflow")
    train(model, token_loss, Rows(), [next(iter(Rows().epoch(0)))], config, tmp_path / "run", callbacks=[Recorder()])
    events = tensorboard.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in seen])
    assert len(events.Scalars("eval/loss")) == 1
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.info.run_name == "run" and run.data.params["epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    assert [r["eta_s"] for r in seen][-1] == 0 and all(r["eta_s"] >= 0 for r in seen)
    assert "eta_s" not in json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    with pytest.raises(FmlabError, match="unknown; use tensorboard, mlflow"):
        parse_report_to("wandb")
    assert parse_report_to("none") == () and parse_report_to("") == ()

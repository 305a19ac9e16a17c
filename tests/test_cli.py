"""The training commands end to end on the embedded default, with Apple's flag names."""

import json

import pytest
import torch

from fmlab.cli import main


@pytest.fixture
def small_data(tmp_path):
    from pathlib import Path

    from fmlab.lab.notebook_runs import smoke_subset

    data = Path(__file__).resolve().parent.parent / "data"
    return smoke_subset(data / "train.jsonl", tmp_path, 8), smoke_subset(data / "valid.jsonl", tmp_path, 4)


def test_train_adapter_with_config_file_then_train_draft(tmp_path, small_data, capsys):
    train, valid = small_data
    config = tmp_path / "run.yaml"
    config.write_text(f"train-data: {train}\nepochs: 1\nbatch-size: 4\nlearning_rate: 0.002\n")
    adapter_dir = tmp_path / "adapter"
    assert (
        main(
            [
                "train-adapter",
                "--config",
                str(config),
                "--eval-data",
                str(valid),
                "--checkpoint-dir",
                str(adapter_dir),
                "--precision",
                "f32",
            ]
        )
        == 0
    )
    manifest = json.loads((adapter_dir / "checkpoints.json").read_text())
    assert manifest["config"]["learning_rate"] == 0.002 and manifest["config"]["precision"] == "f32"
    assert (adapter_dir / "adapter-final.pt").exists() and (adapter_dir / "loss.png").exists()
    draft_dir = tmp_path / "draft"
    assert (
        main(
            [
                "train-draft",
                "--checkpoint",
                str(adapter_dir),
                "--train-data",
                str(train),
                "--eval-data",
                str(valid),
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--checkpoint-dir",
                str(draft_dir),
                "--num-score-prompts",
                "1",
                "--target-precision",
                "f32",
                "--draft-precision",
                "f32",
                "--cache-teacher-topk",
                "8",
            ]
        )
        == 0
    )
    draft_manifest = json.loads((draft_dir / "checkpoints.json").read_text())
    assert draft_manifest["best_by_acceptance"] and (draft_dir / "draft-model-final.pt").exists()
    cache = torch.load(draft_dir / "teacher-topk.pt", weights_only=True)
    assert len(cache["docs"]) == 8 + 4  # every training and eval document, once
    assert {tuple(v.shape[1:]) for v, _ in cache["docs"].values()} == {(9,)}  # top-8 + the rest
    assert "acceptance" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--pack-sequences", "--max-sequence-length", "5000"], "--max-sequence-length"),
        (["--precision", "fp8"], "invalid choice"),
        (["--batch-size", "0"], "batch-size"),
    ],
)
def test_bad_flags_are_clear_errors(tmp_path, small_data, capsys, flags, message):
    train, _ = small_data
    try:
        rc = main(["train-adapter", "--train-data", str(train), "--checkpoint-dir", str(tmp_path / "x"), *flags])
    except SystemExit as exit_:  # argparse's own choice errors
        rc = exit_.code
    assert rc != 0 and message in capsys.readouterr().err


def test_train_draft_flags_default_to_the_library():
    import inspect

    from fmlab.cli import build_parser
    from fmlab.train.draft import train_draft

    defaults = {n: p.default for n, p in inspect.signature(train_draft).parameters.items()}
    args = build_parser().parse_args(["train-draft", "--train-data", "t.jsonl", "--checkpoint-dir", "d"])
    flags = {
        "divergence": "divergence",
        "distill_temperature": "temperature",
        "jsd_beta": "beta",
        "on_policy": "on_policy",
        "cache_teacher_topk": "cache_teacher_topk",
        "num_draft_tokens": "num_draft_tokens",
    }
    assert {flag: getattr(args, flag) for flag in flags} == {flag: defaults[p] for flag, p in flags.items()}
    kinds = {
        p.kind
        for n, p in inspect.signature(train_draft).parameters.items()
        if n not in ("train_data", "checkpoint_dir", "eval_data")
    }
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}


def test_bad_data_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]\n')
    rc = main(["train-adapter", "--train-data", str(bad), "--checkpoint-dir", str(tmp_path / "x"), "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.jsonl:1" in err and "content" in err and "Traceback" not in err

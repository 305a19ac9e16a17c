"""Untrusted files and names: no pickled code runs on any load path, the package source uses no unsafe
deserialiser, and no user-given name can make fmlab write outside the output directory."""

import ast
import json
import os
from pathlib import Path

import pytest
import torch
from crash_worker import Rows

from fmlab.checkpoints.apple_format import load_torch, read_adapter, save_adapter
from fmlab.checkpoints.assets import load_model
from fmlab.checkpoints.run_dir import CheckpointManager
from fmlab.cli import main
from fmlab.errors import FmlabError
from fmlab.export.package import check_adapter_name
from fmlab.files import safe_name
from fmlab.model.config import preset, to_tamm_json
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.transformer import build_model
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss

PACKAGE = Path(__file__).resolve().parent.parent / "fmlab"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "<expr>") if isinstance(func, ast.Attribute) else ""  # "": a builtin
            yield owner, name, {k.arg: k.value for k in node.keywords}, node


def test_every_torch_load_in_the_package_is_weights_only():
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        compliant = set()
        for owner, name, kw, node in calls(tree):
            if owner == "torch" and name == "load":
                weights_only = kw.get("weights_only")
                assert isinstance(weights_only, ast.Constant) and weights_only.value is True, (
                    f"{path}:{node.lineno}: torch.load without weights_only=True"
                )
                compliant.add(id(node.func))
                found.append(f"{path.name}:{node.lineno}")
        for node in ast.walk(tree):  # no `loader = torch.load` or `from torch import load`
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", "") == "torch":
                assert id(node) in compliant, f"{path}:{node.lineno}: torch.load used indirectly"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                assert "load" not in {a.name for a in node.names}, f"{path}:{node.lineno}"
    assert len(found) >= 2, found  # checkpoint.load_torch and the resume state at least


@pytest.mark.parametrize(
    "owner,name",
    [
        ("pickle", "load"),
        ("pickle", "loads"),
        ("yaml", "load"),
        ("marshal", "loads"),
        ("", "eval"),
        ("", "exec"),
        ("dill", "load"),
    ],
)
def test_no_unsafe_deserialiser_in_the_package(owner, name):
    for path in SOURCES:
        for o, n, kw, node in calls(ast.parse(path.read_text(), str(path))):
            assert (o, n) != (owner, name), f"{path}:{node.lineno}"
            if (o, n) == ("np", "load"):
                assert "allow_pickle" not in kw, f"{path}:{node.lineno}"


class Payload:
    """Pickled, this creates a file when unpickled: the classic code-execution payload, harmless here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_payload_is_refused_on_every_load_path(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"embedding.weight": torch.zeros(2), "x": Payload(marker)}, evil)
    with pytest.raises(FmlabError, match="not a loadable weights-only"):
        load_torch(evil)
    with pytest.raises(FmlabError, match="not a loadable weights-only"):
        read_adapter(evil, preset("tiny"))
    cfg_path = tmp_path / "base-model-config.json"
    cfg_path.write_text(json.dumps(to_tamm_json(preset("tiny"))))
    with pytest.raises(FmlabError, match="not a loadable weights-only"):
        load_model(cfg_path, evil)  # as base weights
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"trainable": {}, "rng": Payload(marker)}, run / "last.pt")
    model = build_model(preset("tiny"), seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(FmlabError, match="not a readable resume state"):  # as resume state
        CheckpointManager(run, "adapter", save_adapter).load_last(model, optimizer, scheduler, None)
    assert not marker.exists()


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/abs", "a\\b", "x\0y", "", ".hidden"])
def test_path_like_names_are_refused(name):
    with pytest.raises(FmlabError, match="not a plain file name"):
        safe_name(name, "checkpoint prefix")


@pytest.mark.parametrize("name", ["adapter", "draft-model", "my_adapter.v2"])
def test_plain_names_pass(name):
    assert safe_name(name) == name


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_checkpoint_prefix_cannot_leave_the_run_directory(tmp_path):
    out = tmp_path / "runs" / "run"
    model = build_model(preset("tiny"), seed=0)
    mark_only_lora_trainable(model)
    with pytest.raises(FmlabError, match="checkpoint prefix '../escaped' is not a plain file name"):
        train(model, token_loss, Rows(), None, TrainConfig(epochs=1, prefix="../escaped"), out)
    with pytest.raises(FmlabError, match="not a plain file name"):
        CheckpointManager(out, "/tmp/abs", save_adapter)
    manager = CheckpointManager(out, "adapter", save_adapter)
    with pytest.raises(FmlabError, match="checkpoint name"):
        manager.save_candidate(model, "x/../../escaped", 1.0)
    assert listing(tmp_path) <= {"runs", "runs/run"}  # nothing written anywhere


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "x.fmadapter/../../y", "évil", "with-hyphen"])
def test_export_adapter_name_cannot_leave_the_output_directory(tmp_path, capsys, name):
    out = tmp_path / "out"
    assert main(["export", "-o", str(out), "-n", name, "-c", str(tmp_path / "adapter.pt")]) == 1
    err = capsys.readouterr().err
    assert "is not allowed: use only ASCII letters, digits and '_'" in err and "Traceback" not in err
    assert listing(tmp_path) == set()
    with pytest.raises(FmlabError):
        check_adapter_name(name)


def test_export_refuses_a_symlinked_package_pointing_elsewhere(tmp_path):
    from fmlab.export.package import _check_replaceable

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "a.fmadapter")
    with pytest.raises(FmlabError, match="not a package directory"):
        _check_replaceable(out / "a.fmadapter")
    assert (elsewhere / "precious.txt").read_text() == "keep"

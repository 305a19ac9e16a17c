"""One home for "a file or a run directory" -> a checkpoint (fmlab.checkpoints.run_dir)."""

import json

import pytest

from fmlab.checkpoints.run_dir import resolve_adapter, resolve_checkpoint, resolve_draft
from fmlab.errors import FmlabError


@pytest.fixture
def run(tmp_path):
    for name in ("m-epoch1.pt", "m-epoch2.pt", "m-final.pt"):
        (tmp_path / name).write_bytes(b"x")
    manifest = {
        "checkpoints": [{"path": "m-epoch1.pt", "eval_loss": 1.0}, {"path": "m-epoch2.pt", "eval_loss": 2.0}],
        "final": {"path": "m-final.pt"},
    }
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    return tmp_path, manifest


def test_a_file_is_itself_and_a_run_its_best(run):
    d, manifest = run
    assert resolve_checkpoint(d / "m-final.pt") == d / "m-final.pt"
    assert resolve_checkpoint(d) == resolve_adapter(d) == d / "m-epoch1.pt"  # by eval loss
    assert resolve_checkpoint(d, draft=True) == resolve_draft(d) == d / "m-epoch1.pt"  # no acceptance recorded
    manifest["best_by_acceptance"] = "m-epoch2.pt"
    (d / "checkpoints.json").write_text(json.dumps(manifest))
    assert resolve_draft(d) == d / "m-epoch2.pt" and resolve_adapter(d) == d / "m-epoch1.pt"


def test_none_and_default(run):
    assert resolve_adapter(None) is None
    assert resolve_draft(None) is None and resolve_draft("default") is None


def test_missing_files_keep_their_messages(tmp_path):
    with pytest.raises(FmlabError, match="nowhere.pt: no such checkpoint file"):
        resolve_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(FmlabError, match="no such adapter checkpoint or run directory"):
        resolve_adapter(tmp_path / "nowhere.pt")
    with pytest.raises(FmlabError, match="no such draft checkpoint \\(use 'default'"):
        resolve_draft(tmp_path / "nowhere.pt")
    with pytest.raises(FmlabError, match="no checkpoint manifest"):
        resolve_checkpoint(tmp_path)  # a directory, but no run

"""Crash safety: a training run killed with SIGKILL at several points, inside writes included, resumes
to the same files as an uninterrupted run, bit for bit; a damaged checkpoint is never loaded; a failing
write (disk full) is a clear error that keeps the previous checkpoint.

The killed runs are subprocesses of tests/crash_worker.py (one thread, like this process during these
tests); the resumes run here.
"""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import crash_worker
import pytest
import torch

import fmlab.files
from fmlab.checkpoints.apple_format import load_torch, read_adapter, save_adapter, to_apple
from fmlab.checkpoints.assets import load_model
from fmlab.checkpoints.run_dir import read_manifest
from fmlab.cli import main
from fmlab.errors import FmlabError
from fmlab.files import file_sha
from fmlab.model.config import preset, to_tamm_json
from fmlab.model.transformer import build_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and SIGKILL")
WORKER = Path(__file__).with_name("crash_worker.py")
CFG = preset("tiny")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bit-for-bit comparisons need the same kernels as the one-thread worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    crash_worker.run(out)
    return out


def launch(out: Path, *args) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(WORKER.parent), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def killed(out: Path, spec: str, resume: bool = False) -> None:
    proc = launch(out, "--kill", spec, *(["--resume"] if resume else []))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]


def metric_rows(run: Path) -> list[dict]:
    timing = ("tokens_per_s", "peak_memory_mb")
    return [
        {k: v for k, v in json.loads(line).items() if k not in timing}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def assert_same_run(out: Path, reference: Path) -> None:
    """Every file the uninterrupted run left, equal: adapters bit for bit, manifest, metrics."""
    ours, theirs = read_adapter(out / "adapter-final.pt", CFG), read_adapter(reference / "adapter-final.pt", CFG)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert file_sha(out / "adapter-final.pt") == file_sha(reference / "adapter-final.pt")
    kept = sorted(p.name for p in out.glob("adapter-*.pt"))
    assert kept == sorted(p.name for p in reference.glob("adapter-*.pt"))
    for name in kept:
        assert file_sha(out / name) == file_sha(reference / name), name
    assert read_manifest(out)["checkpoints"] == read_manifest(reference)["checkpoints"]
    assert read_manifest(out)["final"] == read_manifest(reference)["final"]
    assert metric_rows(out) == metric_rows(reference)  # nothing lost, nothing logged twice
    assert not list(out.glob(".*.tmp"))  # half-written temporaries are gone


# --- killed and resumed --------------------------------------------------------------------------------

KILLS = {
    # the worker's own SIGKILL, at points a timed kill rarely hits
    "half_written_resume_state": ["write:last.pt:4"],
    "half_written_candidate": ["write:adapter-epoch1.pt:1"],
    "half_written_manifest": ["write:checkpoints.json:5"],
    "final_renamed_manifest_not_yet": ["rename:adapter-final.pt:2"],
    "killed_again_while_resuming": ["step:3", "rename:adapter-epoch2.pt:1"],
}


@pytest.mark.parametrize("name", KILLS)
def test_killed_run_resumes_to_the_same_adapter(tmp_path, reference, name):
    for i, spec in enumerate(KILLS[name]):
        killed(tmp_path, spec, resume=i > 0)
    crash_worker.run(tmp_path, resume=True)
    assert_same_run(tmp_path, reference)


def test_killed_from_outside_at_a_moment_resumes_to_the_same_adapter(tmp_path, reference):
    """SIGKILL from this process once metrics.jsonl shows step 6: wherever the run happens to be."""
    proc = launch(tmp_path, "--kill", "slow")
    metrics, deadline = tmp_path / "metrics.jsonl", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and any(
            json.loads(r).get("step", 0) >= 6 for r in metrics.read_text().splitlines() if r.endswith("}")
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    crash_worker.run(tmp_path, resume=True)
    assert_same_run(tmp_path, reference)


def test_manifest_and_file_out_of_step_are_refused_until_resumed(tmp_path, reference):
    """Killed after the new final adapter replaced the old one but before the manifest recorded it: the
    file is whole, but it is not the one the manifest vouches for, so it is not loaded."""
    killed(tmp_path, "rename:adapter-final.pt:2")
    with pytest.raises(FmlabError, match="sha256 differs from the one checkpoints.json recorded"):
        read_adapter(tmp_path / "adapter-final.pt", CFG)
    crash_worker.run(tmp_path, resume=True)
    assert read_adapter(tmp_path / "adapter-final.pt", CFG).keys()


# --- damaged files -------------------------------------------------------------------------------------


def test_truncated_checkpoint_is_never_loaded(tmp_path, reference):
    run = tmp_path / "run"
    run.mkdir()
    for f in reference.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    name = read_manifest(run)["checkpoints"][0]["path"]
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(FmlabError, match=f"{name}: its sha256 differs"):
        read_adapter(run / name, CFG)
    with pytest.raises(FmlabError, match="sha256 differs"):
        load_torch(run / name)
    assets = tmp_path / "assets"  # the same through load_model
    assets.mkdir()
    (assets / "c.json").write_text(json.dumps(to_tamm_json(CFG)))
    torch.save(to_apple(build_model(CFG, seed=0).state_dict(), CFG), assets / "w.pt")
    with pytest.raises(FmlabError, match="sha256 differs"):
        load_model(assets / "c.json", assets / "w.pt", adapter=run / name)
    loose = tmp_path / "loose.pt"  # outside a run: torch's own check
    loose.write_bytes(data[: len(data) // 2])
    with pytest.raises(FmlabError, match="not a loadable weights-only PyTorch file"):
        read_adapter(loose, CFG)
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])
    with pytest.raises(FmlabError, match="not a readable resume state"):
        crash_worker.run(run, resume=True)


def test_a_crafted_manifest_cannot_point_outside_the_run(tmp_path, reference):
    run = tmp_path / "run"
    run.mkdir()
    for f in reference.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"keep me")
    manifest = read_manifest(run)
    manifest["checkpoints"][0]["path"] = "../victim.pt"
    (run / "checkpoints.json").write_text(json.dumps(manifest))
    with pytest.raises(FmlabError, match="'../victim.pt' is not a file name"):
        read_manifest(run)
    with pytest.raises(FmlabError, match="not a file name"):
        crash_worker.run(run, resume=True)  # resuming would otherwise delete it as "dropped"
    assert victim.read_bytes() == b"keep me"
    (run / "checkpoints.json").write_text("{not json")
    with pytest.raises(FmlabError, match="not a readable checkpoint manifest"):
        read_manifest(run)


# --- disk full -----------------------------------------------------------------------------------------


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: writes past it fail with ENOSPC, as the kernel's do."""

    room = 2000

    def write(self, b):
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def fill_disk(monkeypatch):
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        return FullDisk(fd, "wb", closefd=True) if "w" in mode else real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(fmlab.files.os, "fdopen", fdopen)


def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, tiny_model, monkeypatch):
    path = save_adapter(tiny_model, tmp_path / "adapter.pt")
    before = path.read_bytes()
    with torch.no_grad():
        next(p for n, p in tiny_model.named_parameters() if ".lora_b." in n).add_(1)
    fill_disk(monkeypatch)
    for target in (path, tmp_path / "adapter.safetensors"):
        with pytest.raises(FmlabError, match="No space left on device") as err:
            save_adapter(tiny_model, target)
        assert f"writing {target} failed" in str(err.value)
    assert "the previous file is kept" in str(err.value) or "nothing was written" in str(err.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.pt"]  # no temporary left behind


def test_disk_full_during_training_stops_with_the_last_good_state(tmp_path, reference, monkeypatch):
    """The run stops at its first failed save with FmlabError; what was saved before is intact and a
    resume (with room again) ends where an uninterrupted run ends."""
    out = tmp_path / "run"

    class DiskFillsAtStep5:
        def on_step(self, row):
            if row["step"] == 5:
                fill_disk(monkeypatch)

    with pytest.raises(FmlabError, match="No space left on device"):
        crash_worker.run(out, callbacks=[DiskFillsAtStep5()])
    monkeypatch.undo()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["position"]["step"] == 4  # the last good resume state survived
    for entry in read_manifest(out)["checkpoints"]:
        assert file_sha(out / entry["path"]) == entry["sha256"]
    crash_worker.run(out, resume=True)
    assert_same_run(out, reference)


def test_cli_reports_an_unwritable_checkpoint_dir_without_a_traceback(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps([{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello"}])
            for i in range(4)
        )
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(
        [
            "train-adapter",
            "--train-data",
            str(data),
            "--checkpoint-dir",
            str(blocker / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--precision",
            "f32",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "fmlab train-adapter: error:" in err and str(blocker) in err and "Traceback" not in err

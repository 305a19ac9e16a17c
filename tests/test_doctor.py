"""`fmlab doctor`: OK/WARN/FAIL rows with fixes, exit code 1 on any FAIL; broken assets are named."""

import hashlib
import importlib.metadata
import json
import shutil
import sys
from collections import namedtuple

import pytest
import torch
from helpers import plain_tokenizer, write_assets

from fmlab.checkpoints.assets import REPO_ASSETS
from fmlab.cli import main
from fmlab.lab import doctor
from fmlab.model.config import preset, to_tamm_json


def rows(checks):
    return {c.name: c for c in checks}


@pytest.fixture
def assets(tmp_path, tiny_tokenizer):
    return write_assets(tmp_path / "assets", tiny_tokenizer)


def test_the_embedded_assets_pass(tmp_path):
    checks = rows(doctor.check_assets(REPO_ASSETS))
    assert all(c.status == doctor.OK for c in checks.values()), [c for c in checks.values() if c.status != "OK"]
    assert "5 files match manifest.json" in checks["checksums"].detail
    assert "special pieces present" in checks["tokenizer.model"].detail


def test_a_good_tmp_assets_dir_passes_and_the_cli_prints_a_table(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "check_package", lambda name: doctor.Check(name, doctor.OK, "pinned"))
    code = main(["doctor", "--assets", str(assets), "--checkpoint-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK    python" in out and "base-model.pt" in out and "0 failure(s)" in out
    assert "no manifest.json" in out  # Apple's assets have none: fine


def break_tokenizer(d, tmp_path):
    shutil.copy(plain_tokenizer(tmp_path / "p.model", 60, 150), d / "tokenizer.model")


def break_weights(d, tmp_path):
    cfg = preset("tiny", vocab_size=512)
    from fmlab.checkpoints.apple_format import to_apple
    from fmlab.model.transformer import build_model

    torch.save(to_apple(build_model(cfg, seed=0).state_dict(), cfg), d / "base-model.pt")


def break_manifest(d, tmp_path):
    files = {
        n: {"sha256": hashlib.sha256((d / n).read_bytes()).hexdigest(), "bytes": (d / n).stat().st_size}
        for n in doctor.ASSET_FILES
    }
    files["draft-model.pt"]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps({"files": files}))


def break_draft_vocab(d, tmp_path):
    (d / "draft-model-config.json").write_text(json.dumps(to_tamm_json(preset("tiny-draft", vocab_size=700))))


BREAKAGES = {
    "missing file": (lambda d, t: (d / "draft-model.pt").unlink(), "assets files", "missing draft-model.pt"),
    "no special pieces": (break_tokenizer, "tokenizer.model", "lacks the required pieces"),
    "tokenizer too big": (
        lambda d, t: (d / "base-model-config.json").write_text(
            json.dumps(to_tamm_json(preset("tiny", vocab_size=512)))
        ),
        "tokenizer.model",
        "600 pieces but base vocab_size 512",
    ),
    "weights of another vocabulary": (
        break_weights,
        "base-model.pt",
        "embedding.weight: file (512, 64) vs config (640, 64)",
    ),
    "config does not parse": (
        lambda d, t: (d / "base-model-config.json").write_text("{oops"),
        "base-model-config.json",
        "cannot read model config",
    ),
    "checksum differs": (break_manifest, "checksums", "differ from manifest.json: draft-model.pt"),
    "draft vocabulary differs": (break_draft_vocab, "vocabularies", "differ in vocab_size"),
    "partial draft template": (lambda d, t: (d / "draft.mil").write_text("x"), "draft template", "incomplete"),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_broken_assets_dir_is_named(assets, tmp_path, capsys, name):
    breakage, row, phrase = BREAKAGES[name]
    breakage(assets, tmp_path)
    check = rows(doctor.check_assets(assets))[row]
    assert check.status in (doctor.FAIL, doctor.WARN) and phrase in check.detail and check.fix, check
    code = main(["doctor", "--assets", str(assets), "--checkpoint-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "fix: " in out
    if check.status == doctor.FAIL:
        assert code == 1 and f"FAIL  {row}" in out
    else:
        assert f"WARN  {row}" in out


def test_missing_assets_directory(tmp_path, capsys):
    assert main(["doctor", "--assets", str(tmp_path / "nowhere")]) == 1
    out = capsys.readouterr().out
    assert "is not a directory" in out and "FMLAB_ASSETS" in out


@pytest.mark.parametrize(
    "name,version,status,phrase",
    [
        ("numpy", "2.4.1", "FAIL", 'pip install "numpy<2.4"'),
        ("numpy", "2.3.5", "OK", ""),
        ("torch", "2.5.1+cu121", "FAIL", 'pip install "torch>=2.6"'),
        ("coremltools", "8.3", "WARN", 'pip install "coremltools>=9.0,<9.1"'),
        ("papermill", None, "WARN", "pip install papermill"),
        ("sentencepiece", None, "FAIL", "pip install sentencepiece"),
    ],
)
def test_package_versions(monkeypatch, name, version, status, phrase):
    def fake(package):
        if version is None:
            raise importlib.metadata.PackageNotFoundError(package)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake)
    check = doctor.check_package(name)
    assert check.status == status and check.fix == phrase


def test_old_python_fails(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 4, "final", 0))
    assert doctor.check_python().status == doctor.FAIL


def test_devices_report_cpu_and_the_device_in_use():
    checks = rows(doctor.check_devices())
    assert checks["cpu"].status in (doctor.OK, doctor.WARN) and "threads" in checks["cpu"].detail  # WARN: slow bf16
    assert {"cuda", "mps", "device in use"} <= checks.keys()


def test_disk_plan_for_afm_3b_and_its_verdicts(tmp_path, monkeypatch):
    (tmp_path / "base-model-config.json").write_text(json.dumps(to_tamm_json(preset("afm-3b"))))
    (tmp_path / "draft-model.pt").write_bytes(b"\0" * 1000)
    plan = doctor.planned_bytes(tmp_path, keep_best=2)
    payload = 133_312_320 - 64 - 700 * 64  # Apple's adapter_weights.bin less its blob headers
    assert plan["export"] == payload + 1000
    assert plan["adapter run"] == 2 * payload * (2 + 1 + 3)
    need = sum(plan.values())
    Usage = namedtuple("Usage", "total used free")
    for free, status in ((need // 2, "FAIL"), (need * 3 // 2, "WARN"), (need * 3, "OK")):
        monkeypatch.setattr(shutil, "disk_usage", lambda path, free=free: Usage(0, 0, free))
        check = doctor.check_disk(tmp_path / "not" / "yet", tmp_path, keep_best=2)
        assert check.status == status and "GiB free" in check.detail


def test_a_gpu_without_bf16_is_a_warning_with_a_fix(monkeypatch):
    """The CUDA row without a GPU at hand: torch's answers faked."""
    props = namedtuple("Props", "total_memory")(80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    checks = rows(doctor.check_devices())
    assert checks["cuda"].status == doctor.WARN and "Old GPU, 80 GiB, bf16 no" in checks["cuda"].detail
    assert "--precision f16-mixed" in checks["cuda"].fix and checks["device in use"].detail == "cuda"


@pytest.mark.parametrize(("bf16", "status", "picked"), [(0.8, doctor.WARN, "f32"), (120.0, doctor.OK, "bf16-mixed")])
def test_the_cpu_row_reports_measured_matmul_speeds_and_warns_when_bf16_is_slow(monkeypatch, bf16, status, picked):
    from fmlab.model import precision

    rates = {torch.float32: 54.0, torch.bfloat16: bf16}
    monkeypatch.setattr(precision, "matmul_gflops", lambda device, dtype, **kw: rates[dtype])
    monkeypatch.delenv(precision.ENV, raising=False)
    precision.probe.cache_clear()
    try:
        cpu = rows(doctor.check_devices())["cpu"]
    finally:
        precision.probe.cache_clear()
    assert cpu.status == status and f"f32 54.0 GFLOP/s, bf16 {bf16:.1f} GFLOP/s; auto picks {picked}" in cpu.detail
    assert ("68x slower" in cpu.fix) == (status == doctor.WARN)

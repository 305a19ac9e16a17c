"""Precision resolution: `auto` measures, an explicit precision wins, FMLAB_PRECISION forces auto."""

import pytest
import torch

from fmlab.errors import FmlabError
from fmlab.model import precision
from fmlab.model.precision import PrecisionChoice, choose_precision, matmul_gflops, resolve_precision


def test_matmul_probe_measures_both_dtypes_quickly():
    for dtype in (torch.float32, torch.bfloat16):
        assert matmul_gflops(torch.device("cpu"), dtype, budget_s=0.002) > 0


@pytest.mark.parametrize(
    ("f32", "bf16", "picked"), [(50.0, 0.8, "f32"), (50.0, 120.0, "bf16-mixed"), (50.0, 50.0, "bf16-mixed")]
)
def test_auto_picks_bf16_only_where_it_is_at_least_as_fast(monkeypatch, f32, bf16, picked):
    rates = {torch.float32: f32, torch.bfloat16: bf16}
    monkeypatch.setattr(precision, "matmul_gflops", lambda device, dtype, **kw: rates[dtype])
    monkeypatch.delenv(precision.ENV, raising=False)
    precision.probe.cache_clear()
    try:
        choice = choose_precision("auto", "cpu")
        assert choice.precision == picked and choice.f32_gflops == f32 and choice.bf16_gflops == bf16
        assert f"{bf16:.1f} GFLOP/s" in choice.reason
        assert choose_precision(None, "cpu") == choice  # None means auto
    finally:
        precision.probe.cache_clear()


def test_the_probe_runs_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "matmul_gflops", lambda device, dtype, **kw: calls.append(dtype) or 1.0)
    monkeypatch.delenv(precision.ENV, raising=False)
    precision.probe.cache_clear()
    try:
        resolve_precision("auto")
        resolve_precision("auto")
        assert len(calls) == 2 * precision.PROBE_ROUNDS  # alternating f32 and bf16 rounds, then cached
        assert calls[:2] == [torch.float32, torch.bfloat16]
    finally:
        precision.probe.cache_clear()


def test_the_probe_times_one_thread_and_restores_the_count(monkeypatch):
    threads = []
    monkeypatch.setattr(
        precision, "matmul_gflops", lambda device, dtype, **kw: threads.append(torch.get_num_threads()) or 1.0
    )
    monkeypatch.delenv(precision.ENV, raising=False)
    precision.probe.cache_clear()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert "on one cpu thread" in precision.probe("cpu").reason
        assert set(threads) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        precision.probe.cache_clear()


@pytest.mark.parametrize(("f32", "bf16"), [(50.0, 120.0), (50.0, 0.8)])
def test_decoding_on_cpu_takes_f32_unless_asked_or_forced(monkeypatch, f32, bf16):
    """A decode step's few rows are not the probe's matmuls: bf16 autocast re-casts every weight at
    every token, so CPU decoding's `auto` is f32 even where bf16 is native; training keeps the probe's."""
    rates = {torch.float32: f32, torch.bfloat16: bf16}
    monkeypatch.setattr(precision, "matmul_gflops", lambda device, dtype, **kw: rates[dtype])
    monkeypatch.delenv(precision.ENV, raising=False)
    precision.probe.cache_clear()
    try:
        decoding = choose_precision("auto", "cpu", decoding=True)
        assert decoding.precision == "f32" and decoding.bf16_gflops == bf16
        assert choose_precision("auto", "cpu").precision == ("bf16-mixed" if bf16 > f32 else "f32")
        if bf16 > f32:
            assert "decoding on cpu" in decoding.reason and f"{bf16:.1f} GFLOP/s" in decoding.reason
        assert resolve_precision("bf16-mixed", "cpu", decoding=True) == "bf16-mixed"
        monkeypatch.setenv(precision.ENV, "bf16-mixed")
        assert resolve_precision("auto", "cpu", decoding=True) == "bf16-mixed"
    finally:
        precision.probe.cache_clear()


def test_explicit_wins_then_environment_then_probe(monkeypatch):
    monkeypatch.setenv(precision.ENV, "bf16-mixed")
    assert resolve_precision("f32") == "f32"
    assert choose_precision("auto") == PrecisionChoice("bf16-mixed", "FMLAB_PRECISION=bf16-mixed")
    monkeypatch.setenv(precision.ENV, "fast")
    with pytest.raises(FmlabError, match="FMLAB_PRECISION='fast'"):
        resolve_precision("auto")
    with pytest.raises(FmlabError, match="--precision must be one of"):
        resolve_precision("fp8")

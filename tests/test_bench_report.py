"""The benchmark report's choices: which precisions a run measures, and an earlier bf16 table kept
where this CPU cannot measure one (the timings themselves live in `make bench`, not in tests)."""

import json

from benchmarks import run_all
from fmlab.model.precision import PrecisionChoice

NATIVE = PrecisionChoice("bf16-mixed", "bf16 matmul 250 GFLOP/s vs f32 120 GFLOP/s on one cpu thread")
EMULATED = PrecisionChoice("f32", "bf16 matmul 1.2 GFLOP/s vs f32 50.0 GFLOP/s on one cpu thread")


def test_bf16_is_measured_only_where_auto_picks_it_or_when_asked():
    assert run_all.bench_dtypes(NATIVE, "auto") == (("fp32", "bf16"), "")
    dtypes, why = run_all.bench_dtypes(EMULATED, "auto")
    assert dtypes == ("fp32",) and "1.2 GFLOP/s" in why and "--bf16 yes" in why
    assert run_all.bench_dtypes(EMULATED, "yes")[0] == ("fp32", "bf16")
    assert run_all.bench_dtypes(NATIVE, "no")[0] == ("fp32",)


def training(dtype: str) -> dict:
    tps = {"fmlab": 1500.0, "fmlab (AFM default)": 1450.0, "transformers+peft": 1000.0}
    return {
        "machine": "AMD EPYC (avx512_bf16: yes, amx: no)",
        "batch": 8,
        "seq": 512,
        "dtype": dtype,
        "peak_gflops": 118.0,
        "flops_per_token": 37.2e6,
        "modes": {"eager": {"tokens_per_s": tps, "ratio": 1.5, "mfu": 0.47}},
    }


def test_an_earlier_bf16_table_is_kept_and_the_old_format_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    assert run_all.previous_training() == {}
    (tmp_path / "results.json").write_text(json.dumps({"train": {"machine": "x", "modes": {}}}))
    assert run_all.previous_training() == {}  # one precision, unlabelled: not a bf16 table
    (tmp_path / "results.json").write_text(json.dumps({"train": {"fp32": training("fp32"), "bf16": training("bf16")}}))
    assert set(run_all.previous_training()) == {"fp32", "bf16"}


def test_training_table_names_precision_peak_and_mfu(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    text = "\n".join(run_all.train_section(training("bf16")))
    assert "in bf16" in text and "118 GFLOP/s" in text and "37.2 MFLOP" in text
    assert "| eager | 1,500 | 1,450 | 1,000 | **1.50×** | 47% |" in text
    assert (tmp_path / "train_bf16_eager.png").stat().st_size > 0

"""What the notebooks share: the small SMOKE copies of a data file, and the adapter run a notebook
trains for itself when notebook 02's `out/adapter` is missing, so that every notebook also runs on its
own (as notebook 06 always has, with the base's untrained adapter and the assets' draft).
"""

from __future__ import annotations

from pathlib import Path

from fmlab.checkpoints.assets import shipped_dir
from fmlab.checkpoints.run_dir import MANIFEST
from fmlab.train.adapter import DataConfig, train_adapter
from fmlab.train.loop import TrainConfig

SMOKE_SAMPLES = {"train": 4, "valid": 2}  # a standalone SMOKE adapter: one optimizer step


def smoke_subset(path: str | Path, out_dir: str | Path, n: int, prefix: str = "smoke") -> Path:
    """The first `n` lines (samples) of the JSONL file `path`, written to `out_dir/<prefix>_<name>.jsonl`."""

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subset = out_dir / f"{prefix}_{path.stem}.jsonl"
    subset.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return subset


def adapter_config(smoke: bool = False) -> TrainConfig:
    """Notebook 02's adapter recipe (4 epochs, lr 3e-3, batch 8, at the `auto` precision); with `smoke`,
    one epoch (a SMOKE run only checks the plumbing)."""

    if smoke:
        return TrainConfig(epochs=1, learning_rate=3e-3, batch_size=4)
    return TrainConfig(epochs=4, learning_rate=3e-3, batch_size=8, eval_every=100)


def adapter_run(
    run: str | Path,
    fallback_dir: str | Path,
    *,
    smoke: bool = False,
    train: str | Path | None = None,
    valid: str | Path | None = None,
    assets=None,
) -> Path:
    """`run` when it holds an adapter run (its `checkpoints.json`, as notebook 02 writes it); otherwise an
    adapter trained now into `fallback_dir` with `adapter_config(smoke)` on `train` / `valid` (default:
    the shipped toy data; with `smoke`, their first few samples), and that directory is returned."""

    run = Path(run)
    if (run / MANIFEST).is_file():
        return run
    fallback = Path(fallback_dir)
    data = shipped_dir("data")
    train, valid = Path(train or data / "train.jsonl"), Path(valid or data / "valid.jsonl")
    if smoke:
        train = smoke_subset(train, fallback, SMOKE_SAMPLES["train"])
        valid = smoke_subset(valid, fallback, SMOKE_SAMPLES["valid"])
    print(f"{run} holds no adapter run (notebook 02 has not run): training one into {fallback}")
    train_adapter(
        train, fallback, valid, config=adapter_config(smoke), data=DataConfig(group_by_length=True), assets=assets
    )
    return fallback

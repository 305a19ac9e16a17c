"""Training telemetry where users already look: TensorBoard and MLflow, as `train()` callbacks
(`--report-to tensorboard,mlflow`), next to `metrics.jsonl` and the loss plot. Each library is imported
only when its reporter is asked for, so neither is a dependency of fmlab.

- `tensorboard`: scalars `train/<field>` per optimizer step and `eval/loss` per evaluation, written by
  torch's `SummaryWriter` to `CHECKPOINT_DIR/tensorboard/` (`tensorboard --logdir CHECKPOINT_DIR`).
- `mlflow`: one MLflow run per training run, named after the checkpoint directory, with the training
  config as parameters and the same metrics by step. Where it goes is MLflow's own setting
  (`MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME`; MLflow's default otherwise), as for any MLflow user.
"""

from __future__ import annotations

import json
from pathlib import Path

from fmlab.errors import FmlabError

STEP_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb")


def _need(module: str, package: str, name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FmlabError(f"--report-to {name} needs the {package} package: pip install {package}") from None


class TensorBoardReporter:
    def __init__(self, out_dir: str | Path, config: dict):
        _need("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")

    def on_step(self, row: dict) -> None:
        for key in STEP_FIELDS:
            if isinstance(row.get(key), (int, float)):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def on_eval(self, row: dict) -> None:
        self.writer.add_scalar("eval/loss", row["eval_loss"], row["step"])

    def on_end(self, summary: dict | None = None) -> None:
        self.writer.close()


class MLflowReporter:
    def __init__(self, out_dir: str | Path, config: dict):
        self.mlflow = _need("mlflow", "mlflow", "mlflow")
        nested = self.mlflow.active_run() is not None  # inside a user's own run (a notebook's `with`)
        self.run = self.mlflow.start_run(run_name=Path(out_dir).resolve().name, nested=nested)
        params = {
            k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str) for k, v in config.items()
        }
        self.mlflow.log_params(params)
        self.mlflow.set_tag("fmlab.checkpoint_dir", str(Path(out_dir).resolve()))

    def on_step(self, row: dict) -> None:
        metrics = {f"train_{k}": float(row[k]) for k in STEP_FIELDS if isinstance(row.get(k), (int, float))}
        self.mlflow.log_metrics(metrics, step=row["step"])

    def on_eval(self, row: dict) -> None:
        self.mlflow.log_metrics({"eval_loss": float(row["eval_loss"])}, step=row["step"])

    def on_end(self, summary: dict | None = None) -> None:
        self.mlflow.end_run()


REPORTERS = {"tensorboard": TensorBoardReporter, "mlflow": MLflowReporter}


def parse_report_to(spec) -> tuple[str, ...]:
    """ "tensorboard,mlflow" (or a list; "none" or empty: nothing) → ("tensorboard", "mlflow"), checked."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip() and n.strip().lower() != "none"))
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise FmlabError(f"--report-to {', '.join(unknown)}: unknown; use {', '.join(REPORTERS)} (comma-separated)")
    return names


def make_reporters(names, out_dir: str | Path, config: dict) -> list:
    """One reporter per name, each importing its library now (a missing one is a clear FmlabError)."""
    return [REPORTERS[name](out_dir, config) for name in parse_report_to(names)]

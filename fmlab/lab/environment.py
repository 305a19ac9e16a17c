"""Environment and model reports shown by `fmlab info` and notebook 00."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from fmlab import __version__
from fmlab.checkpoints.assets import assets_dir
from fmlab.model.precision import AUTO, choose_precision, describe_choice, resolve_device
from fmlab.model.transformer import count_parameters

PACKAGES = (
    "torch",
    "numpy",
    "sentencepiece",
    "coremltools",
    "safetensors",
    "pandas",
    "matplotlib",
    "ipywidgets",
    "papermill",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment_report(assets: str | Path | None = None) -> dict[str, str]:
    device = resolve_device()
    chosen = assets_dir(assets, must_exist=False)
    report = {"fmlab": __version__, "python": platform.python_version(), "platform": platform.platform()}
    report.update(package_versions())
    report.update(
        {
            "device": str(device),
            "precision (auto)": describe_choice(choose_precision(AUTO, device)).removeprefix("precision: "),
            "cpu threads": str(torch.get_num_threads()),
            "assets": f"{chosen}{'' if chosen.is_dir() else ' (missing)'}",
        }
    )
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    return report


def parameter_table(model):
    """A DataFrame of parameters per component (embedding, segment_0, segment_1, LoRA) in millions."""
    import pandas as pd

    counts = count_parameters(model)
    cfg = model.config
    rows = [
        ("embedding (tied output)", counts["embedding"], "frozen"),
        (f"segment_0: {cfg.num_regular_layers} regular layers", counts["segment_0"], "frozen"),
        (f"segment_1: {cfg.num_kv_reuse_layers} KV-reuse layers", counts["segment_1"], "frozen"),
        ("output norm", counts["output_norm"], "frozen"),
        ("LoRA adapter", counts["lora"], "trainable"),
    ]
    table = pd.DataFrame(rows, columns=["component", "parameters", "role"])
    table["millions"] = (table["parameters"] / 1e6).round(3)
    table["share %"] = (100 * table["parameters"] / table["parameters"].sum()).round(2)
    return table

"""The assets-directory contract: build the base and draft models (and tokenizer) from a directory
laid out like Apple's toolkit `assets/` (ARCHITECTURE.md). The embedded `fmlab-tiny` uses the same layout.
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import (
    from_apple,
    load_adapter,
    load_torch,
    warn_if_lora_nonzero,
)
from fmlab.data.tokenizer import Tokenizer
from fmlab.errors import FmlabError
from fmlab.model.config import from_tamm_json
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.precision import cast_frozen
from fmlab.model.transformer import Transformer, build_model

BASE_CONFIG, BASE_WEIGHTS = "base-model-config.json", "base-model.pt"
DRAFT_CONFIG, DRAFT_WEIGHTS = "draft-model-config.json", "draft-model.pt"
TOKENIZER = "tokenizer.model"
MANIFEST = "manifest.json"  # fmlab's own assets only: Apple's toolkit ships none
ASSET_FILES = (BASE_CONFIG, BASE_WEIGHTS, DRAFT_CONFIG, DRAFT_WEIGHTS, TOKENIZER)


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise FmlabError(
            f"{directory}: missing {name} (an assets directory needs {BASE_CONFIG}, "
            f"{BASE_WEIGHTS}, {DRAFT_CONFIG}, {DRAFT_WEIGHTS} and {TOKENIZER})"
        )
    return path


def load_model(
    config_path: Path,
    weights_path: Path,
    device="cpu",
    frozen_dtype: torch.dtype | None = None,
    adapter: str | Path | None = None,
) -> Transformer:
    """Build from a tamm config, load Apple-keyed weights strictly (memory-mapped), optionally cast
    the frozen base weights (LoRA and norms stay fp32) and load an adapter or draft checkpoint on top."""
    cfg = from_tamm_json(config_path)
    model = build_model(cfg, device="meta")
    state = from_apple(load_torch(weights_path), cfg, f"{weights_path} (against {config_path.name})")
    warn_if_lora_nonzero(state, str(weights_path))
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    if frozen_dtype is not None:
        mark_only_lora_trainable(model)
        cast_frozen(model, frozen_dtype)
    if adapter is not None:
        if cfg.lora is not None:
            load_adapter(model, adapter)
        else:  # a draft checkpoint is a whole model, in Apple's draft layout
            model.load_state_dict(from_apple(load_torch(adapter), cfg, str(adapter)), strict=True)
    return model.eval()


def load_base(
    assets: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device="cpu",
    frozen_dtype: torch.dtype | None = None,
) -> Transformer:
    d = assets_dir(assets)
    return load_model(_require(d, BASE_CONFIG), _require(d, BASE_WEIGHTS), device, frozen_dtype, checkpoint)


def load_draft(
    assets: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device="cpu",
    frozen_dtype: torch.dtype | None = None,
) -> Transformer:
    d = assets_dir(assets)
    return load_model(_require(d, DRAFT_CONFIG), _require(d, DRAFT_WEIGHTS), device, frozen_dtype, checkpoint)


def load_tokenizer(assets: str | Path | None = None):
    """The assets' tokenizer, checked against the base config: a token id past the embedding's rows
    would fail deep inside a forward pass (Apple's 150021 pieces fit a vocab_size of 153600)."""

    d = assets_dir(assets)
    tokenizer = Tokenizer.from_file(_require(d, TOKENIZER))
    if (d / BASE_CONFIG).is_file():
        cfg = from_tamm_json(d / BASE_CONFIG)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise FmlabError(
                f"{d / TOKENIZER} has {tokenizer.vocab_size} pieces but {d / BASE_CONFIG} has "
                f"vocab_size {cfg.vocab_size}: the tokenizer belongs to another model"
            )
    return tokenizer


def _checkout() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None  # an installed wheel has site-packages here


CHECKOUT = _checkout()


def shipped_dir(name: str) -> Path:
    """A folder fmlab ships beside the package (assets, notebooks, data): a checkout's own top-level
    folder, else the copy a wheel installs under <prefix>/share/fmlab/ (pyproject's data-files)."""
    if CHECKOUT is not None:
        return CHECKOUT / name
    schemes = (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user"))  # pip install, --user
    shares = [Path(sysconfig.get_path("data", scheme)) / "share" / "fmlab" for scheme in schemes]
    return next((share for share in shares if share.is_dir()), shares[0]) / name


REPO_ASSETS = shipped_dir("assets")  # the embedded fmlab-tiny


def assets_dir(path: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """The assets directory in use: an explicit path, else $FMLAB_ASSETS, else the embedded default.
    `must_exist=False` is for reports (doctor, info) that describe a missing directory instead of failing."""
    chosen = Path(path or os.environ.get("FMLAB_ASSETS") or REPO_ASSETS).expanduser()
    if must_exist and not chosen.is_dir():
        raise FmlabError(f"assets directory {chosen} does not exist (set --assets or FMLAB_ASSETS)")
    return chosen


# The training settings an assets manifest may recommend (`"recommended": {"train_adapter": {...},
# "train_draft": {...}}`): a tiny base needs other values than Apple's, tuned for the 3B one.
RECOMMENDABLE = {
    "learning_rate": (float, 1e-6, 1.0),
    "epochs": (int, 1, 100),
    "batch_size": (int, 1, 1024),
    "warmup_fraction": (float, 0.0, 1.0),
    "max_sequence_length": (int, 1, 4096),
}


def recommended(assets: str | os.PathLike | None = None, command: str = "train_adapter") -> dict:
    """What the assets' manifest recommends for `command` ("train_adapter" or "train_draft"), checked
    against RECOMMENDABLE; {} for assets without a manifest (Apple's), so Apple's defaults stay."""
    path = assets_dir(assets) / MANIFEST
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text()).get("recommended", {}).get(command, {})
    except (ValueError, AttributeError) as err:
        raise FmlabError(f"{path}: cannot read its recommended settings ({err})") from None
    for key, value in values.items():
        if key not in RECOMMENDABLE:
            raise FmlabError(f"{path}: recommended.{command}.{key} is not a setting fmlab knows")
        kind, low, high = RECOMMENDABLE[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise FmlabError(f"{path}: recommended.{command}.{key} = {value!r} is outside {low}..{high}")
        values[key] = kind(value)
    return values

"""Checkpoint files: Apple's key layout (docs/afm-format.md §2–3) and fmlab's native safetensors format.

`apple_key_map(config)` is the one explicit map between fmlab's parameter names and Apple's
`layers.segment_0.layer_i.attention.qkv_transform.wrapped...` keys, in Apple's state-dict order.
fmlab fuses the FFN gate/up projections (Apple's `linear_0`/`linear_1`), so those entries carry the
rows of the fused weight they cover. Every file is written atomically; every load is
`weights_only=True` (no pickled code runs) and memory-mapped.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from fmlab.checkpoints.run_dir import verify_recorded
from fmlab.errors import FmlabError
from fmlab.files import atomic_torch_save, atomic_write
from fmlab.model.config import LoRAConfig, ModelConfig
from fmlab.model.lora import is_lora_b, is_lora_name, lora_state_dict
from fmlab.model.transformer import build_model

_LORA_INDEX = {"q": 0, "k": 1, "v": 2}


class KeyEntry(NamedTuple):
    apple: str  # Apple's key
    fmlab: str  # fmlab's key
    rows: slice | None = None  # rows of the fmlab tensor this Apple tensor holds (fused gate/up)


def _adapter_keys(apple_module: str, fmlab_module: str, parts: dict[str, slice | None], fused: bool, cfg):
    """Base weight then LoRA A/B per adapted part, as tamm registers them (wrapped before adapters)."""
    wrapped = ".wrapped" if cfg.lora is not None else ""
    inner = ".fused_linear" if fused else ""
    entries = []
    rows = next(iter(parts.values()))
    entries.append(KeyEntry(f"{apple_module}{wrapped}{inner}.weight", f"{fmlab_module}.weight", rows))
    if cfg.lora is None:
        return entries
    for part in parts:
        if part in cfg.lora.targets:
            lora = f"{apple_module}.adapters.base_adapter." + (f"lora_{_LORA_INDEX[part]}." if fused else "")
            entries.append(KeyEntry(lora + "a_transpose", f"{fmlab_module}.lora_a.{part}"))
            entries.append(KeyEntry(lora + "b_transpose", f"{fmlab_module}.lora_b.{part}"))
    return entries


def apple_key_map(cfg: ModelConfig) -> list[KeyEntry]:
    """Every tensor of the model in Apple's naming and order (§2.2, §2.3)."""
    entries = [KeyEntry("embedding.weight", "embedding.weight")]
    n0, F = cfg.num_regular_layers, cfg.ffn_dim
    for i in range(cfg.num_layers):
        reuse = i >= n0
        if cfg.num_kv_reuse_layers:
            prefix = f"layers.segment_{int(reuse)}.layer_{i - n0 if reuse else i}."
        else:
            prefix = f"layers.layer_{i}."
        a, f = prefix + "attention.", f"layers.{i}.attn."
        entries.append(KeyEntry(a + "norm.weight", f"layers.{i}.attn_norm.weight"))
        if reuse:
            entries += _adapter_keys(a + "q_transform", f + "q", {"q": None}, False, cfg)
            entries.append(KeyEntry(a + "q_norm.query_norm.weight", f + "q_norm.weight"))
        else:
            entries += _adapter_keys(a + "qkv_transform", f + "qkv", {"q": None, "k": None, "v": None}, True, cfg)
            entries.append(KeyEntry(a + "qk_norm.query_norm.weight", f + "q_norm.weight"))
            entries.append(KeyEntry(a + "qk_norm.key_norm.weight", f + "k_norm.weight"))
            if cfg.kv_quant:
                for name, short in (("key", "k"), ("value", "v")):
                    obs = f"{a}kv_quantizer.{name}_quantizer.activation_post_process."
                    entries.append(KeyEntry(obs + "range", f"{f}{short}_range"))
                    entries.append(KeyEntry(obs + "num_samples", f"{f}{short}_samples"))
        entries += _adapter_keys(a + "output_transform", f + "out", {"o": None}, False, cfg)
        ff, m = prefix + "feed_forward.", f"layers.{i}.mlp."
        entries.append(KeyEntry(ff + "norm.weight", f"layers.{i}.mlp_norm.weight"))
        for j, (part, rows) in enumerate((("gate", slice(0, F)), ("up", slice(F, 2 * F)))):
            entries += _adapter_keys(f"{ff}hidden_transform.linear_{j}", m + "gate_up", {part: rows}, False, cfg)
        entries += _adapter_keys(ff + "output_transform", m + "down", {"down": None}, False, cfg)
    entries.append(KeyEntry("output_norm.weight", "output_norm.weight"))
    entries.append(KeyEntry("output_transform.weight", "embedding.weight"))  # tied: same storage
    return entries


def _canonical(key: str) -> str:
    # tamm accepts keys with or without `.wrapped` and an optional leading `model.`
    key = key.removeprefix("model.")
    return key.replace(".wrapped.", ".")


def _check_keys(present, expected, source):
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    if missing or unexpected:

        def show(keys):
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        lines = [f"{source}: state dict does not match the model config"]
        if missing:
            lines.append(f"  missing {len(missing)} key(s): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} key(s): {show(unexpected)}")
        raise FmlabError("\n".join(lines))


def from_apple(state: dict, cfg: ModelConfig, source: str = "state dict", lora_only: bool = False) -> dict:
    """Apple-keyed tensors → fmlab-keyed state dict. Strict: key or shape differences are errors."""
    entries = [e for e in apple_key_map(cfg) if not lora_only or is_lora_name(e.fmlab)]
    by_key = {_canonical(k): v for k, v in state.items()}
    _check_keys(by_key, {_canonical(e.apple) for e in entries}, source)
    pieces: dict[str, list] = OrderedDict()
    for e in entries:
        if e.apple == "output_transform.weight":
            continue  # tied to the embedding; Apple's exporter asserts equality
        pieces.setdefault(e.fmlab, []).append(by_key[_canonical(e.apple)])
    out = {k: (v[0] if len(v) == 1 else torch.cat(v)) for k, v in pieces.items()}
    _check_shapes(out, cfg, source)
    return out


def _check_shapes(state: dict, cfg: ModelConfig, source: str):
    reference = build_model(cfg, device="meta").state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(reference[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(reference[k].shape)
    ]
    if wrong:
        raise FmlabError(f"{source}: {len(wrong)} tensor shape(s) differ from the config:\n  " + "\n  ".join(wrong[:8]))


def to_apple(state: dict, cfg: ModelConfig, lora_only: bool = False) -> OrderedDict:
    """fmlab state dict → Apple-keyed OrderedDict in canonical order (contiguous copies, so a slice
    never drags its whole fused storage into the file)."""
    out = OrderedDict()
    for e in apple_key_map(cfg):
        if lora_only and not is_lora_name(e.fmlab):
            continue
        if e.apple == "output_transform.weight":
            out[e.apple] = out["embedding.weight"]  # tied: torch.save stores the storage once
            continue
        t = state[e.fmlab]
        out[e.apple] = (t if e.rows is None else t[e.rows]).detach().clone()
    return out


def load_torch(path: str | Path) -> dict:
    """`torch.load` that runs no pickled code and maps the file instead of reading it into RAM; a file
    of a training run must match the sha256 its manifest recorded."""

    path = Path(path)
    if not path.is_file():
        raise FmlabError(f"{path}: file not found")
    verify_recorded(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle payloads, truncated files, non-torch files
        raise FmlabError(f"{path}: not a loadable weights-only PyTorch file ({type(err).__name__}: {err})") from None


def save_model(model, path: str | Path) -> None:
    """The whole model (e.g. a draft) in Apple's key layout (docs/afm-format.md §2.3), fp32, atomically."""
    state = {k.removeprefix("_orig_mod."): v.detach().float() for k, v in model.state_dict().items()}
    atomic_torch_save(to_apple(state, model.config), path)


# --- adapters --------------------------------------------------------------------------------------


def save_adapter(model, path: str | Path, fmt: str | None = None, extra: dict | None = None) -> Path:
    """Write the model's LoRA tensors: Apple's `.pt` layout (fp32, Apple keys) or native `.safetensors`
    (fmlab keys + the model and LoRA config as metadata). The format follows the suffix by default."""

    path = Path(path)
    fmt = fmt or ("native" if path.suffix == ".safetensors" else "apple")
    state = {k.removeprefix("_orig_mod."): v.detach().float().contiguous() for k, v in lora_state_dict(model).items()}
    if fmt == "apple":
        atomic_torch_save(to_apple(state, model.config, lora_only=True), path)
    elif fmt == "native":
        from safetensors.torch import save

        meta = {"format": "fmlab-adapter", "model_config": json.dumps(model.config.to_dict())}
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        with atomic_write(path) as f:
            f.write(save({k: v.clone() for k, v in state.items()}, metadata=meta))
    else:
        raise FmlabError(f"unknown adapter format {fmt!r} (apple or native)")
    return path


def read_adapter(path: str | Path, cfg: ModelConfig) -> dict:
    """An adapter file (either format) as an fmlab-keyed state dict, checked against `cfg`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        verify_recorded(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise FmlabError(f"{path}: not a readable safetensors file ({err})") from None
        _check_saved_config(json.loads(meta.get("model_config", "null")) or {}, cfg, path)

        expected = [k for k in _fmlab_keys(cfg) if is_lora_name(k)]
        _check_keys(state, expected, str(path))
        _check_shapes(state, cfg, str(path))
        return state
    return from_apple(load_torch(path), cfg, str(path), lora_only=True)


def _check_saved_config(saved: dict, cfg: ModelConfig, path: Path) -> None:
    """An adapter records the base config it was trained on; one for another base (even one whose
    LoRA shapes happen to fit, e.g. another vocabulary) is refused, naming each differing field."""
    if not saved:
        return
    saved_lora = LoRAConfig(**saved["lora"]) if saved.get("lora") else None
    if saved_lora != cfg.lora:
        raise FmlabError(f"{path}: adapter LoRA config {saved_lora} differs from the model's {cfg.lora}")
    current = cfg.to_dict()
    fields = sorted(k for k in saved.keys() & current.keys() - {"lora", "context_length"} if saved[k] != current[k])
    if fields:
        raise FmlabError(
            f"{path}: adapter was trained for another base model: "
            + ", ".join(f"{k} {saved[k]} (adapter) vs {current[k]} (model)" for k in fields)
        )


def _fmlab_keys(cfg: ModelConfig) -> list[str]:
    return list(dict.fromkeys(e.fmlab for e in apple_key_map(cfg)))


def load_adapter(model, path: str | Path) -> None:
    """Load adapter tensors into `model` in place (LoRA weights stay fp32)."""
    state = read_adapter(path, model.config)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def warn_if_lora_nonzero(state: dict, source: str) -> None:
    """A base file should carry an untrained adapter (B = 0); say so if it does not."""
    nonzero = [k for k, v in state.items() if is_lora_b(k) and bool(v.any())]
    if nonzero:
        warnings.warn(
            f"{source}: {len(nonzero)} LoRA B tensor(s) are non-zero, so the base already "
            f"carries a trained adapter (e.g. {nonzero[0]})",
            stacklevel=2,
        )

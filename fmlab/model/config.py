"""Model and LoRA configuration: the AFMTextV7 dataclass, presets, and Apple's tamm JSON format.

`afm-3b` and `afm-draft` are Apple's base and draft (docs/afm-format.md §1.1, §1.3); `tiny` is for tests.
`from_tamm_json` reads `base-model-config.json` / `draft-model-config.json`, where absent fields take
the AFMTextV7 defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fmlab.errors import FmlabError

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class LoRAConfig:
    """LoRA (Hu et al. 2021). Defaults are Apple's: rank 32, alpha 16 (scale 0.5), every projection."""

    rank: int = 32
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        self.targets = tuple(self.targets)
        unknown = set(self.targets) - set(LORA_TARGETS)
        if unknown or self.rank < 1:
            raise FmlabError(
                f"bad LoRA config: rank={self.rank}, unknown targets {sorted(unknown)} "
                f"(choose from {', '.join(LORA_TARGETS)})"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class ModelConfig:
    """AFMTextV7 hyper-parameters (tamm field names). Defaults are Apple's 3B base."""

    vocab_size: int = 153600
    hidden_dim: int = 2048
    num_layers: int = 56
    num_kv_reuse_layers: int = 21
    num_heads: int = 16
    num_kv_heads: int = 2
    hidden_dim_scale_factor: float = 3.25
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    kv_quant: bool = True  # int8 KV fake-quant with frozen ranges (KVQuantArchOptimizer)
    context_length: int = 4096  # prompt + generated tokens must fit
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        problems = []
        if self.hidden_dim % self.num_heads:
            problems.append("hidden_dim must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            problems.append("num_heads must be divisible by num_kv_heads")
        if not 0 <= self.num_kv_reuse_layers < self.num_layers:
            problems.append("num_kv_reuse_layers must be in [0, num_layers)")
        if problems:
            raise FmlabError("bad model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round(self.hidden_dim * self.hidden_dim_scale_factor)

    @property
    def num_regular_layers(self) -> int:
        return self.num_layers - self.num_kv_reuse_layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "afm-3b": ModelConfig(),
    "afm-draft": ModelConfig(
        hidden_dim=256,
        hidden_dim_scale_factor=3,
        num_heads=8,
        num_kv_heads=4,
        num_layers=12,
        num_kv_reuse_layers=0,
        kv_quant=False,
        lora=None,
    ),
    "tiny": ModelConfig(
        vocab_size=512,
        hidden_dim=64,
        num_layers=4,
        num_kv_reuse_layers=2,
        num_heads=4,
        num_kv_heads=2,
        hidden_dim_scale_factor=2.0,
        lora=LoRAConfig(rank=4, alpha=8),
    ),
    "tiny-draft": ModelConfig(
        vocab_size=512,
        hidden_dim=32,
        num_layers=2,
        num_kv_reuse_layers=0,
        num_heads=2,
        num_kv_heads=1,
        hidden_dim_scale_factor=2.0,
        kv_quant=False,
        lora=None,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise FmlabError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# --- Apple's tamm JSON -----------------------------------------------------------------------------

TAMM_TYPE = "models:AFMTextV7Config"
TAMM_FIELDS = {
    "vocab_size",
    "hidden_dim",
    "num_layers",
    "num_kv_reuse_layers",
    "num_heads",
    "num_kv_heads",
    "hidden_dim_scale_factor",
    "rope_theta",
}
_TAMM_IGNORED = {
    "attention_dropout_p",
    "hidden_dropout_p",
    "include_loss_layer",
    "sdpa_implementation",
    "norm_eps",
    "context_length",
}


def from_tamm_json(path: str | Path) -> ModelConfig:
    """Read Apple's `*-model-config.json`; absent fields take AFMTextV7 defaults, unknown ones are errors."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FmlabError(f"{path}: cannot read model config: {err}") from None
    if raw.get("__tamm_type__") != TAMM_TYPE:
        raise FmlabError(f"{path}: __tamm_type__ is {raw.get('__tamm_type__')!r}, expected {TAMM_TYPE!r}")
    unknown = set(raw) - TAMM_FIELDS - _TAMM_IGNORED - {"__tamm_type__", "adapters", "arch_optimizers"}
    if unknown:
        raise FmlabError(f"{path}: unknown config field(s) {', '.join(sorted(unknown))}")
    kwargs = {k: raw[k] for k in TAMM_FIELDS & set(raw)}
    # fmlab's own extensions, read from older fmlab configs; never written (tamm 0.1.0 refuses them)
    for k in ("norm_eps", "context_length"):
        if k in raw:
            kwargs[k] = raw[k]
    kwargs["lora"] = _lora_from_tamm(raw.get("adapters") or {}, path)
    kwargs["kv_quant"] = "kvquant" in (raw.get("arch_optimizers") or {})
    return ModelConfig(**kwargs)


def _lora_from_tamm(adapters: dict, path: Path) -> LoRAConfig | None:
    if not adapters:
        return None
    if len(adapters) != 1:
        raise FmlabError(f"{path}: expected one adapter, found {', '.join(adapters)}")
    spec = next(iter(adapters.values()))
    if spec.get("__tamm_type__") != "adapters:LoRAModelAdapter":
        raise FmlabError(f"{path}: unsupported adapter type {spec.get('__tamm_type__')!r}")
    return LoRAConfig(rank=spec.get("rank", 32), alpha=spec.get("alpha", 16), dropout=spec.get("dropout_p", 0.0))


def to_tamm_json(config: ModelConfig) -> dict:
    """The tamm JSON for `config`, writing every architecture field explicitly."""
    out = {"__tamm_type__": TAMM_TYPE}
    out.update({k: getattr(config, k) for k in sorted(TAMM_FIELDS)})
    if config.lora is not None:
        out["adapters"] = {
            "base_adapter": {
                "__tamm_type__": "adapters:LoRAModelAdapter",
                "alpha": config.lora.alpha,
                "rank": config.lora.rank,
            }
        }
    if config.kv_quant:
        out["arch_optimizers"] = {"kvquant": {"__tamm_type__": "ao:KVQuantArchOptimizer", "freeze_qparams": True}}
    return out

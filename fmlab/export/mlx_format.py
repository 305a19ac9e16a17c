"""The MLX export's files (docs/mlx.md): the base with its adapter, and optionally the draft, as mlx-lm model
directories of Apple's model type `afm7` (`mlx_lm.models.afm7`), which implements the same math as
fmlab's AFMTextV7 (docs/afm-format.md §1–§3).

A directory holds
- `config.json`: every field afm7 reads, written explicitly (mlx-lm's default `rope_theta` is 50000,
  AFM's 500000), and `eos_token_id` = [`<turn_end>`, `</s>`] so generation stops at the end of a turn;
- `model.safetensors` (or 5 GB shards): afm7's key names (it has no `sanitize`), LoRA fused as W + (alpha/rank)·(A·B)ᵀ in
  fp32 and then cast to the chosen dtype; each regular layer's frozen int8 K/V range [min, max] becomes
  afm7's single scale, max(min/-128, max/127), computed as fmlab computes it;
- `tokenizer.json`, `tokenizer_config.json` (fmlab.export.mlx_tokenizer);
- with `unfused=True`, the base alone in `model.safetensors` and the LoRA in mlx-lm's adapter format
  under `adapters/` (mlx-lm 0.32's `load_adapters` refuses afm7's fused-QKV adapter names; load them
  with `fmlab.export.mlx_verify.load_mlx`);
- `fmlab-mlx.json`: fmlab's record (sources, settings, what is approximate, file sizes).

afm7 cannot switch its K/V quantiser off: a model without KV quantisation (Apple's draft) or with
uncalibrated (all-zero) ranges gets ranges calibrated here on a few prompts, so its MLX form is that
model with int8 K/V, not the model itself; the record says so and verification compares against fmlab
running the same quantisation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from fmlab import __version__
from fmlab.data.chat_template import encode_prompt
from fmlab.errors import FmlabError
from fmlab.export.mlx_tokenizer import write_hf_tokenizer
from fmlab.files import atomic_write
from fmlab.model.config import ModelConfig
from fmlab.model.lora import LoRALinear, lora_modules
from fmlab.model.transformer import Transformer

MODEL_TYPE = "afm7"
CONFIG, WEIGHTS, RECORD = "config.json", "model.safetensors", "fmlab-mlx.json"
ADAPTERS, ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapters", "adapter_config.json", "adapters.safetensors"
SHARD_BYTES = 5 << 30  # mlx-lm's own shard size
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the fields of afm7's ModelArgs, which mlx-lm fills from config.json (absent ones take its defaults)
AFM7_FIELDS = (
    "vocab_size",
    "hidden_dim",
    "num_layers",
    "num_kv_reuse_layers",
    "num_heads",
    "num_kv_heads",
    "hidden_dim_scale_factor",
    "rope_theta",
    "rms_norm_eps",
)
CALIBRATION_PROMPTS = [
    "Write a short scene where a king meets a ghost.",
    "What is the capital of France?",
    "Tell me a story about a dragon.",
    "Give me three tips for sleeping well.",
]


# --- config.json ------------------------------------------------------------------------------------


def afm7_config(cfg: ModelConfig, tokenizer, dtype: str) -> dict:
    """config.json for `cfg`; refuses what afm7 computes differently (its FFN width truncates, tamm
    rounds; its per-head Q/K norms use a fixed eps of 1e-5)."""
    if int(cfg.hidden_dim * cfg.hidden_dim_scale_factor) != cfg.ffn_dim:
        raise FmlabError(
            f"afm7 sizes the FFN as int({cfg.hidden_dim} * {cfg.hidden_dim_scale_factor}) = "
            f"{int(cfg.hidden_dim * cfg.hidden_dim_scale_factor)}, fmlab (as tamm) rounds to {cfg.ffn_dim}: "
            "this model has no afm7 form"
        )
    if cfg.norm_eps != 1e-5:
        raise FmlabError(f"afm7's Q/K norms use eps 1e-5; this model uses norm_eps {cfg.norm_eps}")
    return {
        "model_type": MODEL_TYPE,
        **{f: getattr(cfg, f) for f in AFM7_FIELDS[:-1]},
        "rms_norm_eps": cfg.norm_eps,
        "eos_token_id": [tokenizer.turn_end_id, tokenizer.eos_id],
        "pad_token_id": tokenizer.pad_id,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": True,
        "torch_dtype": dtype,
    }


# --- K/V quantisation scales ------------------------------------------------------------------------


def kv_scale(value_range: torch.Tensor) -> torch.Tensor:
    """afm7's one scale for a frozen [min, max] range, in fp32 as `fake_quant_int8` computes it."""
    r = value_range.float()
    return torch.maximum(r[0] * (1.0 / -128.0), r[1] * (1.0 / 127.0))


def calibration_ids(tokenizer) -> list[list[int]]:
    return [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for p in CALIBRATION_PROMPTS]


@torch.no_grad()
def with_kv_quant(model: Transformer, tokenizer, calibrate: bool = True) -> Transformer | None:
    """`model` unchanged when its K/V quantiser is calibrated; else a copy with int8 K/V and ranges
    recorded (min, max per regular layer) over the calibration prompts, the form afm7 can express
    (None with `calibrate=False`)."""
    attns = [b.attn for b in model.layers if not b.attn.reuse_kv]
    if model.config.kv_quant and all(a.kv_quant_active() for a in attns):
        return model
    if not calibrate:
        return None
    cfg = dataclasses.replace(model.config, kv_quant=True)
    quantised = Transformer(cfg).eval()
    quantised.load_state_dict(model.state_dict(), strict=False)  # the ranges stay zero: identity
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for i, block in enumerate(quantised.layers):
        if block.attn.reuse_kv:
            continue

        def record(module, args, output, i=i):
            for j, t in enumerate(output[1]):
                lo_hi = torch.stack([t.min(), t.max()])
                prev = seen.setdefault(i, [lo_hi, lo_hi])[j]
                seen[i][j] = torch.stack([torch.minimum(prev[0], lo_hi[0]), torch.maximum(prev[1], lo_hi[1])])

        hooks.append(block.attn.register_forward_hook(record))
    for ids in calibration_ids(tokenizer):
        quantised(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    for i, (k_range, v_range) in seen.items():
        quantised.layers[i].attn.k_range.copy_(k_range)
        quantised.layers[i].attn.v_range.copy_(v_range)
    return quantised


@torch.no_grad()
def argmax_agreement(a: Transformer, b: Transformer, tokenizer) -> float:
    """Share of the calibration prompts' positions where `a` and `b` predict the same next token (what
    the calibrated int8 K/V costs a model that had none)."""
    same = total = 0
    for ids in calibration_ids(tokenizer):
        x = torch.tensor([ids])
        same += int((a(x).argmax(-1) == b(x).argmax(-1)).sum())
        total += len(ids)
    return same / total


# --- model.safetensors ------------------------------------------------------------------------------


def afm7_name(name: str, cfg: ModelConfig) -> str:
    """fmlab parameter name → afm7's (the gate/up halves are split by the caller)."""
    if not name.startswith("layers."):
        return {"embedding.weight": "model.embedding.weight", "output_norm.weight": "model.output_norm.weight"}[name]
    _, index, rest = name.split(".", 2)
    i, n0 = int(index), cfg.num_regular_layers
    prefix = f"model.layers.{i}" if i < n0 else f"model.kv_reuse_layers.{i - n0}"
    local = {
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "attn.qkv.weight": "self_attn.qkv_proj.weight",
        "attn.q.weight": "self_attn.q_proj.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight",
        "attn.k_norm.weight": "self_attn.k_norm.weight",
        "attn.out.weight": "self_attn.out_proj.weight",
        "mlp.down.weight": "mlp.down_proj.weight",
    }[rest]
    return f"{prefix}.{local}"


@torch.no_grad()
def fused_weight(module: LoRALinear) -> torch.Tensor:
    """W + scale·(A·B)ᵀ on each adapted part's rows, in fp32 (what `merge` does, without touching the model)."""
    w = module.weight.detach().float().clone()
    for part, rows in module._rows():
        if part in module.lora_a:
            w[rows] += module.delta_weight(part).float()
    return w


@torch.no_grad()
def afm7_weights(model: Transformer, dtype: torch.dtype, fuse: bool = True) -> dict[str, torch.Tensor]:
    """afm7's state dict for `model`: LoRA fused in fp32 (or left out), K/V ranges as scales, then `dtype`."""
    cfg = model.config
    adapted = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, LoRALinear)} if fuse else {}
    out = {}

    def put(key, t):  # cast each tensor at once, so the fp32 fused copies never pile up
        out[key] = (t if t.dim() == 0 else t.to(dtype)).contiguous()

    for name, t in model.state_dict().items():
        if ".lora_" in name or name.endswith("_samples"):
            continue
        if name in adapted:
            t = fused_weight(adapted[name])
        if name.endswith(("k_range", "v_range")):
            prefix = afm7_name(name.rsplit(".", 1)[0] + ".out.weight", cfg).rsplit(".", 2)[0]
            kind = "key" if name.endswith("k_range") else "value"
            put(f"{prefix}.quant_{kind}_scale", kv_scale(t))  # 0-d, fp32 like afm7's own
            continue
        if name.endswith("mlp.gate_up.weight"):
            gate, up = t.chunk(2, dim=0)
            prefix = afm7_name(name.replace("gate_up", "down"), cfg).rsplit(".", 2)[0]
            put(f"{prefix}.gate_proj.weight", gate)
            put(f"{prefix}.up_proj.weight", up)
            continue
        put(afm7_name(name, cfg), t)
    return out


def save_weights(weights: dict[str, torch.Tensor], directory: Path, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards of at most `shard_bytes` plus
    the index (mlx-lm reads every `model*.safetensors`); returns the file names."""
    shards, size = [{}], 0
    for key, t in weights.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key], size = t, size + n
    names = (
        [WEIGHTS]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "mlx"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())}}
        index["weight_map"] = {key: name for name, shard in zip(names, shards) for key in shard}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


# --- unfused LoRA in mlx-lm's adapter format --------------------------------------------------------


def afm7_adapters(model: Transformer) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, adapters.safetensors) for `model`'s LoRA. afm7's fused QKV keeps one
    A/B pair per output (`lora_a.0`, `.1`, `.2`); parts fmlab leaves unadapted get zeros."""
    cfg, lora = model.config, model.config.lora
    tensors, keys = {}, set()
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear) or not module.adapted:
            continue
        weight = afm7_name(f"{name}.weight", cfg) if "gate_up" not in name else None
        if "gate_up" in name:
            base = afm7_name(name.replace("gate_up", "down") + ".weight", cfg).rsplit(".", 2)[0]
            targets = {"gate": f"{base}.gate_proj", "up": f"{base}.up_proj"}
        elif name.endswith("attn.qkv"):
            targets = {"qkv": weight.rsplit(".", 1)[0]}
        else:
            targets = {part: weight.rsplit(".", 1)[0] for part in module.parts}
        for part, path in targets.items():
            if part != "qkv" and part not in module.adapted:
                continue
            keys.add(path.split(".", 3)[3])  # the path inside a block, e.g. self_attn.qkv_proj
            if part == "qkv":
                for j, p in enumerate(module.parts):
                    a, b = _pair(module, p)
                    tensors[f"{path}.lora_a.{j}"], tensors[f"{path}.lora_b.{j}"] = a, b
            else:
                tensors[f"{path}.lora_a"], tensors[f"{path}.lora_b"] = _pair(module, part)
    config = {
        "fine_tune_type": "lora",
        "num_layers": cfg.num_layers,
        "lora_parameters": {"rank": lora.rank, "scale": lora.scale, "dropout": 0.0, "keys": sorted(keys)},
    }
    return config, tensors


def _pair(module: LoRALinear, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    if part in module.lora_a:  # fmlab's A [in, r] and B [r, out] are mlx-lm's lora_a and lora_b
        return module.lora_a[part].detach().float().contiguous(), module.lora_b[part].detach().float().contiguous()
    r = next(iter(module.lora_a.values())).shape[1]
    return torch.zeros(module.in_features, r), torch.zeros(r, module.parts[part])


# --- the directories --------------------------------------------------------------------------------


def write_mlx_dir(
    final: Path,
    model: Transformer,
    tokenizer,
    tokenizer_file: Path,
    dtype: str = "float32",
    unfused: bool = False,
    record: dict | None = None,
) -> dict:
    """Write one mlx-lm model directory for `model` (built next to `final`, renamed into place); `model`
    must quantise its K/V with calibrated ranges (`with_kv_quant` makes such a model)."""
    if dtype not in DTYPES:
        raise FmlabError(f"--mlx-dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if final.exists() and not (final / RECORD).is_file() and (not final.is_dir() or any(final.iterdir())):
        raise FmlabError(f"{final} exists and is not an fmlab MLX export (no {RECORD}); refusing to replace it")
    if with_kv_quant(model, None, calibrate=False) is None:
        raise FmlabError("afm7 always quantises K/V to int8: calibrate the model first (with_kv_quant)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        config = afm7_config(model.config, tokenizer, dtype)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        fuse = model.config.lora is not None and not unfused
        save_weights(afm7_weights(model, DTYPES[dtype], fuse=fuse), tmp)
        write_hf_tokenizer(tokenizer_file, tmp, model.config.context_length)
        if unfused and lora_modules(model):
            adapter_config, tensors = afm7_adapters(model)
            (tmp / ADAPTERS).mkdir()
            (tmp / ADAPTERS / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
            save_file(tensors, str(tmp / ADAPTERS / ADAPTER_WEIGHTS))
        info = {
            "format": "fmlab-mlx/1",
            "model_type": MODEL_TYPE,
            "dtype": dtype,
            "lora": "none" if model.config.lora is None else ("unfused" if unfused else "fused"),
            "fmlab_version": __version__,
            **(record or {}),
            "files": {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.rglob("*.safetensors"):  # safetensors writes 0600; the export is ordinary files
            os.chmod(p, 0o666 & ~umask)
        with atomic_write(tmp / RECORD, "w") as f:
            f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info

"""The draft model as a Core ML `.mlpackage` (fp16 ML program, 4-bit palettised), and reading it back.

`CoreMLDraft` re-expresses the draft's forward pass with ops coremltools converts cleanly (explicit
RMSNorm, half-split RoPE, repeated KV heads, an additive causal mask) over its own copies of the
weights. Like Apple's `DraftModelConverter` (docs/afm-format.md §8.3) it stores Q/K rows and the QK-norm
weights in half-split (NeoX) order, so RoPE is two slices and a concat; the logits are identical.
The input is `input_ids` (1, T) with T flexible up to the context length (`ct.RangeDim`), the output
the logits (1, T, vocab): one forward per call, no KV cache.

Palettisation is coremltools' `palettize_weights` with 4-bit per-grouped-channel LUTs (16 output
channels per table) on the linear and embedding weights (grouped LUTs: Han et al. 2016, Deep
Compression), clustered with coremltools' 1-D k-means (`quant4.kmeans_lut`, as for Apple's template).
coremltools cannot run `predict` off macOS, so `read_coreml_draft` checks the package by reading the MIL
program and its `weight.bin` back with fmlab's own blob reader and de-palettising the weights into an
fmlab state dict.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmlab.errors import FmlabError
from fmlab.export.mil_blob import read_blob
from fmlab.export.quant4 import coremltools_kmeans, import_coremltools, kmeans_lut, quiet
from fmlab.model.config import ModelConfig

PREFIX = "p"  # the ParameterDict's attribute name: const ops are named p_<key>_to_fp16[...]


def neox_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from interleaved (2i, 2i+1) pairs to half-split order (new h*hd + j*hd/2 + i
    = old h*hd + 2i + j). Works on a weight (out, in) or a per-head vector (hd,) with n_heads=1."""
    out, rest = w.shape[0], w.shape[1:]
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, *rest).transpose(1, 2).reshape(out, *rest)


def interleaved_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `neox_rows`."""
    out, rest = w.shape[0], w.shape[1:]
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, *rest).transpose(1, 2).reshape(out, *rest)


def _safe(key: str) -> str:
    return key.replace(".", "_")


def _map_qk_rows(state: dict, cfg: ModelConfig, rows) -> dict:
    """Apply the row order `rows(w, heads)` to every layer's Q/K rows and QK-norm weights (in place)."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    for i in range(cfg.num_layers):
        a = f"layers.{i}.attn."
        q, k, v = state[a + "qkv.weight"].split([H * hd, KV * hd, KV * hd])
        state[a + "qkv.weight"] = torch.cat([rows(q, H), rows(k, KV), v])
        state[a + "q_norm.weight"] = rows(state[a + "q_norm.weight"], 1)
        state[a + "k_norm.weight"] = rows(state[a + "k_norm.weight"], 1)
    return state


def to_neox(state: dict, cfg: ModelConfig) -> dict:
    """Draft state dict with Q/K rows and QK-norm weights in half-split order (a copy)."""
    return _map_qk_rows({k: v.detach().float().clone() for k, v in state.items()}, cfg, neox_rows)


def from_neox(state: dict, cfg: ModelConfig) -> dict:
    return _map_qk_rows(dict(state), cfg, interleaved_rows)


class CoreMLDraft(nn.Module):
    """input_ids (1, T) -> logits (1, T, vocab), with convertible ops; weights in NeoX order."""

    def __init__(self, state: dict, cfg: ModelConfig):
        super().__init__()
        if cfg.num_kv_reuse_layers or cfg.lora is not None:
            raise FmlabError("the Core ML draft export expects a plain draft (no KV-reuse layers, no LoRA)")
        self.cfg = cfg
        hd = cfg.head_dim
        self.register_buffer("inv_freq", cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        setattr(
            self,
            PREFIX,
            nn.ParameterDict({_safe(k): nn.Parameter(v, requires_grad=False) for k, v in to_neox(state, cfg).items()}),
        )

    def _norm(self, x, key):
        w = getattr(self, PREFIX)[_safe(key)]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps) * w

    @staticmethod
    def _rope(x, cos, sin):  # half-split rotation
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, input_ids):
        c, P = self.cfg, getattr(self, PREFIX)
        H, KV, hd = c.num_heads, c.num_kv_heads, c.head_dim
        T = input_ids.shape[1]
        angles = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq  # (T, hd/2)
        cos, sin = angles.cos(), angles.sin()
        mask = torch.ones(T, T).triu(1) * -1e4  # additive causal mask; fp16-safe
        x = F.embedding(input_ids, P["embedding_weight"])  # (1, T, C)
        for i in range(c.num_layers):
            a = f"layers.{i}."
            h = self._norm(x, a + "attn_norm.weight")
            q, k, v = F.linear(h, P[_safe(a + "attn.qkv.weight")]).split([H * hd, KV * hd, KV * hd], -1)
            q = self._norm(self._rope(q.reshape(1, T, H, hd).transpose(1, 2), cos, sin), a + "attn.q_norm.weight")
            k = self._norm(self._rope(k.reshape(1, T, KV, hd).transpose(1, 2), cos, sin), a + "attn.k_norm.weight")
            v = v.reshape(1, T, KV, hd).transpose(1, 2)  # (1, KV, T, hd)
            k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)  # (1, H, T, hd)
            att = (q @ k.transpose(-1, -2)) * hd**-0.5 + mask
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(1, T, H * hd)
            x = x + F.linear(y, P[_safe(a + "attn.out.weight")])
            gate, up = F.linear(self._norm(x, a + "mlp_norm.weight"), P[_safe(a + "mlp.gate_up.weight")]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, P[_safe(a + "mlp.down.weight")])
        return F.linear(self._norm(x, "output_norm.weight"), P["embedding_weight"])  # tied output


def _lut_function(nbits: int):
    def lut_function(values: np.ndarray):
        return kmeans_lut(values, nbits, kmeans)

    kmeans = coremltools_kmeans()
    return lut_function


def export_coreml_draft(state: dict, cfg: ModelConfig, path: str | Path, nbits: int = 4, group_size: int = 16) -> dict:
    """Trace, convert (fp16 ML program, iOS18, flexible length), palettise and save `path` (.mlpackage)."""
    ct = import_coremltools()
    from coremltools.optimize.coreml import (
        OpPalettizerConfig,
        OptimizationConfig,
        palettize_weights,
    )

    module = CoreMLDraft(state, cfg).eval()
    example = torch.zeros(1, 8, dtype=torch.long)
    t0 = time.perf_counter()
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        model = ct.convert(
            traced,
            inputs=[
                ct.TensorType(
                    name="input_ids", dtype=np.int32, shape=(1, ct.RangeDim(1, cfg.context_length, default=8))
                )
            ],
            outputs=[ct.TensorType(name="logits")],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16,
        )
        t1 = time.perf_counter()
        # matrices only: the threshold keeps the norm vectors (hidden_dim values) in fp16
        op_config = OpPalettizerConfig(
            mode="custom",
            lut_function=_lut_function(nbits),
            granularity="per_grouped_channel",
            group_size=group_size,
            weight_threshold=cfg.hidden_dim + 1,
        )
        model = palettize_weights(model, OptimizationConfig(global_config=op_config))
        t2 = time.perf_counter()
        model.short_description = (
            f"fmlab draft ({cfg.num_layers} layers, hidden {cfg.hidden_dim}), {nbits}-bit palettised"
        )
        model.save(str(path))
    return {
        "convert_s": round(t1 - t0, 2),
        "palettize_s": round(t2 - t1, 2),
        "nbits": nbits,
        "group_size": group_size,
        "coremltools": ct.__version__,
    }


# --- reading a package back --------------------------------------------------------------------------


def _tensor_value(value, weights: Path) -> tuple[np.ndarray, str]:
    """A MIL proto Value (blob-file or immediate) as (array of its declared shape, storage dtype)."""
    shape = [d.constant.size for d in value.type.tensorType.dimensions]
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        entry, data = read_blob(weights, value.blobFileValue.offset, with_entry=True)
        dtype = entry.dtype
    elif kind == "immediateValue":
        t = value.immediateValue.tensor
        which = t.WhichOneof("value")
        data = np.frombuffer(t.bytes.values, np.float16) if which == "bytes" else np.array(getattr(t, which).values)
        dtype = "immediate"
    else:
        raise FmlabError(f"unsupported MIL value kind {kind}")
    return data.reshape(shape), dtype


def lut_to_dense(indices: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """iOS18 `constexpr_lut_to_dense` with scalar entries: lut (*blocks, 2^n, 1) per block of indices."""
    blocks = lut.shape[: indices.ndim]
    sizes = [n // b for n, b in zip(indices.shape, blocks)]
    grids = np.meshgrid(*[np.arange(n) // s for n, s in zip(indices.shape, sizes)], indexing="ij")
    return lut[(*grids, indices.astype(np.int64), 0)]


def read_coreml_draft(path: str | Path, cfg: ModelConfig) -> tuple[dict, dict]:
    """De-palettised fmlab state dict (fp32, interleaved order) and a description of the stored program."""
    ct = import_coremltools()
    path = Path(path)
    with quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    wanted = {_safe(k): k for k in _draft_keys(cfg)}
    pattern = re.compile(rf"^{PREFIX}_(.+?)_to_fp16(_palettized)?$")
    found, info = {}, {"op_types": {}, "palettized": 0, "fp16_weights": 0, "lut_shapes": {}, "blob_dtypes": set()}
    for op in ops:
        info["op_types"][op.type] = info["op_types"].get(op.type, 0) + 1
        match = pattern.match(op.outputs[0].name)
        if not match or match.group(1) not in wanted:
            continue
        key = wanted[match.group(1)]
        if op.type == "constexpr_lut_to_dense":
            args = {name: arg.arguments[0].value for name, arg in op.inputs.items()}
            (lut, lut_dtype), (idx, idx_dtype) = (_tensor_value(args[n], weights) for n in ("lut", "indices"))
            found[key] = lut_to_dense(idx, lut)
            info["palettized"] += 1
            info["lut_shapes"][key] = list(lut.shape)
            info["blob_dtypes"].update({f"lut:{lut_dtype}", f"indices:{idx_dtype}"})
        elif op.type == "const":
            found[key], dtype = _tensor_value(op.attributes["val"], weights)
            info["fp16_weights"] += 1
            info["blob_dtypes"].add(f"weight:{dtype}")
    missing = [k for k in wanted.values() if k not in found]
    # a norm weight of all ones is folded away by the converter (x * 1): it is ones, not lost
    info["folded_norms"] = [m for m in missing if m.endswith("norm.weight")]
    for k in info["folded_norms"]:
        found[k] = np.ones(cfg.head_dim if ("q_norm" in k or "k_norm" in k) else cfg.hidden_dim, np.float32)
        missing.remove(k)
    if missing:
        raise FmlabError(f"{path}: weights not found in the Core ML program: {', '.join(missing[:5])}")
    info["blob_dtypes"] = sorted(info["blob_dtypes"])
    state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in found.items()}
    return from_neox(state, cfg), info


def _draft_keys(cfg: ModelConfig) -> list[str]:
    keys = ["embedding.weight", "output_norm.weight"]
    for i in range(cfg.num_layers):
        keys += [
            f"layers.{i}.{s}"
            for s in (
                "attn_norm.weight",
                "attn.qkv.weight",
                "attn.q_norm.weight",
                "attn.k_norm.weight",
                "attn.out.weight",
                "mlp_norm.weight",
                "mlp.gate_up.weight",
                "mlp.down.weight",
            )
        ]
    return keys

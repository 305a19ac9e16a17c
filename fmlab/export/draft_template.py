"""Apple's draft export template (docs/afm-format.md §8.3): fill `weights_template.bin` in place from a draft
checkpoint as `draft_weights.bin`, next to an exact copy of `draft.mil`; and read a filled file back.

Each draft tensor gets its MIL name (`decoder.transformer.layer{i}.self_attention...`). The fused QKV
weight is split into q, k and v kernels; Q and K rows and the QK-norm weights go to half-split (NeoX)
order. `checkpoint_spec.yaml`'s `weights_mapping` says, per MIL name, its format and where its blobs
are. The spec's exact schema is not public; fmlab reads this reconstruction of it:

    mil_sha256: <sha256 of draft.mil>          # optional; checked when present
    weights_mapping:
      decoder.output_norm.scale:        {format: fp16, offset: 64}
      decoder.emb.token_emb._embedding: {format: linear_4bits, offsets: {data: ..., scale: ...}}
      decoder.transformer.layer0.self_attention.attention.o_proj.conv.kernel:
                                        {format: lut_4bits, offsets: {indices: ..., lut: ..., scale: ...}}

Offsets point at blob metadata records; every write checks the sentinel, the MIL dtype and the size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.errors import FmlabError
from fmlab.export.coreml_draft import interleaved_rows, neox_rows
from fmlab.export.mil_blob import overwrite_blob, read_blob
from fmlab.export.quant4 import (
    int4_dequantize,
    int4_quantize,
    lut4_dequantize,
    lut4_quantize,
    relative_error,
)
from fmlab.files import file_sha
from fmlab.model.config import ModelConfig
from fmlab.model.transformer import build_model

SPEC, TEMPLATE, MIL = "checkpoint_spec.yaml", "weights_template.bin", "draft.mil"
GROUP_SIZE = 16
# format -> component -> MIL blob dtype
FORMATS = {
    "fp16": {"weight": "fp16"},
    "linear_4bits": {"data": "int4", "scale": "fp16"},
    "lut_4bits": {"indices": "uint4", "lut": "fp16", "scale": "fp16"},
}


def template_files(assets: Path) -> dict[str, Path] | None:
    """The three template files if the assets directory has them; None if it has none of them."""
    files = {name: assets / name for name in (SPEC, TEMPLATE, MIL)}
    present = [n for n, p in files.items() if p.is_file()]
    if not present:
        return None
    if len(present) < len(files):
        missing = sorted(set(files) - set(present))
        raise FmlabError(
            f"{assets}: has {', '.join(present)} but not {', '.join(missing)}; Apple's draft template "
            f"needs all of {SPEC}, {TEMPLATE} and {MIL} (remove them all to export without it)"
        )
    return files


def mil_map(cfg: ModelConfig) -> dict[str, tuple[str, str, int]]:
    """MIL name -> (fmlab key, part of a fused weight or "", heads for the NeoX permutation or 0)."""
    m = {
        "decoder.emb.token_emb._embedding": ("embedding.weight", "", 0),
        "decoder.output_norm.scale": ("output_norm.weight", "", 0),
    }
    for i in range(cfg.num_layers):
        layer, f = f"decoder.transformer.layer{i}.", f"layers.{i}."
        sa, ff = layer + "self_attention.", layer + "feed_forward."
        m[sa + "norm.scale"] = (f + "attn_norm.weight", "", 0)
        for part, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", 0)):
            m[sa + f"attention.i_proj.qkv_proj.{part}_proj.kernel"] = (f + "attn.qkv.weight", part, heads)
        m[sa + "attention.scale_query.scale"] = (f + "attn.q_norm.weight", "", 1)
        m[sa + "attention.scale_key.scale"] = (f + "attn.k_norm.weight", "", 1)
        m[sa + "attention.o_proj.conv.kernel"] = (f + "attn.out.weight", "", 0)
        m[ff + "norm.scale"] = (f + "mlp_norm.weight", "", 0)
        m[ff + "linear1_0.kernel"] = (f + "mlp.gate_up.weight", "gate", 0)
        m[ff + "linear1_1.kernel"] = (f + "mlp.gate_up.weight", "up", 0)
        m[ff + "linear2.kernel"] = (f + "mlp.down.weight", "", 0)
    return m


def _rows(cfg: ModelConfig, part: str) -> slice:
    H, KV, hd, F = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim
    starts = {"q": (0, H * hd), "k": (H * hd, KV * hd), "v": ((H + KV) * hd, KV * hd), "gate": (0, F), "up": (F, F)}
    start, size = starts[part]
    return slice(start, start + size)


def to_mil(state: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """fmlab draft state dict -> MIL-named fp32 tensors (split, NeoX-permuted)."""
    out = {}
    for name, (key, part, heads) in mil_map(cfg).items():
        t = state[key].detach().float()
        if part:
            t = t[_rows(cfg, part)]
        out[name] = neox_rows(t, heads) if heads else t
    return out


def from_mil(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of `to_mil` (the tied output layer is the embedding)."""
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for name, (key, part, heads) in mil_map(cfg).items():
        t = tensors[name].float()
        pieces.setdefault(key, {})[part] = interleaved_rows(t, heads) if heads else t
    order = {"": 0, "q": 0, "k": 1, "v": 2, "gate": 0, "up": 1}
    return {
        k: torch.cat([v for _, v in sorted(parts.items(), key=lambda kv: order[kv[0]])]) for k, parts in pieces.items()
    }


@dataclass
class SpecEntry:
    name: str
    format: str
    offsets: dict[str, int]


def load_spec(path: Path) -> tuple[list[SpecEntry], dict]:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FmlabError(f"{path}: cannot read the checkpoint spec ({err})") from None
    mapping = (raw or {}).get("weights_mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise FmlabError(f"{path}: no weights_mapping in the checkpoint spec")
    entries = []
    for name, e in mapping.items():
        fmt = (e or {}).get("format")
        if fmt not in FORMATS:
            raise FmlabError(f"{path}: {name}: unknown format {fmt!r} (expected {', '.join(FORMATS)})")
        offsets = e.get("offsets") or ({"weight": e["offset"]} if "offset" in e else {})
        if set(offsets) != set(FORMATS[fmt]):
            raise FmlabError(
                f"{path}: {name}: {fmt} needs blob offsets for {', '.join(FORMATS[fmt])}, got {sorted(offsets)}"
            )
        entries.append(SpecEntry(name, fmt, {k: int(v) for k, v in offsets.items()}))
    return entries, {k: v for k, v in raw.items() if k != "weights_mapping"}


def encode_entry(fmt: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """One tensor in a template format: component -> values to store."""
    if fmt == "fp16":
        return {"weight": w.half()}
    if fmt == "linear_4bits":
        q, scale = int4_quantize(w.reshape(w.shape[0], -1))
        return {"data": q, "scale": scale}
    scale, lut, idx = lut4_quantize(w.reshape(w.shape[0], -1), GROUP_SIZE)
    return {"indices": idx, "lut": lut, "scale": scale}


def decode_entry(fmt: str, parts: dict, shape) -> torch.Tensor:
    if fmt == "fp16":
        return parts["weight"].float().reshape(shape)
    if fmt == "linear_4bits":
        return int4_dequantize(parts["data"].reshape(shape[0], -1), parts["scale"]).reshape(shape)
    indices = parts["indices"].reshape(shape[0], -1)
    return lut4_dequantize(parts["scale"], parts["lut"], indices, GROUP_SIZE).reshape(shape)


def fill_template(state: dict, cfg: ModelConfig, files: dict[str, Path], out_dir: Path) -> dict:
    """Write `draft_weights.bin` (filled copy of the template) and `draft.mil` (exact copy) into `out_dir`."""
    entries, meta = load_spec(files[SPEC])
    if meta.get("mil_sha256") and meta["mil_sha256"] != file_sha(files[MIL]):
        raise FmlabError(
            f"{files[MIL]}: sha256 differs from the spec's mil_sha256; the template files do not belong together"
        )
    tensors = to_mil(state, cfg)
    unknown = [e.name for e in entries if e.name not in tensors]
    if unknown:
        raise FmlabError(
            f"{files[SPEC]}: no draft tensor for {len(unknown)} spec entr(ies), e.g. {unknown[0]} "
            f"(the draft config must match the template's model)"
        )
    out = out_dir / "draft_weights.bin"
    shutil.copyfile(files[TEMPLATE], out)
    shutil.copyfile(files[MIL], out_dir / MIL)
    counts: dict[str, int] = {}
    errors = {}
    with open(out, "r+b") as f:
        for e in entries:
            parts = encode_entry(e.format, tensors[e.name])
            for component, values in parts.items():
                overwrite_blob(f, e.offsets[component], values, FORMATS[e.format][component], f"{out.name}: {e.name}")
            counts[e.format] = counts.get(e.format, 0) + 1
            errors[e.name] = relative_error(tensors[e.name], decode_entry(e.format, parts, tensors[e.name].shape))
    return {"entries": len(entries), "formats": counts, "max_relative_error": max(errors.values())}


def read_filled(path: Path, spec_path: Path, cfg: ModelConfig, reference: dict | None = None) -> dict:
    """A filled `draft_weights.bin` back as a de-quantised fmlab state dict (fp32). Tensors the spec
    does not list come from `reference` (e.g. the source draft); without it they must all be listed."""
    entries, _ = load_spec(spec_path)
    shapes = {k: v.shape for k, v in to_mil(reference, cfg).items()} if reference is not None else _mil_shapes(cfg)
    tensors = {}
    for e in entries:
        parts = {c: torch.from_numpy(read_blob(path, off).copy()) for c, off in e.offsets.items()}
        tensors[e.name] = decode_entry(e.format, parts, shapes[e.name])
    missing = [n for n in mil_map(cfg) if n not in tensors]
    if missing and reference is None:
        raise FmlabError(f"{spec_path}: the spec lists no entry for {missing[0]} (and {len(missing) - 1} more)")
    ref = to_mil(reference, cfg) if reference is not None else {}
    return from_mil({n: tensors.get(n, ref.get(n)) for n in mil_map(cfg)}, cfg)


def _mil_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    meta = build_model(cfg, device="meta").state_dict()
    return {k: v.shape for k, v in to_mil({k: v for k, v in meta.items()}, cfg).items()}

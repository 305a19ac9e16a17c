"""Apple's draft export template (docs/afm-format.md §8.3): fill `weights_template.bin` in place from a draft
checkpoint as `draft_weights.bin`, next to an exact copy of `draft.mil`; and read a filled file back.

Each draft tensor gets its MIL name (`decoder.transformer.layer{i}.self_attention...`). The fused QKV
weight is split into q, k and v kernels; Q and K rows and the QK-norm weights go to half-split (NeoX)
order. `checkpoint_spec.yaml` (Apple's schema, §8.3) says, per MIL name, its format, its shape and where
each of its blobs' metadata records is:

    mil_sha256: <sha256 of the MIL program>          # a warning when draft.mil differs
    source_mil: <where that program came from>
    weights_mapping:
      decoder.output_norm.scale:
        {format: fp16, shape: [256], blobs: {values: {offset: 64}}}
      decoder.emb.token_emb._embedding:
        {format: linear_4bits, shape: [153600, 256], blobs: {values: {offset: ...}, scales: {offset: ...}}}
      decoder.transformer.layer0.self_attention.attention.o_proj.conv.kernel:
        {format: lut_4bits, shape: [256, 256], blobs: {lut_indices: ..., lut_palette: ..., scales: ...}}

As the toolkit does, the fill compares every array's shape with the spec's after dropping size-1 dims
(scales: `[shape[-1]]` for `linear_4bits`, `[shape[0]]` for `lut_4bits`) and every blob's byte size,
dtype and sentinel with the template's record. fmlab's own earlier schema (`offset` / `offsets: {data,
scale, indices, lut}`, no shapes) is still read.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    to_fp16,
)
from fmlab.files import file_sha
from fmlab.model.config import ModelConfig
from fmlab.model.transformer import build_model

SPEC, TEMPLATE, MIL = "checkpoint_spec.yaml", "weights_template.bin", "draft.mil"
GROUP_SIZE = 16
# format -> blob role -> MIL blob dtype
ROLES = {
    "fp16": {"values": "fp16"},
    "linear_4bits": {"values": "int4", "scales": "fp16"},
    "lut_4bits": {"lut_indices": "uint4", "lut_palette": "fp16", "scales": "fp16"},
}
_LEGACY_ROLES = {
    "weight": "values",
    "data": "values",
    "scale": "scales",
    "indices": "lut_indices",
    "lut": "lut_palette",
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


def squeezed(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


@dataclass(frozen=True)
class SpecEntry:
    name: str
    format: str
    shape: tuple[int, ...] | None  # None: fmlab's earlier schema, which has no shapes
    offsets: dict[str, int]  # blob role -> offset of its metadata record


@dataclass(frozen=True)
class Spec:
    path: Path
    entries: list[SpecEntry]
    mil_sha256: str | None = None
    source_mil: str | None = None


def _offset(where: str, role: str, value) -> int:
    offset = value.get("offset") if isinstance(value, dict) else value
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise FmlabError(f"{where}: blob {role!r} needs a non-negative integer offset, got {value!r}")
    return offset


def _entry(where: str, name: str, e) -> SpecEntry:
    if not isinstance(e, dict):
        raise FmlabError(f"{where}: expected a mapping with format, shape and blobs, got {e!r}")
    fmt = e.get("format")
    if fmt not in ROLES:
        raise FmlabError(f"{where}: unknown format {fmt!r} (expected {', '.join(ROLES)})")
    if "blobs" in e:
        blobs, shape = e["blobs"], e.get("shape")
        if not isinstance(shape, list) or not shape or not all(type(d) is int and d > 0 for d in shape):
            raise FmlabError(f"{where}: shape must be a list of positive integers, got {shape!r}")
        shape = tuple(shape)
    else:  # fmlab's earlier schema
        blobs = e.get("offsets") or ({"weight": e["offset"]} if "offset" in e else {})
        blobs, shape = {_LEGACY_ROLES.get(k, k): v for k, v in blobs.items()}, None
    if not isinstance(blobs, dict) or set(blobs) != set(ROLES[fmt]):
        got = sorted(blobs) if isinstance(blobs, dict) else blobs
        raise FmlabError(f"{where}: {fmt} needs blobs {', '.join(ROLES[fmt])}, got {got}")
    return SpecEntry(name, fmt, shape, {role: _offset(where, role, v) for role, v in blobs.items()})


def load_spec(path: str | Path) -> Spec:
    """Read and check `checkpoint_spec.yaml`; every problem is an FmlabError naming the entry."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise FmlabError(f"{path}: cannot read the checkpoint spec ({err})") from None
    mapping = raw.get("weights_mapping") if isinstance(raw, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise FmlabError(f"{path}: no weights_mapping in the checkpoint spec")
    entries = [_entry(f"{path}: weights_mapping: {name}", str(name), e) for name, e in mapping.items()]
    sha, source = raw.get("mil_sha256"), raw.get("source_mil")
    if sha is not None and not isinstance(sha, str):
        raise FmlabError(f"{path}: mil_sha256 must be a hex string, got {sha!r}")
    return Spec(path, entries, sha, None if source is None else str(source))


def role_shapes(fmt: str, shape) -> dict[str, tuple[int, ...]]:
    """Squeezed shape each blob's array must have for a tensor of `shape` (what the toolkit checks;
    the palette, which it checks by size only, as (groups, 16))."""
    s = squeezed(shape)
    if fmt == "fp16":
        return {"values": s}
    if fmt == "linear_4bits":
        return {"values": s, "scales": (s[-1],)}
    return {"lut_indices": s, "lut_palette": squeezed((s[0] // GROUP_SIZE, 16)), "scales": (s[0],)}


def encode_entry(fmt: str, w: torch.Tensor) -> dict[str, np.ndarray]:
    """One tensor in a template format: blob role -> the values to store (the toolkit's recipe, quant4)."""
    if fmt == "fp16":
        return {"values": to_fp16(w.float())}
    if fmt == "linear_4bits":
        q, scale = int4_quantize(w.reshape(w.shape[0], -1))
        return {"values": q.numpy(), "scales": to_fp16(scale)}
    scale, lut, idx = lut4_quantize(w, GROUP_SIZE)
    return {"lut_indices": idx, "lut_palette": to_fp16(lut), "scales": to_fp16(scale)}


def decode_entry(fmt: str, parts: dict, shape) -> torch.Tensor:
    if fmt == "fp16":
        return torch.as_tensor(np.asarray(parts["values"], np.float32)).reshape(shape)
    if fmt == "linear_4bits":
        return int4_dequantize(np.asarray(parts["values"]).reshape(shape[0], -1), parts["scales"]).reshape(shape)
    indices = np.asarray(parts["lut_indices"]).reshape(shape[0], -1)
    return lut4_dequantize(parts["scales"], parts["lut_palette"], indices, GROUP_SIZE).reshape(shape)


def check_mil(spec: Spec, mil: Path) -> bool:
    """Whether `draft.mil` hashes to the spec's `mil_sha256`; a warning saying what differs if not (the
    toolkit never checks, and `source_mil` need not be the shipped file, so this is no refusal)."""
    if not spec.mil_sha256:
        return True
    actual = file_sha(mil)
    if actual == spec.mil_sha256.lower():
        return True
    warnings.warn(
        f"{mil}: sha256 {actual} differs from mil_sha256 {spec.mil_sha256} in {spec.path} "
        f"(source_mil: {spec.source_mil or 'not given'}); exporting anyway, as Apple's exporter does: "
        f"check that {MIL}, {TEMPLATE} and {SPEC} come from the same toolkit",
        stacklevel=3,
    )
    return False


def _check_shape(spec: Spec, e: SpecEntry, w: torch.Tensor) -> None:
    if e.shape is not None and squeezed(e.shape) != squeezed(w.shape):
        raise FmlabError(
            f"{spec.path}: {e.name}: the spec's shape is {list(e.shape)} but the draft's tensor is "
            f"{list(w.shape)} (compared without size-1 dims); the draft config does not match the template's model"
        )


def _check_blob_shapes(spec: Spec, e: SpecEntry, w: torch.Tensor, parts: dict) -> None:
    for role, want in role_shapes(e.format, w.shape).items():
        got = squeezed(np.shape(parts[role]))
        if got != want:
            raise FmlabError(f"{spec.path}: {e.name}: its {role} blob has shape {list(got)}, expected {list(want)}")


def fill_template(state: dict, cfg: ModelConfig, files: dict[str, Path], out_dir: Path) -> dict:
    """Write `draft_weights.bin` (filled copy of the template) and `draft.mil` (exact copy) into `out_dir`."""
    spec = load_spec(files[SPEC])
    mil_matches = check_mil(spec, files[MIL])
    tensors = to_mil(state, cfg)
    unknown = [e.name for e in spec.entries if e.name not in tensors]
    if unknown:
        raise FmlabError(
            f"{files[SPEC]}: no draft tensor for {len(unknown)} spec entr(ies), e.g. {unknown[0]} "
            f"(the draft config must match the template's model)"
        )
    for e in spec.entries:  # every shape before the slow part
        _check_shape(spec, e, tensors[e.name])
    out = out_dir / "draft_weights.bin"
    shutil.copyfile(files[TEMPLATE], out)
    shutil.copyfile(files[MIL], out_dir / MIL)
    counts: dict[str, int] = {}
    errors = {}
    with open(out, "r+b") as f:
        for e in spec.entries:
            w = tensors[e.name]
            parts = encode_entry(e.format, w)
            _check_blob_shapes(spec, e, w, parts)
            for role, values in parts.items():
                overwrite_blob(f, e.offsets[role], values, ROLES[e.format][role], f"{out.name}: {e.name} ({role})")
            counts[e.format] = counts.get(e.format, 0) + 1
            errors[e.name] = relative_error(w, decode_entry(e.format, parts, w.shape))
    return {
        "entries": len(spec.entries),
        "formats": counts,
        "max_relative_error": max(errors.values()),
        "mil_sha256_matches": mil_matches,
    }


def read_filled(path: Path, spec_path: Path, cfg: ModelConfig, reference: dict | None = None) -> dict:
    """A filled `draft_weights.bin` back as a de-quantised fmlab state dict (fp32). Tensors the spec
    does not list come from `reference` (e.g. the source draft); without it they must all be listed."""
    spec = load_spec(spec_path)
    shapes = _mil_shapes(cfg)
    tensors = {}
    for e in spec.entries:
        if e.name not in shapes:
            raise FmlabError(f"{spec_path}: {e.name} is not a tensor of this draft config")
        parts = {role: read_blob(path, off) for role, off in e.offsets.items()}
        tensors[e.name] = decode_entry(e.format, parts, shapes[e.name])
    missing = [n for n in mil_map(cfg) if n not in tensors]
    if missing and reference is None:
        raise FmlabError(f"{spec_path}: the spec lists no entry for {missing[0]} (and {len(missing) - 1} more)")
    ref = to_mil(reference, cfg) if missing else {}
    return from_mil({n: tensors.get(n, ref.get(n)) for n in mil_map(cfg)}, cfg)


def _mil_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    meta = build_model(cfg, device="meta").state_dict()
    return {k: v.shape for k, v in to_mil({k: v for k, v in meta.items()}, cfg).items()}

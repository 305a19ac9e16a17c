"""`.fmadapter` export (docs/afm-format.md §8): Apple's package layout, written atomically.

`<name>.fmadapter/` holds exactly what Apple's exporter writes:
- `metadata.json`: §8.1 exactly (camelCase, sorted keys, indent 4);
- `adapter_weights.bin`: §8.2, the LoRA tensors as a MIL blob file, one fp16 blob per tensor in the
  canonical order, each transposed (A: [r, in], B: [out, r]); the Q and K B-matrices (and segment_1's
  Q) have their rows moved from interleaved (GPT-J) to half-split (NeoX) order within each head,
  because the on-device runtime applies RoPE in half-split form;
- with a draft, when the assets carry Apple's template (§8.3): `draft.mil` + `draft_weights.bin`.

fmlab's own files go to `<name>.fmlab/` beside the package (inside it only with `extras_in_package`,
since whether the device loader and Apple's asset-pack tool accept extra entries is unknown):
`fmlab-manifest.json` (sources, settings, every file's sha256) and, with a draft, `draft.mlpackage`
(Core ML, 4-bit palettised) unless switched off. `verify-fmadapter` finds them in either place.

Both are built in temporary directories inside the output directory and renamed into place; only a
previous package (and fmlab folder) of the same name is ever replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab import __version__
from fmlab.checkpoints.apple_format import apple_key_map, from_apple, load_torch, read_adapter
from fmlab.checkpoints.assets import BASE_CONFIG, BASE_WEIGHTS, DRAFT_CONFIG, assets_dir
from fmlab.checkpoints.run_dir import resolve_checkpoint
from fmlab.errors import FmlabError
from fmlab.export.coreml_draft import export_coreml_draft
from fmlab.export.draft_template import fill_template, template_files
from fmlab.export.mil_blob import BlobWriter, read_blob, read_index
from fmlab.export.quant4 import import_coremltools
from fmlab.files import file_sha
from fmlab.model.config import PRESETS, TAMM_FIELDS, ModelConfig, from_tamm_json, to_tamm_json
from fmlab.model.lora import is_lora_b, is_lora_name

BASE_SIGNATURE = "9799725ff8e851184037110b422d891ad3b92ec1"  # Apple's afm-3b (constants.py)
APPLE_RANK, APPLE_ALPHA = 32, 16.0
DEFAULT_AUTHOR = "3P developer"
SUFFIX = ".fmadapter"
METADATA, ADAPTER_WEIGHTS = "metadata.json", "adapter_weights.bin"
DRAFT_MIL, DRAFT_WEIGHTS, DRAFT_MLPACKAGE = "draft.mil", "draft_weights.bin", "draft.mlpackage"
MANIFEST = "fmlab-manifest.json"
EXTRAS_SUFFIX = ".fmlab"  # <name>.fmlab/ beside <name>.fmadapter/: fmlab's files for the package
METADATA_KEYS = tuple(
    "adapterIdentifier author baseModelSignature creatorDefined description license loraRank "
    "speculativeDecodingDraftTokenCount".split()
)


# --- names, signatures, the runtime's LoRA assumptions ----------------------------------------------


def check_adapter_name(name: str) -> str:
    """The package name without `.fmadapter`; ASCII letters, digits and `_` only (hyphens and other
    characters export fine but the adapter then fails to load on devices)."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not re.fullmatch(r"\w+", stem, flags=re.ASCII):
        bad = sorted({c for c in stem if not re.fullmatch(r"\w", c, flags=re.ASCII)})
        raise FmlabError(
            f"adapter name {name!r} is not allowed: use only ASCII letters, digits and '_' "
            f"(found {', '.join(repr(c) for c in bad) or 'an empty name'}); e.g. "
            f"{re.sub(r'[^A-Za-z0-9_]+', '_', stem).strip('_') or 'my_adapter'!r}"
        )
    return stem


def is_afm_3b(cfg: ModelConfig) -> bool:
    """The architecture of Apple's base (every field a tamm config carries), whatever its LoRA."""
    ref = PRESETS["afm-3b"]
    return all(getattr(cfg, f) == getattr(ref, f) for f in TAMM_FIELDS)


def check_runtime_lora(cfg: ModelConfig) -> None:
    if cfg.lora is None:
        raise FmlabError("the base config has no adapter (base-model-config.json needs an `adapters` entry)")
    if is_afm_3b(cfg):
        lora = cfg.lora
        all_targets = set(lora.targets) == set(PRESETS["afm-3b"].lora.targets)
        if (lora.rank, float(lora.alpha)) != (APPLE_RANK, APPLE_ALPHA) or not all_targets:
            raise FmlabError(
                f"an afm-3b adapter must use LoRA rank {APPLE_RANK}, alpha {APPLE_ALPHA:g} on every "
                f"projection (got rank {lora.rank}, alpha {lora.alpha:g}, targets {list(lora.targets)}): "
                f"the device runtime assumes Apple's values and nothing in the package says otherwise"
            )


def default_signature(cfg: ModelConfig, assets: Path) -> str:
    """Apple's signature for afm-3b; for any other base, the sha1 of its `base-model.pt` (40 hex
    digits like Apple's), so an adapter names the exact base it was trained on."""
    return BASE_SIGNATURE if is_afm_3b(cfg) else file_sha(assets / BASE_WEIGHTS, "sha1")


def check_signature(signature: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{7,64}", signature):
        raise FmlabError(
            f"base signature {signature!r} must be 7-64 lowercase hex digits (Apple's afm-3b: {BASE_SIGNATURE})"
        )
    return signature


# --- metadata.json (§8.1) ---------------------------------------------------------------------------


def camel(name: str) -> str:
    first, *rest = re.split(r"[_\s]+", name)
    return first.lower() + "".join(p[:1].upper() + p[1:] for p in rest)


def metadata(
    adapter_name: str,
    base_signature: str,
    lora_rank: int,
    author: str = DEFAULT_AUTHOR,
    description: str = "",
    license: str = "",
    creator_defined: dict | None = None,
    draft_tokens: int = 5,
) -> dict:
    fields = {
        "adapter_identifier": f"fmadapter-{adapter_name}-{base_signature[:7]}",
        "author": author,
        "base_model_signature": base_signature,
        "creator_defined": creator_defined or {},
        "description": description,
        "license": license,
        "lora_rank": int(lora_rank),
        "speculative_decoding_draft_token_count": int(draft_tokens),
    }
    return {camel(k): v for k, v in fields.items()}


def metadata_text(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, indent=4, ensure_ascii=False)


# --- adapter_weights.bin (§8.2) ---------------------------------------------------------------------


def qk_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """B rows (out, r) from interleaved to half-split per head: new h*hd + j*hd/2 + i = old h*hd + 2i + j."""
    out, r = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, r).transpose(1, 2).reshape(out, r)


def qk_unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out, r = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, r).transpose(1, 2).reshape(out, r)


@dataclass(frozen=True)
class AdapterTensor:
    apple: str
    fmlab: str
    shape: tuple[int, int]  # as stored: A [r, in], B [out, r]
    heads: int  # heads for the QK permutation; 0 = none


def adapter_layout(cfg: ModelConfig) -> list[AdapterTensor]:
    """The LoRA tensors in the canonical order written to `adapter_weights.bin` (= Apple's module order)."""
    r, C, F = cfg.lora.rank, cfg.hidden_dim, cfg.ffn_dim
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    dims = {"q": (C, q), "k": (C, kv), "v": (C, kv), "o": (q, C), "gate": (C, F), "up": (C, F), "down": (F, C)}
    heads = {"q": cfg.num_heads, "k": cfg.num_kv_heads}
    layout = []
    for e in apple_key_map(cfg):
        if not is_lora_name(e.fmlab):
            continue
        part = e.fmlab.rsplit(".", 1)[1]
        d_in, d_out = dims[part]
        is_b = is_lora_b(e.fmlab)
        shape = (d_out, r) if is_b else (r, d_in)
        layout.append(AdapterTensor(e.apple, e.fmlab, shape, heads.get(part, 0) if is_b else 0))
    return layout


def to_blob(t: torch.Tensor, spec: AdapterTensor) -> torch.Tensor:
    """fmlab LoRA tensor (A [in, r] or B [r, out]) -> the fp16 matrix stored for it."""
    x = t.detach().to(torch.float16).t()
    return (qk_permute(x, spec.heads) if spec.heads else x).contiguous()


def from_blob(x: torch.Tensor, spec: AdapterTensor) -> torch.Tensor:
    x = x.reshape(spec.shape)
    return (qk_unpermute(x, spec.heads) if spec.heads else x).t().float().contiguous()


def write_adapter_weights(state: dict, cfg: ModelConfig, path: str | Path) -> int:
    """Stream the adapter to `path`, one tensor at a time; returns the number of blobs."""
    layout = adapter_layout(cfg)
    with BlobWriter(path) as writer:
        for spec in layout:
            t = state[spec.fmlab]
            if tuple(t.shape) != spec.shape[::-1]:
                raise FmlabError(f"{spec.fmlab}: shape {tuple(t.shape)}, expected {spec.shape[::-1]} for this config")
            writer.write(to_blob(t, spec).numpy(), "fp16")
    return len(layout)


def read_adapter_weights(path: str | Path, cfg: ModelConfig) -> dict:
    """`adapter_weights.bin` back to an fmlab-keyed fp32 LoRA state dict (permutation and transpose undone)."""
    entries, layout = read_index(path), adapter_layout(cfg)
    if len(entries) != len(layout):
        raise FmlabError(f"{path}: {len(entries)} blobs, expected {len(layout)} LoRA tensors for this config")
    state = {}
    for entry, spec in zip(entries, layout):
        if entry.dtype != "fp16" or entry.count != spec.shape[0] * spec.shape[1]:
            raise FmlabError(
                f"{path}: blob {entry.index} is {entry.dtype} x {entry.count}, "
                f"expected fp16 {spec.shape} ({spec.apple})"
            )
        state[spec.fmlab] = from_blob(torch.from_numpy(read_blob(path, entry)), spec)
    return state


# --- the package ------------------------------------------------------------------------------------


def _check_replaceable(final: Path, markers=(METADATA, ADAPTER_WEIGHTS), what="an .fmadapter package") -> None:
    """Refuse to replace anything but an earlier export's directory (one holding one of `markers`)."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FmlabError(f"{final} exists and is not a package directory; refusing to replace it")
    if final.is_dir() and any(final.iterdir()) and not any((final / m).is_file() for m in markers):
        raise FmlabError(f"{final} exists but is not {what} (no {markers[0]}); refusing to delete it")


def package_files(package: Path) -> dict[str, dict]:
    """Every file under `package` (but the manifest): size and sha256."""
    out = {}
    for p in sorted(package.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(package).as_posix()] = {"bytes": p.stat().st_size, "sha256": file_sha(p)}
    return out


def load_draft_state(path: str | Path, cfg: ModelConfig) -> dict:
    return from_apple(load_torch(path), cfg, str(path))


def extras_dir(package: str | Path) -> Path:
    """Where an export puts fmlab's own files by default: `<name>.fmlab/` beside `<name>.fmadapter/`."""
    package = Path(package)
    return package.parent / f"{package.name.removesuffix(SUFFIX)}{EXTRAS_SUFFIX}"


def find_extra(package: str | Path, name: str) -> Path | None:
    """fmlab's file `name` (MANIFEST, DRAFT_MLPACKAGE) for a package: inside it, else beside it, else None."""
    for d in (Path(package), extras_dir(package)):
        if (d / name).exists():
            return d / name
    return None


def export_fmadapter(
    output_dir: str | Path,
    adapter_name: str,
    checkpoint: str | Path,
    draft_checkpoint: str | Path | None = None,
    *,
    author: str = DEFAULT_AUTHOR,
    description: str = "",
    license: str = "",
    creator_defined: dict | None = None,
    assets: str | Path | None = None,
    base_signature: str | None = None,
    num_draft_tokens: int = 5,
    coreml: bool = True,
    extras_in_package: bool = False,
    log=print,
) -> Path:
    """Write `<output_dir>/<adapter_name>.fmadapter` from an adapter checkpoint (Apple `.pt` or fmlab
    `.safetensors`, or a run directory: its best) and optionally a draft checkpoint (Apple draft layout,
    or a draft run directory); returns the package path. The package holds exactly the toolkit's files;
    fmlab's own (`fmlab-manifest.json`, `draft.mlpackage`) go to `<adapter_name>.fmlab/` beside it, or
    into the package with `extras_in_package`."""
    name = check_adapter_name(adapter_name)
    assets = assets_dir(assets).resolve()
    cfg = from_tamm_json(assets / BASE_CONFIG)
    check_runtime_lora(cfg)
    if num_draft_tokens < 1:
        raise FmlabError(f"--num-draft-tokens must be at least 1, got {num_draft_tokens}")
    signature = check_signature(base_signature or default_signature(cfg, assets))
    checkpoint = resolve_checkpoint(checkpoint)
    state = read_adapter(checkpoint, cfg)
    draft = None
    if draft_checkpoint is not None:
        draft_checkpoint = resolve_checkpoint(draft_checkpoint, draft=True)
        draft_cfg = from_tamm_json(assets / DRAFT_CONFIG)
        if draft_cfg.vocab_size != cfg.vocab_size:
            raise FmlabError(f"draft vocabulary {draft_cfg.vocab_size} differs from the base's {cfg.vocab_size}")
        template = template_files(assets)
        if coreml or template is not None:
            import_coremltools()  # fail before writing anything when it is missing
        draft = (draft_cfg, load_draft_state(draft_checkpoint, draft_cfg), template)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{name}{SUFFIX}"
    extras = extras_dir(final)
    _check_replaceable(final)
    if not extras_in_package:
        _check_replaceable(extras, (MANIFEST,), "fmlab's folder for the package")

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}{SUFFIX}.tmp-", dir=out))
    tmp_extras = tmp if extras_in_package else Path(tempfile.mkdtemp(prefix=f".{extras.name}.tmp-", dir=out))
    try:
        meta = metadata(name, signature, cfg.lora.rank, author, description, license, creator_defined, num_draft_tokens)
        (tmp / METADATA).write_text(metadata_text(meta), encoding="utf-8")
        n = write_adapter_weights(state, cfg, tmp / ADAPTER_WEIGHTS)
        log(f"{ADAPTER_WEIGHTS}: {n} fp16 blobs, {(tmp / ADAPTER_WEIGHTS).stat().st_size:,} bytes")
        manifest = {
            "format": "fmlab-fmadapter-manifest/2",
            "adapter_name": name,
            "base_signature": signature,
            "assets": str(assets),
            "base_config": to_tamm_json(cfg),
            "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets)},
            "sources": {"checkpoint": _source(checkpoint), "draft_checkpoint": _source(draft_checkpoint)},
            "draft": {"template": None, "coreml": None},
            "fmlab_files_in": "package" if extras_in_package else extras.name,
        }
        if draft is not None:
            manifest["draft_config"] = to_tamm_json(draft[0])
            manifest["draft"] = _write_draft(tmp, tmp_extras, *draft, coreml=coreml, log=log)

        manifest["fmlab_version"] = __version__
        manifest["files"] = package_files(tmp)
        if not extras_in_package:
            manifest["fmlab_files"] = package_files(tmp_extras)
        (tmp_extras / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if not extras_in_package:
            _swap_into_place(tmp_extras, extras)
        _swap_into_place(tmp, final)
        if extras_in_package and (extras / MANIFEST).is_file() and not extras.is_symlink():
            shutil.rmtree(extras)  # an earlier export's, now stale
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp_extras, ignore_errors=True)
        raise
    log(f"wrote {final}" + ("" if extras_in_package else f" (fmlab's manifest and Core ML draft: {extras})"))
    return final


def _write_draft(
    package: Path, extras: Path, cfg: ModelConfig, state: dict, template: dict | None, coreml: bool, log
) -> dict:
    """Apple's template fill into the package when the assets carry it; the Core ML draft (into
    `extras`) unless switched off."""
    info = {"template": None, "coreml": None}
    if template is not None:
        info["template"] = fill_template(state, cfg, template, package)
        log(f"{DRAFT_WEIGHTS}: Apple template filled ({info['template']['entries']} tensors)")
    if coreml:
        info["coreml"] = export_coreml_draft(state, cfg, extras / DRAFT_MLPACKAGE)
        log(
            f"{DRAFT_MLPACKAGE}: converted in {info['coreml']['convert_s']} s, "
            f"palettised in {info['coreml']['palettize_s']} s"
        )
    return info


def _source(path) -> dict | None:
    if path is None:
        return None
    p = Path(path).resolve()
    return {"path": str(p), "sha256": file_sha(p)}


def _swap_into_place(tmp: Path, final: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a package is an ordinary directory
    if not final.exists():
        os.rename(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rmdir(old)
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def package_sizes(package: str | Path) -> dict[str, int]:
    """Top-level entries of a package and their sizes in bytes (directories summed)."""
    package = Path(package)
    sizes = {}
    for p in sorted(package.iterdir()):
        sizes[p.name] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return sizes

"""`fmlab verify-fmadapter`: read a `.fmadapter` package back and check it numerically (the
apple/ml-ane-transformers habit: an export is checked against the PyTorch model, not only written).

1. files: the manifest's sha256 sums (the manifest inside the package or in `<name>.fmlab/` beside it),
   that the package holds exactly the toolkit's files, `metadata.json` schema and exact §8.1 formatting;
2. `adapter_weights.bin`: header, 64-byte-aligned metadata/data offsets, fp16 dtype and size per blob;
3. the adapter rebuilt from the blobs (permutation and transpose undone) equals the source checkpoint
   rounded to fp16, and the base model's logits with it match those with the source adapter;
4. each stored draft (Apple's template; the Core ML draft, in or beside the package): reconstruction
   error of its 4-bit weights, and the speculative acceptance rate (Leviathan et al. 2023) of the
   de-quantised draft against the full-precision draft at T=0, i.e. what 4-bit costs in accepted tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import read_adapter
from fmlab.checkpoints.assets import BASE_CONFIG, DRAFT_CONFIG, TOKENIZER, assets_dir, load_base, load_tokenizer
from fmlab.errors import FmlabError
from fmlab.export.coreml_draft import read_coreml_draft
from fmlab.export.draft_template import MIL, SPEC, read_filled
from fmlab.export.mil_blob import read_index
from fmlab.export.package import (
    ADAPTER_WEIGHTS,
    DRAFT_MIL,
    DRAFT_MLPACKAGE,
    DRAFT_WEIGHTS,
    MANIFEST,
    METADATA,
    METADATA_KEYS,
    SUFFIX,
    adapter_layout,
    check_adapter_name,
    default_signature,
    file_sha,
    find_extra,
    load_draft_state,
    metadata_text,
    package_files,
    read_adapter_weights,
)
from fmlab.export.quant4 import relative_error
from fmlab.export.report import PROMPTS, Report
from fmlab.infer.acceptance import measure_acceptance
from fmlab.infer.generate import encode_prompts, stop_ids
from fmlab.model.config import from_tamm_json
from fmlab.model.lora import is_lora_b
from fmlab.model.transformer import build_model

TOOLKIT_FILES = {METADATA, ADAPTER_WEIGHTS, DRAFT_MIL, DRAFT_WEIGHTS}
FMLAB_FILES = {MANIFEST, DRAFT_MLPACKAGE}


def _check_manifest(report: Report, package: Path) -> dict:
    """fmlab's manifest (inside the package or beside it): the sha256 of every file it lists."""
    path = find_extra(package, MANIFEST)
    if path is None:
        report.add("manifest", None, f"no {MANIFEST} in or beside the package (not written by fmlab)")
        return {}
    manifest = json.loads(path.read_text())
    pairs = [(manifest.get("files", {}), package_files(package), "")]
    if path.parent != package:  # beside the package: its own folder's files are listed too
        pairs.append((manifest.get("fmlab_files", {}), package_files(path.parent), f"{path.parent.name}/"))
    bad = [p + k for listed, actual, p in pairs for k in sorted({*listed, *actual}) if listed.get(k) != actual.get(k)]
    count = sum(len(actual) for _, actual, _ in pairs)
    report.add("manifest checksums", not bad, f"differ: {bad[:3]}" if bad else f"{count} files ({path})")
    return manifest


def _check_entries(report: Report, package: Path) -> None:
    """The toolkit's package holds its own files only (§8.3); fmlab's two are inside only on request."""
    entries = {p.name for p in package.iterdir()}
    unknown, own = sorted(entries - TOOLKIT_FILES - FMLAB_FILES), sorted(entries & FMLAB_FILES)
    half_draft = len(entries & {DRAFT_MIL, DRAFT_WEIGHTS}) == 1
    if unknown or half_draft:
        detail = f"not the toolkit's: {unknown}" if unknown else f"only one of {DRAFT_MIL}, {DRAFT_WEIGHTS}"
        report.add("package holds exactly the toolkit's files", False, detail)
    else:  # fmlab's own files inside (exported so on request): not wrong, but not the toolkit's package
        report.add("package holds exactly the toolkit's files", None if own else True, f"also {own}" if own else "")


def _check_metadata(report: Report, package: Path, stem: str) -> dict:
    text = (package / METADATA).read_text(encoding="utf-8")
    meta = json.loads(text)
    keys_ok = sorted(meta) == sorted(METADATA_KEYS)
    report.add("metadata keys", keys_ok, "" if keys_ok else f"got {sorted(meta)}")
    types = {
        "adapterIdentifier": str,
        "author": str,
        "baseModelSignature": str,
        "creatorDefined": dict,
        "description": str,
        "license": str,
        "loraRank": int,
        "speculativeDecodingDraftTokenCount": int,
    }
    wrong = [k for k, t in types.items() if k in meta and not isinstance(meta[k], t)]
    report.add("metadata types", not wrong, f"wrong type: {wrong}" if wrong else "")
    ident = f"fmadapter-{stem}-{str(meta.get('baseModelSignature', ''))[:7]}"
    report.add(
        "adapterIdentifier",
        meta.get("adapterIdentifier") == ident,
        f"{meta.get('adapterIdentifier')} (expected {ident})",
    )
    report.add("metadata.json formatting (sorted, indent 4)", text == metadata_text(meta))
    return meta


def _check_blobs(report: Report, path: Path, cfg) -> None:
    layout = adapter_layout(cfg)
    entries = read_index(path)  # header, sentinels, alignment, data right after metadata
    expected = 64
    problems = []
    for e, spec in zip(entries, layout):
        size = spec.shape[0] * spec.shape[1] * 2
        if (e.metadata_offset, e.data_offset, e.dtype, e.size) != (expected, expected + 64, "fp16", size):
            problems.append(
                f"blob {e.index} ({spec.apple}): meta {e.metadata_offset} data {e.data_offset} "
                f"{e.dtype} {e.size} B; expected meta {expected}, fp16 {size} B"
            )
        expected = -(-(expected + 64 + size) // 64) * 64
    if len(entries) != len(layout):
        problems.insert(0, f"{len(entries)} blobs, expected {len(layout)}")
    report.add(
        "adapter_weights.bin layout",
        not problems,
        "; ".join(problems[:3]) or f"{len(entries)} fp16 blobs, {path.stat().st_size:,} bytes, offsets 64-aligned",
    )
    report.numbers["adapter_blobs"] = len(entries)
    report.numbers["adapter_weights_bytes"] = path.stat().st_size


def _source(report: Report, manifest: dict, key: str, given) -> Path | None:
    if given is not None:
        return Path(given)
    src = (manifest.get("sources") or {}).get(key)
    if not src:
        return None
    path = Path(src["path"])
    if not path.is_file():
        report.add(f"source {key}", None, f"{path} is gone; pass it explicitly to compare")
        return None
    report.add(f"source {key} unchanged since export", file_sha(path) == src["sha256"], str(path))
    return path


@torch.no_grad()
def _compare_logits(report: Report, model, src: dict, pkg: dict, prompts: list[list[int]]) -> None:
    """The model's logits over real chat prompts with the source adapter and with the package's. (Random
    ids made this check flaky: on inputs that no text produces, a deep model amplifies the fp16 rounding
    far more than on text, 0.28 against 0.10 on fmlab-tiny + a demo adapter.)"""
    params = dict(model.named_parameters())

    def logits_with(state) -> list[torch.Tensor]:  # one weight copy per state, then every prompt
        for k, v in state.items():
            params[k].copy_(v)
        return [model(torch.tensor([ids])).float() for ids in prompts]

    base = logits_with({k: torch.zeros_like(v) for k, v in src.items() if is_lora_b(k)})
    pkg_logits, ref_logits = logits_with(pkg), logits_with(src)  # the source adapter stays in place
    diff = scale = effect = 0.0
    agree = positions = 0
    for b, ref, got in zip(base, ref_logits, pkg_logits):
        diff = max(diff, float((ref - got).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        effect = max(effect, float((ref - b).abs().max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        positions += ref.shape[1]
    agree = agree / max(positions, 1)
    # fp16 rounding of the LoRA weights (relative 2^-11 each), propagated through the model: it grows
    # with the logits' size and with how far the adapter moves them (a large LoRA scale amplifies it)
    tol = 4e-3 * max(scale, 1.0) + 1e-2 * effect
    report.add(
        "logits: package adapter vs source checkpoint",
        diff <= tol,
        f"max |diff| {diff:.2e} (tolerance {tol:.1e}) over {len(prompts)} prompts; the adapter itself moves "
        f"logits by {effect:.2e}; greedy tokens agree {agree:.1%}",
    )
    report.numbers.update(logits_max_abs_diff=diff, adapter_effect=effect, greedy_agreement=agree)


def _prompts(assets: Path, n: int, vocab: int) -> tuple[list[list[int]], set[int]]:
    if (assets / TOKENIZER).is_file():
        tok = load_tokenizer(assets)
        return encode_prompts(tok, PROMPTS[:n]), stop_ids(tok)
    g = torch.Generator().manual_seed(0)
    return [torch.randint(2, vocab, (16,), generator=g).tolist() for _ in range(n)], {1}


def _acceptance(target, draft, prompts, stop, k: int, max_new_tokens: int) -> tuple[float, list[list[int]]]:
    """Greedy speculative decoding over the prompts, untimed: (accepted / proposed, outputs)."""
    m = measure_acceptance(target, draft, prompts, k, max_new_tokens, stop=stop, time_plain=False)
    return m["acceptance_rate"], m["outputs"]


def _check_drafts(
    report: Report,
    package: Path,
    manifest: dict,
    assets: Path,
    target,
    draft_checkpoint,
    k: int,
    num_prompts: int,
    max_new_tokens: int,
) -> None:
    variants = {}
    draft_cfg = from_tamm_json(assets / DRAFT_CONFIG)
    src_path = _source(report, manifest, "draft_checkpoint", draft_checkpoint)
    if src_path is None:
        report.add("draft", None, "no source draft checkpoint to compare with")
        return
    src = load_draft_state(src_path, draft_cfg)
    mlpackage = find_extra(package, DRAFT_MLPACKAGE)
    if (package / DRAFT_WEIGHTS).is_file():
        try:
            report.add("draft_weights.bin blob structure", True, f"{len(read_index(package / DRAFT_WEIGHTS))} blobs")
        except FmlabError as err:
            report.add("draft_weights.bin blob structure", False, str(err))
        spec = assets / SPEC
        if not spec.is_file():
            report.add("draft_weights.bin", None, f"no {SPEC} in {assets} to decode it with")
        else:
            same_mil = all((d / MIL).is_file() for d in (assets, package)) and file_sha(assets / MIL) == file_sha(
                package / DRAFT_MIL
            )
            report.add("draft.mil is an exact copy of the assets'", same_mil)
            variants["template (int4 embedding + 4-bit LUT)"] = read_filled(
                package / DRAFT_WEIGHTS, spec, draft_cfg, src
            )
    if mlpackage is not None:
        state, info = read_coreml_draft(mlpackage, draft_cfg)
        luts = {tuple(s[1:]) for s in info["lut_shapes"].values()}
        ok = info["palettized"] > 0 and "indices:uint4" in info["blob_dtypes"] and luts == {(1, 16, 1)}
        report.add(
            "draft.mlpackage: 4-bit grouped-channel palettised",
            ok,
            f"{info['palettized']} palettised weights, LUT blocks {sorted(luts)}, blobs {info['blob_dtypes']}",
        )
        variants["Core ML (4-bit LUT)"] = state
    if not variants:
        report.add("draft", None, "the package holds no draft")
        return
    prompts, stop = _prompts(assets, num_prompts, draft_cfg.vocab_size)
    draft = build_model(draft_cfg).eval()
    draft.load_state_dict(src, strict=True)
    rate_fp, out_fp = _acceptance(target, draft, prompts, stop, k, max_new_tokens)
    report.numbers["acceptance_fp"] = rate_fp
    for name, state in variants.items():
        errors = {key: relative_error(src[key], state[key]) for key in src if src[key].ndim == 2}
        worst = max(errors, key=errors.get)
        draft.load_state_dict(state, strict=True)
        rate_q, out_q = _acceptance(target, draft, prompts, stop, k, max_new_tokens)
        mean = sum(errors.values()) / len(errors)
        report.numbers[name] = {
            "max_relative_error": errors[worst],
            "mean_relative_error": mean,
            "acceptance": rate_q,
            "acceptance_drop": rate_fp - rate_q,
        }
        report.add(
            f"{name}: reconstruction",
            errors[worst] < 0.25,
            f"relative error mean {mean:.3f}, max {errors[worst]:.3f} ({worst})",
        )
        report.add(
            f"{name}: acceptance",
            out_q == out_fp,
            f"{rate_fp:.3f} full precision -> {rate_q:.3f} 4-bit (drop {rate_fp - rate_q:+.3f}) at k={k}, "
            f"T=0, {len(prompts)} prompts; outputs identical to the target's greedy: {out_q == out_fp}",
        )


def verify_fmadapter(
    package: str | Path,
    checkpoint=None,
    draft_checkpoint=None,
    assets=None,
    num_prompts: int = 4,
    max_new_tokens: int = 48,
) -> Report:
    """Check a package (see the module docstring); returns a `Report` (`.ok`, `.text()`, `.numbers`)."""

    package = Path(package)
    if not (package / METADATA).is_file():
        raise FmlabError(f"{package}: not an .fmadapter package (no {METADATA})")
    report = Report(package)
    try:
        stem = check_adapter_name(package.name[: -len(SUFFIX)] if package.name.endswith(SUFFIX) else package.name)
        report.add("adapter name", True, stem)
    except FmlabError as err:
        report.add("adapter name", False, str(err))
        stem = package.name.removesuffix(SUFFIX)
    manifest = _check_manifest(report, package)
    _check_entries(report, package)
    meta = _check_metadata(report, package, stem)
    assets = assets_dir(assets or manifest.get("assets")).resolve()
    cfg = from_tamm_json(assets / BASE_CONFIG)
    report.add(
        "loraRank matches the base config",
        meta.get("loraRank") == cfg.lora.rank,
        f"{meta.get('loraRank')} vs {cfg.lora.rank} ({assets})",
    )
    report.numbers["signature_matches_assets"] = meta.get("baseModelSignature") == default_signature(cfg, assets)
    _check_blobs(report, package / ADAPTER_WEIGHTS, cfg)
    pkg_state = read_adapter_weights(package / ADAPTER_WEIGHTS, cfg)
    src_path = _source(report, manifest, "checkpoint", checkpoint)
    target = load_base(assets)
    if src_path is None:
        report.add("logits: package adapter vs source checkpoint", None, "no source checkpoint given or recorded")
        params = dict(target.named_parameters())
        with torch.no_grad():
            for k, v in pkg_state.items():
                params[k].copy_(v)
    else:
        src = read_adapter(src_path, cfg)
        exact = all(torch.equal(pkg_state[k], src[k].half().float()) for k in src)
        report.add("adapter tensors == source rounded to fp16", exact)
        _compare_logits(report, target, src, pkg_state, _prompts(assets, len(PROMPTS), cfg.vocab_size)[0])
    if (package / DRAFT_WEIGHTS).is_file() or find_extra(package, DRAFT_MLPACKAGE) is not None:
        _check_drafts(
            report,
            package,
            manifest,
            assets,
            target,
            draft_checkpoint,
            int(meta.get("speculativeDecodingDraftTokenCount", 5)),
            num_prompts,
            max_new_tokens,
        )
    return report

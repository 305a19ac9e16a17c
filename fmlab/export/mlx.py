"""`fmlab export --format mlx` (docs/mlx.md): the base with its adapter, and the draft when one is
given, as mlx-lm model directories of model type `afm7` (files: fmlab.export.mlx_format), each checked
with mlx-lm against fmlab when the `fmlab[mlx]` extra is installed (fmlab.export.mlx_verify).
"""

from __future__ import annotations

import time
from pathlib import Path

from fmlab.checkpoints.assets import TOKENIZER, assets_dir, load_base, load_draft, load_tokenizer
from fmlab.checkpoints.run_dir import resolve_checkpoint
from fmlab.errors import FmlabError
from fmlab.export.mlx_format import argmax_agreement, with_kv_quant, write_mlx_dir
from fmlab.export.mlx_verify import mlx_missing, verify_mlx_dir
from fmlab.export.package import check_adapter_name
from fmlab.files import file_sha


def export_mlx(
    output_dir: str | Path,
    adapter_name: str,
    checkpoint: str | Path | None,
    draft_checkpoint: str | Path | None = None,
    *,
    assets: str | Path | None = None,
    dtype: str = "float32",
    unfused: bool = False,
    verify: bool = True,
    log=print,
) -> dict[str, Path]:
    """Write `<output_dir>/<name>_mlx/` (base + adapter) and, with a draft, `<name>_mlx_draft/`;
    verify each against fmlab with mlx-lm when it is installed. Returns {"model": path[, "draft": path]}."""
    name = check_adapter_name(adapter_name)
    assets = assets_dir(assets).resolve()
    checkpoint = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    draft_checkpoint = resolve_checkpoint(draft_checkpoint, draft=True) if draft_checkpoint is not None else None
    tokenizer = load_tokenizer(assets)
    out = Path(output_dir)
    paths = {"model": out / f"{name}_mlx"}
    models = {"model": load_base(assets, checkpoint)}
    sources = {"model": checkpoint}
    if draft_checkpoint is not None:
        paths["draft"], sources["draft"] = out / f"{name}_mlx_draft", draft_checkpoint
        models["draft"] = load_draft(assets, draft_checkpoint)
        if models["draft"].config.vocab_size != models["model"].config.vocab_size:
            raise FmlabError("the draft's vocabulary differs from the base's: mlx-lm's --draft-model needs the same")
    missing = mlx_missing() if verify else None
    for role, path in paths.items():
        model = with_kv_quant(models[role], tokenizer)
        kv = "the model's frozen ranges"
        if model is not models[role]:
            agreement = argmax_agreement(model, models[role], tokenizer)
            kv = f"calibrated here, approximate (argmax agreement with the original {agreement:.1%})"
        source = sources[role] and {"path": str(sources[role].resolve()), "sha256": file_sha(sources[role])}
        record = {"role": role, "assets": str(assets), "source": source, "kv_quant": kv}
        start = time.perf_counter()
        info = write_mlx_dir(path, model, tokenizer, assets / TOKENIZER, dtype, unfused and role == "model", record)
        size, seconds = sum(info["files"].values()), time.perf_counter() - start
        log(f"wrote {path} in {seconds:.1f} s ({size:,} bytes, {dtype}, LoRA {info['lora']}; K/V int8: {kv})")
        if verify and missing is None:
            report = verify_mlx_dir(path, model, tokenizer)
            log(report.text())
            if not report.ok:
                raise FmlabError(f"{path}: the MLX export does not match fmlab (see the report above)")
    if verify and missing is not None:
        log(f"not verified: {missing}")
    return paths

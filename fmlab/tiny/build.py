"""`fmlab build-assets`: make the embedded default `fmlab-tiny` from a seed, in Apple's assets layout.

1. a SentencePiece tokenizer with Apple's special pieces, trained on fmlab's synthetic corpus;
2. the base: the AFM architecture (regular + KV-reuse layers, QK-norm, GQA, an untrained LoRA),
   pretrained on the corpus (stories, template chats, Q&A) so it chats but does not know plays,
   then its int8 KV ranges calibrated (Apple's base ships frozen ranges);
3. the draft: a much smaller model of the same vocabulary, pretrained on the same corpus;
4. a manifest with sha256 sums, the recipe, timings, and the base's play-format score.
Deterministic for a seed on a given machine and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import save_model, to_apple
from fmlab.checkpoints.assets import BASE_CONFIG, BASE_WEIGHTS, DRAFT_CONFIG, DRAFT_WEIGHTS, REPO_ASSETS, TOKENIZER
from fmlab.data.chat_template import IGNORE, render_text
from fmlab.data.dataset import DatasetStats, TokenizedDataset, TokenizedSample
from fmlab.data.packing import Batches
from fmlab.data.tokenizer import train_tokenizer
from fmlab.data.validate import read_messages
from fmlab.files import atomic_torch_save, atomic_write, file_sha
from fmlab.infer.generate import generate
from fmlab.infer.sampling import Sampling
from fmlab.model.config import LoRAConfig, ModelConfig, to_tamm_json
from fmlab.model.lora import is_lora_name
from fmlab.model.precision import AUTO
from fmlab.model.transformer import build_model
from fmlab.tiny.corpus import chat_samples, plain_texts, tokenizer_texts
from fmlab.tiny.plays import play_format_score
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss

TINY_BASE = ModelConfig(
    vocab_size=4096,
    hidden_dim=256,
    num_layers=8,
    num_kv_reuse_layers=2,
    num_heads=4,
    num_kv_heads=2,
    hidden_dim_scale_factor=3.25,
    lora=LoRAConfig(rank=16, alpha=64),
)
TINY_DRAFT = ModelConfig(
    vocab_size=4096,
    hidden_dim=128,
    num_layers=2,
    num_kv_reuse_layers=0,
    num_heads=4,
    num_kv_heads=2,
    hidden_dim_scale_factor=3.0,
    kv_quant=False,
    lora=None,
)


@dataclass
class Recipe:
    seed: int = 0
    vocab_pieces: int = 4000  # the model's vocab_size rounds this up, like Apple's padding
    chat_samples: int = 32000
    plain_texts: int = 6000
    max_len: int = 512
    batch_size: int = 8
    base_epochs: int = 1
    base_lr: float = 3e-3
    weight_decay: float = 0.01  # low: rare tokens' embedding rows must not decay to nothing
    draft_epochs: int = 1
    draft_lr: float = 5e-3
    base: ModelConfig = field(default_factory=lambda: TINY_BASE)
    draft: ModelConfig = field(default_factory=lambda: TINY_DRAFT)


def lm_sample(ids: list[int], where: str):
    """A language-modelling sample: every next token is a target (pre-shifted, Apple's label layout)."""

    return TokenizedSample(ids, ids[1:] + [IGNORE], where)


def pretraining_data(tokenizer, recipe: Recipe):
    samples = []
    for i, messages in enumerate(chat_samples(recipe.chat_samples, recipe.seed)):
        ids = [tokenizer.eos_id] + tokenizer.encode(render_text(messages))[1:]  # eos + template, no ▁
        samples.append(lm_sample(ids[: recipe.max_len], f"chat:{i}"))
    for i, text in enumerate(plain_texts(recipe.plain_texts, recipe.seed)):
        samples.append(lm_sample(([tokenizer.eos_id] + tokenizer.encode(text))[: recipe.max_len], f"text:{i}"))

    def dataset(part):
        report = DatasetStats(num_samples=len(part), num_with_system=0, turns={})
        return TokenizedDataset(part, report, tokenizer.pad_id, tokenizer.eos_id, recipe.max_len)

    held_out = Batches(dataset(samples[-256:]), recipe.batch_size, pack=True)
    train = Batches(dataset(samples[:-256]), recipe.batch_size, pack=True, shuffle_seed=recipe.seed)
    return train, list(held_out.epoch(0))


def pretrain(
    config: ModelConfig, train_data, eval_data, epochs: int, lr: float, out: Path, seed: int, weight_decay: float = 0.01
):
    model = build_model(config, seed=seed)
    for name, p in model.named_parameters():
        p.requires_grad_(not is_lora_name(name))  # the base's adapter stays untrained (B = 0)
    cfg = TrainConfig(
        epochs=epochs,
        learning_rate=lr,
        warmup_fraction=0.05,
        weight_decay=weight_decay,
        precision=AUTO,
        prefix="pretrain",
        keep_best=1,
        eval_every=None,
        seed=seed,
    )
    summary = train(model, token_loss, train_data, eval_data, cfg, out, save_weights=save_model)
    for p in model.parameters():  # back to fp32 for shipping
        p.data = p.data.float()
    return model, summary


@torch.no_grad()
def calibrate_kv_ranges(model, batches) -> None:
    """Record each regular layer's K/V [min, max] over `batches` as frozen int8 fake-quant ranges."""
    layers = [b.attn for b in model.layers if getattr(b.attn, "kv_quant", False)]
    seen = {id(a): [torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), 0] for a in layers}
    hooks = []
    for attn in layers:

        def hook(module, args, output, attn=attn):
            k, v = output[1]
            rec = seen[id(attn)]
            for j, t in enumerate((k, v)):
                rec[j] = torch.stack([torch.minimum(rec[j][0], t.min()), torch.maximum(rec[j][1], t.max())])
            rec[2] += k.shape[0]

        hooks.append(attn.register_forward_hook(hook))
    model.eval()
    for batch in batches:
        model(batch["input_ids"], segment_ids=batch["segment_ids"])
    for h in hooks:
        h.remove()
    for attn in layers:
        k_range, v_range, n = seen[id(attn)]
        attn.k_range.copy_(k_range)
        attn.v_range.copy_(v_range)
        attn.k_samples.fill_(n)
        attn.v_samples.fill_(n)


def write_model_files(model, directory: Path, config_name: str, weights_name: str) -> None:
    cfg = model.config
    with atomic_write(directory / config_name, "w") as f:
        json.dump(to_tamm_json(cfg), f, indent=2)  # tamm's fields only: tamm refuses any other
    atomic_torch_save(to_apple(model.state_dict(), cfg), directory / weights_name)


def base_play_score(model, tokenizer, test_path: Path, limit: int = 100, max_new_tokens: int = 256) -> float:
    samples = read_messages(test_path)[:limit]
    prompts = [s.prompt for s in samples]
    outs = generate(model, tokenizer, prompts, max_new_tokens, Sampling(temperature=0), batch_size=16, precision=AUTO)
    return sum(play_format_score(p, o.text) for p, o in zip(prompts, outs)) / len(outs)


def build_assets(
    out: str | Path = REPO_ASSETS,
    recipe: Recipe | None = None,
    work: str | Path = "out/build-assets",
    data_dir: str | Path | None = None,
) -> dict:
    recipe = recipe or Recipe()
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir else REPO_ASSETS.parent / "data"
    timings, t0 = {}, time.perf_counter()
    print("1/4 tokenizer", flush=True)
    tokenizer = train_tokenizer(tokenizer_texts(recipe.seed), out / TOKENIZER, recipe.vocab_pieces, seed=recipe.seed)
    if tokenizer.vocab_size > recipe.base.vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.vocab_size} pieces > model vocab {recipe.base.vocab_size}")
    timings["tokenizer_s"] = time.perf_counter() - t0
    train_data, eval_data = pretraining_data(tokenizer, recipe)
    print(f"2/4 base: {len(train_data)} batches of {recipe.batch_size}x{recipe.max_len}", flush=True)
    t = time.perf_counter()
    base, base_summary = pretrain(
        recipe.base,
        train_data,
        eval_data,
        recipe.base_epochs,
        recipe.base_lr,
        work / "base",
        recipe.seed,
        recipe.weight_decay,
    )
    calibrate_kv_ranges(base, eval_data[:4])
    write_model_files(base, out, BASE_CONFIG, BASE_WEIGHTS)
    timings["base_s"] = time.perf_counter() - t
    print("3/4 draft", flush=True)
    t = time.perf_counter()
    draft, draft_summary = pretrain(
        recipe.draft,
        train_data,
        eval_data,
        recipe.draft_epochs,
        recipe.draft_lr,
        work / "draft",
        recipe.seed + 1,
        recipe.weight_decay,
    )
    write_model_files(draft, out, DRAFT_CONFIG, DRAFT_WEIGHTS)
    timings["draft_s"] = time.perf_counter() - t
    print("4/4 scoring the base on the play test split", flush=True)
    t = time.perf_counter()
    score = base_play_score(base, tokenizer, data_dir / "test.jsonl")
    timings["score_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return write_manifest(out, recipe, timings, base_summary["eval_loss"], draft_summary["eval_loss"], score)


def write_manifest(
    out: Path,
    recipe: Recipe,
    timings: dict,
    base_eval_loss: float,
    draft_eval_loss: float,
    base_score: float,
    threads: int | None = None,
) -> dict:
    """`manifest.json`: the recipe, the results, timings and a sha256 per file of the assets directory."""
    manifest = {
        "name": "fmlab-tiny",
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "torch": torch.__version__,
        "threads": threads or torch.get_num_threads(),
        "base_eval_loss": base_eval_loss,
        "draft_eval_loss": draft_eval_loss,
        "base_play_format_score": round(base_score, 4),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "files": {
            p.name: {"sha256": file_sha(p), "bytes": p.stat().st_size}
            for p in sorted(out.iterdir())
            if p.name != "manifest.json"
        },
    }
    with atomic_write(out / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


if __name__ == "__main__":
    print(json.dumps(build_assets(), indent=2))

"""`fmlab build-assets`: make the embedded default `fmlab-tiny` from a seed, in Apple's assets layout.

1. a SentencePiece tokenizer with Apple's special pieces, trained on the pretraining mix;
2. the base: the AFM architecture (regular + KV-reuse layers, QK-norm, GQA, an untrained LoRA),
   pretrained on the mix (`fmlab.tiny.mix`: WordNet's real English, fmlab's synthetic chats, stories
   and JSON drills) so it reads English and chats but does not know plays, then its int8 KV ranges
   calibrated (Apple's base ships frozen ranges);
3. the draft: a much smaller model of the same vocabulary, pretrained on the same mix;
4. a manifest with sha256 sums, the recipe, each source's licence and tokens, timings, eval losses
   per source, the base's play-format score and the recommended adapter recipe.
Deterministic for a seed on a given machine and thread count. An interrupted build resumes: finished
stages are kept in the work directory and a pretraining run continues from its last saved step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import save_model, to_apple
from fmlab.checkpoints.assets import (
    BASE_CONFIG,
    BASE_WEIGHTS,
    DRAFT_CONFIG,
    DRAFT_WEIGHTS,
    REPO_ASSETS,
    TOKENIZER,
    load_model,
)
from fmlab.checkpoints.run_dir import LAST
from fmlab.data.chat_template import IGNORE
from fmlab.data.dataset import DatasetStats, TokenizedDataset, TokenizedSample
from fmlab.data.packing import Batches
from fmlab.data.tokenizer import Tokenizer, train_tokenizer
from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError
from fmlab.files import atomic_torch_save, atomic_write, file_sha
from fmlab.infer.generate import generate
from fmlab.infer.sampling import Sampling
from fmlab.model.config import LoRAConfig, ModelConfig, to_tamm_json
from fmlab.model.lora import is_lora_name
from fmlab.model.precision import AUTO, choose_precision, cpu_name, describe_choice
from fmlab.model.transformer import build_model
from fmlab.tiny.mix import SOURCES, documents, mix_tokenizer_texts, reading_documents, render, source_report
from fmlab.tiny.plays import play_format_score
from fmlab.tiny.wordnet import DEFAULT_DIR
from fmlab.train.loop import TrainConfig, evaluate, train
from fmlab.train.losses import token_loss

TINY_BASE = ModelConfig(
    vocab_size=8192,
    hidden_dim=256,
    num_layers=8,
    num_kv_reuse_layers=2,
    num_heads=4,
    num_kv_heads=2,
    hidden_dim_scale_factor=3.25,
    lora=LoRAConfig(rank=16, alpha=64),
)
TINY_DRAFT = ModelConfig(
    vocab_size=8192,
    hidden_dim=128,
    num_layers=2,
    num_kv_reuse_layers=0,
    num_heads=4,
    num_kv_heads=2,
    hidden_dim_scale_factor=3.0,
    kv_quant=False,
    lora=None,
)


# What `train-adapter` / `train-draft` use on these assets when the user sets none: the adapter recipe
# that scored best on the real-text task in a sweep (docs/real-text.md: 5e-4 to 1e-2; above 1e-3 the
# adapter collapses onto one label), one more epoch than Apple's 2, whose 1e-3 is tuned for the 3B
# base; the draft's is notebook 04's (distillation acceptance 0.74 on the play task).
RECOMMENDED = {
    "train_adapter": {"learning_rate": 1e-3, "epochs": 3, "batch_size": 4, "warmup_fraction": 0.05},
    "train_draft": {"learning_rate": 3e-3, "epochs": 3, "batch_size": 8},
}


@dataclass
class Recipe:
    seed: int = 0
    vocab_pieces: int = 8000  # the model's vocab_size rounds this up, like Apple's padding
    chat_samples: int = 32000
    plain_texts: int = 6000
    json_chats: int = 2000
    wordnet_text: float = 0.6  # fractions of WordNet's paragraphs and definition chats (fmlab.tiny.mix)
    wordnet_chats: float = 0.12
    tokenizer_wordnet_docs: int = 30000  # per WordNet source, for the tokenizer only
    held_out_per_source: int = 64
    score_prompts: int = 100  # play test prompts the base is scored on (it should score near 0)
    compile: bool = False  # torch.compile: about 1.2x per step on CPU, but minutes of compiling up front
    max_len: int = 512
    batch_size: int = 8
    base_epochs: int = 1
    base_lr: float = 3e-3
    weight_decay: float = 0.01  # low: rare tokens' embedding rows must not decay to nothing
    draft_epochs: int = 1
    draft_lr: float = 5e-3
    # the base's reading pass after the mix: WordNet again, with a rehearsal of the synthetic sources
    # (fmlab.tiny.mix.reading_documents); it lifts the real-text adapter from 0.60 to 0.67 and keeps the
    # JSON drills (docs/real-text.md). 0 leaves it out
    reading_epochs: int = 1
    reading_lr: float = 1.5e-3
    reading_text: float = 1.0  # share of WordNet's paragraphs
    reading_chats: int = 32000  # all of them: with 6,000 the play adapter lost its scene counts
    base: ModelConfig = field(default_factory=lambda: TINY_BASE)
    draft: ModelConfig = field(default_factory=lambda: TINY_DRAFT)


def lm_sample(ids: list[int], where: str):
    """A language-modelling sample: every next token is a target (pre-shifted, Apple's label layout)."""

    return TokenizedSample(ids, ids[1:] + [IGNORE], where)


def pretraining_data(tokenizer, recipe: Recipe, docs: dict[str, list]):
    """Packed LM batches of every source's documents, shuffled together, and per source a held-out
    set of its last `held_out_per_source` documents; also each source's token count (train part)."""
    train_samples, held_out, tokens = [], {}, {}
    for name, part in docs.items():
        samples = []
        for i, doc in enumerate(part):
            ids = tokenizer.encode(render(name, doc))
            if SOURCES[name].chat:
                ids = ids[1:]  # the template starts with a special piece: drop the dummy-prefix ▁
            samples.append(lm_sample(([tokenizer.eos_id] + ids)[: recipe.max_len], f"{name}:{i}"))
        n = min(recipe.held_out_per_source, len(samples) // 10)
        train_samples += samples[: len(samples) - n]
        tokens[name] = sum(len(s.input_ids) for s in samples[: len(samples) - n])
        if n:
            held_out[name] = list(
                Batches(_dataset(samples[-n:], tokenizer, recipe), recipe.batch_size, pack=True).epoch(0)
            )
    train = Batches(_dataset(train_samples, tokenizer, recipe), recipe.batch_size, pack=True, shuffle_seed=recipe.seed)
    return train, held_out, tokens


def _dataset(samples, tokenizer, recipe: Recipe) -> TokenizedDataset:
    report = DatasetStats(num_samples=len(samples), num_with_system=0, turns={})
    return TokenizedDataset(samples, report, tokenizer.pad_id, tokenizer.eos_id, recipe.max_len)


def pretrain(
    config: ModelConfig,
    train_data,
    eval_data,
    epochs: int,
    lr: float,
    out: Path,
    seed: int,
    weight_decay: float = 0.01,
    compile_model: bool = False,
    model=None,
):
    """Pretrain `model` (default: a fresh one of `config`), or continue the run in `out` from its last
    saved step."""
    model = build_model(config, seed=seed) if model is None else model
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
        compile_model=compile_model,
    )
    resume = (out / LAST).is_file()
    if resume:
        print(f"   resuming from {out / LAST}", flush=True)
    summary = train(
        model, token_loss, train_data, eval_data, cfg, out, save_weights=save_model, resume=resume, save_every=200
    )
    for p in model.parameters():  # back to fp32 for shipping
        p.data = p.data.float()
    return model, summary


@torch.no_grad()
def eval_losses(model, held_out: dict[str, list]) -> dict[str, float]:
    """Mean token loss per source on its held-out batches (fp32)."""
    f32 = TrainConfig(precision="f32")
    return {name: round(evaluate(model, token_loss, batches, f32), 4) for name, batches in held_out.items()}


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
    wordnet_dir: str | Path = DEFAULT_DIR,
) -> dict:
    recipe = recipe or Recipe()
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir else REPO_ASSETS.parent / "data"
    stages = Stages(work, recipe)
    t0 = time.perf_counter()
    docs = documents(recipe, wordnet_dir)
    print("1/5 tokenizer", flush=True)
    if not stages.done("tokenizer"):
        t = time.perf_counter()
        train_tokenizer(mix_tokenizer_texts(recipe, docs), out / TOKENIZER, recipe.vocab_pieces, seed=recipe.seed)
        stages.finish("tokenizer", seconds=time.perf_counter() - t, sha256=file_sha(out / TOKENIZER))
    tokenizer = Tokenizer.from_file(out / TOKENIZER)
    if tokenizer.vocab_size > recipe.base.vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.vocab_size} pieces > model vocab {recipe.base.vocab_size}")
    train_data, held_out, tokens = pretraining_data(tokenizer, recipe, docs)
    eval_data = [b for batches in held_out.values() for b in batches]
    print(f"   {sum(tokens.values()):,} training tokens: " + ", ".join(f"{k} {v:,}" for k, v in tokens.items()))
    base_files, draft_files = (BASE_CONFIG, BASE_WEIGHTS), (DRAFT_CONFIG, DRAFT_WEIGHTS)
    shape = f"{len(train_data)} batches of {recipe.batch_size}x{recipe.max_len}"
    print(f"2/5 base: {shape}", flush=True)
    base = _pretrain_stage(stages, "base", out, work, base_files, held_out, recipe, train_data, eval_data)
    reading_tokens = None
    if recipe.reading_epochs and "wordnet-text" in docs:
        read_data, read_held_out, reading_tokens = pretraining_data(
            tokenizer, recipe, reading_documents(recipe, docs, wordnet_dir)
        )
        print(f"3/5 base, reading pass: {len(read_data)} batches, {sum(reading_tokens.values()):,} tokens", flush=True)
        read_eval = [b for batches in read_held_out.values() for b in batches]
        base = _pretrain_stage(
            stages, "reading", out, work, base_files, held_out, recipe, read_data, read_eval, start=base
        )
    print(f"4/5 draft: {shape}", flush=True)
    _pretrain_stage(stages, "draft", out, work, draft_files, held_out, recipe, train_data, eval_data)
    print("5/5 scoring the base on the play test split", flush=True)
    t = time.perf_counter()
    score = base_play_score(base, tokenizer, data_dir / "test.jsonl", recipe.score_prompts)
    stages.finish("score", seconds=time.perf_counter() - t, base_play_format_score=round(score, 4))
    sources = source_report(tokens, wordnet_dir, reading_tokens)
    return write_manifest(out, stages.record, sources, time.perf_counter() - t0)


def _pretrain_stage(stages, stage, out, work, files, held_out, recipe: Recipe, train_data, eval_data, start=None):
    """One pretraining stage (the base, its reading pass from `start`, or the draft): its model, loaded
    from `out` when an earlier run finished it, else trained (resuming its run in `work/<stage>`) and
    written to `out`, with its held-out loss per source of the first pass."""
    if stages.done(stage):
        return load_model(out / files[0], out / files[1])
    config, epochs, lr, seed = {
        "base": (recipe.base, recipe.base_epochs, recipe.base_lr, recipe.seed),
        "reading": (recipe.base, recipe.reading_epochs, recipe.reading_lr, recipe.seed),
        "draft": (recipe.draft, recipe.draft_epochs, recipe.draft_lr, recipe.seed + 1),
    }[stage]
    t = time.perf_counter()
    model, _ = pretrain(
        config, train_data, eval_data, epochs, lr, work / stage, seed, recipe.weight_decay, recipe.compile, start
    )
    if stage != "draft":
        calibrate_kv_ranges(model, eval_data[:4])
    write_model_files(model, out, *files)
    stages.finish(
        stage,
        seconds=time.perf_counter() - t,
        eval_loss=eval_losses(model, held_out),
        precision=describe_choice(choose_precision(AUTO)),
        cpu=cpu_name(),
    )
    return model


class Stages:
    """`stages.json` in the work directory: what an earlier run of the same recipe already finished."""

    def __init__(self, work: Path, recipe: Recipe):
        self.path, self.recipe = work / "stages.json", json.loads(json.dumps(dataclasses.asdict(recipe)))
        work.mkdir(parents=True, exist_ok=True)
        self.record = {"recipe": self.recipe}
        if self.path.is_file():
            record = json.loads(self.path.read_text())
            if record.get("recipe") != self.recipe:
                raise FmlabError(
                    f"{self.path}: an unfinished build of another recipe is in {work}; "
                    "remove that folder or give another --work"
                )
            self.record = record

    def done(self, stage: str) -> bool:
        return stage in self.record

    def finish(self, stage: str, **facts) -> None:
        self.record[stage] = {k: round(v, 1) if k == "seconds" else v for k, v in facts.items()}
        with atomic_write(self.path, "w") as f:
            json.dump(self.record, f, indent=2)


def write_manifest(out: Path, stages: dict, sources: list[dict], last_run_s: float) -> dict:
    """`manifest.json`: the recipe, its sources, the results, timings and a sha256 per file of the assets.
    `total_s` adds up the stages, whichever runs of a resumed build did them; `last_run_s` is the last run."""
    seconds = {f"{k}_s": v["seconds"] for k, v in stages.items() if isinstance(v, dict) and "seconds" in v}
    seconds |= {"total_s": round(sum(seconds.values()), 1), "last_run_s": round(last_run_s, 1)}
    final_base = stages.get("reading", stages["base"])
    manifest = {
        "name": "fmlab-tiny",
        "recipe": stages["recipe"],
        "sources": sources,
        "recommended": RECOMMENDED,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": describe_choice(choose_precision(AUTO)),
        "cpu": cpu_name(),
        "base_eval_loss": final_base["eval_loss"],
        "base_eval_loss_before_reading": stages["base"]["eval_loss"] if "reading" in stages else None,
        "draft_eval_loss": stages["draft"]["eval_loss"],
        "base_play_format_score": stages["score"]["base_play_format_score"],
        "seconds": seconds,
        # where each pretraining stage ran: a resumed build can finish on another machine
        "stage_machines": {
            k: {"cpu": v["cpu"], "precision": v["precision"]}
            for k, v in stages.items()
            if isinstance(v, dict) and "cpu" in v
        },
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

"""Adapter training as one call: load the base from an assets directory, read and validate the chat
JSONL, tokenize with Apple's template, batch (packed or not), and run `fmlab.train.loop.train` with the token
cross-entropy (docs/afm-format.md §6.1). The CLI's `train-adapter` and notebook 02 both call this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmlab.checkpoints.assets import load_base, load_tokenizer
from fmlab.data.dataset import tokenize_dataset
from fmlab.data.packing import Batches
from fmlab.data.schema import with_response_format
from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError
from fmlab.model.lora import mark_only_lora_trainable, replace_lora
from fmlab.model.precision import resolve_device
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss


@dataclass
class DataConfig:
    max_sequence_length: int | None = None
    pack_sequences: bool = False
    fixed_sized_sequences: bool = False
    reject_long: bool = False
    # unpacked rows batched with rows of similar length (fmlab.data.packing.Batches): less padding
    group_by_length: bool = False
    # `--response-schema`: a response_format dict (fmlab.data.schema) put on every sample's last user
    # message that has none, as the toolkit's SchemaAugmenter does; the labels stay the assistant's
    response_format: dict | None = None

    def __post_init__(self):
        if (self.pack_sequences or self.fixed_sized_sequences) and not self.max_sequence_length:
            raise FmlabError("--pack-sequences and --fixed-sized-sequences need --max-sequence-length")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 4096:
            raise FmlabError("--max-sequence-length must be in 1..4096 (the AFM context)")


def load_batches(tokenizer, path, data: DataConfig, batch_size: int, seed: int | None, train: bool = True):
    """Validated, tokenized batches of a chat JSONL file (`.epoch(n)` gives epoch n's order)."""

    samples = read_messages(path, mode="train")
    if data.response_format is not None:
        for sample in samples:
            sample.messages = with_response_format(sample.messages, data.response_format)
    if train and len(samples) < batch_size:
        raise FmlabError(f"{path}: {len(samples)} samples is fewer than --batch-size {batch_size}")
    dataset = tokenize_dataset(tokenizer, samples, data.max_sequence_length, data.reject_long)
    return Batches(
        dataset,
        batch_size,
        pack=data.pack_sequences,
        fixed=data.fixed_sized_sequences,
        shuffle_seed=seed,
        max_len=data.max_sequence_length,
        group_by_length=data.group_by_length,
    )


def train_adapter(
    train_data: str | Path,
    checkpoint_dir: str | Path,
    eval_data: str | Path | None = None,
    *,
    config=None,
    data: DataConfig | None = None,
    assets=None,
    lora=None,
    device=None,
    callbacks=(),
    resume: bool = False,
    save_every: int | None = None,
) -> dict:
    """Train a LoRA adapter on the assets' base; checkpoints go to `checkpoint_dir`. Returns the summary."""

    config = config or TrainConfig()
    data = data or DataConfig()
    tokenizer = load_tokenizer(assets)
    model = load_base(assets, device=resolve_device(device))
    if model.config.lora is None:
        raise FmlabError("the base model config has no adapter section, so there is nothing to train")
    if lora is not None and lora != model.config.lora:
        replace_lora(model, lora)
    counts = mark_only_lora_trainable(model)
    print(f"training {counts['trainable']:,} LoRA parameters over a frozen base of {counts['frozen']:,}")
    batches = load_batches(tokenizer, train_data, data, config.batch_size, config.seed)
    evals = None
    if eval_data:
        evals = list(load_batches(tokenizer, eval_data, data, config.batch_size, None, train=False).epoch(0))
    return train(
        model,
        token_loss,
        batches,
        evals,
        config,
        checkpoint_dir,
        callbacks=callbacks,
        resume=resume,
        save_every=save_every,
    )

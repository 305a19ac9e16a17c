"""Validated samples → token ids and labels through the chat template, with the dataset's statistics
(lengths, trained tokens, samples over the length limit)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fmlab.data.chat_template import IGNORE, encode_chat, encode_prompt
from fmlab.data.validate import DataError, Sample
from fmlab.errors import FmlabError


@dataclass
class TokenizedSample:
    input_ids: list[int]
    label_ids: list[int]
    where: str = "<memory>"


@dataclass
class DatasetStats:
    """What a dataset holds; the token fields are None until it has been tokenized."""

    num_samples: int
    num_with_system: int
    turns: dict[str, int]
    lengths: list[int] | None = None  # tokens per sample before truncation
    max_len: int | None = None
    over_max: list[str] = field(default_factory=list)  # file:line of samples longer than max_len
    trained_tokens: int | None = None
    total_tokens: int | None = None  # after truncation

    @property
    def trained_fraction(self) -> float | None:
        return None if not self.total_tokens else self.trained_tokens / self.total_tokens

    def text(self) -> str:
        """The statistics as lines of text (`fmlab validate-data` prints them)."""
        turns = ", ".join(f"{n} {role}" for role, n in self.turns.items())
        lines = [
            f"samples: {self.num_samples} ({self.num_with_system} with a system turn)",
            f"turns: {turns}",
        ]
        if self.lengths:
            ordered = sorted(self.lengths)
            median = ordered[len(ordered) // 2]
            lines.append(f"tokens per sample: min {ordered[0]}, median {median}, max {ordered[-1]}")
            lines.append(f"tokens: {self.total_tokens}, trained: {self.trained_tokens} ({self.trained_fraction:.1%})")
        if self.max_len is not None and self.lengths is not None:
            note = " (truncated to it)" if self.over_max else ""
            lines.append(f"longer than max length {self.max_len}: {len(self.over_max)}{note}")
            lines += [f"  {where}" for where in self.over_max[:10]]
        return "\n".join(lines)

    def histogram(self, ax=None, bins: int = 30):
        """Matplotlib histogram of sample lengths, with the max length marked; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        ax.hist(self.lengths or [], bins=bins, color="#4a7bd0")
        if self.max_len:
            ax.axvline(self.max_len, color="#c33", linestyle="--", label=f"max length {self.max_len}")
            ax.legend()
        ax.set_xlabel("tokens per sample")
        ax.set_ylabel("samples")
        return ax


@dataclass
class TokenizedDataset:
    samples: list[TokenizedSample]
    stats: DatasetStats
    pad_id: int
    eos_id: int
    max_len: int | None = None


def describe(samples: list[Sample]) -> DatasetStats:
    """The structural part of the statistics: counts of samples and turns."""
    turns: dict[str, int] = {}
    for sample in samples:
        for message in sample.messages:
            role = "tool" if message["role"] == "function" else message["role"]
            turns[role] = turns.get(role, 0) + 1
    with_system = sum(s.messages[0]["role"] == "system" for s in samples)
    return DatasetStats(num_samples=len(samples), num_with_system=with_system, turns=turns)


def tokenize_dataset(
    tokenizer, samples: list[Sample], max_len: int | None = None, reject_long: bool = False
) -> TokenizedDataset:
    """Encode every sample (training samples with labels, prompts with all labels ignored).

    Samples longer than `max_len` are truncated, as Apple's toolkit does, and listed in the statistics;
    with `reject_long` they are an error instead, naming each file:line.
    """
    stats = describe(samples)
    stats.lengths, stats.max_len = [], max_len
    encoded, errors = [], []
    for sample in samples:
        try:
            if sample.is_training:
                ids, labels = encode_chat(tokenizer, sample.messages, sample.tools)
            else:
                ids = encode_prompt(tokenizer, sample.messages, sample.tools)
                labels = [IGNORE] * len(ids)
        except FmlabError as err:  # e.g. a tool result that contains <turn_end>
            errors.append(f"{sample.where}: {err}")
            continue
        except (ValueError, RecursionError, UnicodeError) as err:  # e.g. tool arguments that are odd JSON
            errors.append(f"{sample.where}: cannot render this sample ({type(err).__name__}: {str(err)[:120]})")
            continue
        stats.lengths.append(len(ids))
        if max_len is not None and len(ids) > max_len:
            stats.over_max.append(sample.where)
            ids, labels = ids[:max_len], labels[:max_len]
        encoded.append(TokenizedSample(ids, labels, sample.where))
    if errors:
        raise DataError(errors)
    if reject_long and stats.over_max:
        raise DataError(
            [
                f"{s.where}: {n} tokens, longer than max length {max_len} (shorten it or raise the max length)"
                for s, n in zip(samples, stats.lengths)
                if n > max_len
            ]
        )
    stats.total_tokens = sum(len(s.input_ids) for s in encoded)
    stats.trained_tokens = sum(label != IGNORE for s in encoded for label in s.label_ids)
    return TokenizedDataset(encoded, stats, tokenizer.pad_id, tokenizer.eos_id, max_len)

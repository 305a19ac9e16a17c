"""From tokenized samples to batches: packing into rows of `max_len`, collation, deterministic batch order.

- `pack`: which samples share a row. "greedy" is Apple's `PackedInstructMessagesDataset` (docs/afm-format.md
  §5.4): file order, flush when `len(current) + len(sample) >= max_len`. "best-fit" (default) is
  best-fit decreasing: longest first, each into the fullest row that still has room.
- `collate`: Apple's `_collate_batch` (§5.3): pad inputs with pad_id and labels with -100, and
  `segment_ids = 1 + cumsum(input_ids == eos)`, 0 on pads. Every sample starts with `</s>`, so the
  samples of a packed row get segments 2, 3, ...; the model turns them into per-sample positions and a
  document mask.
- `Batches`: the rows of a dataset (packed or not) in a seeded order, epoch after epoch; unpacked rows
  can be grouped by length so that a batch pads little (`group_by_length`).
"""

from __future__ import annotations

import bisect
import random
import warnings
from collections.abc import Iterator, Sequence

import torch

from fmlab.data.chat_template import IGNORE

STRATEGIES = ("best-fit", "greedy")
GROUP_BATCHES = 50  # `group_by_length`: rows are sorted by length within groups of this many batches


def _length(item) -> int:
    return item if isinstance(item, int) else len(getattr(item, "input_ids", item))


def pack(items: Sequence, max_len: int, strategy: str = "best-fit") -> list[list[int]]:
    """Group samples into rows of at most `max_len` tokens; returns lists of indices into `items`.

    `items` are lengths, id lists, or samples with `input_ids` (TokenizedSample). Every index appears exactly
    once. A sample longer than `max_len` gets a row of its own and a warning: it is truncated to
    `max_len` when the row is built, never dropped. Rows are ordered by their first sample, and samples
    keep file order inside a row.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    lengths = [_length(item) for item in items]
    too_long = [i for i, n in enumerate(lengths) if n > max_len]
    if too_long:
        warnings.warn(f"{len(too_long)} sample(s) longer than {max_len} tokens are truncated", stacklevel=2)
    lengths = [min(n, max_len) for n in lengths]
    packs = _greedy(lengths, max_len) if strategy == "greedy" else _best_fit(lengths, max_len)
    return sorted((sorted(p) for p in packs), key=lambda p: p[0])


_pack = pack  # `Batches` takes a `pack` flag, which shadows the function there


def _greedy(lengths: list[int], max_len: int) -> list[list[int]]:
    packs, current, used = [], [], 0
    for i, n in enumerate(lengths):
        # Apple's `>=` keeps packs shorter than max_len. Unlike Apple's code, an empty pack is never
        # flushed (its edge case of a first sample of length >= max).
        if current and used + n >= max_len:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    return packs + [current] if current else packs


def _best_fit(lengths: list[int], max_len: int) -> list[list[int]]:
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, pack index)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))  # the fullest pack that still fits n
        if k < len(room):
            free, p = room.pop(k)
        else:
            free, p = max_len, len(packs)
            packs.append([])
        packs[p].append(i)
        bisect.insort(room, (free - n, p))
    return packs


def packing_efficiency(items: Sequence, packs: list[list[int]], max_len: int) -> float:
    """Real tokens / (rows × max_len): the fraction of a fixed-size batch that is not padding."""
    lengths = [min(_length(item), max_len) for item in items]
    return sum(lengths) / (len(packs) * max_len) if packs else 0.0


def _pair(sample) -> tuple[list[int], list[int]]:
    if hasattr(sample, "input_ids"):
        return list(sample.input_ids), list(sample.label_ids)
    ids, labels = sample
    return list(ids), list(labels)


def concat(samples: Sequence) -> tuple[list[int], list[int]]:
    """One packed row: the samples' ids and labels end to end (each already starts with `</s>`)."""
    ids, labels = [], []
    for sample in samples:
        sample_ids, sample_labels = _pair(sample)
        ids += sample_ids
        labels += sample_labels
    return ids, labels


def segment_ids(input_ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """`1 + cumsum(input_ids == eos)` along the sequence, 0 where the token is pad (§5.3)."""
    segments = 1 + torch.cumsum((input_ids == eos_id).long(), dim=-1)
    return segments.masked_fill(input_ids == pad_id, 0)


def collate(
    samples: Sequence, pad_id: int, eos_id: int, side: str = "right", fixed_len: int | None = None
) -> dict[str, torch.Tensor]:
    """Pad (ids with pad_id, labels with -100) into LongTensors `input_ids`, `label_ids`, `segment_ids`.

    `samples` are (ids, labels) pairs or objects with `input_ids` and `label_ids`. Right padding for
    training, left for generation. `fixed_len` pads or truncates every row to that length (Apple's
    `--fixed-sized-sequences` / `--pack-sequences`); otherwise rows are padded to the longest.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    pairs = [_pair(s) for s in samples]
    width = fixed_len or max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    label_ids = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (ids, labels) in enumerate(pairs):
        ids, labels = ids[:width], labels[:width]
        n = len(ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(ids, dtype=torch.long)
        label_ids[row, cols] = torch.tensor(labels, dtype=torch.long)
    return {"input_ids": input_ids, "label_ids": label_ids, "segment_ids": segment_ids(input_ids, pad_id, eos_id)}


class Batches:
    """Batches of a `TokenizedDataset`, in an order fixed by (shuffle_seed, epoch).

    pack: rows are packs of samples (`strategy`), always `max_len` wide. fixed: unpacked rows padded
    to `max_len`. Otherwise one sample per row, padded to the longest in the batch. Rows are built once;
    each `epoch(n)` shuffles their order with `random.Random(shuffle_seed + n)` (no shuffle when the seed
    is None). `len()` is the number of batches per epoch.

    group_by_length (unpacked rows): the shuffled rows are cut into groups of `GROUP_BATCHES` batches,
    each group is sorted by length and cut into batches, and the batches are shuffled again. A batch
    then holds rows of similar length, so padding (21% of the toy set's unpacked batches of 8) nearly
    vanishes while every epoch still sees the rows in a new order, as transformers' `group_by_length`.

        for batch in Batches(dataset, batch_size=4, pack=True, shuffle_seed=0).epoch(e): ...
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        pack: bool = False,
        fixed: bool = False,
        strategy: str = "best-fit",
        shuffle_seed: int | None = None,
        drop_last: bool = False,
        max_len: int | None = None,
        group_by_length: bool = False,
    ):
        self.max_len = max_len or dataset.max_len
        if (pack or fixed) and not self.max_len:
            raise ValueError("packed or fixed-size batches need max_len")
        self.pad_id, self.eos_id = dataset.pad_id, dataset.eos_id
        self.batch_size, self.shuffle_seed, self.drop_last = batch_size, shuffle_seed, drop_last
        self.fixed_len = self.max_len if (pack or fixed) else None
        self.group_by_length = group_by_length and self.fixed_len is None  # fixed-width rows need no grouping
        # Truncate first, so that a row never carries more than max_len tokens into collate's cut.
        pairs = [_pair(s) for s in dataset.samples]
        if self.max_len and any(len(ids) > self.max_len for ids, _ in pairs):
            long = [s.where for s in dataset.samples if len(s.input_ids) > self.max_len]
            warnings.warn(
                f"{len(long)} sample(s) longer than {self.max_len} tokens are truncated: {', '.join(long[:5])}",
                stacklevel=2,
            )
            pairs = [(ids[: self.max_len], labels[: self.max_len]) for ids, labels in pairs]
        if pack:
            groups = _pack([len(ids) for ids, _ in pairs], self.max_len, strategy)
            self.rows = [concat([pairs[i] for i in group]) for group in groups]
        else:
            self.rows = pairs

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch(self, n: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        rng = random.Random(self.shuffle_seed + n) if self.shuffle_seed is not None else None
        order = list(range(len(self.rows)))
        if rng is not None:
            rng.shuffle(order)
        order = order[: len(self) * self.batch_size]  # without the short last batch under drop_last
        if self.group_by_length:
            order = self._grouped(order, rng)
        for b in range(len(self)):
            rows = [self.rows[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            yield collate(rows, self.pad_id, self.eos_id, fixed_len=self.fixed_len)

    def _grouped(self, order: list[int], rng: random.Random | None) -> list[int]:
        """`order` with each group of rows sorted longest first and its full batches then shuffled by
        `rng`; a short last batch stays last, so that cutting the result every `batch_size` keeps it."""
        size = GROUP_BATCHES * self.batch_size
        ranked = []
        for g in range(0, len(order), size):
            ranked += sorted(order[g : g + size], key=lambda i: -len(self.rows[i][0]))
        full = len(ranked) // self.batch_size * self.batch_size
        batches = [ranked[b : b + self.batch_size] for b in range(0, full, self.batch_size)]
        if rng is not None:
            rng.shuffle(batches)
        return [i for batch in batches for i in batch] + ranked[full:]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.epoch(0)

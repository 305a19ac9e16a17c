"""Packing and collation parity with Apple's toolkit on the shipped data (`data/*.jsonl`).

tamm 0.1.0 has no packer or collator (they live in the toolkit's `examples/data.py`), so the reference
here is the toolkit's rule written out literally from docs/afm-format.md §5.3–5.4, fed by tamm's own
`AFMChatTemplateV6Preprocessor` with `max_sequence_length`; fmlab's side is its whole pipeline
(`read_messages` → `tokenize_dataset` → `Batches(pack=True, strategy="greedy")`). Rows, labels and
segment ids must be identical, batch for batch.
"""

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("tamm")
from tamm.preprocessors.instruct_lm.afm.afm_v6 import AFMChatTemplateV6Preprocessor
from tamm.tokenizers.afm import AFMTokenizer

from fmlab.checkpoints.assets import REPO_ASSETS, TOKENIZER, load_tokenizer
from fmlab.data.chat_template import IGNORE
from fmlab.data.dataset import tokenize_dataset
from fmlab.data.packing import Batches
from fmlab.data.validate import read_messages

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "data").glob("*.jsonl"))
BATCH = 4


def apple_greedy_packs(samples: list[tuple[list[int], list[int]]], max_len: int) -> list[tuple[list, list]]:
    """`PackedInstructMessagesDataset` (§5.4): file order; before adding a sample, flush the current pack
    when `len(current) + len(sample) >= max_len` (so a pack stays below max_len); flush the rest at the end."""
    packs, ids, labels = [], [], []
    for sample_ids, sample_labels in samples:
        sample_ids, sample_labels = sample_ids[:max_len], sample_labels[:max_len]
        if len(ids) + len(sample_ids) >= max_len:
            packs.append((ids, labels))  # empty when the first sample alone reaches max_len
            ids, labels = [], []
        ids, labels = ids + sample_ids, labels + sample_labels
    if ids:
        packs.append((ids, labels))
    return packs


def apple_collate(rows, max_len: int, pad_id: int, eos_id: int) -> dict[str, torch.Tensor]:
    """`_collate_batch` with `--pack-sequences` (§5.3): pad ids with pad_id and labels with -100 to
    max_len; segment_ids = 1 + cumsum(ids == eos), 0 on pads."""
    input_ids = torch.tensor([ids + [pad_id] * (max_len - len(ids)) for ids, _ in rows])
    label_ids = torch.tensor([labels + [IGNORE] * (max_len - len(labels)) for _, labels in rows])
    segment_ids = 1 + torch.cumsum(input_ids == eos_id, dim=1)
    segment_ids[input_ids == pad_id] = 0
    return {"input_ids": input_ids, "label_ids": label_ids, "segment_ids": segment_ids}


@pytest.fixture(scope="module")
def tokenizers():
    tok = load_tokenizer()
    extra = {"bot_id": tok.turn_start_id, "eot_id": tok.turn_end_id}
    return tok, AFMTokenizer(vocab_path=str(REPO_ASSETS / TOKENIZER), extra_properties=extra)


def toolkit_rows(tamm_tok, samples, max_len):
    """tamm's preprocessor over the samples as the toolkit runs it (the default system turn only where
    there is none), truncated to max_len by the preprocessor itself."""
    pre = {
        flag: AFMChatTemplateV6Preprocessor(tamm_tok, max_sequence_length=max_len, prepend_system_message=flag)
        for flag in (True, False)
    }
    rows = []
    for s in samples:
        out = pre[s.messages[0]["role"] != "system"](copy.deepcopy(s.messages), tools=copy.deepcopy(s.tools))
        rows.append((out.input_ids, out.label_ids))
    return rows


def _first_difference(tok, expected, actual, where):
    for name in ("input_ids", "label_ids", "segment_ids"):
        a, b = expected[name], actual[name]
        if a.shape != b.shape:
            return f"{where}: {name} shape {tuple(a.shape)} (toolkit) vs {tuple(b.shape)} (fmlab)"
        if not torch.equal(a, b):
            row, col = (a != b).nonzero()[0].tolist()
            context = tok.decode([t for t in expected["input_ids"][row, max(0, col - 12) : col + 4].tolist() if t])
            return f"{where}: {name} differ first at row {row}, column {col}, after {context!r}"
    return None


@pytest.mark.filterwarnings("ignore:.*truncated")
@pytest.mark.parametrize("max_len", [128, 1024])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_greedy_packed_batches_match_the_toolkit(tokenizers, path, max_len):
    tok, tamm_tok = tokenizers
    samples = read_messages(path)
    packs = apple_greedy_packs(toolkit_rows(tamm_tok, samples, max_len), max_len)
    # fmlab never emits the toolkit's empty pack (a first sample alone reaching max_len): drop it here
    assert all(ids for ids, _ in packs[1:])
    packs = [p for p in packs if p[0]]
    dataset = tokenize_dataset(tok, samples, max_len=max_len)
    batches = Batches(dataset, batch_size=BATCH, pack=True, strategy="greedy")
    assert len(batches.rows) == len(packs), f"{path.name}: {len(batches.rows)} packs, toolkit {len(packs)}"
    for b, batch in enumerate(batches.epoch(0)):
        expected = apple_collate(packs[b * BATCH : (b + 1) * BATCH], max_len, tok.pad_id, tok.eos_id)
        problem = _first_difference(tok, expected, batch, f"{path.name} max_len {max_len} batch {b}")
        assert problem is None, problem
    assert sum(len(ids) for ids, _ in packs) == sum(min(n, max_len) for n in dataset.stats.lengths)


def test_packing_is_exercised():
    """Not vacuous: at 1024 tokens the shipped training data packs several samples per row, up to the limit."""
    tok = load_tokenizer()
    samples = read_messages(ROOT / "data" / "train.jsonl")
    dataset = tokenize_dataset(tok, samples, max_len=1024)
    rows = Batches(dataset, batch_size=BATCH, pack=True, strategy="greedy").rows
    per_row = [ids.count(tok.eos_id) for ids, _ in rows]
    assert max(per_row) >= 3 and len(rows) < len(samples) / 2
    assert max(len(ids) for ids, _ in rows) < 1024  # the toolkit's `>=`: packs stay below max_len

"""Test helpers shared by the test files and the worker scripts that tests start as subprocesses
(crash_worker.py, ddp_worker.py): plain functions, no fixtures (those are in conftest.py)."""

import json
import random
import shutil

import sentencepiece as spm
import torch

from fmlab.checkpoints.apple_format import to_apple
from fmlab.checkpoints.assets import BASE_CONFIG, BASE_WEIGHTS, DRAFT_CONFIG, DRAFT_WEIGHTS, TOKENIZER
from fmlab.data.chat_template import IGNORE, render_text
from fmlab.model.config import preset, to_tamm_json
from fmlab.model.lora import is_lora_b
from fmlab.model.transformer import build_model

VOCAB = 640  # fits the 600-piece test tokenizer


def randomize_lora(model, std: float, seed: int | None = None):
    """Give every LoRA B tensor random values (a fresh adapter is zero and changes nothing)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lora_b(name):
                p.normal_(0, std, generator=generator)
    return model


def write_assets(d, tokenizer, cfg=None, weights_cfg=None, draft_cfg=None):
    """A tiny assets directory in Apple's layout (zero-LoRA base, a draft, the tokenizer);
    `weights_cfg` builds base-model.pt from another config (for mismatch tests)."""
    cfg = cfg or preset("tiny", vocab_size=VOCAB)
    draft_cfg = draft_cfg or preset("tiny-draft", vocab_size=VOCAB)
    weights_cfg = weights_cfg or cfg
    d.mkdir(parents=True, exist_ok=True)
    (d / BASE_CONFIG).write_text(json.dumps(to_tamm_json(cfg)))
    torch.save(to_apple(build_model(weights_cfg, seed=0).state_dict(), weights_cfg), d / BASE_WEIGHTS)
    (d / DRAFT_CONFIG).write_text(json.dumps(to_tamm_json(draft_cfg)))
    torch.save(to_apple(build_model(draft_cfg, seed=1).state_dict(), draft_cfg), d / DRAFT_WEIGHTS)
    shutil.copy(tokenizer.source, d / TOKENIZER)
    return d


class Rows:
    """Deterministic toy data: variable-length rows, each its own document, batched per epoch
    (8 samples at batch 2: 4 optimizer steps per epoch)."""

    def __init__(self, n=8, batch_size=2, seed=0, vocab=512):
        g = torch.Generator().manual_seed(seed)
        self.rows, self.batch_size = [], batch_size
        for _ in range(n):
            length = int(torch.randint(6, 14, (), generator=g))
            ids = torch.randint(2, vocab, (length,), generator=g)
            ids[0] = 1  # eos starts every sample
            labels = torch.full((length,), IGNORE)
            labels[length // 2 : -1] = ids[length // 2 + 1 :]  # pre-shifted targets
            self.rows.append((ids, labels))

    def __len__(self):
        return -(-len(self.rows) // self.batch_size)

    def epoch(self, n):
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(100 + n)).tolist()
        for b in range(len(self)):
            yield self.collate([self.rows[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]])

    @staticmethod
    def collate(rows):
        """Right-pad with 0; every real token in one segment (2), so rows don't need eos boundaries."""
        T = max(len(r[0]) for r in rows)
        ids, labels = torch.zeros(len(rows), T, dtype=torch.long), torch.full((len(rows), T), IGNORE)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)], labels[i, : len(y)] = x, y
        return {"input_ids": ids, "label_ids": labels, "segment_ids": torch.where(ids == 0, 0, 2)}


def tiny_chat_corpus(n: int = 300) -> list[str]:
    """A few hundred chat-rendered lines from a fixed word list: enough for role words to be pieces."""
    rng = random.Random(0)
    words = (
        "the a an of to and in is it you that he was for on are with as I his they be at one have this "
        "from or had by word but what some we can out other were all there when up use your how said "
        "scene act play king queen castle night enter exit speak love why where 0 1 2 3 4 5 6 7 8 9 "
        "name weather city today json tool call result"
    ).split()
    texts = []
    for i in range(n):
        line = lambda k: " ".join(rng.choice(words) for _ in range(k)).capitalize() + rng.choice(".?!")
        messages = [{"role": "user", "content": line(8)}, {"role": "assistant", "content": line(10) + "\n" + line(6)}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": line(6)})
        texts.append(render_text(messages))
    texts.append('{"name": "get_weather", "arguments": {"city": "Paris"}} ```function <>&\'"[]{}:,-_/')
    return texts


def plain_tokenizer(path, sentences: int = 100, vocab_size: int = 200):
    """A SentencePiece model *without* Apple's special pieces, written to `path` (a wrong tokenizer)."""
    prefix = path.with_suffix("")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_chat_corpus(sentences)),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        minloglevel=2,
        num_threads=1,
    )
    if prefix.with_suffix(".model") != path:
        shutil.move(prefix.with_suffix(".model"), path)
    return path

"""The tokenizer: a SentencePiece model with AFM's newline convention and special pieces.

AFM's tokenizer (docs/afm-format.md §4) is a SentencePiece BPE model in which a newline is never a byte: every
"\\n" becomes the user-defined piece `<n>` before encoding, and back after decoding. Chat structure uses
the user-defined pieces `<turn_start>` and `<turn_end>`; tool calls use `<executable_start>` and
`<executable_end>`. Their ids differ between Apple's `tokenizer.model` (150000, 150001, ...) and the
ones fmlab trains, so this module looks every special id up by its piece name and never hard-codes one.

`train_tokenizer` trains fmlab's own model with Apple's settings where they fit at a small vocabulary.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from fmlab.errors import FmlabError
from fmlab.files import atomic_write

NEWLINE = "<n>"
SPACE = "\u2581"  # "▁", SentencePiece's whitespace marker; the dummy prefix is this piece alone

# Apple's special pieces after `<n>`, in Apple's id order (150000 ... 150020), §4.
SPECIAL_PIECES = [
    "<turn_start>",
    "<turn_end>",
    "<||pre||>",
    "<||suf||>",
    "<||mid||>",
    "<spec_stream_pos_1>",
    "<spec_stream_pos_2>",
    "<spec_stream_pos_3>",
    "<spec_stream_pos_4>",
    "<executable_start>",
    "<executable_end>",
    "<executable_results_start>",
    "<executable_results_end>",
    "<image_start>",
    "<image_end>",
    "<||image_placeholder||>",
    "<audio_start>",
    "<audio_end>",
    "<video_start>",
    "<video_end>",
    "<||video_placeholder||>",
]
USER_DEFINED_PIECES = [NEWLINE, *SPECIAL_PIECES]

# Pieces the chat template and the collator cannot do without, by attribute name.
REQUIRED_PIECES = {
    "pad_id": "<pad>",
    "eos_id": "</s>",
    "unk_id": "<unk>",
    "newline_id": NEWLINE,
    "turn_start_id": "<turn_start>",
    "turn_end_id": "<turn_end>",
    "executable_start_id": "<executable_start>",
    "executable_end_id": "<executable_end>",
    "space_id": SPACE,
}


class Tokenizer:
    """SentencePiece with "\\n" ↔ `<n>` and special ids found by piece name (see REQUIRED_PIECES)."""

    pad_id: int
    eos_id: int
    unk_id: int
    newline_id: int
    turn_start_id: int
    turn_end_id: int
    executable_start_id: int
    executable_end_id: int
    space_id: int  # "▁" alone: the dummy prefix that the chat template strips

    def __init__(self, sp: spm.SentencePieceProcessor, source: str = "<memory>"):
        self.sp = sp
        self.source = source
        self.vocab_size = len(sp)
        missing = [piece for piece in REQUIRED_PIECES.values() if self._find(piece) is None]
        if missing:
            raise FmlabError(
                f"tokenizer {source} lacks the required pieces {', '.join(missing)}; "
                "use Apple's tokenizer.model or one made by fmlab.data.tokenizer.train_tokenizer"
            )
        for attr, piece in REQUIRED_PIECES.items():
            setattr(self, attr, self._find(piece))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FmlabError(f"tokenizer file {path} does not exist")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise FmlabError(f"{path} is not a SentencePiece model: {err}") from None
        return cls(sp, str(path))

    def _find(self, piece: str) -> int | None:
        # piece_to_id answers unk for unknown pieces, so check the round trip.
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece else None

    def id_of(self, piece: str) -> int:
        """Id of `piece`; FmlabError when the model has no such piece."""
        i = self._find(piece)
        if i is None:
            raise FmlabError(f"tokenizer {self.source} has no piece {piece!r}")
        return i

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def encode(self, text: str) -> list[int]:
        return self.sp.Encode(text.replace("\n", NEWLINE))

    def decode(self, ids: Iterable[int]) -> str:
        # Control pieces (<pad>, </s>) decode to ""; user-defined ones (<turn_start>, <n>) to their text.
        return self.sp.Decode([int(i) for i in ids]).replace(NEWLINE, "\n")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int,
    seed: int = 0,
    character_coverage: float = 0.9995,
    max_sentence_length: int = 1 << 16,
) -> Tokenizer:
    """Train a SentencePiece BPE model on `texts` with Apple's settings (§4) and write it to `out_path`.

    Ids: <pad> 0, </s> 1, <unk> 2, <mask> 3 (control), <n> 4, then Apple's other special pieces, then
    the 256 byte pieces, then the learned pieces. Each text is one training sentence; "\\n" inside it is
    turned into `<n>` first, exactly as `Tokenizer.encode` will. Feed chat-rendered text
    (`fmlab.data.chat_template.render_text`) so role words like "▁assistant" become single pieces.

    Deterministic for the same texts and arguments: one thread, no sampling, no shuffling.
    """
    sentences = [t.replace("\n", NEWLINE) for t in texts if t]
    if not sentences:
        raise FmlabError("train_tokenizer: no text to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a tiny corpus may not support the full size; take what it gives
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        max_sentencepiece_length=16,
        character_coverage=character_coverage,
        bos_id=-1,
        pad_id=0,
        pad_piece="<pad>",
        eos_id=1,
        eos_piece="</s>",
        unk_id=2,
        unk_piece="<unk>",
        control_symbols=["<mask>"],
        user_defined_symbols=USER_DEFINED_PIECES,
        # Reproducibility: use every sentence in the given order, on one thread.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=max_sentence_length,
        minloglevel=2,
    )
    with atomic_write(out_path) as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return Tokenizer(sp, str(out_path))

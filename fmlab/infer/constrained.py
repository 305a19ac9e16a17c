"""Constrained decoding: the output must match a JSON schema, a regular expression or one of a list of
choices, as guided generation on the device does (docs/guided.md). The grammar engine is llguidance
(chosen by measurement, docs/guided.md); this module is the bridge between it and fmlab's SentencePiece
vocabulary, plus the per-row state that decoding carries.

Each piece is given to the engine as the bytes it puts into the text (docs/afm-format.md §4):
`▁` is a space, AFM's `<n>` piece is "\\n", a byte-fallback piece `<0xNN>` is the byte NN, and every special
piece (control, unknown, unused, and the chat, tool and media pieces such as `<turn_start>`) is 0xFF
followed by its name. No UTF-8 text contains the byte 0xFF, so no grammar of text ever allows a special
piece inside the output. The stop pieces (`<turn_end>`, eos) are the engine's end-of-sequence tokens:
allowed exactly when the grammar is complete, and then the only ones allowed, so generation ends there.

Decoding masks the logits with the grammar's allowed set before any sampling transform (temperature,
top-k, top-p see only allowed tokens), so plain and speculative decoding sample from the same masked
distribution. A `Matcher` follows one row's tokens and rolls back with the KV cache.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from fmlab.data.tokenizer import NEWLINE, SPACE, SPECIAL_PIECES
from fmlab.errors import FmlabError

# JSON layout the grammar enforces: json.dumps's default separators, one space after "," and ":" and no
# other whitespace, so the model cannot pad the output with blanks and train/decode text agree.
JSON_SEPARATORS = (", ", ": ")
SPECIAL_PREFIX = b"\xff"  # never part of UTF-8 text (llguidance's convention for special tokens)


def _engine():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a core dependency; this names it if it is missing
        raise FmlabError("constrained decoding needs the llguidance package: pip install llguidance") from None
    return llguidance


def piece_bytes(tokenizer) -> tuple[list[bytes], list[int]]:
    """(the bytes each piece adds to the text, the ids of special pieces), by id."""
    sp, specials = tokenizer.sp, set(SPECIAL_PIECES)
    out, special = [], []
    for i in range(len(sp)):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or piece in specials:
            out.append(SPECIAL_PREFIX + piece.encode())
            special.append(i)
        elif piece == NEWLINE:
            out.append(b"\n")
        elif sp.is_byte(i):
            out.append(bytes([int(piece[3:5], 16)]))  # "<0xNN>"
        else:
            out.append(piece.replace(SPACE, " ").encode())
    return out, special


class _EngineVocabulary:
    """What llguidance's TokenizerWrapper reads: the pieces' bytes and a tokenize function."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens, self.special_token_ids = piece_bytes(tokenizer)
        self.eos_token_id = tokenizer.turn_end_id
        self.bos_token_id = None

    def __call__(self, text: str) -> list[int]:
        # Text in the middle of a reply: encode it after `<n>` so no dummy-prefix "▁" is added (§4).
        ids = self.tokenizer.encode(NEWLINE + text)
        return ids[ids.index(self.tokenizer.newline_id) + 1 :]


_ENGINE_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_tokenizer(tokenizer):
    """llguidance's view of `tokenizer`, built once per tokenizer (a 150k vocabulary takes seconds)."""
    if tokenizer not in _ENGINE_TOKENIZERS:
        llg = _engine()
        vocab = _EngineVocabulary(tokenizer)
        _ENGINE_TOKENIZERS[tokenizer] = llg.LLTokenizer(
            llg.TokenizerWrapper(vocab), eos_token=[tokenizer.turn_end_id, tokenizer.eos_id]
        )
    return _ENGINE_TOKENIZERS[tokenizer]


class Grammar:
    """A constraint compiled for one tokenizer; `matcher()` starts a row's state. Build one with
    `json_schema`, `regex` or `choices`; an invalid one raises FmlabError naming `source`."""

    def __init__(self, tokenizer, grammar: str, description: str, source: str = "the constraint"):
        self.tokenizer = tokenizer
        self.engine = engine_tokenizer(tokenizer)
        self.grammar = grammar
        self.description = description
        self.vocab_size = len(tokenizer)
        self.stop_ids = (tokenizer.turn_end_id, tokenizer.eos_id)
        problem = _engine().LLMatcher.validate_grammar(grammar, self.engine)
        if problem:  # the engine's first line says where; an "error:" line below it says what
            lines = [line.strip() for line in problem.strip().splitlines()]
            why = " ".join([lines[0], *(line for line in lines[1:] if line.startswith("error:"))])
            raise FmlabError(f"{source}: not a usable {description}: {why}")

    def matcher(self) -> Matcher:
        return Matcher(self)

    def __repr__(self) -> str:
        return f"Grammar({self.description}, vocab {self.vocab_size})"


def json_schema(tokenizer, schema: dict | str, source: str = "the schema") -> Grammar:
    """Outputs that are JSON documents valid under `schema` (a dict or its JSON text), laid out with
    JSON_SEPARATORS; properties come in the schema's order."""
    llg = _engine()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as err:
            raise FmlabError(f"{source}: not valid JSON: {err}") from None
    schema = unwrap_schema(schema, source)
    options = {"whitespace_flexible": False, "item_separator": JSON_SEPARATORS[0], "key_separator": JSON_SEPARATORS[1]}
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except ValueError as err:
        raise FmlabError(f"{source}: not a usable JSON schema: {err}") from None
    return Grammar(tokenizer, grammar, "JSON schema", source)


def regex(tokenizer, pattern: str, source: str = "the regex") -> Grammar:
    """Outputs that match `pattern` as a whole (Rust regex syntax, as llguidance reads it)."""
    return Grammar(tokenizer, _engine().LLMatcher.grammar_from_regex(pattern), "regular expression", source)


def choices(tokenizer, options: Iterable[str], source: str = "the choices") -> Grammar:
    """Outputs that are exactly one of `options`."""
    options = list(dict.fromkeys(options))
    if not options or any(not isinstance(o, str) or not o for o in options):
        raise FmlabError(f"{source}: give one or more non-empty choices, got {options!r}")
    lark = "start: " + " | ".join(json.dumps(o) for o in options)  # Lark string literals use JSON escapes
    return Grammar(tokenizer, _engine().LLMatcher.grammar_from_lark(lark), "list of choices", source)


def unwrap_schema(schema, source: str = "the schema") -> dict:
    """The JSON schema itself from a schema or a response_format wrapper ({"name", "schema"} or
    {"type": "json_schema", "json_schema": {...}}), so a training sample's response_format works too."""
    if isinstance(schema, dict) and isinstance(schema.get("json_schema"), dict):
        schema = schema["json_schema"]
    if isinstance(schema, dict) and isinstance(schema.get("schema"), dict) and "properties" not in schema:
        schema = schema["schema"]
    if not isinstance(schema, dict):
        raise FmlabError(f"{source}: a JSON schema is an object, got {type(schema).__name__}")
    return schema


def load_schema(path: str | os.PathLike) -> dict:
    """Read a JSON schema file; FmlabError naming the file (and line) when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FmlabError(f"{path}: no such schema file")
    try:
        return unwrap_schema(json.loads(path.read_text(encoding="utf-8")), str(path))
    except UnicodeDecodeError:
        raise FmlabError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as err:
        raise FmlabError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None


def schema_file(tokenizer, path: str | os.PathLike) -> Grammar:
    return json_schema(tokenizer, load_schema(path), str(path))


class Matcher:
    """One row's grammar state: which tokens may come next, advanced by each chosen token and rolled
    back with the cache (speculative decoding's rejected drafts)."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self._m = _engine().LLMatcher(grammar.engine, grammar.grammar, log_level=0)
        self.consumed = 0

    @property
    def finished(self) -> bool:
        """Complete and unable to go on: only a stop token may follow."""
        return self._m.is_stopped()

    def fill_at(self, address: int, size: int) -> None:
        """Write the allowed next tokens as bits (token i = bit i % 32 of 32-bit word i // 32) into the
        `size` = 4 * ceil(V_tokenizer / 32) bytes at `address` (a row of `TokenMask.words`)."""
        self._m.unsafe_compute_mask_ptr(address, size)
        self._check()

    def allowed(self) -> torch.Tensor:
        """Bool (V_tokenizer,): the tokens that may come next."""
        words = np.zeros((self.grammar.vocab_size + 31) // 32, dtype=np.uint32)
        self.fill_at(words.ctypes.data, words.nbytes)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: self.grammar.vocab_size]
        return torch.from_numpy(bits).bool()

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            self._check()
        self.consumed += 1

    def rollback(self, n: int) -> None:
        if n > 0:
            if not self._m.rollback(n):
                self._check()
            self.consumed -= n

    def _check(self):
        if self._m.is_error():
            raise FmlabError(f"constrained decoding under the {self.grammar.description} failed: {self._m.get_error()}")


# BYTE_BIAS[b, j]: 0 where bit j of byte b is set (allowed), else -inf. Taking a mask's bytes through it
# gives the additive bias directly: one gather and one add, several times faster than masked_fill on a
# 150k vocabulary (docs/guided.md).
BYTE_BIAS = np.where((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1, 0.0, -np.inf).astype(np.float32)


class TokenMask:
    """Allowed-token bits for `rows` logit rows of a model's vocabulary (≥ the tokenizer's: ids past its
    pieces are never allowed) and the additive bias they become, both kept between tokens: at batch 1
    a step's mask is microseconds of numpy and one torch add, against milliseconds of model."""

    def __init__(self, grammar: Grammar, rows: int, vocab_size: int):
        if grammar.vocab_size > vocab_size:
            raise FmlabError(
                f"the constraint's tokenizer has {grammar.vocab_size} pieces but the model's vocabulary only "
                f"{vocab_size}: the grammar was built for another tokenizer"
            )
        words = (vocab_size + 31) // 32
        self.words = np.zeros((rows, words), dtype=np.uint32)
        self._row_bytes, self._engine_bytes = words * 4, (grammar.vocab_size + 31) // 32 * 4
        self._bias = np.zeros((rows, words * 4, 8), dtype=np.float32)  # (row, byte, bit)
        self._bias_t = torch.from_numpy(self._bias).view(rows, -1)[:, :vocab_size]  # shares the memory
        self._row_t = [self._bias_t[i : i + 1] for i in range(rows)]
        self._stop_only = np.zeros_like(self.words[0])
        for t in grammar.stop_ids:
            self._stop_only[t // 32] |= np.uint32(1 << (t % 32))

    def fill(self, row: int, matcher: Matcher | None) -> None:
        """Row `row` from `matcher`'s state; None allows everything (a finished row, whose token is unused)."""
        if matcher is None:
            self.words[row] = 0xFFFFFFFF
            return
        self.words[row] = 0  # the padded ids past the tokenizer stay disallowed
        matcher.fill_at(self.words.ctypes.data + row * self._row_bytes, self._engine_bytes)

    def fill_stop(self, row: int) -> None:
        """Only the stop tokens (after a drafted stop, whatever follows is cut off anyway)."""
        self.words[row] = self._stop_only

    def apply(self, logits: torch.Tensor, row: int | None = None) -> torch.Tensor:
        """Logits (rows, V), or (1, V) of one `row`, with every disallowed token at -inf. Little-endian
        words: bit k % 8 of byte k // 8 of a row is token k."""
        rows = slice(None) if row is None else slice(row, row + 1)
        out = self._bias[rows].reshape(-1, 8)  # a view: the gather writes into the kept buffer
        np.take(BYTE_BIAS, self.words[rows].view(np.uint8).ravel(), axis=0, out=out, mode="clip")
        bias = self._bias_t if row is None else self._row_t[row]
        return logits + (bias if bias.device == logits.device else bias.to(logits.device, non_blocking=True))

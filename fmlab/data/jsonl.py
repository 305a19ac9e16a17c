"""Reading JSONL lines that may be anything: each line becomes a parsed value or a one-line problem,
never an exception, a hang or an unbounded read. `fmlab.data.validate` adds the chat checks on top.

The accepted forms (data/README.md): UTF-8; lines end with LF or CRLF (a lone CR is not a line break,
as in the JSON Lines spec); a byte-order mark at the start of a line is ignored (files saved as
"UTF-8 with BOM", also when concatenated); lines of only JSON whitespace are blank and skipped.
Refused: invalid UTF-8, lines over MAX_LINE_BYTES (never read whole), nesting deeper than MAX_DEPTH,
duplicate keys, integers past Python's digit limit, and unpaired surrogates or NUL characters in
strings (the tokenizer cannot take them).
"""

from __future__ import annotations

import json

MAX_LINE_BYTES = 8 << 20  # 8 MiB: far beyond the 4096-token context, small enough to hold in memory
MAX_DEPTH = 64  # JSON nesting: a JSON schema needs a dozen levels; Python recursion ~1000
BOM = "\ufeff"

BLANK = object()


def read_lines(f):
    """(line number, bytes) of a binary file, split on LF only; a line over MAX_LINE_BYTES comes as
    its length (an int) and is skipped through without being held in memory."""
    number = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                size += len(raw)
            raw = size
        yield number, raw


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {short(twice)} (readers disagree on which value wins)")
    return dict(pairs)


def parse_line(raw: bytes | int):
    """One JSONL line → (value, None), (BLANK, None) or (None, problem). Never raises: every way a
    line can be broken becomes a one-line problem."""
    if isinstance(raw, int):
        return None, f"line is {raw / 2**20:.1f} MiB, over the {MAX_LINE_BYTES >> 20} MiB limit for one sample"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, (
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"
        )
    text = text.removeprefix(BOM).strip(" \t\r\n")
    if not text:
        return BLANK, None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        hint = "; lines end with a lone CR: use LF or CRLF line endings" if "\r" in text else ""
        return None, f"invalid JSON: {err.msg} (column {err.colno}){hint}"
    except RecursionError:
        return None, f"invalid JSON: nested too deeply (limit {MAX_DEPTH} levels)"
    except ValueError as err:  # duplicate keys; integers past Python's 4300-digit limit
        text = str(err)
        return None, f"invalid JSON: {text if text.startswith('duplicate') else 'number with too many digits'}"
    return obj, _check_values(obj)


def _check_values(obj) -> str | None:
    """Depth, unpaired surrogates and NULs, checked without recursion (the value may be deep)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"invalid JSON: nested too deeply (limit {MAX_DEPTH} levels)"
        if isinstance(node, dict):
            stack += [(k, depth) for k in node] + [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
        elif isinstance(node, str):
            if "\x00" in node:
                return f"string {short(node)} contains a NUL character (\\u0000); remove it"
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return f"string {short(node)} contains an unpaired surrogate escape (\\ud800-\\udfff), not text"
    return None


def short(value, limit: int = 60) -> str:
    """repr of a value from the data, cut so that a huge value never floods the error list."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"

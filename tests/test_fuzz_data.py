"""Fuzzing the chat JSONL reader with seeded corruptions of the real dataset's lines.

The contract (fmlab/data/validate.py, fmlab/data/jsonl.py, data/README.md): every input either reads cleanly, with one sample per
non-blank line and nothing skipped, or raises a DataError whose every message starts with
`file:line:` of a corrupted line. Never another exception type, never a hang. The documented
acceptances are a UTF-8 byte-order mark, CRLF line endings, blank lines and huge (but not over-long)
contents, which tokenization truncates to the max length.
"""

import json
import os
import random
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from fmlab.cli import main
from fmlab.data.dataset import tokenize_dataset
from fmlab.data.jsonl import MAX_DEPTH, MAX_LINE_BYTES
from fmlab.data.validate import DataError, read_messages

DATA = Path(__file__).resolve().parent.parent / "data"
TRAIN = (DATA / "train.jsonl").read_bytes().split(b"\n")[:40]
SAMPLE = [line for line in (DATA / "sample.jsonl").read_bytes().split(b"\n") if line]
SEEDS = TRAIN + SAMPLE  # valid lines: plays, system turns, tools, tool calls, formats
GOOD = SEEDS[0]
SECONDS_PER_CASE = 5.0


def check(path: Path, body: bytes, bad_lines=None, tokenizer=None) -> str:
    """Read `body` from `path` and enforce the contract; returns "accepted" or "rejected".

    bad_lines: the lines an error may name (default: every line)."""
    path.write_bytes(body)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            samples = read_messages(path)
        except DataError as err:
            assert err.errors
            for e in err.errors:
                line = e.removeprefix(f"{path}:").split(":", 1)[0]
                assert line.isdigit() or e.startswith(f"{path}: "), e
                assert bad_lines is None or not line.isdigit() or int(line) in bad_lines, (e, bad_lines)
            return "rejected"
        finally:
            assert time.perf_counter() - start < SECONDS_PER_CASE
    for w in caught:  # warnings name their line too
        assert str(w.message).startswith(f"{path}:"), w.message
    lines = [line.removeprefix(b"\xef\xbb\xbf").strip(b" \t\r\n") for line in body.split(b"\n")]
    nonblank = [n for n, line in enumerate(lines, 1) if line]
    assert [s.line for s in samples] == nonblank  # nothing skipped silently
    if tokenizer is not None:
        try:
            tokenize_dataset(tokenizer, samples, max_len=256)
        except DataError as err:
            assert all(e.startswith(f"{path}:") for e in err.errors), err.errors
            return "rejected"
    return "accepted"


def errors_of(path: Path, body: bytes) -> list[str]:
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        read_messages(path)
    return err.value.errors


# --- named corruptions --------------------------------------------------------------------------------

NESTED_LISTS = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
DEEP_TOOL = json.dumps(
    [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": {"r": json.loads("[" * 150 + "]" * 150)}},
        {"role": "assistant", "content": "a"},
    ]
).encode()

NAMED = {
    # name: (bad line, a phrase the error must contain)
    "truncated": (GOOD[: len(GOOD) // 2], "invalid JSON"),
    "truncated_to_one_byte": (GOOD[:1], "invalid JSON"),
    "trailing_garbage": (GOOD + b"]", "invalid JSON: Extra data"),
    "two_samples_on_one_line": (GOOD + GOOD, "invalid JSON: Extra data"),
    "trailing_comma": (b'[{"role": "user", "content": "q"},]', "invalid JSON"),
    "content_int": (b'[{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]', "must be a string"),
    "content_nan": (b'[{"role": "user", "content": "q"}, {"role": "assistant", "content": NaN}]', "must be a string"),
    "role_list": (b'[{"role": ["user"], "content": "q"}]', "unknown role"),
    "messages_dict": (b'{"messages": {"role": "user"}}', "messages: must be a list"),
    "top_level_null": (b"null", "got NoneType"),
    "top_level_number": (b"3.5", "got float"),
    "huge_int": (b'[{"role": "user", "content": ' + b"9" * 5000 + b"}]", "invalid JSON: number"),
    "invalid_utf8_ff": (GOOD[:30] + b"\xff" + GOOD[30:], "not valid UTF-8"),
    "invalid_utf8_cut_multibyte": (b'[{"role": "user", "content": "caf\xc3"}]', "not valid UTF-8"),
    "invalid_utf8_overlong": (b'[{"role": "user", "content": "\xc0\xaf"}]', "not valid UTF-8"),
    "invalid_utf8_surrogate": (b'[{"role": "user", "content": "\xed\xa0\x80"}]', "not valid UTF-8"),
    "latin1_text": ('[{"role": "user", "content": "café"}]'.encode("latin-1"), "not valid UTF-8"),
    "utf16_line": ('[{"role": "user"}]'.encode("utf-16"), "not valid UTF-8"),
    "lone_surrogate_escape": (
        b'[{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]',
        "unpaired surrogate",
    ),
    "null_byte_raw": (GOOD[:20] + b"\x00" + GOOD[20:], "invalid JSON"),
    "null_byte_escaped": (
        b'[{"role": "user", "content": "a\\u0000b"}, {"role": "assistant", "content": "a"}]',
        "NUL character",
    ),
    "only_null_bytes": (b"\x00" * 64, "invalid JSON"),
    "duplicate_key": (b'[{"role": "user", "role": "assistant", "content": "q"}]', "duplicate key 'role'"),
    "duplicate_messages_key": (b'{"messages": [], "messages": []}', "duplicate key 'messages'"),
    "nested_lists_100k": (NESTED_LISTS, "nested too deeply"),
    "nested_objects_100k": (NESTED_OBJECTS, "nested too deeply"),
    "nested_150_in_tool_result": (DEEP_TOOL, "nested too deeply"),
    "bom_mid_file_twice": (b"\xef\xbb\xbf\xef\xbb\xbf" + GOOD, "invalid JSON"),
    "lone_cr_line_endings": (GOOD + b"\r" + GOOD, "lone CR"),
    "unicode_space_only": ("\u3000".encode(), "invalid JSON"),
    "huge_role": (b'[{"role": "' + b"x" * 100_000 + b'", "content": "q"}]', "unknown role"),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_corruption_names_its_line(tmp_path, name):
    line, phrase = NAMED[name]
    path = tmp_path / "d.jsonl"
    errors = errors_of(path, GOOD + b"\n" + line + b"\n" + GOOD + b"\n")
    assert errors and all(e.startswith(f"{path}:2: ") for e in errors), errors
    assert any(phrase in e for e in errors), (phrase, errors)
    assert all(len(e) < 400 for e in errors)  # a huge value is not echoed back


def test_huge_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "d.jsonl"
    huge = b'[{"role": "user", "content": "' + b"a" * MAX_LINE_BYTES + b'"}]'
    errors = errors_of(path, GOOD + b"\n" + huge + b"\n" + GOOD + b"\n" + huge)
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:2", f"{path}:4"]
    assert "MiB" in errors[0] and "limit" in errors[0]


def test_accepted_variants(tmp_path, tiny_tokenizer):
    """BOM, CRLF, blank lines, a last line without newline and huge contents are read, lines counted right."""
    path = tmp_path / "d.jsonl"
    bom = b"\xef\xbb\xbf" + GOOD + b"\n" + SEEDS[1]
    assert check(path, bom, tokenizer=tiny_tokenizer) == "accepted"
    crlf = b"\r\n".join([GOOD, b"", SEEDS[1], b"  \t", SEEDS[2]]) + b"\r\n"
    assert check(path, crlf, tokenizer=tiny_tokenizer) == "accepted"
    assert [s.line for s in read_messages(path)] == [1, 3, 5]
    big = json.dumps(
        [
            {"role": "user", "content": "Write a long play."},
            {"role": "assistant", "content": "the king speaks. " * 60_000},
        ]
    ).encode()
    assert check(path, GOOD + b"\n" + big + b"\n", tokenizer=tiny_tokenizer) == "accepted"
    tokenized = tokenize_dataset(tiny_tokenizer, read_messages(path), max_len=4096)
    assert tokenized.stats.over_max == [f"{path}:2"]  # truncated and reported, not dropped
    nested_ok = json.dumps(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "a",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": json.loads('{"a":' * (MAX_DEPTH - 8) + "1" + "}" * (MAX_DEPTH - 8))},
                },
            },
        ]
    ).encode()
    assert check(path, nested_ok, tokenizer=tiny_tokenizer) == "accepted"


@pytest.mark.parametrize("body", [b"", b"\n\n", b" \r\n\t\n", b"\xef\xbb\xbf"])
def test_empty_files(tmp_path, body):
    path = tmp_path / "d.jsonl"
    assert errors_of(path, body) == [f"{path}: empty file (no samples)"]


def test_unreadable_paths(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        read_messages(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_messages(tmp_path / "missing.jsonl")


# --- seeded random mutations --------------------------------------------------------------------------

JUNK = [
    None,
    True,
    0,
    -1,
    1.5e308,
    float("nan"),
    "",
    " ",
    "x" * 5000,
    "<turn_end>",
    "\u0000",
    [],
    {},
    [[]],
    {"role": "user"},
    {"role": "assistant", "content": "a"},
    "user",
    "assistant",
    "system",
    "tool",
    [{"name": "f"}],
    {"type": "json_schema"},
    "\ud800",
    "é" * 100,
]


def byte_mutation(rng: random.Random, line: bytes) -> bytes:
    """One random byte-level corruption: flip, delete, insert, truncate, duplicate, swap or splice."""
    b = bytearray(line)
    i = rng.randrange(len(b))
    kind = rng.randrange(8)
    if kind == 0:
        b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[i : i + rng.randint(1, 40)]
    elif kind == 2:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 3:
        b = b[:i]
    elif kind == 4:
        j = rng.randint(i, min(len(b), i + 200))
        b[i:i] = b[i:j]
    elif kind == 5:
        j = rng.randrange(len(b))
        b[i], b[j] = b[j], b[i]
    elif kind == 6:
        b[i:i] = rng.choice([b"\n", b"\r", b"\x00", b"\xef\xbb\xbf", b'"', b"\\", b"{", b"]", b"\\u", b"\xc3"])
    else:
        other = rng.choice(SEEDS)
        b = b[:i] + other[rng.randrange(len(other)) :]
    return bytes(b)


def json_mutation(rng: random.Random, line: bytes) -> bytes:
    """One random structural corruption: replace, delete or add a value somewhere in the sample."""
    obj = json.loads(line)
    containers = []

    def walk(node):
        if isinstance(node, (list, dict)):
            containers.append(node)
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(obj)
    node = rng.choice(containers)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    kind = rng.randrange(5)
    if kind == 0 and keys:
        node[rng.choice(keys)] = rng.choice(JUNK)
    elif kind == 1 and keys:
        del node[rng.choice(keys)]
    elif kind == 2 and isinstance(node, dict):
        node[rng.choice(["role", "content", "tool_calls", "messages", "extra", "name"])] = rng.choice(JUNK)
    elif kind == 3 and isinstance(node, list):
        node.insert(rng.randint(0, len(node)), rng.choice(JUNK + node))
    else:
        obj = rng.choice([obj, [obj], {"messages": obj}, {"data": obj}, {"messages": obj, "tools": rng.choice(JUNK)}])
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def test_seeded_random_mutations(tmp_path, tiny_tokenizer):
    """Hundreds of seeded byte and JSON mutations of real lines: each is accepted or names its line."""
    rng = random.Random(11)
    path = tmp_path / "d.jsonl"
    tried, outcomes = set(), Counter()
    for n in range(900):
        mutate = byte_mutation if n % 3 else json_mutation
        line = mutate(rng, rng.choice(SEEDS))
        if line in tried:
            continue
        tried.add(line)
        bad = set(range(2, 3 + line.count(b"\n")))
        body = GOOD + b"\n" + line + b"\n" + SEEDS[-1] + b"\n"
        outcomes[(mutate.__name__, check(path, body, bad, tiny_tokenizer))] += 1
    print(f"\n{len(tried)} distinct mutated lines: {dict(outcomes)}")
    assert len(tried) >= 800
    assert outcomes[("byte_mutation", "rejected")] > 300 and outcomes[("json_mutation", "rejected")] > 100


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_validate_data_on_fuzzed_files(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD + b"\n" + NAMED["invalid_utf8_ff"][0] + b"\n" + NESTED_LISTS + b"\n")
    assert main(["validate-data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: not valid UTF-8" in err and f"{bad}:3: invalid JSON: nested too deeply" in err
    assert "Traceback" not in err


def test_cli_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xef\xbb\xbf" + GOOD + b"\r\n" + NAMED["duplicate_key"][0] + b"\r\n")
    result = subprocess.run(
        [sys.executable, "-m", "fmlab.cli", "validate-data", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert f"{bad}:2: invalid JSON: duplicate key 'role'" in result.stderr
    assert "Traceback" not in result.stderr


def test_odd_tool_arguments_fail_at_tokenization_with_file_line(tmp_path, tiny_tokenizer):
    """Tool-call arguments are a JSON string the template parses again; a broken one names its line."""
    call = {"name": "f", "arguments": "9" * 5000}
    line = json.dumps(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "r"},
            {"role": "assistant", "content": "a"},
        ]
    ).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD + b"\n" + line + b"\n")
    with pytest.raises(DataError, match=f"{path}:2: cannot render this sample"):
        tokenize_dataset(tiny_tokenizer, read_messages(path))

"""Constrained decoding (fmlab.infer.constrained): the SentencePiece vocabulary maps to the bytes each
piece writes (▁ → space, <n> → newline, <0xNN> → byte, special pieces never inside the output); replies
under a JSON schema / choices / regex always match it and then stop; speculative decoding under a
constraint equals constrained greedy and samples the constrained target distribution; the grammar state
rolls back exactly; Apple's 150k-piece layout maps; a bad schema file is an FmlabError naming it."""

import json
import re

import jsonschema
import pytest
import torch
from conftest import sharp
from helpers import VOCAB

from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer
from fmlab.cli import main
from fmlab.errors import FmlabError
from fmlab.infer import constrained
from fmlab.infer.compare import compare
from fmlab.infer.generate import generate, generate_ids, stop_ids
from fmlab.infer.sampling import Sampling, probabilities
from fmlab.infer.speculative import speculative_generate
from fmlab.model.config import preset
from fmlab.model.transformer import build_model

GREEDY = Sampling(temperature=0.0)
# Bounded strings and arrays, so even a model that never closes a string on its own finishes in budget.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 12},
        "characters": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 2},
        "scenes": {"type": "integer", "minimum": 1, "maximum": 3},
        "happy": {"type": "boolean"},
    },
    "required": ["title", "characters", "scenes", "happy"],
    "additionalProperties": False,
}
BUDGET = 80  # tokens: > the longest reply SCHEMA allows, one piece per character


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer(None), load_base(None).eval(), load_draft(None).eval()


def reply_ids(tokenizer, text):
    ids = tokenizer.encode("<n>" + text)
    return ids[ids.index(tokenizer.newline_id) + 1 :]


# --- the vocabulary ------------------------------------------------------------------------------


def test_pieces_map_to_the_bytes_they_write(tiny_tokenizer):
    tok = tiny_tokenizer
    token_bytes, special = constrained.piece_bytes(tok)
    assert len(token_bytes) == len(tok)
    assert token_bytes[tok.space_id] == b" " and token_bytes[tok.newline_id] == b"\n"
    assert token_bytes[tok.id_of("<0x41>")] == b"A" and token_bytes[tok.id_of("<0xFF>")] == b"\xff"
    the = tok.id_of("\u2581the")
    assert token_bytes[the] == b" the"
    names = ["<pad>", "</s>", "<unk>", "<mask>", "<turn_start>", "<turn_end>", "<executable_start>", "<image_end>"]
    assert {tok.id_of(n) for n in names} <= set(special) and tok.newline_id not in special
    assert all(token_bytes[i] == b"\xff" + tok.piece(i).encode() for i in special)
    # only specials (and the byte 0xFF itself, never part of UTF-8 text) start with 0xFF
    assert {i for i, b in enumerate(token_bytes) if b.startswith(b"\xff")} == {*special, tok.id_of("<0xFF>")}
    # a reply's pieces concatenate to its UTF-8 text: spaces, newlines, byte fallback (é, 😀 are not pieces)
    for text in ['{"a": "x y"}', "two\nlines  here", "café 😀 日本", "  lead"]:
        assert b"".join(token_bytes[i] for i in reply_ids(tok, text)) == text.encode()


@pytest.mark.slow
def test_apple_layout_150k_vocabulary():
    from benchmarks.bench_constrained import apple_layout_tokenizer

    tok = apple_layout_tokenizer()
    assert len(tok) == 150_021 and tok.turn_start_id == 150_000 and tok.turn_end_id == 150_001
    assert tok.newline_id == 4 and tok.id_of("<0x00>") == 5 and tok.id_of("<0xFF>") == 260
    token_bytes, special = constrained.piece_bytes(tok)
    assert set(special) == {0, 1, 2, 3, *range(150_000, 150_021)}
    assert [token_bytes[i] for i in (4, 5, 260)] == [b"\n", b"\x00", b"\xff"]
    grammar = constrained.json_schema(tok, SCHEMA)
    m = grammar.matcher()
    text = '{"title": "Ünïcode 日本", "characters": ["a b"], "scenes": 2, "happy": true}'
    for t in reply_ids(tok, text):
        allowed = m.allowed()
        assert allowed.shape == (150_021,) and allowed[t]
        assert not allowed[list(special)].any()  # no special piece inside the JSON, stops included
        m.advance(t)
    allowed = m.allowed()
    assert m.finished and set(allowed.nonzero().flatten().tolist()) == {tok.eos_id, tok.turn_end_id}
    mask = constrained.TokenMask(grammar, 1, 153_600)  # Apple's padded vocabulary
    mask.fill(0, m)
    assert torch.isfinite(mask.apply(torch.zeros(1, 153_600))).sum() == 2


# --- replies under a constraint --------------------------------------------------------------------


def check_reply(tok, g, ok):
    body = g.token_ids[:-1]
    assert g.finish_reason == "stop" and g.token_ids[-1] in stop_ids(tok), g.text
    assert not set(body) & set(constrained.piece_bytes(tok)[1])
    ok(g.text)


def test_every_reply_of_the_tiny_base_parses_and_validates(shipped):
    tok, model, _ = shipped
    grammar = constrained.json_schema(tok, SCHEMA)
    prompts = ["Write a play about a fox.", "A play with a king and a frog in a castle."]
    streamed = {0: "", 1: ""}

    def stream(i, piece):
        streamed[i] += piece

    replies = generate(model, tok, prompts, BUDGET, GREEDY, batch_size=2, stream=stream, constraint=grammar)
    assert [streamed[0], streamed[1]] == [g.text for g in replies]  # streaming sends exactly the replies
    replies += generate(model, tok, prompts, BUDGET, Sampling(1.5, None, 1.0, 2), batch_size=2, constraint=grammar)
    for g in replies:
        check_reply(tok, g, lambda text: jsonschema.validate(json.loads(text), SCHEMA))
    assert len({g.text for g in replies}) > 2  # sampling explored different outputs


def test_choices_and_regex_are_honoured(shipped):
    tok, model, _ = shipped
    options = ["yes", "no", "not sure", 'say "hi"']
    cases = [
        (constrained.choices(tok, options), lambda t: t in options),
        (constrained.regex(tok, r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), lambda t: re.fullmatch(r"\d{4}-\d{2}-\d{2}", t)),
        (constrained.regex(tok, r"(red|green)( and (red|green))?\n"), lambda t: re.fullmatch(r"\w+( and \w+)?\n", t)),
    ]
    for grammar, ok in cases:
        for seed in range(3):
            for g in generate(model, tok, ["Pick one."], 24, Sampling(temperature=1.0, seed=seed), constraint=grammar):
                check_reply(tok, g, lambda text, ok=ok, g=grammar: ok(text) or pytest.fail(f"{text!r} breaks {g}"))


def test_compare_passes_the_constraint(shipped):
    tok, model, _ = shipped
    results = compare(
        {"base": model}, tok, ["Yes or no?"], max_new_tokens=8, constraint=constrained.choices(tok, ["yes", "no"])
    )
    assert set(results["text"]) <= {"yes", "no"} and (results["finish_reason"] == "stop").all()


# --- speculative decoding and rollback -----------------------------------------------------------


@pytest.fixture(scope="module")
def sharp_pair():
    target = sharp(build_model(preset("tiny", vocab_size=VOCAB), seed=0).eval())
    draft = sharp(build_model(preset("tiny-draft", vocab_size=VOCAB), seed=1).eval())
    return target, draft


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_constrained_greedy(tiny_tokenizer, sharp_pair, k):
    target, draft = sharp_pair
    grammar = constrained.json_schema(tiny_tokenizer, SCHEMA)
    stop = stop_ids(tiny_tokenizer)
    for prompt in ([1, 5, 9, 33, 7], [1, 200, 13]):
        plain = generate_ids(target, [prompt], stop, BUDGET, GREEDY, constraint=grammar)[0][0]
        for d in (draft, target):
            spec, stats = speculative_generate(target, d, prompt, stop, BUDGET, k, GREEDY, constraint=grammar)
            assert spec == plain and plain[-1] in stop
            assert stats["acceptance_rate"] == 1.0 or d is draft
        jsonschema.validate(json.loads(tiny_tokenizer.decode(plain[:-1])), SCHEMA)


def test_rollback_restores_the_grammar_state(tiny_tokenizer):
    tok = tiny_tokenizer
    grammar = constrained.json_schema(tok, SCHEMA)
    path = reply_ids(tok, '{"title": "Night", "characters": ["king", "a"], "scenes": 3, "happy": false}')
    m = grammar.matcher()
    masks = []
    for t in path:
        masks.append(m.allowed())
        m.advance(t)
    masks.append(m.allowed())
    assert m.finished
    for back in (1, 4, len(path) // 2, len(path)):
        m.rollback(back)
        assert m.consumed == len(path) - back and torch.equal(m.allowed(), masks[len(path) - back])
        for t in path[len(path) - back :]:
            m.advance(t)
        assert torch.equal(m.allowed(), masks[-1])


@torch.no_grad()
def test_speculative_sampling_follows_the_constrained_target(tiny_tokenizer):
    """The first token of speculative sampling is distributed as the target's *masked* distribution."""
    tok = tiny_tokenizer
    target = build_model(preset("tiny", vocab_size=VOCAB), seed=0).eval()
    draft = build_model(preset("tiny-draft", vocab_size=VOCAB), seed=3).eval()
    for m in (target, draft):
        m.embedding.weight.mul_(8)  # peaked, different distributions over the allowed tokens
    grammar = constrained.regex(tok, r"[a-e]")  # ten allowed pieces: letters and their byte pieces
    s = Sampling(temperature=1.0, top_k=None)
    prompt, stop = [1, 5, 9], stop_ids(tok)
    mask = constrained.TokenMask(grammar, 1, VOCAB)
    mask.fill(0, grammar.matcher())
    dist = lambda model: probabilities(mask.apply(model(torch.tensor([prompt]))[:, -1]), s)[0]
    p, q = dist(target), dist(draft)
    assert p[len(tok) :].sum() == 0 and p[: len(tok)][~grammar.matcher().allowed()].sum() == 0
    assert 0.5 * (p - q).abs().sum() > 0.3  # so the test can tell them apart
    n = 400
    counts = torch.zeros_like(p)
    for seed in range(n):
        out, _ = speculative_generate(
            target, draft, prompt, stop, 1, 2, Sampling(1.0, None, 1.0, seed), constraint=grammar
        )
        counts[out[0]] += 1
    tv = 0.5 * (counts / n - p).abs().sum()
    assert tv < 0.1, f"total variation {tv:.3f}"  # sampling noise at n=400 is about 0.05 (plain sampling too)


# --- errors and the CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"type": "object",\n "properties": {"a": }}', r"bad\.json:2:\d+: not valid JSON"),
        ('{"type": "strin"}', r"bad\.json: not a usable JSON schema: .*strin"),
        ('{"properties": {"a": {"$ref": "#/$defs/Nope"}}}', r"bad\.json: not a usable JSON schema"),
        ("[1, 2]", r"bad\.json: a JSON schema is an object"),
    ],
)
def test_bad_schema_file_names_the_file(tiny_tokenizer, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FmlabError, match=message):
        constrained.schema_file(tiny_tokenizer, path)


def test_bad_constraints_are_clear_errors(tiny_tokenizer, tmp_path):
    with pytest.raises(FmlabError, match="no such schema file"):
        constrained.schema_file(tiny_tokenizer, tmp_path / "missing.json")
    with pytest.raises(FmlabError, match="--regex: not a usable regular expression: .*unclosed"):
        constrained.regex(tiny_tokenizer, "[a-z", "--regex")
    with pytest.raises(FmlabError, match="one or more non-empty choices"):
        constrained.choices(tiny_tokenizer, [])


def test_response_format_wrapper_is_unwrapped(tiny_tokenizer):
    wrapped = {"type": "json_schema", "json_schema": {"name": "ResponseX", "strict": "true", "schema": SCHEMA}}
    assert constrained.unwrap_schema(wrapped) == SCHEMA == constrained.unwrap_schema({"name": "X", "schema": SCHEMA})


def test_cli_generate_under_schema_choices_and_regex(tmp_path, capsys):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    base = ["generate", "-p", "Write a play.", "-t", "0", "-m", str(BUDGET), "--output", "jsonl"]
    assert main([*base, "--schema", str(schema)]) == 0
    jsonschema.validate(json.loads(json.loads(capsys.readouterr().out)["text"]), SCHEMA)
    assert main([*base, "--choices", "yes, no", "--draft-checkpoint", "default"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] in ("yes", "no") and record["finish_reason"] == "stop" and "speculative" in record
    assert main([*base, "--regex", "[0-9]+"]) == 0
    assert re.fullmatch("[0-9]+", json.loads(capsys.readouterr().out)["text"])
    schema.write_text("{not json")
    assert main([*base, "--schema", str(schema)]) == 1
    assert f"{schema}:1:2: not valid JSON" in capsys.readouterr().err

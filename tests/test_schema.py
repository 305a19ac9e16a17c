"""Response schemas as the toolkit's SchemaAugmenter writes them (docs/afm-format.md §4), the JSON metrics,
the structured-output example task and `train-adapter --response-schema`."""

import enum
import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from fmlab.cli import main
from fmlab.data.chat_template import encode_chat, render_text, response_format_text
from fmlab.data.schema import (
    KEY_ORDER,
    augment_schema,
    from_json_schema,
    from_pydantic,
    load_response_format,
    response_format_in,
    schema_of,
    with_response_format,
)
from fmlab.errors import FmlabError
from fmlab.eval.structured import (
    exact_match,
    field_accuracy,
    field_matches,
    json_parses,
    schema_valid,
    structured_scores,
)
from fmlab.tiny import structured_task
from fmlab.tiny.plays import _key
from fmlab.train.adapter import DataConfig, load_batches

DATA = Path(__file__).resolve().parent.parent / "data"


class Role(enum.StrEnum):
    hero = "hero"
    helper = "helper"


class Character(BaseModel):
    """A character."""

    name: str
    role: Role


class Play(BaseModel):
    """A play."""

    title: str
    cast: list[Character]
    scenes: int = Field(ge=1, le=3)
    note: str | None = None


# The toolkit's layout (§4), written out by hand: every node's keys in the fixed order type, description,
# enum, items, properties, required, additionalProperties, $defs, anyOf, then the rest (title, constraints,
# default), x-order last; objects strict; nested models and enums in the root's $defs.
PLAY_SCHEMA_TEXT = (
    '{"type": "object", "description": "A play.", "properties": {'
    '"title": {"type": "string", "title": "Title"}, '
    '"cast": {"type": "array", "items": {"$ref": "#/$defs/Character"}, "title": "Cast"}, '
    '"scenes": {"type": "integer", "maximum": 3, "minimum": 1, "title": "Scenes"}, '
    '"note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Note"}}, '
    '"required": ["title", "cast", "scenes"], "additionalProperties": false, "$defs": {'
    '"Character": {"type": "object", "description": "A character.", "properties": {'
    '"name": {"type": "string", "title": "Name"}, "role": {"$ref": "#/$defs/Role"}}, '
    '"required": ["name", "role"], "additionalProperties": false, "title": "Character", "x-order": ["name", "role"]}, '
    '"Role": {"type": "string", "enum": ["hero", "helper"], "title": "Role"}}, '
    '"title": "Play", "x-order": ["title", "cast", "scenes", "note"]}'
)


def _nodes(node):
    """Every schema node of a schema (the values of properties / $defs, items, anyOf members)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    yield from _nodes(sub)
            elif key in ("items", "anyOf", "additionalProperties"):
                yield from _nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nodes(item)


# --- schemas -----------------------------------------------------------------------------------------


def test_from_pydantic_is_the_toolkit_dict_byte_for_byte():
    fmt = from_pydantic(Play)
    assert list(fmt) == ["type", "json_schema"] and fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert list(spec) == ["name", "description", "strict", "schema"]
    assert spec["name"] == "ResponsePlay" and spec["strict"] == "true"  # a string, as the toolkit writes it
    assert json.dumps(spec["schema"]) == PLAY_SCHEMA_TEXT


def test_every_node_has_the_fixed_key_order():
    schema = schema_of(from_pydantic(Play))
    for node in _nodes(schema):
        known = [k for k in node if k in KEY_ORDER]
        assert known == sorted(known, key=KEY_ORDER.index)
        assert list(node)[: len(known)] == known  # the nine come first
        if "x-order" in node:
            assert list(node)[-1] == "x-order" and node["x-order"] == list(node["properties"])
        if "properties" in node:
            assert node["additionalProperties"] is False and node["type"] == "object"


def test_response_format_block_byte_for_byte():
    """The rendered text as the facts give it, and as tamm's V6 preprocessor writes it."""
    afm_v6 = pytest.importorskip("tamm.preprocessors.instruct_lm.afm.afm_v6")
    fmt = from_pydantic(Play)
    block = "\n\nresponse format in json.\nname: ResponsePlay\ndescription: A play.\nschema: " + PLAY_SCHEMA_TEXT
    assert response_format_text(fmt) == block
    assert afm_v6.AFMChatTemplateV6Preprocessor._response_format_to_str(fmt) == block
    user = {"role": "user", "content": "Outline a play.", "response_format": fmt}
    assert render_text([user]).endswith(f"<turn_start> user<n>Outline a play.{block}<turn_end>")
    plain = from_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})  # no description
    assert response_format_text(plain) == afm_v6.AFMChatTemplateV6Preprocessor._response_format_to_str(plain)


def test_lists_enums_literals_optionals_and_nested_models():
    class Scene(BaseModel):
        number: int
        mood: Literal["happy", "sad"]

    class Outline(BaseModel):
        scenes: list[Scene]
        tags: list[str]
        lead: Character | None = None
        counts: dict[str, int]

    schema = schema_of(from_pydantic(Outline))
    assert schema["x-order"] == ["scenes", "tags", "lead", "counts"]
    assert schema["required"] == ["scenes", "tags", "counts"]  # pydantic's: the optional one is not required
    assert set(schema["$defs"]) == {"Scene", "Character", "Role"}  # nested models and enums at the root
    assert schema["$defs"]["Scene"]["properties"]["mood"] == {
        "type": "string",
        "enum": ["happy", "sad"],
        "title": "Mood",
    }
    assert schema["$defs"]["Scene"]["additionalProperties"] is False
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "title": "Tags"}
    lead = schema["properties"]["lead"]
    assert list(lead) == ["anyOf", "default"] and lead["anyOf"][1] == {"type": "null"}
    counts = schema["properties"]["counts"]  # a map keeps its value schema, it is not made strict
    assert counts["additionalProperties"] == {"type": "integer"} and "x-order" not in counts


def test_plain_json_schema_path_equals_pydantic_and_is_idempotent():
    assert from_json_schema(Play.model_json_schema()) == from_pydantic(Play)
    schema = schema_of(from_pydantic(Play))
    assert augment_schema(schema) == schema and augment_schema(schema) is not schema
    assert from_json_schema({"type": "object"})["json_schema"]["name"] == "Response"
    assert from_json_schema({"title": "X", "type": "object"}, description="d")["json_schema"]["description"] == "d"
    with pytest.raises(FmlabError, match="properties"):
        augment_schema({"properties": []})
    with pytest.raises(FmlabError, match="pydantic"):
        from_pydantic(dict)


def test_load_response_format_and_attach(tmp_path):
    plain = tmp_path / "schema.json"
    plain.write_text(json.dumps(Play.model_json_schema()))
    assert load_response_format(plain) == from_pydantic(Play)
    whole = tmp_path / "format.json"
    whole.write_text(json.dumps({"type": "json_schema", "json_schema": {"name": "Mine", "schema": {}}}))
    assert load_response_format(whole)["json_schema"]["name"] == "Mine"  # used as given
    for text, message in [
        ("{", "schema.json:1: not JSON"),
        ("[1]", "JSON object"),
        ('{"type": "json_object"}', "only"),
    ]:
        plain.write_text(text)
        with pytest.raises(FmlabError, match=message):
            load_response_format(plain)
    with pytest.raises(FmlabError, match="no such file"):
        load_response_format(tmp_path / "missing.json")
    fmt = from_pydantic(Play)
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    attached = with_response_format(messages, fmt)
    assert attached[2]["response_format"] is fmt and "response_format" not in messages[2]  # not in place
    assert response_format_in(attached) is fmt
    own = [{"role": "user", "content": "a", "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}]
    assert with_response_format(own, fmt) is own  # a sample's own schema wins
    with pytest.raises(FmlabError, match="user message"):
        with_response_format([{"role": "system", "content": "s"}], fmt)


# --- metrics -----------------------------------------------------------------------------------------

REF = {"title": "The Cat and the Owl", "characters": ["cat", "owl"], "setting": "beach", "scenes": 2}
SCHEMA = structured_task.OUTLINE_SCHEMA


@pytest.mark.parametrize(
    "reply, parses, valid, accuracy",
    [
        (json.dumps(REF), 1, 1, 1.0),
        ("  " + json.dumps(REF, indent=2) + "\n", 1, 1, 1.0),  # whitespace and layout do not matter
        (json.dumps({**REF, "scenes": 3}), 1, 1, 0.75),
        (json.dumps({**REF, "characters": ["owl", "cat"]}), 1, 1, 0.75),  # lists compare in order
        (json.dumps({**REF, "scenes": 2.0}), 1, 1, 1.0),  # 2.0 is the integer 2 in JSON schema too
        (json.dumps({**REF, "scenes": 4}), 1, 0, 0.75),  # over the maximum
        (json.dumps({**REF, "extra": 1}), 1, 0, 1.0),  # additionalProperties: false
        (json.dumps({k: v for k, v in REF.items() if k != "setting"}), 1, 0, 0.75),  # required field missing
        (json.dumps({**REF, "scenes": True}), 1, 0, 0.75),  # true is not 2, nor 1
        (json.dumps({**REF, "scenes": "2"}), 1, 0, 0.75),  # a string is not a number
        ("```json\n" + json.dumps(REF) + "\n```", 0, 0, 0.0),  # a fence is not JSON
        ("Here it is: " + json.dumps(REF), 0, 0, 0.0),
        (json.dumps(REF)[:-1], 0, 0, 0.0),  # cut off
        ("", 0, 0, 0.0),
        ("[1, 2]", 1, 0, 0.0),  # JSON, but not an object
    ],
)
def test_metrics_on_hand_made_replies(reply, parses, valid, accuracy):
    prompt = [{"role": "user", "content": "x", "response_format": structured_task.OUTLINE_FORMAT}]
    assert json_parses(prompt, reply, REF) == parses
    assert schema_valid(prompt, reply, REF) == valid  # the schema from the prompt's response_format
    assert schema_valid("x", reply, REF, schema=SCHEMA) == valid  # or given
    assert field_accuracy(prompt, reply, json.dumps(REF)) == accuracy  # reference as text or value
    assert exact_match(prompt, reply, REF) == float(accuracy == 1.0 and parses and valid)


def test_per_field_scores_and_errors():
    reply = json.dumps({**REF, "setting": "a beach"})
    assert field_matches(reply, REF) == {"title": True, "characters": True, "setting": False, "scenes": True}
    scores = structured_scores("x", reply, REF, schema=structured_task.OUTLINE_FORMAT)
    assert scores["parses"] == scores["schema_valid"] == 1.0 and scores["field:setting"] == 0.0
    assert scores["field_accuracy"] == 0.75 and scores["exact_match"] == 0.0
    assert "schema_valid" not in structured_scores("x", reply, REF)  # no schema anywhere: not scored
    with pytest.raises(FmlabError, match="needs a schema"):
        schema_valid("x", reply, REF)
    with pytest.raises(FmlabError, match="invalid JSON schema"):
        schema_valid("x", reply, REF, schema={"type": "no-such-type"})
    with pytest.raises(FmlabError, match="reference is not JSON"):
        field_accuracy("x", reply, "not json")


# --- the example task --------------------------------------------------------------------------------


def test_task_schema_as_rendered():
    fmt = structured_task.OUTLINE_FORMAT
    assert fmt == from_json_schema(structured_task.PLAY_OUTLINE_JSON_SCHEMA)
    assert response_format_text(fmt) == (
        "\n\nresponse format in json.\nname: ResponsePlayOutline\ndescription: None\nschema: "
        '{"type": "object", "properties": {"title": {"type": "string", "maxLength": 48}, '
        '"characters": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2, "maxItems": 3}, '
        '"setting": {"type": "string", "maxLength": 16}, "scenes": {"type": "integer", "minimum": 1, "maximum": 3}}, '
        '"required": ["title", "characters", "setting", "scenes"], "additionalProperties": false, '
        '"title": "PlayOutline", "x-order": ["title", "characters", "setting", "scenes"]}'
    )


def test_task_splits_are_disjoint_valid_and_committed(tmp_path):
    requests = structured_task.split_requests()
    assert {k: len(v) for k, v in requests.items()} == structured_task.SPLITS
    keys = {name: {_key(r) for r in reqs} for name, reqs in requests.items()}
    assert sum(len(k) for k in keys.values()) == sum(structured_task.SPLITS.values())  # unique within and across
    paths = structured_task.make_splits(tmp_path)
    for name, path in paths.items():
        assert path.read_bytes() == (DATA / f"guided_{name}.jsonl").read_bytes(), f"regenerate data/guided_{name}.jsonl"
    for path in paths.values():
        for line in path.read_text().splitlines():
            user, answer = json.loads(line)
            assert user["response_format"] == structured_task.OUTLINE_FORMAT
            assert schema_valid([user], answer["content"]) == 1.0  # every reference fits the bounds


def test_schema_bounds_cap_a_constrained_reply():
    """The longest reply the schema allows (every string at its maxLength) fits MAX_OUTLINE_TOKENS pieces."""
    props = structured_task.OUTLINE_SCHEMA["properties"]
    longest = {
        "title": "x" * props["title"]["maxLength"],
        "characters": ["x" * props["characters"]["items"]["maxLength"]] * props["characters"]["maxItems"],
        "setting": "x" * props["setting"]["maxLength"],
        "scenes": props["scenes"]["maximum"],
    }
    assert schema_valid("x", json.dumps(longest), schema=structured_task.OUTLINE_SCHEMA) == 1.0
    assert len(json.dumps(longest)) + 1 <= structured_task.MAX_OUTLINE_TOKENS  # + the stop piece


def test_response_schema_keeps_the_loss_on_the_assistant(tmp_path, tiny_tokenizer):
    """`--response-schema`: the schema lands in the prompt (and only there), the labels are unchanged."""
    plain = tmp_path / "plain.jsonl"
    samples = [json.loads(line) for line in (DATA / "guided_valid.jsonl").read_text().splitlines()[:4]]
    plain.write_text(
        "".join(json.dumps([{k: v for k, v in m.items() if k != "response_format"} for m in s]) + "\n" for s in samples)
    )
    fmt = structured_task.OUTLINE_FORMAT
    with_schema = next(load_batches(tiny_tokenizer, plain, DataConfig(response_format=fmt), 4, None).epoch(0))
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps(s) + "\n" for s in samples))
    reference = next(load_batches(tiny_tokenizer, given, DataConfig(), 4, None).epoch(0))
    assert all(reference[k].equal(with_schema[k]) for k in ("input_ids", "label_ids", "segment_ids"))
    ids, labels = encode_chat(tiny_tokenizer, samples[0])
    targets = tiny_tokenizer.decode([t for t in labels if t >= 0])
    assert targets.startswith(samples[0][1]["content"]) and "response format" not in targets


def test_cli_response_schema_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    argv = ["train-adapter", "--train-data", str(DATA / "guided_valid.jsonl"), "--checkpoint-dir", str(tmp_path / "x")]
    assert main([*argv, "--response-schema", str(bad)]) == 1
    assert "schema.json:1: not JSON" in capsys.readouterr().err

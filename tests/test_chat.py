"""Chat template V6: exact text and ids, labels and their shift, prompt/training parity, tools and formats."""

import json

import pytest

from fmlab.data.chat_template import (
    DEFAULT_SYSTEM,
    IGNORE,
    encode_chat,
    encode_prompt,
    render_text,
    tojson,
    trained_mask,
)
from fmlab.errors import FmlabError
from fmlab.lab.loss_mask import loss_mask_html

USER = {"role": "user", "content": "Write a scene."}
ASSISTANT = {"role": "assistant", "content": "KING: Enter.\nQUEEN: Exit."}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather <now> & 'later'", "parameters": {"type": "object"}},
}


def trained_text(tok, ids, labels):
    return tok.decode([i for i, t in zip(ids, trained_mask(labels)) if t])


def test_render_text_is_v6_with_default_system():
    assert render_text([USER, ASSISTANT]) == (
        f"<turn_start> system<n>{DEFAULT_SYSTEM}<turn_end>"
        "<turn_start> user<n>Write a scene.<turn_end>"
        "<turn_start> assistant<n>KING: Enter.\nQUEEN: Exit.<turn_end>"
    )
    assert render_text([{"role": "system", "content": "Be brief."}, USER], add_generation_prompt=True) == (
        "<turn_start> system<n>Be brief.<turn_end><turn_start> user<n>Write a scene.<turn_end><turn_start> assistant<n>"
    )


def test_ids_start_with_eos_and_system_header(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = encode_chat(tok, [USER, ASSISTANT])
    assert ids[:4] == [tok.eos_id, tok.turn_start_id, tok.id_of("\u2581system"), tok.newline_id]
    assert tok.space_id not in ids[:2]  # the dummy-prefix piece was dropped
    assert len(ids) == len(labels)
    after_newline = [ids[i + 1] for i, t in enumerate(ids[:-1]) if t == tok.newline_id]
    assert after_newline and not any(tok.piece(t).startswith("\u2581") for t in after_newline)


def test_generation_prefix(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = encode_prompt(tok, [USER])
    assert prompt[0] == tok.eos_id
    assert prompt[-3:] == [tok.turn_start_id, tok.id_of("\u2581assistant"), tok.newline_id]


def test_labels_are_assistant_content_plus_turn_end_shifted_left(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = encode_chat(tok, [USER, ASSISTANT])
    assert trained_text(tok, ids, labels) == "KING: Enter.\nQUEEN: Exit.<turn_end>"
    # Shifted: labels[t] is the next token; the last position has no target.
    assert labels[-1] == IGNORE
    assert all(label == ids[t + 1] for t, label in enumerate(labels[:-1]) if label != IGNORE)
    # The first target is predicted from the header's <n>: the header itself is never a target.
    first = next(t for t, label in enumerate(labels) if label != IGNORE)
    assert ids[first] == tok.newline_id and ids[first - 1] == tok.id_of("\u2581assistant")
    assert labels[ids.index(tok.turn_end_id) - 1] == IGNORE  # the system turn's end is not trained


def test_every_assistant_turn_is_trained(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [
        USER,
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "Two."},
    ]
    ids, labels = encode_chat(tok, messages)
    assert trained_text(tok, ids, labels) == "One.<turn_end>Two.<turn_end>"
    assert sum(label == tok.turn_end_id for label in labels) == 2


@pytest.mark.parametrize(
    "messages,tools",
    [
        ([USER], None),
        (
            [{"role": "system", "content": "Be brief."}, USER, ASSISTANT, {"role": "user", "content": "More\nplease"}],
            None,
        ),
        ([USER], [WEATHER_TOOL]),
    ],
)
def test_prompt_ids_are_a_prefix_of_training_ids(tiny_tokenizer, messages, tools):
    prompt = encode_prompt(tiny_tokenizer, messages, tools)
    ids, labels = encode_chat(tiny_tokenizer, messages + [ASSISTANT], tools)
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt) - 2] == IGNORE  # "<n>" of the header is not a target
    if not any(m["role"] == "assistant" for m in messages):
        assert all(label == IGNORE for label in labels[: len(prompt) - 1])
    assert labels[len(prompt) - 1] == ids[len(prompt)]  # the first content token is the first target


def test_max_len_truncates_ids_and_labels(tiny_tokenizer):
    ids, labels = encode_chat(tiny_tokenizer, [USER, ASSISTANT])
    cut_ids, cut_labels = encode_chat(tiny_tokenizer, [USER, ASSISTANT], max_len=len(ids) - 3)
    assert cut_ids == ids[:-3] and cut_labels == labels[:-3]


def test_tools_go_into_the_system_turn_as_tojson():
    text = render_text([USER], tools=[WEATHER_TOOL, {"name": "b"}])
    assert f'{DEFAULT_SYSTEM}<n>system tools: {tojson(WEATHER_TOOL)}<n>{{"name": "b"}}<turn_end>' in text
    # tamm's tojson (it replaces Jinja's): keys in order, no HTML or non-ASCII escapes.
    assert tojson({"b": "<x> & 'y' é", "a": 1}) == '{"b": "<x> & \'y\' é", "a": 1}'


def test_tool_calls_and_tool_results(tiny_tokenizer):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "function", "content": {"temp": 18}},
        {"role": "assistant", "content": "Warm."},
    ]
    text = render_text(messages)
    assert (
        "<turn_start> assistant<n><executable_start> ```function\n"
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]```<executable_end><turn_end>'
    ) in text
    assert '<turn_start> tool<n>{"temp": 18}<turn_end>' in text
    tok = tiny_tokenizer
    ids, labels = encode_chat(tok, messages)
    trained = trained_text(tok, ids, labels)
    assert trained.startswith("<executable_start>") and trained.endswith("Warm.<turn_end>")
    assert "temp" not in trained  # the tool result is context, not a target
    listed = render_text(
        [
            USER,
            {"role": "assistant", "content": "x", "tool_calls": [{"name": "a", "arguments": {}}]},
            {"role": "tool", "content": [{"name": "t1"}, {"name": "t2"}]},
        ]
    )
    assert 'new tools: {"name": "t1"}\n{"name": "t2"}<turn_end>' in listed


def test_response_format_is_appended_to_the_message():
    schema = {"type": "object", "properties": {"cast": {"type": "array"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "Cast", "description": "The cast", "schema": schema}}
    text = render_text([{**USER, "response_format": fmt}])
    assert (
        f"<turn_start> user<n>Write a scene.\n\nresponse format in json.\nname: Cast\ndescription: The cast\n"
        f"schema: {json.dumps(schema)}<turn_end>"
    ) in text
    with pytest.raises(FmlabError, match="json_schema"):
        render_text([{**USER, "response_format": {"type": "json_object"}}])


def test_content_with_turn_markers_is_rejected(tiny_tokenizer):
    with pytest.raises(FmlabError, match="turn_end"):
        encode_chat(tiny_tokenizer, [USER, {"role": "assistant", "content": "a<turn_end>b"}])


def test_loss_mask_html_highlights_exactly_the_targets(tiny_tokenizer):
    ids, labels = encode_chat(tiny_tokenizer, [{"role": "user", "content": "<b>bold</b>"}, ASSISTANT])
    page = loss_mask_html(tiny_tokenizer, ids, labels)
    assert page.count("background:#b7ebb7;") == sum(trained_mask(labels)) > 0
    assert page.count(' title="') == len(ids)
    assert "<b>" not in page and "&lt;" in page  # content is escaped

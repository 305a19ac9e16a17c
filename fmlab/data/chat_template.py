"""Apple's chat template V6 (`AFMChatTemplateV6Preprocessor`, docs/afm-format.md §4, §5.1–5.2): messages → token
ids and pre-shifted labels. The one renderer for training and generation, so a prompt is the same ids
in both.

Text: `<turn_start> {role}<n>{content}<turn_end>` per message, no separators, a default system turn when
the sample has none, `<n>system tools: ...` inside the system turn when tools are given, and the
generation prompt `<turn_start> assistant<n>`. Ids: encode the whole text, drop the leading `▁` (the dummy
prefix), prepend `</s>`. Labels: the assistant content and its `<turn_end>`, in every assistant turn,
shifted left by one so that `labels[t]` is the target of the logits at position t.
"""

from __future__ import annotations

import json

from fmlab.errors import FmlabError

IGNORE = -100
DEFAULT_SYSTEM = "A conversation between a user and a helpful assistant."
GENERATION_PROMPT = "<turn_start> assistant<n>"


def turn_text(role: str, content: str) -> str:
    return f"<turn_start> {role}<n>{content}<turn_end>"


def tojson(obj) -> str:
    """The template's `tojson` filter as tamm installs it (it replaces Jinja's): `json.dumps` with
    `ensure_ascii=False`, keys in their given order, no HTML escapes. Every JSON the template writes
    (tools, tool calls, tool results, schemas) goes through this one function."""
    return json.dumps(obj, ensure_ascii=False)


def tool_calls_text(tool_calls: list) -> str:
    """`<executable_start> ```function\\n[{"name": ..., "arguments": ...}]```<executable_end>` (§4).

    Accepts OpenAI-style calls ({"type": "function", "function": {...}}) and plain {"name", "arguments"};
    string arguments are parsed as JSON when they are JSON.
    """
    calls = []
    for call in tool_calls:
        fn = call.get("function", call)
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"name": fn.get("name"), "arguments": arguments})
    return f"<executable_start> ```function\n{tojson(calls)}```<executable_end>"


def response_format_text(response_format: dict) -> str:
    """The suffix that asks for JSON output (§4); only `{"type": "json_schema", "json_schema": {...}}`."""
    if response_format.get("type") != "json_schema":
        raise FmlabError(f"response_format type {response_format.get('type')!r}: only 'json_schema' is allowed")
    spec = response_format.get("json_schema", {})
    # Both lines are always written, as tamm does: a missing name or description reads "None".
    text = "\n\nresponse format in json.\n"
    text += f"name: {spec.get('name')}\n"
    text += f"description: {spec.get('description')}\n"
    return text + f"schema: {tojson(spec.get('schema', {}))}"


def tool_content(content) -> str:
    if isinstance(content, dict):
        return tojson(content)
    if isinstance(content, list):  # a tool result that announces more tools
        return "new tools: " + "\n".join(tojson(tool) for tool in content)
    return content


def chat_turns(messages: list[dict], tools: list | None = None) -> list[tuple[str, str]]:
    """(role, content) per turn as the template writes them: default system, tools, tool calls, formats."""
    turns = []
    for message in messages:
        role = message["role"]
        content = message.get("content") or ""
        if role in ("tool", "function"):
            role, content = "tool", tool_content(message.get("content") or "")
        if message.get("tool_calls") is not None:
            content += tool_calls_text(message["tool_calls"])
        if message.get("response_format") is not None:
            content += response_format_text(message["response_format"])
        turns.append((role, content))
    if not turns or turns[0][0] != "system":
        turns.insert(0, ("system", DEFAULT_SYSTEM))
    if tools:
        role, content = turns[0]
        turns[0] = (role, content + "<n>system tools: " + "<n>".join(tojson(tool) for tool in tools))
    return turns


def render_text(messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False) -> str:
    """The template's text. Template newlines are written `<n>`, content newlines stay "\\n"; both encode
    to the `<n>` piece."""
    text = "".join(turn_text(role, content) for role, content in chat_turns(messages, tools))
    return text + (GENERATION_PROMPT if add_generation_prompt else "")


def _encode(tokenizer, text: str) -> list[int]:
    """`strip_first_token` + `prepend_eos`: drop the dummy-prefix `▁`, start with `</s>`."""
    ids = tokenizer.encode(text)
    if not ids or ids[0] != tokenizer.space_id:
        raise FmlabError("chat text did not encode to a leading '▁' piece; is add_dummy_prefix on?")
    return [tokenizer.eos_id] + ids[1:]


def encode_prompt(tokenizer, messages: list[dict], tools: list | None = None) -> list[int]:
    """Ids for generation: the conversation so far, ending with `<turn_start> ▁assistant <n>`.

    A conversation that already ends with an assistant turn gets no second header: as tamm's
    `generate_prefix`, the prompt stops after that turn's header and its reply is what is to come."""
    if messages and messages[-1]["role"] == "assistant":
        ids = _encode(tokenizer, render_text(messages, tools))
        last_start = max(i for i, token in enumerate(ids) if token == tokenizer.turn_start_id)
        return ids[: ids.index(tokenizer.newline_id, last_start) + 1]
    return _encode(tokenizer, render_text(messages, tools, add_generation_prompt=True))


def encode_chat(
    tokenizer, messages: list[dict], tools: list | None = None, max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """(input ids, labels) for training, labels already shifted (§5.2); both cut to `max_len` if given."""
    turns = chat_turns(messages, tools)
    ids = _encode(tokenizer, "".join(turn_text(role, content) for role, content in turns))
    if ids.count(tokenizer.turn_start_id) != len(turns) or ids.count(tokenizer.turn_end_id) != len(turns):
        raise FmlabError("message content contains <turn_start> or <turn_end>, which would break the turns")
    labels = [IGNORE] * len(ids)
    start = 0  # first token of the current turn
    turn = 0
    for end, token in enumerate(ids):
        if token != tokenizer.turn_end_id:
            continue
        if turns[turn][0] == "assistant":
            # Everything through the header `<turn_start> ▁assistant <n>` stays ignored.
            header_end = ids.index(tokenizer.newline_id, ids.index(tokenizer.turn_start_id, start))
            labels[header_end + 1 : end + 1] = ids[header_end + 1 : end + 1]
        turn, start = turn + 1, end + 1
    labels = labels[1:] + [IGNORE]  # the shift: labels[t] is the token after position t
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def trained_mask(labels: list[int]) -> list[bool]:
    """Which input tokens are targets: labels shifted back by one (token t is the target of label t-1)."""
    return [False] + [label != IGNORE for label in labels[:-1]]

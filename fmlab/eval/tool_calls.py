"""Tool-call correctness in the chat template's tool-call format (docs/afm-format.md §4): an assistant
turn calls tools with

    <executable_start> ```function\\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]```<executable_end>

appended to its content (`fmlab.data.chat_template.tool_calls_text` writes it). A sample's reference
(`reference_text` of its last assistant turn) has it when that turn has `tool_calls`. Two metrics over
(prompt, reply, reference):

- `tool_call`: the reply calls exactly the reference's tools with equal arguments (as JSON values; the
  order of the calls does not matter), or, when the reference calls none, the reply calls none either;
- `tool_name`: the same, on the tool names alone (the right tools, whatever the arguments).

A reply whose call block is not valid JSON calls nothing correctly. The closing `<executable_end>` may be
missing (a reply cut at the token limit still shows which call it made).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from fmlab.data.chat_template import chat_turns

_CALLS = re.compile(r"<executable_start>\s*```function\s*(.*?)\s*```\s*(?:<executable_end>|$)", re.DOTALL)
INVALID = None  # what `parse_tool_calls` returns for a call block that does not parse


def parse_tool_calls(text: str) -> list[tuple[str, str]] | None:
    """[(name, arguments as canonical JSON), ...] of every call block in `text`; [] without one; None
    when a block is not a JSON list of {"name", "arguments"} objects."""
    calls = []
    for block in _CALLS.findall(text or ""):
        try:
            items = json.loads(block)
        except json.JSONDecodeError:
            return INVALID
        if not isinstance(items, list):
            return INVALID
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                return INVALID
            arguments = item.get("arguments", {})
            if isinstance(arguments, str):  # the template parses string arguments when they are JSON
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            calls.append((item["name"], json.dumps(arguments, sort_keys=True)))
    return calls


def reference_text(message: dict) -> str:
    """A message's content as the template writes it: for an assistant turn, its text then its tool calls."""
    return chat_turns([message])[-1][1]


def tool_call(prompt, reply: str, reference: str) -> float:
    """1.0 if the reply makes the reference's tool calls (names and arguments, in any order), else 0.0."""
    want, got = parse_tool_calls(reference), parse_tool_calls(reply)
    return float(got is not INVALID and want is not INVALID and Counter(got) == Counter(want))


def tool_name(prompt, reply: str, reference: str) -> float:
    """1.0 if the reply calls the reference's tools (by name, in any order), else 0.0."""
    want, got = parse_tool_calls(reference), parse_tool_calls(reply)
    if got is INVALID or want is INVALID:
        return 0.0
    return float(Counter(n for n, _ in got) == Counter(n for n, _ in want))

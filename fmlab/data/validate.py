"""Chat JSONL: reading and validating every line, with file:line errors.

Apple's toolkit checks one random sample (docs/afm-format.md §5.5); fmlab checks every line and reports all
problems at once, each as `file:line: messages[i].field: problem`.

File format (one sample per line, blank lines skipped):
- a JSON list of messages, `[{"role": "user", "content": "..."}, ...]`, as in Apple's toolkit; or
- an object `{"messages": [...], "tools": [...], "response_format": {...}}`. `tools` go into the system
  turn; a sample-level `response_format` is attached to the last user message (it may also be given on
  a message, as `messages[i].response_format`). An object without "messages" whose first value is a
  list is read like Apple's toolkit does (first value), with a warning. Other keys are warned about.

Messages: role `system` (first only), `user`, `assistant`, `tool` (`function` is read as `tool`). User and
assistant alternate, starting with user; tool results follow an assistant turn with `tool_calls`, and the
assistant answers them. A training sample ends with assistant; a prompt ends with user (or a tool result).
Samples with and without a system turn may be mixed: the default system turn is added per sample.

Lines are read as bytes by `fmlab.data.jsonl` (UTF-8, LF or CRLF, size and nesting limits), so a broken
line is always a file:line error, never a traceback.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from fmlab.data.jsonl import BLANK, parse_line, read_lines, short
from fmlab.errors import FmlabError

ROLES = ("system", "user", "assistant", "tool", "function")
SAMPLE_KEYS = {"messages", "tools", "response_format"}
MESSAGE_KEYS = {"role", "content", "tool_calls", "response_format", "name", "tool_call_id"}
MAX_ERRORS_SHOWN = 100


class DataError(FmlabError):
    """Invalid data; `errors` holds every problem found, each as "file:line: field: problem"."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        shown = self.errors[:MAX_ERRORS_SHOWN]
        more = len(self.errors) - len(shown)
        text = f"{len(self.errors)} problem(s) in the data:\n  " + "\n  ".join(shown)
        super().__init__(text + (f"\n  ... and {more} more" if more else ""))


class DataWarning(UserWarning):
    """Something in the data that is ignored (unknown keys) or read leniently."""


@dataclass
class Sample:
    """One validated conversation and where it came from."""

    messages: list[dict]
    tools: list | None = None
    source: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def is_training(self) -> bool:
        return self.messages[-1]["role"] == "assistant"

    @property
    def prompt(self) -> list[dict]:
        """What a model is asked to answer: the messages up to the last assistant turn, which is dropped
        when the sample ends with it (a training sample); a prompt sample's messages as they are."""
        return self.messages[:-1] if self.is_training else list(self.messages)


def _check_message(i: int, message, errors: list[str], notes: list[str]) -> str | None:
    """Check one message's fields; return its role when it is usable for the order check."""
    at = f"messages[{i}]"
    if not isinstance(message, dict):
        errors.append(f"{at}: expected an object with role and content, got {type(message).__name__}")
        return None
    for key in message.keys() - MESSAGE_KEYS:
        notes.append(f"{at}: unknown key {short(key)} ignored")
    role = message.get("role")
    if role is None:
        errors.append(f"{at}.role: missing")
    elif role not in ROLES:
        errors.append(f"{at}.role: unknown role {short(role)} (expected one of {', '.join(ROLES[:4])})")
        role = None
    role = "tool" if role == "function" else role
    content = message.get("content")
    has_calls = role == "assistant" and bool(message.get("tool_calls"))
    if "content" not in message and not has_calls:
        errors.append(f"{at}.content: missing")
    elif content is None and not has_calls:
        errors.append(f"{at}.content: null")
    elif role == "tool" and isinstance(content, (dict, list)):
        pass  # JSON-dumped by the template
    elif content is not None and not isinstance(content, str):
        errors.append(f"{at}.content: must be a string, got {type(content).__name__}")
    elif isinstance(content, str) and not content.strip() and not has_calls:
        errors.append(f"{at}.content: empty")
    elif isinstance(content, str) and ("<turn_start>" in content or "<turn_end>" in content):
        errors.append(f"{at}.content: contains <turn_start>/<turn_end>, which would break the turns")
    if "tool_calls" in message:
        calls = message["tool_calls"]
        if role != "assistant":
            errors.append(f"{at}.tool_calls: only assistant messages make tool calls")
        elif not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function", c), dict) and c.get("function", c).get("name")
            for c in calls
        ):
            errors.append(f'{at}.tool_calls: must be a list of {{"name", "arguments"}} objects')
    if "response_format" in message:
        _check_response_format(f"{at}.response_format", message["response_format"], errors)
    return role


def _check_response_format(at: str, value, errors: list[str]) -> None:
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        errors.append(f'{at}: must be {{"type": "json_schema", "json_schema": {{...}}}}')
    elif not isinstance(value.get("json_schema"), dict) or not isinstance(value["json_schema"].get("schema"), dict):
        errors.append(f"{at}.json_schema.schema: missing or not an object")


def _check_order(roles: list[str], calls: list[bool], mode: str, errors: list[str]) -> None:
    """System only first; user/assistant alternate from user; tool answers a tool call; the right last role."""
    previous = None
    for i, role in enumerate(roles):
        at = f"messages[{i}].role"
        if role == "system":
            if i != 0:
                errors.append(f"{at}: system is only allowed as the first message")
        elif previous is None:
            if role != "user":
                errors.append(f"{at}: the conversation must start with user, got {role}")
        elif role == "user" and previous != "assistant":
            errors.append(f"{at}: user follows {previous}; user and assistant must alternate")
        elif role == "assistant" and previous not in ("user", "tool"):
            errors.append(f"{at}: assistant follows {previous}; user and assistant must alternate")
        elif role == "tool" and not (previous == "tool" or (previous == "assistant" and calls[i - 1])):
            errors.append(f"{at}: a tool result must follow an assistant message with tool_calls")
        if role != "system":
            previous = role
    last = len(roles) - 1
    if mode == "train" and roles and roles[-1] != "assistant":
        errors.append(f"messages[{last}].role: a training sample must end with assistant, got {roles[-1]}")
    if mode == "prompt" and roles and roles[-1] not in ("user", "tool"):
        errors.append(f"messages[{last}].role: a prompt must end with user (or tool), got {roles[-1]}")


def check_sample(obj, mode: str = "train") -> tuple[Sample | None, list[str], list[str]]:
    """Validate one parsed JSONL value: (sample or None, errors, warnings), messages without file:line."""
    errors: list[str] = []
    notes: list[str] = []
    tools = response_format = None
    if isinstance(obj, dict):
        if "messages" in obj:
            for key in obj.keys() - SAMPLE_KEYS:
                notes.append(f"unknown key {short(key)} ignored")
            messages, tools, response_format = obj["messages"], obj.get("tools"), obj.get("response_format")
        elif obj and isinstance(next(iter(obj.values())), list):
            key = next(iter(obj))
            notes.append(f"no 'messages' key; reading the first key {short(key)} as messages, like Apple's toolkit")
            messages = obj[key]
        else:
            return None, ['messages: missing (expected {"messages": [...]} or a list of messages)'], notes
    elif isinstance(obj, list):
        messages = obj
    else:
        return None, [f'expected a list of messages or an object with "messages", got {type(obj).__name__}'], notes
    if not isinstance(messages, list):
        return None, [f"messages: must be a list, got {type(messages).__name__}"], notes
    if not messages:
        return None, ["messages: empty"], notes
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        errors.append("tools: must be a list of objects")
    if response_format is not None:
        _check_response_format("response_format", response_format, errors)
    roles = [_check_message(i, m, errors, notes) for i, m in enumerate(messages)]
    if all(roles):
        calls = [bool(m.get("tool_calls")) for m in messages]
        _check_order(["tool" if r == "function" else r for r in roles], calls, mode, errors)
    if errors:
        return None, errors, notes
    if response_format is not None:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        messages = list(messages)
        messages[users[-1]] = {**messages[users[-1]], "response_format": response_format}
    return Sample(messages, tools or None), errors, notes


def read_messages(path: str | os.PathLike, mode: str = "train") -> list[Sample]:
    """Read and validate every line of a chat JSONL file; raise one DataError listing all problems.

    mode "train": each sample ends with an assistant turn; "prompt": with a user turn (for generation).
    Warnings (unknown keys, lenient reads) go through `warnings.warn` as DataWarning, with file:line.
    """
    if mode not in ("train", "prompt"):
        raise FmlabError(f"mode must be 'train' or 'prompt', not {mode!r}")
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if not path.is_file():
        raise DataError([f"{path}: not a file"])
    samples: list[Sample] = []
    errors: list[str] = []
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataError([f"{path}: cannot read ({err.strerror})"]) from None
    with f:
        for number, raw in read_lines(f):
            where = f"{path}:{number}"
            obj, problem = parse_line(raw)
            if problem:
                errors.append(f"{where}: {problem}")
                continue
            if obj is BLANK:
                continue
            sample, problems, notes = check_sample(obj, mode)
            errors += [f"{where}: {p}" for p in problems]
            for note in notes:
                warnings.warn(f"{where}: {note}", DataWarning, stacklevel=2)
            if sample is not None:
                sample.source, sample.line = str(path), number
                samples.append(sample)
    if not samples and not errors:
        errors.append(f"{path}: empty file (no samples)")
    if errors:
        raise DataError(errors)
    return samples

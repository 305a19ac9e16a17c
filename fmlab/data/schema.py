"""Response schemas as Apple's toolkit writes them (its `SchemaAugmenter`, docs/afm-format.md §4): a pydantic
model or a plain JSON schema → the `response_format` dict a training sample carries, which the chat template
renders as the `response format in json.` block (`fmlab.data.chat_template.response_format_text`).

The dict is `{"type": "json_schema", "json_schema": {"name": "Response<Model>", ["description": ...],
"strict": "true", "schema": {...}}}` (`strict` is the string "true", as the toolkit writes it). In the schema
every object with `properties` gets `"additionalProperties": false` and `"x-order"` (its property names in
declaration order, which is also the order decoding writes them), nested models stay in the root's `$defs`,
titles stay where pydantic puts them, and every node's keys are rewritten in one fixed order, because the
rendered text is `json.dumps` of this dict and a schema that differs from the runtime's by a byte hurts an
adapter. The facts give the order of nine keys (`KEY_ORDER`); where the other keys go (`title`, `$ref`,
constraints such as `minimum`, and `x-order`) they do not say, so fmlab writes them after those nine, in
the order the source schema had them, with `x-order` last. Change `KEY_ORDER` / `LAST` if Apple's differs.

pydantic is imported by the caller's model only: `from_pydantic` calls `model_json_schema()` on it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fmlab.errors import FmlabError

KEY_ORDER = ("type", "description", "enum", "items", "properties", "required", "additionalProperties", "$defs", "anyOf")
LAST = ("x-order",)
STRICT = "true"  # a string in the toolkit's dict, not a JSON boolean


def _ordered(node: dict) -> dict:
    """`node`'s keys in the toolkit's order: the nine known keys, then the rest as given, then `x-order`."""
    known = [k for k in KEY_ORDER if k in node]
    rest = [k for k in node if k not in KEY_ORDER and k not in LAST]
    return {k: node[k] for k in known + rest + [k for k in LAST if k in node]}


def _augment(node, at: str):
    """The node rewritten recursively: strict objects, `x-order`, fixed key order."""
    if isinstance(node, list):
        return [_augment(item, f"{at}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):  # maps of names to schemas: the names are not keywords
            if not isinstance(value, dict):
                raise FmlabError(f"schema {at}.{key}: must be an object, got {type(value).__name__}")
            out[key] = {name: _augment(sub, f"{at}.{key}.{name}") for name, sub in value.items()}
        elif key in ("enum", "const", "default", "examples", "required", "x-order"):  # values, not schemas
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _augment(value, f"{at}.{key}")
    if "properties" in out:
        out.setdefault("type", "object")
        if not isinstance(out.get("additionalProperties"), dict):  # a map's value schema stays
            out["additionalProperties"] = False
        out["x-order"] = list(out["properties"])
    return _ordered(out)


def augment_schema(schema: dict) -> dict:
    """A plain JSON schema as the toolkit writes it (see the module docstring); idempotent, never in place."""
    if not isinstance(schema, dict):
        raise FmlabError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return _augment(schema, "$")


def from_json_schema(schema: dict, name: str | None = None, description: str | None = None) -> dict:
    """The `response_format` dict for a plain JSON schema. `name` defaults to `Response<title>` (the schema's
    `title`, else "Response"); `description` to the schema's own, else none."""
    augmented = augment_schema(schema)
    if name is None:
        title = augmented.get("title")
        name = f"Response{title}" if isinstance(title, str) and title else "Response"
    spec = {"name": name}
    description = description if description is not None else augmented.get("description")
    if description:
        spec["description"] = description
    spec["strict"] = STRICT
    spec["schema"] = augmented
    return {"type": "json_schema", "json_schema": spec}


def from_pydantic(model, description: str | None = None) -> dict:
    """The `response_format` dict that the toolkit's `SchemaAugmenter` builds for a pydantic (v2) model:
    name `Response<Model>` (`ResponsePlayOutline` for `class PlayOutline`), the model's JSON schema augmented."""
    if not hasattr(model, "model_json_schema"):
        raise FmlabError(f"{model!r} is not a pydantic v2 model (it has no model_json_schema)")
    return from_json_schema(model.model_json_schema(), f"Response{model.__name__}", description)


def is_response_format(obj) -> bool:
    return isinstance(obj, dict) and obj.get("type") == "json_schema" and isinstance(obj.get("json_schema"), dict)


def schema_of(response_format: dict) -> dict:
    """The JSON schema inside a `response_format` dict."""
    if not is_response_format(response_format) or not isinstance(response_format["json_schema"].get("schema"), dict):
        raise FmlabError('a response_format must be {"type": "json_schema", "json_schema": {"schema": {...}}}')
    return response_format["json_schema"]["schema"]


def load_response_format(path: str | Path) -> dict:
    """`--response-schema FILE`: a JSON file holding a `response_format` dict (used as given) or a plain JSON
    schema (augmented as the toolkit does, named from its `title`)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FmlabError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FmlabError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise FmlabError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    if is_response_format(obj):
        schema_of(obj)  # checks that it holds a schema
        return obj
    if isinstance(obj, dict) and obj.get("type") in ("json_object", "text"):
        raise FmlabError(f"{path}: response_format type {obj['type']!r}: only 'json_schema' is allowed")
    if not isinstance(obj, dict):
        raise FmlabError(f"{path}: a schema must be a JSON object, got {type(obj).__name__}")
    return from_json_schema(obj)


def with_response_format(messages: list[dict], response_format: dict) -> list[dict]:
    """`messages` with `response_format` on the last user message, unless a message already carries one
    (a sample's own schema wins). A new list; the input is left alone."""
    if any(m.get("response_format") for m in messages):
        return messages
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise FmlabError("a response schema needs a user message to attach to")
    out = list(messages)
    out[users[-1]] = {**out[users[-1]], "response_format": response_format}
    return out


def response_format_in(prompt) -> dict | None:
    """The `response_format` a message list carries (the last one given), or None."""
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("response_format"):
                return message["response_format"]
    return None

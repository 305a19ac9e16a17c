"""Metrics for structured (JSON) output: does a reply parse, does it validate against its schema, and
which fields equal the reference's. Eval loss says little here, because the JSON scaffolding (braces,
quotes, key names) is most of the target tokens and is easy to predict.

Every metric is a small pure function with the harness's signature

    metric(prompt, reply, reference) -> float in 0..1

- `prompt`: the request text or a message list; the schema is read from the `response_format` a message
  carries (`fmlab.data.schema.response_format_in`), or passed as the keyword `schema=` (a JSON schema or a
  whole `response_format` dict), which wins.
- `reply`: the model's text. It must be one JSON value, surrounding whitespace allowed; nothing else
  (no code fence, no prose around it), because that is what a constrained decoder emits and what an app's
  parser accepts.
- `reference`: the expected JSON, as text or as the parsed value; `json_parses` and `schema_valid` ignore it.

`field_accuracy` is the fraction of the reference object's top-level fields whose value in the reply is
exactly equal (lists in order, numbers by value: 2 == 2.0, but True is not 1); a reply that does not
parse or is not an object scores 0. `field_matches` gives the per-field booleans, `structured_scores` all
of it for one reply.
"""

from __future__ import annotations

import functools
import json

from fmlab.data.schema import is_response_format, response_format_in
from fmlab.errors import FmlabError

_MISSING = object()


def parse_reply(reply: str):
    """The JSON value of `reply`, or `_MISSING` when it is not exactly one JSON value."""
    if not isinstance(reply, str):
        return _MISSING
    try:
        return json.loads(reply)
    except (json.JSONDecodeError, RecursionError):
        return _MISSING


def _reference_value(reference):
    if isinstance(reference, str):
        value = parse_reply(reference)
        if value is _MISSING:
            raise FmlabError(f"the reference is not JSON: {reference[:80]!r}")
        return value
    return reference


def _schema(prompt, schema) -> dict | None:
    if schema is None:
        schema = response_format_in(prompt)
    if schema is not None and is_response_format(schema):
        schema = schema["json_schema"].get("schema")
    return schema


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str):
    """One compiled validator per distinct schema (the harness scores many replies under one schema)."""
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise FmlabError(
            f"invalid JSON schema at {'/'.join(map(str, err.path)) or 'the root'}: {err.message}"
        ) from None
    return cls(schema)


def json_parses(prompt, reply: str, reference=None) -> float:
    """1.0 if `reply` is one JSON value, else 0.0."""
    return float(parse_reply(reply) is not _MISSING)


def schema_valid(prompt, reply: str, reference=None, *, schema: dict | None = None) -> float:
    """1.0 if `reply` parses and validates against the schema (jsonschema, the schema's own draft, else
    2020-12), else 0.0. Raises FmlabError when there is no schema or it is not a valid JSON schema."""
    schema = _schema(prompt, schema)
    if not isinstance(schema, dict):
        raise FmlabError("schema_valid needs a schema: a prompt message with response_format, or schema=")
    value = parse_reply(reply)
    if value is _MISSING:
        return 0.0
    return float(_validator(json.dumps(schema, sort_keys=True)).is_valid(value))


def _equal(a, b) -> bool:
    """JSON equality: like ==, but a bool never equals a number (json true is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def field_matches(reply: str, reference) -> dict[str, bool]:
    """Per top-level field of the reference object: is the reply's value exactly equal."""
    expected = _reference_value(reference)
    if not isinstance(expected, dict):
        raise FmlabError("field metrics need a JSON object as the reference")
    value = parse_reply(reply)
    got = value if isinstance(value, dict) else {}
    return {key: key in got and _equal(got[key], want) for key, want in expected.items()}


def field_accuracy(prompt, reply: str, reference) -> float:
    """The fraction of the reference's fields that the reply gets exactly right (0 when it does not parse)."""
    matches = field_matches(reply, reference)
    return sum(matches.values()) / len(matches) if matches else float(parse_reply(reply) == {})


def exact_match(prompt, reply: str, reference) -> float:
    """1.0 if the reply's JSON value equals the reference's (whitespace and key order do not matter)."""
    value = parse_reply(reply)
    return float(value is not _MISSING and _equal(value, _reference_value(reference)))


def structured_scores(prompt, reply: str, reference, *, schema: dict | None = None) -> dict[str, float]:
    """All of the above for one reply: `parses`, `schema_valid` (when there is a schema), `field_accuracy`,
    `exact_match`, and `field:<name>` per reference field."""
    out = {"parses": json_parses(prompt, reply)}
    if _schema(prompt, schema) is not None:
        out["schema_valid"] = schema_valid(prompt, reply, schema=schema)
    out["field_accuracy"] = field_accuracy(prompt, reply, reference)
    out["exact_match"] = exact_match(prompt, reply, reference)
    out |= {f"field:{k}": float(v) for k, v in field_matches(reply, reference).items()}
    return out


METRICS = {
    "json_parses": json_parses,
    "schema_valid": schema_valid,
    "field_accuracy": field_accuracy,
    "exact_match": exact_match,
}


def structured_table(results, schema: dict | None = None):
    """Per model of a `fmlab.infer.compare.compare` result (rows with `model`, `text` and `reference`, as
    compare gives for training-format prompts): the mean of `structured_scores` over its prompts, the
    schema being `schema` (a JSON schema or a response_format dict). One row per model, in the results' order."""
    import pandas as pd

    if "reference" not in results:
        raise FmlabError("structured_table needs a 'reference' column (compare on samples that end with the answer)")
    rows = [structured_scores(None, t, r, schema=schema) for t, r in zip(results["text"], results["reference"])]
    table = pd.DataFrame(rows, index=results.index).groupby(results["model"], sort=False).mean()
    table = table.loc[list(dict.fromkeys(results["model"]))]
    table.index.name = None
    return table

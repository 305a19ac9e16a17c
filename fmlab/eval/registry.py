"""Metric names → metric functions, for `fmlab eval --metric NAME[,NAME...]` and `fmlab.eval.evaluate`.

| name | what (each in 0..1 per sample) |
|---|---|
| `exact` | normalised exact match (`fmlab.eval.metrics`) |
| `label` | the reply names the reference label; with per-label P/R/F1 and a confusion matrix |
| `rouge_l`, `chrf` | ROUGE-L F1 and chrF, for free text |
| `json` (= `json_fields`), `json_parses`, `schema_valid`, `json_exact` | JSON output (`fmlab.eval.structured`) |
| `tool_call`, `tool_name` | the template's tool calls (`fmlab.eval.tool_calls`) |
| `regex:PATTERN`, `regex` | the reply matches PATTERN; or the reference, read as a pattern |
| `play_format` | fmlab-tiny's play-format score |
| `mypkg.mod:fn`, `path/to/file.py:fn` | your own `fn(prompt, reply, reference) -> float` |
| `auto` | picked from the references (`choose_metrics`) |

A `Metric` is built per run, because `label` needs the run's label set.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fmlab.data.schema import response_format_in
from fmlab.errors import FmlabError
from fmlab.eval.metrics import chrf, exact, label_metric, normalise, play_format, regex_metric, rouge_l
from fmlab.eval.structured import exact_match, field_accuracy, json_parses, parse_reply, schema_valid
from fmlab.eval.tool_calls import parse_tool_calls, tool_call, tool_name

BUILTIN: dict[str, Callable] = {
    "exact": exact,
    "rouge_l": rouge_l,
    "chrf": chrf,
    "json": field_accuracy,
    "json_fields": field_accuracy,
    "json_parses": json_parses,
    "schema_valid": schema_valid,
    "json_exact": exact_match,
    "tool_call": tool_call,
    "tool_name": tool_name,
    "play_format": play_format,
}
BUILT_PER_RUN = ("label", "regex")
ALIASES = {
    "exact_match": "exact",
    "em": "exact",
    "accuracy": "label",
    "label_accuracy": "label",
    "rouge": "rouge_l",
    "rougel": "rouge_l",
    "json_valid": "schema_valid",
    "tool_calls": "tool_call",
    "play": "play_format",
}
AUTO = "auto"
NAMES = [*BUILTIN, *BUILT_PER_RUN]


@dataclass
class Metric:
    """A named per-sample metric; `labels` is set for the `label` metric (its label set)."""

    name: str
    fn: Callable
    labels: list[str] | None = None
    user: bool = False  # a user's function: its errors are reported as the user's, with the sample
    details: dict = field(default_factory=dict)

    def __call__(self, prompt, reply: str, reference: str, where: str = "") -> float:
        try:
            value = self.fn(prompt, reply, reference)
        except FmlabError as err:
            raise FmlabError(f"{where}: metric {self.name}: {err}") from None
        except Exception as err:
            if not self.user:
                raise
            raise FmlabError(f"{where}: metric {self.name} raised {type(err).__name__}: {err}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise FmlabError(f"{where}: metric {self.name} returned {value!r}, not a number") from None
        if math.isnan(value):
            raise FmlabError(f"{where}: metric {self.name} returned NaN")
        return value


def _user_function(spec: str) -> Callable:
    """`package.module:function` (importable) or `path/to/file.py:function`."""
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FmlabError(f"--metric {spec}: no such file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except FmlabError:
        raise
    except Exception as err:
        raise FmlabError(f"--metric {spec}: cannot import {target} ({type(err).__name__}: {err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise FmlabError(f"--metric {spec}: {target} has no function {attr!r}")
    try:
        inspect.signature(fn).bind(None, "", "")
    except TypeError:
        raise FmlabError(f"--metric {spec}: {attr} must take (prompt, reply, reference)") from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return fn


def build_metric(spec: str, references: list[str]) -> Metric:
    """The Metric for one name (see the table above); `references` give `label` its label set."""
    name = ALIASES.get(spec.strip().lower(), spec.strip())
    if name in BUILTIN:
        return Metric(name, BUILTIN[name])
    if name == "label":
        fn = label_metric(references)
        return Metric("label", fn, labels=fn.labels)
    if name == "regex" or name.startswith("regex:"):
        pattern = name.partition(":")[2] or None
        return Metric(name, regex_metric(pattern))
    if ":" in name:
        return Metric(name, _user_function(name), user=True)
    raise FmlabError(
        f"unknown metric {spec!r}; use one of {', '.join(NAMES)}, regex:PATTERN, auto, or your own as module:function"
    )


def split_specs(specs) -> list[str]:
    """["exact,chrf", "label"] → ["exact", "chrf", "label"]; a `regex:` pattern keeps its commas."""
    out = []
    for spec in [specs] if isinstance(specs, str) else specs or []:
        if spec.startswith("regex:"):
            out.append(spec)
            continue
        out += [s.strip() for s in spec.split(",") if s.strip()]
    return out


def choose_metrics(references: list[str], prompts: list | None = None) -> tuple[list[str], str]:
    """(metric names, why) for `auto`, from what the references look like."""
    n = len(references)
    if any(parse_tool_calls(r) for r in references):
        return ["tool_call", "tool_name"], "the references contain tool calls"
    if n and all(isinstance(parse_reply(r), dict) for r in references):
        with_schema = prompts and all(response_format_in(p) is not None for p in prompts)
        names = ["json", "json_parses"] + (["schema_valid"] if with_schema else [])
        return names, "every reference is a JSON object"
    if n and all(r.lstrip().startswith("TITLE:") for r in references):
        return ["play_format"], "the references are fmlab-tiny plays"
    distinct = {normalise(r) for r in references}
    if n >= 4 and len(distinct) <= min(50, n // 2) and all(len(d.split()) <= 4 for d in distinct):
        return ["label"], f"the references are {len(distinct)} distinct short labels"
    if n and statistics.median(len(r.split()) for r in references) <= 12:
        return ["exact"], "the references are short answers"
    return ["rouge_l", "chrf"], "the references are free text"


def build_metrics(specs, references: list[str], prompts: list | None = None) -> tuple[list[Metric], str | None]:
    """The run's metrics from names (`auto` expands by `choose_metrics`); (metrics, why auto chose them)."""
    names, why = split_specs(specs) or [AUTO], None
    if AUTO in names:
        chosen, why = choose_metrics(references, prompts)
        at = names.index(AUTO)
        names = names[:at] + chosen + names[at + 1 :]
    names = list(dict.fromkeys(names))
    return [build_metric(name, references) for name in names], why

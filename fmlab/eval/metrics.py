"""Text metrics of `fmlab eval`, each a small function `metric(prompt, reply, reference) -> float` in 0..1:

- `exact`: normalised exact match (Unicode NFKC, case folded, punctuation dropped, whitespace collapsed);
- `label`: the reply names the reference label (built per run by `label_metric(labels)`, the labels being
  the distinct references, since "which label did it name" needs the label set);
- `rouge_l`: ROUGE-L F1 (Lin 2004) from Google's `rouge-score`, with a Unicode word tokenizer;
- `chrf`: chrF (Popović 2015) from `sacrebleu`, scaled to 0..1;
- `regex`: the reply matches a pattern (`regex_metric(pattern)`), or, without one, the reference read as
  a pattern matches the whole reply;
- `play_format`: fmlab-tiny's play-format score (`fmlab.tiny.plays.play_format_score`; no reference needed).

`prompt` is the conversation before the reply (a message list), `reply` the model's text, `reference`
the sample's last assistant turn as the template writes it. The libraries are imported on first use.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable

from fmlab.errors import FmlabError
from fmlab.tiny.plays import play_format_score

_PUNCTUATION = re.compile(r"[\W_]+", re.UNICODE)  # anything that is not a letter or digit
OTHER = "(other)"  # the predicted label of a reply that names none of the labels, or several


def normalise(text: str) -> str:
    """Compare text as a reader would: NFKC, case folded, punctuation as spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def exact(prompt, reply: str, reference: str) -> float:
    """1.0 if reply and reference are equal after `normalise` ("Paris." == "paris"), else 0.0."""
    return float(normalise(reply) == normalise(reference))


# --- labels ---------------------------------------------------------------------------------------


def predicted_label(reply: str, labels: Iterable[str]) -> str:
    """Which label a reply names: the one it equals after `normalise`; else the one label that occurs in
    it as whole words ("The fox is sad." → sad); else `OTHER` (none, or several: "happy or sad?")."""
    by_norm = {normalise(label): label for label in labels}
    said = normalise(reply)
    if said in by_norm:
        return by_norm[said]
    padded = f" {said} "
    named = [label for norm, label in by_norm.items() if norm and f" {norm} " in padded]
    return named[0] if len(named) == 1 else OTHER


def label_metric(labels: Iterable[str]) -> Callable[[object, str, str], float]:
    """The `label` metric for one label set: 1.0 if the reply names the reference's label."""
    labels = sorted(set(labels))

    def label(prompt, reply: str, reference: str) -> float:
        return float(predicted_label(reply, labels) == predicted_label(reference, labels))

    label.labels = labels
    return label


# --- overlap metrics from maintained libraries ------------------------------------------------------


class _WordTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]; this keeps every script's letters."""

    def tokenize(self, text: str) -> list[str]:
        return normalise(text).split()


@functools.cache
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise FmlabError("--metric rouge_l needs the rouge-score package: pip install rouge-score") from None
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


def rouge_l(prompt, reply: str, reference: str) -> float:
    """ROUGE-L F1 between reply and reference: longest common word subsequence (rouge-score)."""
    return float(_rouge_scorer().score(reference or "", reply or "")["rougeL"].fmeasure)


@functools.cache
def _chrf():
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise FmlabError("--metric chrf needs the sacrebleu package: pip install sacrebleu") from None
    return CHRF()


def chrf(prompt, reply: str, reference: str) -> float:
    """chrF (character n-gram F-score, β = 2) of the reply against the reference (sacrebleu), in 0..1."""
    return float(_chrf().sentence_score(reply or "", [reference or ""]).score) / 100.0


# --- patterns and the toy task ----------------------------------------------------------------------


def regex_metric(pattern: str | None = None) -> Callable[[object, str, str], float]:
    """`regex:PATTERN`: 1.0 if PATTERN occurs in the reply (`re.search`; anchor it with ^...$ for the
    whole reply). Without a pattern the reference is the pattern and must match the whole stripped reply."""
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise FmlabError(f"--metric regex:{pattern}: not a regular expression ({err})") from None

    def regex(prompt, reply: str, reference: str) -> float:
        if pattern is not None:
            return float(compiled.search(reply or "") is not None)
        try:
            return float(re.fullmatch(reference, (reply or "").strip()) is not None)
        except re.error as err:
            raise FmlabError(f"reference {reference[:60]!r} is not a regular expression ({err})") from None

    return regex


def play_format(prompt, reply: str, reference: str | None = None) -> float:
    """fmlab-tiny's play-format score of the reply for the request in the prompt (see fmlab.tiny.plays)."""
    return play_format_score(prompt, reply or "")

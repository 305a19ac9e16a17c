"""fmlab eval's metrics on hand-made cases, failures included: exact match, labels (with per-label
P/R/F1 and the confusion matrix), ROUGE-L, chrF, regex, tool calls, JSON, the play format, a user's own
function, and what `auto` picks from the references."""

import json
from pathlib import Path

import pytest

from fmlab.data.chat_template import tool_calls_text
from fmlab.errors import FmlabError
from fmlab.eval.labels import confusion_matrix, label_report
from fmlab.eval.metrics import OTHER, chrf, exact, label_metric, normalise, predicted_label, regex_metric, rouge_l
from fmlab.eval.registry import build_metric, build_metrics, choose_metrics, split_specs
from fmlab.eval.tool_calls import parse_tool_calls, reference_text, tool_call, tool_name

DATA = Path(__file__).resolve().parent.parent / "data"
LABELS = ["angry", "happy", "sad", "scared"]


def test_exact_match_normalises_case_punctuation_and_space():
    assert normalise("  The Capital\nof  FRANCE is Paris! ") == "the capital of france is paris"
    assert exact(None, "paris", "Paris.") == 1.0
    assert exact(None, "ＰＡＲＩＳ", "paris") == 1.0  # NFKC: full-width letters
    assert exact(None, "Paris, France", "Paris") == 0.0
    assert exact(None, "", "Paris") == 0.0
    assert exact(None, "", "") == 1.0


def test_predicted_label_is_the_one_label_named():
    assert predicted_label("Sad.", LABELS) == "sad"
    assert predicted_label("The fox is sad because it lost its ball", LABELS) == "sad"
    assert predicted_label("happy or sad?", LABELS) == OTHER  # two labels: no answer
    assert predicted_label("Thank you!", LABELS) == OTHER
    assert predicted_label("sadness", LABELS) == OTHER  # whole words only
    label = label_metric(["sad", "happy", "sad"])
    assert label.labels == ["happy", "sad"]
    assert label(None, "sad", "sad") == 1.0 and label(None, "happy", "sad") == 0.0
    assert label(None, "I feel happy and sad", "sad") == 0.0


def test_label_report_and_confusion_matrix_by_hand():
    references = ["sad", "sad", "sad", "happy", "happy", "angry"]
    replies = ["sad", "happy", "Sad!", "happy", "no idea", "angry"]
    confusion = confusion_matrix(replies, references, ["angry", "happy", "sad"])
    assert list(confusion.columns) == ["angry", "happy", "sad", OTHER]
    assert confusion.loc["sad"].tolist() == [0, 1, 2, 0]
    assert confusion.loc["happy"].tolist() == [0, 1, 0, 1]
    assert int(confusion.values.sum()) == len(references)
    report = label_report(confusion)
    # sad: 2 of 3 found, both sad predictions right; happy: 1 of 2 found, 1 of 2 happy predictions right
    assert report.loc["sad", ["precision", "recall"]].tolist() == [1.0, pytest.approx(2 / 3)]
    assert report.loc["sad", "f1"] == pytest.approx(0.8)
    assert report.loc["happy", ["precision", "recall", "f1"]].tolist() == [0.5, 0.5, 0.5]
    assert report.loc["angry", "f1"] == 1.0
    assert report.loc["macro avg", "f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert report.loc["macro avg", "support"] == 6


def test_rouge_l_and_chrf():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is 5 words of 6 on both sides
    assert rouge_l(None, "the cat is on the mat", "The cat sat on the mat.") == pytest.approx(5 / 6)
    assert rouge_l(None, "dogs bark", "the cat sat") == 0.0
    assert rouge_l(None, "", "the cat sat") == 0.0
    assert rouge_l(None, "le chat était là", "le chat était là") == 1.0  # every script's letters count
    assert chrf(None, "the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert chrf(None, "", "the cat sat on the mat") == 0.0
    partial = chrf(None, "the cat is on the mat", "the cat sat on the mat")
    assert 0.3 < partial < 1.0
    assert chrf(None, "the cat sat on a mat", "the cat sat on the mat") > chrf(
        None, "a dog ran", "the cat sat on the mat"
    )


def test_regex_with_a_pattern_or_the_reference_as_pattern():
    digits = regex_metric(r"^\d{3}-\d{4}$")
    assert digits(None, "555-1234", "") == 1.0 and digits(None, "call 555-1234", "") == 0.0
    assert regex_metric(r"\bparis\b")(None, "It is paris.", "") == 1.0
    whole = regex_metric()
    assert whole(None, "  42 \n", r"\d+") == 1.0
    assert whole(None, "42 apples", r"\d+") == 0.0
    with pytest.raises(FmlabError, match="not a regular expression"):
        regex_metric("(unclosed")
    assert split_specs(["regex:a,b", "exact,chrf"]) == ["regex:a,b", "exact", "chrf"]


CALL = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]


def test_tool_calls_in_the_template_format():
    reference = reference_text({"role": "assistant", "content": "", "tool_calls": CALL})
    assert reference == tool_calls_text(CALL)
    assert parse_tool_calls(reference) == [("get_weather", '{"city": "Paris", "unit": "C"}')]
    # same call, arguments in another order and as a JSON string, closing marker cut off
    reply = '<executable_start> ```function\n[{"name": "get_weather", "arguments": "{\\"unit\\": \\"C\\", \\"city\\": \\"Paris\\"}"}]```'
    assert tool_call(None, reply, reference) == 1.0 and tool_name(None, reply, reference) == 1.0
    wrong_args = tool_calls_text([{"name": "get_weather", "arguments": {"city": "Rome", "unit": "C"}}])
    assert tool_call(None, wrong_args, reference) == 0.0 and tool_name(None, wrong_args, reference) == 1.0
    wrong_tool = tool_calls_text([{"name": "get_time", "arguments": {"city": "Paris", "unit": "C"}}])
    assert tool_call(None, wrong_tool, reference) == 0.0 and tool_name(None, wrong_tool, reference) == 0.0
    twice = tool_calls_text(CALL + CALL)
    assert tool_call(None, twice, reference) == 0.0  # an extra call is not the reference's calls
    broken = '<executable_start> ```function\n[{"name": "get_weather", "arguments": {```<executable_end>'
    assert parse_tool_calls(broken) is None and tool_call(None, broken, reference) == 0.0
    assert tool_call(None, "It is sunny in Paris.", reference) == 0.0
    assert tool_call(None, "It is sunny.", "Sunny, 20 degrees.") == 1.0  # neither calls a tool: right
    assert tool_call(None, twice, "Sunny, 20 degrees.") == 0.0


def test_json_metrics_are_the_structured_ones():
    reference = '{"name": "Ada", "age": 36}'
    assert build_metric("json", [])(None, '{"age": 36, "name": "Ada"}', reference) == 1.0
    assert build_metric("json", [])(None, '{"name": "Ada", "age": 37}', reference) == 0.5
    assert build_metric("json", [])(None, "Ada, 36", reference) == 0.0
    assert build_metric("json_parses", [])(None, "[1, 2]", reference) == 1.0
    assert build_metric("json_exact", [])(None, '{"name": "Ada", "age": 36.0}', reference) == 1.0


def test_play_format_reads_the_request():
    sample = json.loads((DATA / "test.jsonl").read_text().splitlines()[0])
    metric = build_metric("play_format", [])
    assert metric(sample[:-1], sample[-1]["content"], "") == 1.0
    assert metric(sample[:-1], "Once upon a time there was a dragon.", "") == 0.0


def test_user_functions_from_a_module_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def starts_yes(prompt, reply, reference):\n    return reply.lower().startswith('yes')\n"
        "def two_args(prompt, reply):\n    return 1.0\n"
        "def broken(prompt, reply, reference):\n    return 1 / 0\n"
        "def words(prompt, reply, reference):\n    return 'many'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    metric = build_metric("my_metrics:starts_yes", [])
    assert metric.user and metric(None, "Yes, it is", "") == 1.0 and metric(None, "No", "") == 0.0
    by_file = build_metric(f"{tmp_path / 'my_metrics.py'}:starts_yes", [])
    assert by_file(None, "yes", "") == 1.0
    with pytest.raises(FmlabError, match=r"must take \(prompt, reply, reference\)"):
        build_metric("my_metrics:two_args", [])
    with pytest.raises(FmlabError, match="has no function 'missing'"):
        build_metric("my_metrics:missing", [])
    with pytest.raises(FmlabError, match="cannot import no_such_module"):
        build_metric("no_such_module:fn", [])
    with pytest.raises(FmlabError, match=r"data.jsonl:3: metric my_metrics:broken raised ZeroDivisionError"):
        build_metric("my_metrics:broken", [])(None, "", "", where="data.jsonl:3")
    with pytest.raises(FmlabError, match="returned 'many', not a number"):
        build_metric("my_metrics:words", [])(None, "", "")
    with pytest.raises(FmlabError, match="unknown metric 'bleu'.*label"):
        build_metric("bleu", [])


def test_auto_picks_the_metric_that_fits():
    assert choose_metrics(["sad", "happy", "sad", "angry", "happy", "sad", "happy", "angry"])[0] == ["label"]
    assert choose_metrics(["The capital of France is Paris.", "4 plus 4 is 8.", "Hello!", "DOG, CAT"])[0] == ["exact"]
    long = ["Once upon a time " + "there was a fox who lived in a forest and " * 3] * 5
    assert choose_metrics(long)[0] == ["rouge_l", "chrf"]
    assert choose_metrics(['{"a": 1}', '{"a": 2}'])[0] == ["json", "json_parses"]
    assert choose_metrics([tool_calls_text(CALL), "It is sunny."])[0] == ["tool_call", "tool_name"]
    play = json.loads((DATA / "test.jsonl").read_text().splitlines()[0])[-1]["content"]
    assert choose_metrics([play, play])[0] == ["play_format"]
    metrics, why = build_metrics(["auto,exact"], ["sad", "happy"] * 4)
    assert [m.name for m in metrics] == ["label", "exact"] and "labels" in why
    metrics, why = build_metrics("em,accuracy", ["sad", "happy"])
    assert [m.name for m in metrics] == ["exact", "label"] and why is None

"""fmlab.eval.evaluate on a tiny random model: every model on the same samples with the same decoding
(the replies are compare's), the base loaded once, adapters swapped and restored, the speculative path
giving the greedy replies, summaries that agree with the per-sample scores, flips with regressions
first, the out-of-domain drop, and what eval.json and the HTML report hold."""

import base64
import json
import math
import re

import pytest
import torch
from conftest import sharp
from helpers import randomize_lora

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.eval import evaluate
from fmlab.eval.harness import list_flips, summarise
from fmlab.eval.report import flips_html
from fmlab.infer.compare import compare, wide
from fmlab.model.config import preset
from fmlab.model.lora import lora_state_dict
from fmlab.model.transformer import build_model

QUESTIONS = ["Who is in the castle?", "Who was at the play?", "Why is the queen here?", "Who can speak?"]
SAMPLES = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    for q, a in zip(QUESTIONS * 2, ["king", "queen", "king", "queen", "queen", "king", "queen", "king"])
]
OOD = [[{"role": "user", "content": "Say <b>hello</b> & bye"}, {"role": "assistant", "content": "hello"}]] * 2


USER_METRIC = """
def first_word_is_even(prompt, reply, reference):
    # a deterministic pass/fail that random models disagree on
    return float(len(reply.split()[0]) % 2 == 0) if reply.split() else 0.0
"""


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    model = sharp(build_model(preset("tiny", vocab_size=tiny_tokenizer.vocab_size), seed=0).eval())
    randomize_lora(model, 0.3, 1)
    return model


@pytest.fixture(scope="module")
def adapters(lm, tmp_path_factory):
    own = {k: v.clone() for k, v in lora_state_dict(lm).items()}
    paths, folder = [], tmp_path_factory.mktemp("adapters")
    for seed in (2, 3):
        randomize_lora(lm, 0.3, seed)
        paths.append(save_adapter(lm, folder / f"adapter-{seed}.pt"))
    lm.load_state_dict(own, strict=False)
    return paths


@pytest.fixture(scope="module")
def result(lm, tiny_tokenizer, adapters, tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    (folder / "eval_user_metrics.py").write_text(USER_METRIC)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        return evaluate(
            {"one": adapters[0], "two": adapters[1]},
            SAMPLES,
            "label,eval_user_metrics:first_word_is_even",
            ood=OOD,
            ood_metrics="exact",
            base_model=lm,
            tokenizer=tiny_tokenizer,
            max_new_tokens=6,
            batch_size=3,
            resamples=500,
            progress=False,
        )


def test_every_model_on_the_same_samples_as_compare_decodes_them(result, lm, tiny_tokenizer, adapters):
    replies = result.replies
    assert len(replies) == (len(SAMPLES) + len(OOD)) * 3
    assert list(dict.fromkeys(replies["model"])) == ["base", "one", "two"]
    task = replies[replies["split"] == "task"]
    assert task["reference"].tolist()[: len(SAMPLES)] == [s[-1]["content"] for s in SAMPLES]
    assert task["where"].iloc[0] == "<memory>:1"
    # compare's replies one prompt at a time; ours are batched by length: the same greedy text
    expected = compare(
        {"base": None, "one": adapters[0], "two": adapters[1]},
        tiny_tokenizer,
        [s[:-1] for s in SAMPLES],
        max_new_tokens=6,
        base_model=lm,
    )
    ours = task.pivot(index="prompt_id", columns="model", values="text")
    for model in ("base", "one", "two"):
        assert ours[model].tolist() == wide(expected)[model].tolist()
    assert (ours["one"] != ours["base"]).any()
    assert (task["tokens"] <= 6).all()


def test_the_models_own_adapter_is_restored(lm, tiny_tokenizer, adapters):
    before = {k: v.clone() for k, v in lora_state_dict(lm).items()}
    evaluate(
        [adapters[0]], SAMPLES[:2], "exact", base_model=lm, tokenizer=tiny_tokenizer, max_new_tokens=3, progress=False
    )
    assert all(torch.equal(before[k], v) for k, v in lora_state_dict(lm).items())


def test_summary_agrees_with_the_scores(result):
    s, scores = result.summary, result.scores
    assert set(s["split"]) == {"task", "ood"} and len(s) == 3 * 3  # (2 task metrics + 1 ood) x 3 models
    for r in s.itertuples():
        mine = scores[(scores.split == r.split) & (scores.metric == r.metric) & (scores.model == r.model)]
        assert r.n == len(mine) and r.mean == pytest.approx(mine["score"].mean())
        assert r.pass_rate == pytest.approx(mine["passed"].mean())
        assert r.ci_low <= r.mean <= r.ci_high
        if r.model == "base":
            assert math.isnan(r.diff) and math.isnan(r.p_value)
            continue
        base = scores[(scores.split == r.split) & (scores.metric == r.metric) & (scores.model == "base")]
        assert r.diff == pytest.approx(mine["score"].mean() - base["score"].mean())
        assert r.diff_low <= r.diff <= r.diff_high
        regressed = (base["passed"].values & ~mine["passed"].values).sum()
        assert r.regressed == regressed and 0 < r.p_value <= 1
        flips = result.flips[(result.flips.model == r.model) & (result.flips.metric == r.metric)]
        assert (flips["flip"] == "regressed").sum() == r.regressed and (flips["flip"] == "improved").sum() == r.improved
    user = s[s.metric == "eval_user_metrics:first_word_is_even"]
    assert (user["improved"].fillna(0) + user["regressed"].fillna(0)).sum() > 0  # the adapters do flip samples


def test_labels_confusion_per_model(result):
    assert set(result.labels) == {"base", "one", "two"}
    confusion = result.labels["one"]["confusion"]
    assert list(confusion.index) == ["king", "queen"] and int(confusion.values.sum()) == len(SAMPLES)
    label = result.summary[(result.summary.metric == "label") & (result.summary.model == "one")]
    diagonal = confusion.loc["king", "king"] + confusion.loc["queen", "queen"]
    assert label["mean"].iloc[0] == pytest.approx(diagonal / len(SAMPLES))


def test_ood_drop_is_base_minus_checkpoint(result):
    ood = result.ood
    assert list(ood["model"]) == ["one", "two"]
    for r in ood.itertuples():
        assert r.drop == pytest.approx(r.base_mean - r.mean)
        assert r.drop_low <= r.drop <= r.drop_high


def test_flips_list_regressions_first():
    import pandas as pd

    rows = []
    for model, passes in (("base", [1, 0, 1, 0]), ("a", [0, 1, 1, 0]), ("b", [0, 0, 1, 1])):
        rows += [
            {"split": "task", "prompt_id": i, "model": model, "metric": "m", "score": float(p), "passed": bool(p)}
            for i, p in enumerate(passes)
        ]
    scores = pd.DataFrame(rows)
    replies = [
        {"split": "task", "prompt_id": i, "model": m, "where": f"f:{i + 1}", "prompt": "p", "reference": "r", "text": m}
        for m in ("base", "a", "b")
        for i in range(4)
    ]
    flips = list_flips(scores, replies)
    assert flips["flip"].tolist() == ["regressed", "regressed", "improved", "improved"]
    assert flips[["model", "prompt_id"]].values.tolist() == [["a", 0], ["b", 0], ["a", 1], ["b", 3]]
    assert flips["base_text"].tolist() == ["base"] * 4
    summary = summarise(scores, ["base", "a", "b"], resamples=200)
    b = summary[summary.model == "b"].iloc[0]
    assert (b.regressed, b.improved, b.p_value) == (1, 1, 1.0)


def test_speculative_decoding_gives_the_greedy_replies(lm, tiny_tokenizer, adapters, result):
    draft = build_model(preset("tiny-draft", vocab_size=tiny_tokenizer.vocab_size), seed=1).eval()
    spec = evaluate(
        {"one": adapters[0], "two": adapters[1]},
        SAMPLES,
        "label",
        base_model=lm,
        tokenizer=tiny_tokenizer,
        draft=draft,
        num_draft_tokens=3,
        max_new_tokens=6,
        progress=False,
    )
    plain = result.replies[result.replies.split == "task"].reset_index(drop=True)
    assert spec.replies["text"].tolist() == plain["text"].tolist()
    assert spec.info["decoding"]["speculative"] and spec.info["decoding"]["batch_size"] == 1
    assert 0 <= spec.info["timing"]["models"]["one"]["acceptance_rate"] <= 1


def test_eval_json_and_report(result, tmp_path):
    paths = result.write(tmp_path / "eval")
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"info", "summary", "ood", "flips", "labels", "samples"}
    assert len(data["samples"]) == len(result.scores)
    assert data["info"]["metrics"] == {"task": ["label", "eval_user_metrics:first_word_is_even"], "ood": ["exact"]}
    assert data["info"]["models"]["base"] is None and len(data["info"]["models"]["one"]["sha256"]) == 64
    assert data["labels"]["one"]["confusion"]["king"].keys() == {"king", "queen", "(other)"}
    assert all(r["diff"] is None for r in data["summary"] if r["model"] == "base")  # NaN is not JSON
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page  # standalone
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "task · label (n = 8)" in page and "ood · exact (n = 2)" in page and "McNemar p" in page
    assert "reference ↓ / predicted →" in page  # the confusion matrix
    assert "Out of domain" in page and "drop 95% CI" in page
    flips = page[page.index("Flips against the base") :]
    assert flips.count("<tr>") == (len(result.flips) + 1 if len(result.flips) else 0)
    if "regressed" in flips and "improved" in flips:
        assert flips.index(">regressed<") < flips.index(">improved<")


def test_report_escapes_every_text(result):
    flips = result.flips.head(1).copy()
    flips["prompt"], flips["text"] = "Say <b>hello</b> & bye", "<script>alert(1)</script>"
    page = flips_html(flips)
    assert "Say &lt;b&gt;hello&lt;/b&gt; &amp; bye" in page and "&lt;script&gt;" in page
    assert "<b>hello" not in page and "<script>" not in page


def test_the_bag_of_words_baseline_answers_the_task_split_only(lm, tiny_tokenizer, tmp_path):
    # "castle" always goes with king and "play" with queen: words alone predict the answer
    train = [
        [{"role": "user", "content": f"Who is in the {place} {n}?"}, {"role": "assistant", "content": answer}]
        for n in range(6)
        for place, answer in (("castle", "king"), ("play", "queen"))
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in train))
    test = [
        [{"role": "user", "content": f"Who is in the {p}?"}, {"role": "assistant", "content": a}]
        for p, a in (("castle", "king"), ("play", "queen"))
    ] * 2
    out = evaluate(
        {}, test, "label", ood=OOD, ood_metrics="exact", base_model=lm, tokenizer=tiny_tokenizer,
        max_new_tokens=4, resamples=200, progress=False, baseline_train=path,
    )  # fmt: skip
    task = out.summary[out.summary["split"] == "task"].set_index("model")
    assert list(task.index) == ["base", "bag-of-words"] and task.loc["bag-of-words", "mean"] == 1.0
    assert set(out.summary[out.summary["split"] == "ood"]["model"]) == {"base"}
    assert out.labels["bag-of-words"]["confusion"].loc["king", "king"] == 2
    assert "bag-of-words" not in set(out.flips["model"])
    assert out.info["models"]["bag-of-words"]["train_samples"] == 12


def test_the_baseline_refuses_a_file_that_is_not_a_labelled_task(tmp_path):
    from fmlab.errors import FmlabError

    path = tmp_path / "free.jsonl"
    rows = [
        [{"role": "user", "content": f"Tell story {i}"}, {"role": "assistant", "content": f"Story {i}."}]
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(s) + "\n" for s in rows))
    with pytest.raises(FmlabError, match=r"free\.jsonl.*6 distinct answers"):
        evaluate({}, rows, "exact", baseline_train=path, progress=False)

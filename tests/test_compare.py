"""compare: one row per (prompt, model), the base is the zero-LoRA model, adapters swap in and out,
flips and summaries follow the scores, the HTML is escaped."""

import json
import math

import pandas as pd
import pytest
import torch
from helpers import randomize_lora

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.checkpoints.run_dir import run_checkpoints
from fmlab.infer.compare import compare, flips, score_table, split_prompt, to_html, wide
from fmlab.infer.generate import generate
from fmlab.infer.sampling import Sampling
from fmlab.model.config import preset
from fmlab.model.lora import is_lora_b, lora_state_dict, merge_lora
from fmlab.model.transformer import build_model

PROMPTS = ["Write a scene about the king.", [{"role": "user", "content": "Why is the queen in the castle?"}]]


def random_adapter(model, seed):
    randomize_lora(model, 0.3, seed)


@pytest.fixture
def lm(tiny_tokenizer):
    """A tiny base whose vocabulary covers the tiny tokenizer, with a random non-zero adapter."""
    model = build_model(preset("tiny", vocab_size=tiny_tokenizer.vocab_size), seed=0).eval()
    random_adapter(model, 1)
    return model


@pytest.fixture
def adapters(lm, tmp_path):
    """Two different adapter files for `lm`; `lm` itself keeps its own adapter."""
    own = {k: v.clone() for k, v in lora_state_dict(lm).items()}
    paths = []
    for seed in (2, 3):
        random_adapter(lm, seed)
        paths.append(save_adapter(lm, tmp_path / f"adapter-{seed}.pt"))
    lm.load_state_dict(own, strict=False)
    return paths


def test_one_row_per_prompt_and_model(lm, tiny_tokenizer, adapters):
    models = {"base": None, "one": adapters[0], "two": adapters[1]}
    df = compare(models, tiny_tokenizer, PROMPTS, max_new_tokens=6, base_model=lm)
    assert len(df) == len(PROMPTS) * len(models)
    assert set(zip(df["prompt_id"], df["model"])) == {(i, m) for i in range(len(PROMPTS)) for m in models}
    assert list(df["model"][:3]) == list(models)  # prompt-major, models in the given order
    assert df["prompt"][3] == "Why is the queen in the castle?"
    assert (df["tokens"] <= 6).all() and (df["latency_s"] >= df["ttft_s"]).all()
    assert df["score"].isna().all()
    assert list(wide(df).columns) == list(models) and wide(df).shape == (len(PROMPTS), len(models))


def test_same_seed_same_text_for_the_same_model(lm, tiny_tokenizer, adapters):
    sampling = Sampling(temperature=1.0, top_k=50, seed=7)  # sampled, so the seed is what matters
    df = compare(
        {"a": adapters[0], "b": adapters[0], "c": adapters[1]},
        tiny_tokenizer,
        PROMPTS,
        max_new_tokens=8,
        sampling=sampling,
        base_model=lm,
    )
    texts = wide(df)
    assert (texts["a"] == texts["b"]).all()
    assert (texts["a"] != texts["c"]).any()


def test_base_is_the_zero_lora_model_and_adapters_are_restored(lm, tiny_tokenizer, adapters):
    before = {k: v.clone() for k, v in lora_state_dict(lm).items()}
    df = compare(
        {"base": None, "mine": lm, "one": adapters[0]}, tiny_tokenizer, PROMPTS, max_new_tokens=8, base_model=lm
    )
    after = lora_state_dict(lm)
    assert all(torch.equal(before[k], after[k]) for k in before)  # lm's own adapter came back

    zero = build_model(lm.config).eval()
    zero.load_state_dict(lm.state_dict())
    with torch.no_grad():
        for name, p in zero.named_parameters():
            if is_lora_b(name):
                p.zero_()
    greedy = Sampling(temperature=0.0)
    expected = [g.text for g in generate(zero, tiny_tokenizer, PROMPTS, 8, greedy)]
    assert list(wide(df)["base"]) == expected
    own = [g.text for g in generate(lm, tiny_tokenizer, PROMPTS, 8, greedy)]
    assert list(wide(df)["mine"]) == own
    assert expected != own  # the adapter does change the text


def test_a_merged_model_is_unmerged_for_swapping_and_merged_again(lm, tiny_tokenizer, adapters):
    greedy = Sampling(temperature=0.0)
    want = [g.text for g in generate(lm, tiny_tokenizer, PROMPTS[:1], 6, greedy)]
    weight = lm.layers[0].attn.qkv.weight.clone()
    merge_lora(lm)
    df = compare({"base": None, "one": adapters[0]}, tiny_tokenizer, PROMPTS[:1], max_new_tokens=6, base_model=lm)
    assert len(df) == 2 and all(m.merged for m in [lm.layers[0].attn.qkv])
    assert not torch.equal(lm.layers[0].attn.qkv.weight, weight)  # merged again, as it was given
    assert [g.text for g in generate(lm, tiny_tokenizer, PROMPTS[:1], 6, greedy)] == want


def test_score_function_sees_the_prompt_and_the_text(lm, tiny_tokenizer):
    seen = []

    def score(prompt, text):
        seen.append(prompt)
        return len(text) % 2

    df = compare({"base": None}, tiny_tokenizer, PROMPTS, max_new_tokens=4, base_model=lm, score_fn=score)
    assert seen == PROMPTS
    assert list(df["score"]) == [len(t) % 2 for t in df["text"]]


def test_training_samples_become_prompts_with_references(lm, tiny_tokenizer):
    sample = [{"role": "user", "content": "Name the king."}, {"role": "assistant", "content": "KING: Lear."}]
    assert split_prompt(sample) == (sample[:1], "KING: Lear.")
    assert split_prompt("hi") == ("hi", None)
    df = compare({"base": None}, tiny_tokenizer, [sample], max_new_tokens=4, base_model=lm)
    assert df["reference"][0] == "KING: Lear." and df["prompt"][0] == "Name the king."
    assert "KING: Lear." in to_html(df)


def fake_results():
    """Three prompts; model x improves the first, regresses the second, keeps the third."""
    rows = []
    for model, scores in (("base", [0.2, 0.9, 0.6]), ("x", [0.8, 0.1, 0.7]), ("y", [0.3, 0.95, 0.1])):
        for i, s in enumerate(scores):
            rows.append(
                {
                    "prompt_id": i,
                    "prompt": f"p{i}",
                    "model": model,
                    "text": f"{model} says {i}",
                    "tokens": 3,
                    "finish_reason": "stop",
                    "ttft_s": 0.01,
                    "latency_s": 0.1 + i,
                    "tokens_per_s": 30.0,
                    "score": s,
                }
            )
    return pd.DataFrame(rows)


def test_flips_against_the_base():
    f = flips(fake_results(), threshold=0.5)
    assert list(f[f["model"] == "x"]["flip"]) == ["improved", "regressed", "same"]
    assert list(f[f["model"] == "y"]["flip"]) == ["same", "same", "regressed"]
    assert f["delta"].round(2).tolist() == [0.6, -0.8, 0.1, 0.1, 0.05, -0.5]
    assert list(flips(fake_results(), threshold=0.05)["flip"][:3]) == ["same", "same", "same"]


def test_summary_per_model():
    s = score_table(fake_results(), threshold=0.5)
    assert list(s.index) == ["base", "x", "y"]
    assert s.loc["x", "improved"] == 1 and s.loc["x", "regressed"] == 1
    assert s.loc["y", "improved"] == 0 and s.loc["y", "regressed"] == 1
    assert s.loc["base", "improved"] == 0
    assert math.isclose(s.loc["base", "mean_score"], (0.2 + 0.9 + 0.6) / 3)
    assert math.isclose(s.loc["x", "pass_rate"], 2 / 3) and math.isclose(s.loc["x", "mean_latency_s"], 1.1)
    no_scores = fake_results().assign(score=float("nan"))
    assert "mean_score" not in score_table(no_scores).columns
    with pytest.raises(Exception, match="no scores"):
        flips(no_scores)


def test_html_escapes_text_and_wraps():
    df = fake_results()
    df.loc[df["model"] == "x", "text"] = "<script>alert(1)</script> & <b>bold</b>\nnext line"
    page = to_html(df)
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&amp;" in page
    assert "white-space:pre-wrap" in page
    assert page.count("<tr>") == 1 + 3  # header + one row per prompt
    assert "improved" in page and "regressed" in page
    assert "#fff2a8" in page  # words that differ from the base


def test_run_checkpoints_reads_the_manifest(tmp_path):
    manifest = {
        "checkpoints": [
            {"path": "adapter-epoch2.pt", "step": 20, "eval_loss": 1.0},
            {"path": "adapter-epoch1.pt", "step": 10, "eval_loss": 1.2},
        ],
        "final": {"path": "adapter-final.pt", "step": 20},
    }
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    models = run_checkpoints(tmp_path)
    assert list(models) == ["base", "adapter-epoch1", "adapter-epoch2", "adapter-final"]
    assert models["base"] is None and models["adapter-final"] == tmp_path / "adapter-final.pt"
    assert "base" not in run_checkpoints(tmp_path, include_base=False)
    manifest["checkpoints"][0]["sha256"] = manifest["final"]["sha256"] = "same weights"
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    assert list(run_checkpoints(tmp_path)) == ["base", "adapter-epoch1", "adapter-epoch2 (= final)"]

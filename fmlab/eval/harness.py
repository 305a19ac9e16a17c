"""`fmlab.eval.evaluate` (`from fmlab.eval import evaluate`): the base and N adapter checkpoints on the same held-out samples, scored with
task metrics, with intervals and paired tests against the base, and an out-of-domain check.

    result = evaluate(["out/adapter"], "data/labels_test.jsonl", "label", ood="default")
    result.summary            # one row per (split, metric, model): mean [95% CI], pass rate, Δ vs base, McNemar p
    result.flips              # the examples that changed pass/fail against the base, regressions first
    result.write("out/eval")  # eval.json + report.html

Per sample, a metric gives a score in 0..1 and the sample passes when the score is at least `threshold`.
Per model: the mean score with its bootstrap interval; per checkpoint against the base: the mean paired
difference with its interval and the exact McNemar p-value of the pass/fail flips (`fmlab.eval.stats`).
The out-of-domain split (`ood`) is scored the same way; its `drop` is base − checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer
from fmlab.checkpoints.run_dir import BASE, resolve_adapter, resolve_draft
from fmlab.errors import FmlabError
from fmlab.eval.baseline import BASELINE, BagOfWords
from fmlab.eval.labels import confusion_matrix, label_report
from fmlab.eval.registry import build_metrics
from fmlab.eval.runner import OOD, TASK, auto_max_new_tokens, eval_set, expand_models, ood_set, run_models
from fmlab.eval.stats import (
    LEVEL,
    RESAMPLES,
    bootstrap_ci,
    flip_counts,
    mcnemar_exact,
    paired_bootstrap_ci,
    resample_indices,
)
from fmlab.files import file_sha
from fmlab.infer.compare import prompt_text
from fmlab.infer.sampling import Sampling
from fmlab.model.precision import AUTO, resolve_device

THRESHOLD = 0.5
FLIP_ORDER = {"regressed": 0, "improved": 1}


@dataclass
class EvalResult:
    """What an evaluation found. DataFrames are tidy: one observation per row."""

    replies: object  # (split, prompt_id, model): where, prompt, reference, text, tokens, finish_reason, latency_s
    scores: object  # (split, prompt_id, model, metric): score, passed
    summary: object  # (split, metric, model): n, mean, ci_low, ci_high, pass_rate, diff, diff_low, diff_high, ...
    flips: object  # changed pass/fail against the base, regressions first
    labels: dict = field(default_factory=dict)  # model -> {"report": DataFrame, "confusion": DataFrame}
    info: dict = field(default_factory=dict)  # settings, sources, metric choices, timings

    def frame(self):
        """Scores joined with the replies they score: one row per (split, prompt_id, model, metric)."""
        return self.scores.merge(self.replies, on=["split", "prompt_id", "model"], how="left")

    @property
    def ood(self):
        """The out-of-domain split per metric and checkpoint: base and checkpoint means and the drop
        (base − checkpoint, positive = forgotten) with its interval and McNemar p-value."""
        rows = self.summary[(self.summary["split"] == OOD) & (self.summary["model"] != BASE)].copy()
        base = self.summary[(self.summary["split"] == OOD) & (self.summary["model"] == BASE)].set_index("metric")[
            "mean"
        ]
        rows["base_mean"] = rows["metric"].map(base)
        # 0.0 - x: no "-0.000" for an unchanged score
        rows["drop"], rows["drop_low"], rows["drop_high"] = (
            0.0 - rows["diff"],
            0.0 - rows["diff_high"],
            0.0 - rows["diff_low"],
        )
        cols = [
            "metric",
            "model",
            "base_mean",
            "mean",
            "drop",
            "drop_low",
            "drop_high",
            "regressed",
            "improved",
            "p_value",
        ]
        return rows[cols].reset_index(drop=True)

    def to_dict(self) -> dict:
        """Everything as JSON-ready data (what `eval.json` holds)."""

        def records(df):
            return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

        return {
            "info": self.info,
            "summary": records(self.summary),
            "ood": records(self.ood) if (self.summary["split"] == OOD).any() else [],
            "flips": records(self.flips),
            "labels": {
                model: {
                    "report": {label: {k: _plain(v) for k, v in row.items()} for label, row in t["report"].iterrows()},
                    "confusion": {ref: {k: int(v) for k, v in row.items()} for ref, row in t["confusion"].iterrows()},
                }
                for model, t in self.labels.items()
            },
            "samples": records(self.frame()),
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write `eval.json` and the standalone `report.html` into `out_dir`."""
        import json

        from fmlab.eval.report import to_html
        from fmlab.files import atomic_write

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "eval.json", "html": out / "report.html"}
        with atomic_write(paths["json"], "w") as f:
            json.dump(self.to_dict(), f, indent=1, ensure_ascii=False)
        with atomic_write(paths["html"], "w") as f:
            f.write(to_html(self))
        return paths


def _plain(value):
    """numpy scalars → Python; NaN → None (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def score_replies(replies, sets, metrics, threshold: float = THRESHOLD):
    """The tidy score table: every metric of a reply's split on every reply."""
    import pandas as pd

    by_split = {s.split: s for s in sets}
    rows = []
    for r in replies:
        s = by_split[r["split"]]
        for m in metrics[r["split"]]:
            score = m(s.prompts[r["prompt_id"]], r["text"], r["reference"], r["where"])
            rows.append(
                {
                    "split": r["split"],
                    "prompt_id": r["prompt_id"],
                    "model": r["model"],
                    "metric": m.name,
                    "score": score,
                    "passed": score >= threshold,
                }
            )
    return pd.DataFrame(rows, columns=["split", "prompt_id", "model", "metric", "score", "passed"])


def summarise(scores, models: list[str], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0):
    """One row per (split, metric, model) of the models that answered that split; paired columns are NaN
    for the base."""
    import pandas as pd

    rows = []
    for (split, metric), group in scores.groupby(["split", "metric"], sort=False):
        table = group.pivot(index="prompt_id", columns="model", values="score")
        passed = group.pivot(index="prompt_id", columns="model", values="passed").astype(bool)
        indices = resample_indices(len(table), resamples, seed)  # the same resamples for every model
        for model in (m for m in models if m in table.columns):
            mean, low, high = bootstrap_ci(table[model], level, indices=indices)
            row = {"split": split, "metric": metric, "model": model, "n": len(table), "mean": mean}
            row |= {"ci_low": low, "ci_high": high, "pass_rate": float(passed[model].mean())}
            if model == BASE:
                row |= dict.fromkeys(["diff", "diff_low", "diff_high", "improved", "regressed", "p_value"], math.nan)
            else:
                diff, diff_low, diff_high = paired_bootstrap_ci(table[model], table[BASE], level, indices=indices)
                regressed, improved = flip_counts(passed[model], passed[BASE])
                row |= {"diff": diff, "diff_low": diff_low, "diff_high": diff_high}
                row |= {"improved": improved, "regressed": regressed, "p_value": mcnemar_exact(regressed, improved)}
            rows.append(row)
    return pd.DataFrame(rows)


def list_flips(scores, replies):
    """Examples whose pass/fail differs from the base's, per metric and checkpoint (not the bag-of-words
    baseline); regressions first."""
    import pandas as pd

    replies = pd.DataFrame(replies).set_index(["split", "prompt_id", "model"])
    base = scores[scores["model"] == BASE].set_index(["split", "prompt_id", "metric"])
    others = scores[~scores["model"].isin([BASE, BASELINE])]
    rows = []
    for r in others.itertuples():
        b = base.loc[(r.split, r.prompt_id, r.metric)]
        if bool(b["passed"]) == bool(r.passed):
            continue
        mine, theirs = replies.loc[(r.split, r.prompt_id, r.model)], replies.loc[(r.split, r.prompt_id, BASE)]
        rows.append(
            {
                "flip": "improved" if r.passed else "regressed",
                "split": r.split,
                "metric": r.metric,
                "model": r.model,
                "prompt_id": r.prompt_id,
                "where": mine["where"],
                "prompt": mine["prompt"],
                "reference": mine["reference"],
                "base_text": theirs["text"],
                "text": mine["text"],
                "base_score": float(b["score"]),
                "score": r.score,
            }
        )
    columns = ["flip", "split", "metric", "model", "prompt_id", "where", "prompt", "reference", "base_text", "text"]
    out = pd.DataFrame(rows, columns=[*columns, "base_score", "score"])
    if len(out):
        out = out.sort_values(
            ["flip", "split", "metric", "model", "prompt_id"],
            key=lambda c: c.map(FLIP_ORDER) if c.name == "flip" else c,
        )
    return out.reset_index(drop=True)


def _model_info(models: dict) -> dict:
    return {
        name: None if path is None else {"path": str(path), "sha256": file_sha(path)} for name, path in models.items()
    }


def _baseline_replies(baseline: BagOfWords, s) -> list[dict]:
    """The baseline's predicted answer to each prompt of an eval set, as reply rows."""
    predicted = baseline.predict(s.prompts)
    common = {"split": s.split, "model": BASELINE, "tokens": 0, "finish_reason": "stop", "latency_s": 0.0}
    return [
        {"prompt_id": i, "where": s.where[i], "prompt": prompt_text(s.prompts[i]), "reference": s.references[i]}
        | {"text": text}
        | common
        for i, text in enumerate(predicted)
    ]


def evaluate(
    models,
    data,
    metrics="auto",
    *,
    ood=None,
    ood_metrics="auto",
    assets=None,
    base_model=None,
    tokenizer=None,
    draft=None,
    num_draft_tokens: int = 5,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    batch_size: int = 8,
    precision: str = AUTO,
    threshold: float = THRESHOLD,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
    device=None,
    progress: bool = True,
    baseline_train=None,
) -> EvalResult:
    """Score the base and each checkpoint on `data` (chat JSONL or samples; the reference is each
    sample's last assistant turn).

    models: checkpoint files and run directories (a list; the base is always added first as "base"),
    or a dict name → checkpoint (None = the base). metrics / ood_metrics: names (see
    `fmlab.eval.registry`), "auto" picks from the references. ood: None, "default" (fmlab-tiny's
    general-skills probes) or data. draft: a draft model, or "default" / a draft checkpoint / a draft
    run directory, for speculative decoding. max_new_tokens: default from the longest reference
    (`auto_max_new_tokens`). sampling: default greedy. base_model / tokenizer: used as given (else
    loaded once from `assets`). baseline_train: a labelled training file; a bag-of-words classifier
    fitted on it answers the task split as one more model, "bag-of-words" (`fmlab.eval.baseline`).
    """
    started = time.perf_counter()
    if not isinstance(models, dict):
        models = expand_models([models] if isinstance(models, (str, Path)) else models)
    models = {BASE: None, **{k: (None if v is None else resolve_adapter(v)) for k, v in models.items() if k != BASE}}
    sets = [eval_set(data, TASK, limit)]
    baseline = BagOfWords(baseline_train) if baseline_train is not None else None  # its errors before any decoding
    if (probes := ood_set(ood, limit)) is not None:
        sets.append(probes)
    chosen, why = {}, {}
    for s, specs in zip(sets, [metrics, ood_metrics]):
        chosen[s.split], why[s.split] = build_metrics(specs, s.references, s.prompts)
        if why[s.split] and progress:
            names = ", ".join(m.name for m in chosen[s.split])
            print(f"{s.split} metric: {names} ({why[s.split]})", file=sys.stderr)
    if not 0 < level < 1:
        raise FmlabError("the interval level must be between 0 and 1")
    load_start = time.perf_counter()
    device = resolve_device(device) if base_model is None else None
    tokenizer = load_tokenizer(assets) if tokenizer is None else tokenizer
    base_model = load_base(assets, device=device) if base_model is None else base_model
    if draft is not None and not hasattr(draft, "config"):
        spec = draft
        draft = load_draft(assets, checkpoint=resolve_draft(spec), device=next(base_model.parameters()).device)
        if draft.config.vocab_size != base_model.config.vocab_size:
            raise FmlabError(f"{spec}: the draft's vocabulary differs from the base's; it cannot propose its tokens")
    load_s = time.perf_counter() - load_start
    budget = {s.split: max_new_tokens or auto_max_new_tokens(tokenizer, s.references) for s in sets}
    sampling = sampling or Sampling(temperature=0.0, seed=seed)
    replies, timing = run_models(
        base_model,
        tokenizer,
        models,
        sets,
        budget,
        sampling=sampling,
        batch_size=batch_size,
        precision=precision,
        draft=draft,
        num_draft_tokens=num_draft_tokens,
        progress=progress,
    )
    names = list(models)
    if baseline is not None:
        start = time.perf_counter()
        replies += _baseline_replies(baseline, sets[0])
        timing[BASELINE] = {"generate_s": round(baseline.fit_s + time.perf_counter() - start, 3)}
        names.append(BASELINE)
    import pandas as pd

    scores = score_replies(replies, sets, chosen, threshold)
    summary = summarise(scores, names, level, resamples, seed)
    labels = {}
    for m in chosen[TASK]:
        if m.labels is not None:
            for name in names:
                texts = [r["text"] for r in replies if r["model"] == name and r["split"] == TASK]
                confusion = confusion_matrix(texts, sets[0].references, m.labels)
                labels[name] = {"report": label_report(confusion), "confusion": confusion}
    info = {
        "data": sets[0].source,
        "samples": len(sets[0]),
        "ood": sets[1].source if len(sets) > 1 else None,
        "ood_samples": len(sets[1]) if len(sets) > 1 else 0,
        "metrics": {split: [m.name for m in ms] for split, ms in chosen.items()},
        "metric_choice": {split: w for split, w in why.items() if w},
        "models": _model_info(models) | ({BASELINE: baseline.info()} if baseline is not None else {}),
        "decoding": {
            "max_new_tokens": budget,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "batch_size": 1 if draft is not None else batch_size,
            "speculative": draft is not None,
            "num_draft_tokens": num_draft_tokens if draft is not None else None,
            "precision": precision,
        },
        "statistics": {"threshold": threshold, "level": level, "resamples": resamples, "seed": seed},
        "timing": {"load_s": round(load_s, 3), "models": timing, "total_s": round(time.perf_counter() - started, 3)},
    }
    return EvalResult(pd.DataFrame(replies), scores, summary, list_flips(scores, replies), labels, info)

"""The standalone HTML report of an evaluation (`EvalResult.write` puts it next to `eval.json`): one
file, no scripts and no external resources, readable offline and attachable to an issue.

Sections: the settings; per split and metric, a table of every model's mean with its 95% interval,
pass rate, difference from the base with its interval, flips and McNemar p-value; the plot of each
metric by checkpoint (an inline PNG, matplotlib's Agg canvas: no GUI backend is touched); the
out-of-domain drop; per-label precision / recall / F1 and the confusion matrices; the flipped examples,
regressions first. Every text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math

from fmlab.checkpoints.run_dir import BASE

MAX_FLIPS = 200  # examples shown per report (eval.json has them all)
MAX_CHARS = 600
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f4} td.text{text-align:left;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;max-width:420px}
td.name{text-align:left} .good{background:#e3f6e3} .bad{background:#fbe3e3} .note{color:#666;font-size:13px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _p(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _interval(low, high) -> str:
    return "" if low is None or (isinstance(low, float) and math.isnan(low)) else f"[{low:.3f}, {high:.3f}]"


def _cut(text: str) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "…"


def _table(head: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """rows of (cell html, css class) pairs; the head is escaped here."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{cls}">{cell}</td>' for cell, cls in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def summary_html(summary) -> str:
    parts = []
    for (split, metric), group in summary.groupby(["split", "metric"], sort=False):
        rows = []
        for r in group.itertuples():
            better = r.model != BASE and r.diff_low > 0
            worse = r.model != BASE and r.diff_high < 0
            cls = "good" if better else "bad" if worse else ""
            rows.append(
                [
                    (_e(r.model), "name"),
                    (f"{r.mean:.3f}", ""),
                    (_interval(r.ci_low, r.ci_high), ""),
                    (f"{r.pass_rate:.3f}", ""),
                    (_num(r.diff), cls),
                    (_interval(r.diff_low, r.diff_high), cls),
                    (_num(None if r.model == BASE else int(r.improved)), ""),
                    (_num(None if r.model == BASE else int(r.regressed)), ""),
                    (_p(r.p_value), ""),
                ]
            )
        head = ["model", "mean", "95% CI", "pass rate", "Δ vs base", "Δ 95% CI", "improved", "regressed", "McNemar p"]
        parts.append(f"<h3>{_e(split)} · {_e(metric)} (n = {group['n'].iloc[0]})</h3>" + _table(head, rows))
    return "".join(parts)


def plot_png(summary) -> bytes:
    """Mean ± 95% interval of each (split, metric) by model, one panel each, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(summary.groupby(["split", "metric"], sort=False))
    panel_width = max(3.5, 0.8 * summary["model"].nunique() + 1.5)
    fig = Figure(figsize=(panel_width * len(groups), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((split, metric), g) in zip(axes, groups):
        x = range(len(g))
        ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]], fmt="o-", capsize=4)
        ax.set_xticks(list(x), list(g["model"]), rotation=30, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{split} · {metric}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean score (95% CI)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def ood_html(ood) -> str:
    rows = [
        [
            (_e(r.model), "name"),
            (_e(r.metric), "name"),
            (f"{r.base_mean:.3f}", ""),
            (f"{r.mean:.3f}", ""),
            (f"{r.drop:.3f}", "bad" if r.drop_low > 0 else ""),
            (_interval(r.drop_low, r.drop_high), ""),
            (str(int(r.regressed)), ""),
            (_p(r.p_value), ""),
        ]
        for r in ood.itertuples()
    ]
    head = ["model", "metric", "base", "checkpoint", "drop", "drop 95% CI", "regressed", "McNemar p"]
    return _table(head, rows)


def labels_html(labels: dict) -> str:
    parts = []
    for model, t in labels.items():
        report, confusion = t["report"], t["confusion"]
        rows = [
            [
                (_e(label), "name"),
                (f"{r.precision:.3f}", ""),
                (f"{r.recall:.3f}", ""),
                (f"{r.f1:.3f}", ""),
                (str(int(r.support)), ""),
            ]
            for label, r in zip(report.index, report.itertuples())
        ]
        parts.append(f"<h3>{_e(model)}</h3>" + _table(["label", "precision", "recall", "F1", "support"], rows))
        head = ["reference ↓ / predicted →", *map(str, confusion.columns)]
        rows = [
            [(_e(ref), "name")]
            + [(str(int(v)), "good" if col == ref and v else "bad" if v else "") for col, v in row.items()]
            for ref, row in confusion.iterrows()
        ]
        parts.append(_table(head, rows))
    return "".join(parts)


def flips_html(flips) -> str:
    if not len(flips):
        return '<p class="note">No example changed between pass and fail.</p>'
    shown = flips.head(MAX_FLIPS)
    rows = [
        [
            (_e(r.flip), "bad" if r.flip == "regressed" else "good"),
            (_e(f"{r.split} · {r.metric}"), "name"),
            (_e(r.model), "name"),
            (_e(r.where), "name"),
            (_e(_cut(r.prompt)), "text"),
            (_e(_cut(r.reference)), "text"),
            (_e(_cut(r.base_text)) + f"<br><i>{r.base_score:.2f}</i>", "text"),
            (_e(_cut(r.text)) + f"<br><i>{r.score:.2f}</i>", "text"),
        ]
        for r in shown.itertuples()
    ]
    more = f'<p class="note">… and {len(flips) - len(shown)} more in eval.json</p>' if len(flips) > len(shown) else ""
    return _table(["flip", "metric", "model", "sample", "prompt", "reference", "base reply", "reply"], rows) + more


def to_html(result) -> str:
    """The whole report as one HTML document."""
    info = result.info
    decoding = ", ".join(f"{k} {v}" for k, v in info["decoding"].items())
    timing = info["timing"]
    per_model = ", ".join(f"{m} {t['generate_s']:.1f} s" for m, t in timing["models"].items())
    notes = "".join(
        f"<li>{_e(split)} metric chosen: {_e(why)}</li>" for split, why in info.get("metric_choice", {}).items()
    )
    png = base64.b64encode(plot_png(result.summary)).decode()
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fmlab eval</title><style>{_CSS}</style></head><body>",
        "<h1>fmlab eval</h1><ul class='note'>",
        f"<li>data: {_e(info['data'])} ({info['samples']} samples)"
        + (f"; out of domain: {_e(info['ood'])} ({info['ood_samples']} samples)" if info["ood"] else "")
        + "</li>",
        f"<li>models: {_e(', '.join(info['models']))}</li><li>decoding: {_e(decoding)}</li>",
        f"<li>pass: score ≥ {info['statistics']['threshold']}; intervals: percentile bootstrap, "
        f"{info['statistics']['resamples']} resamples; p: exact McNemar on the pass/fail flips</li>",
        f"<li>time: load {timing['load_s']:.1f} s (the base once), {_e(per_model)}, total {timing['total_s']:.1f} s</li>",
        notes,
        "</ul><h2>Scores</h2>",
        summary_html(result.summary),
        f'<h2>By checkpoint</h2><img alt="metric by checkpoint" src="data:image/png;base64,{png}">',
    ]
    if info["ood"] and len(result.ood):
        parts += ["<h2>Out of domain: the drop from the base</h2>", ood_html(result.ood)]
    if result.labels:
        parts += ["<h2>Labels</h2>", labels_html(result.labels)]
    parts += [f"<h2>Flips against the base ({len(result.flips)})</h2>", flips_html(result.flips), "</body></html>"]
    return "".join(parts)

"""The one-page HTML summary of a `fmlab demo` run, built from what the notebooks left in `out/`:
links to the executed notebooks, loss curves, play-format score base vs adapter, draft acceptance and speculative speedup, and the
exported package's contents and sizes. Sections whose files are missing are skipped."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from fmlab.files import atomic_write

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}h2{margin-top:1.6em}"
)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _scores(out: Path) -> list[dict]:
    path = out / "adapter" / "play_scores.json"
    if path.is_file():
        return [{"model": k, "mean play_format_score": v} for k, v in json.loads(path.read_text()).items()]
    return []


def _drafts(out: Path) -> list[dict]:
    path = out / "draft" / "checkpoints.json"
    if not path.is_file():
        return []
    manifest = json.loads(path.read_text())
    entries = manifest["checkpoints"] + ([manifest["final"]] if manifest.get("final") else [])
    return [
        {
            "draft": e["path"],
            "acceptance rate": e.get("acceptance_rate", float("nan")),
            "speedup": e.get("speedup", float("nan")),
            "best": "yes" if e["path"] == manifest.get("best_by_acceptance") else "",
        }
        for e in entries
    ]


def _package(out: Path) -> list[dict]:
    packages = sorted((out / "export").glob("*.fmadapter")) if (out / "export").is_dir() else []
    if not packages:
        return []
    return [
        {"file": f"{packages[0].name}/{p.relative_to(packages[0]).as_posix()}", "bytes": p.stat().st_size}
        for p in sorted(packages[0].rglob("*"))
        if p.is_file()
    ]


def write_demo_page(out: str | Path = "out", timings: list[dict] | None = None) -> Path:
    out = Path(out)
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>fmlab demo summary</title><style>{STYLE}</style>",
        "<h1>fmlab demo: the adapter workflow on fmlab-tiny</h1>",
    ]
    if timings:
        parts += ["<h2>Run</h2>", _table(timings)]
    executed = sorted((out / "notebooks").glob("*.ipynb")) if (out / "notebooks").is_dir() else []
    if executed:  # relative links: the page and out/notebooks/ move together
        links = "".join(
            f'<li><a href="notebooks/{html.escape(p.name)}">{html.escape(p.stem)}</a></li>' for p in executed
        )
        parts += ["<h2>The executed notebooks</h2>", f"<ul>{links}</ul>"]
    curves = [p for p in (out / "adapter" / "loss.png", out / "draft" / "loss.png") if p.is_file()]
    if curves:
        parts += ["<h2>Loss curves (adapter, then draft distillation)</h2>"] + [_img(p) for p in curves]
    sections = [
        ("Play-format score on held-out prompts: base vs adapter", _scores(out)),
        ("Drafts scored by speculative acceptance (k=5, T=0) against the adapter", _drafts(out)),
        ("Exported package", _package(out)),
    ]
    for title, rows in sections:
        if rows:
            parts += [f"<h2>{html.escape(title)}</h2>", _table(rows)]
    speculative = out / "speculative" / "speculative.png"
    if speculative.is_file():
        parts += ["<h2>Speculative decoding over k</h2>", _img(speculative)]
    path = out / "summary.html"
    with atomic_write(path, "w") as f:
        f.write("\n".join(parts))
    return path

"""Notebook views that never block: a live loss plot (a training callback) and a side-by-side
comparison widget. Both degrade to static output when no front end is attached.

Why this design. papermill (and nbclient, CI, `fmlab demo`) runs a real kernel with no front end, and
nothing inside the kernel can tell the two apart (papermill#481: "not really from inside the
notebook"). So nothing here ever *waits* for a front end:
- `LiveLossPlot` re-renders a PNG and sends it with `display(..., display_id=True)` / `update()`:
  one-way display messages that JupyterLab shows live and papermill simply records (the last image
  stays in the executed notebook). Outside a kernel (plain python, the CLI) it only writes the PNG
  file, rewritten atomically every `png_interval_s` seconds so it can be watched during a CLI run.
- `ComparisonView` displays an ipywidgets view whose display bundle *also* carries the static HTML
  table: a widget front end shows the widget, anything else (papermill output, nbviewer, GitHub)
  shows the table. No `interact`, no waiting on events.
`live=None` means: live when running inside an IPython kernel, unless `FMLAB_WIDGETS=static` is set.
ipywidgets and matplotlib are imported inside the functions that need them.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path


def in_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, VS Code, or papermill's headless one)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def resolve_live(live: bool | None) -> bool:
    if live is not None:
        return bool(live)
    return in_kernel() and os.environ.get("FMLAB_WIDGETS", "").lower() != "static"


# --- loss curves -----------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl."""
    from .common import FmlabError

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FmlabError(f"{path}: no metrics file (train() writes metrics.jsonl into its output directory)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def _draw(axes, steps: list[dict], evals: list[dict], title: str | None = None) -> None:
    """Loss (train + eval), learning rate and throughput against the optimizer step."""
    ax_loss, ax_lr, ax_tps = axes
    for ax in axes:
        ax.clear()
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
    if steps:
        x = [r["step"] for r in steps]
        ax_loss.plot(x, [r["loss"] for r in steps], lw=1, label="train", color="tab:blue")
        if "lr" in steps[0]:
            ax_lr.plot(x, [r["lr"] for r in steps], color="tab:green")
        if "tokens_per_s" in steps[0]:
            ax_tps.plot(x, [r["tokens_per_s"] for r in steps], lw=1, color="tab:purple")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval",
                     color="tab:orange")
    ax_loss.set_title("loss")
    ax_lr.set_title("learning rate")
    ax_tps.set_title("tokens / s")
    if steps or evals:
        ax_loss.legend(loc="upper right")
    if title:
        axes[0].figure.suptitle(title, fontsize=10)


def _status(steps: list[dict], evals: list[dict]) -> str:
    parts = []
    if steps:
        last = steps[-1]
        parts.append(f"step {last['step']} · loss {last['loss']:.4f}")
        if last.get("peak_memory_mb"):
            parts.append(f"peak {last['peak_memory_mb']:.0f} MB")
    if evals:
        parts.append(f"eval loss {evals[-1]['eval_loss']:.4f}")
    return " · ".join(parts)


def plot_metrics(metrics_path: str | Path, ax=None):
    """Train and eval loss of a finished run (its metrics.jsonl or its directory) on `ax` (or a new
    figure with loss, learning rate and throughput panels). Returns the loss axes."""
    steps, evals = read_metrics(metrics_path)
    if ax is None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
        _draw(axes, steps, evals, _status(steps, evals))
        return axes[0]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return ax


class LiveLossPlot:
    """Training callback (`train(..., callbacks=[LiveLossPlot(...)])`): loss, eval loss, LR and tokens/s
    against the step. In a kernel it updates one displayed image at most every `interval_s` seconds;
    everywhere it writes `path` (if given) at the end and every `png_interval_s` seconds on the way.
    Rendering uses matplotlib's Agg canvas directly, so no pyplot state or GUI backend is touched."""

    def __init__(self, path: str | Path | None = None, live: bool | None = None, title: str | None = None,
                 interval_s: float = 2.0, png_interval_s: float = 15.0, figsize=(13, 3.4)):
        self.path = Path(path) if path else None
        self.title = title
        self.live = resolve_live(live)
        self.interval_s, self.png_interval_s, self.figsize = interval_s, png_interval_s, figsize
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.handle = None
        self._fig = None
        self._last_show = self._last_png = 0.0

    def _figure(self):
        if self._fig is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self._fig = Figure(figsize=self.figsize, layout="constrained")
            FigureCanvasAgg(self._fig)
            self._axes = self._fig.subplots(1, 3)
        return self._fig

    def render(self) -> bytes:
        """The current plot as PNG bytes."""
        fig = self._figure()
        status = _status(self.steps, self.evals)
        _draw(self._axes, self.steps, self.evals, f"{self.title}: {status}" if self.title else status)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def save(self, path: str | Path | None = None, png: bytes | None = None) -> Path | None:
        from .common import atomic_write

        path = Path(path) if path else self.path
        if path is None:
            return None
        with atomic_write(path) as f:       # a viewer watching the file never sees half a PNG
            f.write(png if png is not None else self.render())
        return path

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        show = self.live and (force or now - self._last_show >= self.interval_s)
        write = self.path is not None and (force or now - self._last_png >= self.png_interval_s)
        if not (show or write):
            return
        png = self.render()
        if show:
            from IPython.display import Image, display

            if self.handle is None:
                self.handle = display(Image(data=png), display_id=True)
            else:
                self.handle.update(Image(data=png))
            self._last_show = now
        if write:
            self.save(png=png)
            self._last_png = now

    # the train() callback protocol
    def on_step(self, row: dict) -> None:
        self.steps.append(row)
        self.refresh(force=len(self.steps) == 1)

    def on_eval(self, row: dict) -> None:
        self.evals.append(row)
        self.refresh()

    def on_end(self, summary: dict | None = None) -> None:
        self.refresh(force=True)


# --- side-by-side comparison -----------------------------------------------------------------------


class ComparisonView:
    """Base and checkpoints side by side. With a widget front end: a prompt box, a model multi-select,
    a Generate button, one column per model (text streams in) and the score table. Without one: the
    static table of `compare.to_html` (see the module docstring); `static_html()` returns it.

    models: as for `compare.compare` (name → model, adapter path, or None for the base).
    results: an existing `compare()` DataFrame to show; otherwise `prompts` are generated when the
    static table is first needed (and the first prompt fills the prompt box)."""

    def __init__(self, models: dict, tokenizer, prompts=(), results=None, base_model=None, assets=None,
                 max_new_tokens: int = 50, sampling=None, score_fn=None, threshold: float = 0.5,
                 live: bool | None = None):
        from .compare import prompt_text, split_prompt
        from .sampling import Sampling

        self.models, self.tokenizer, self.prompts = dict(models), tokenizer, list(prompts)
        self.results, self.base_model, self.assets = results, base_model, assets
        self.max_new_tokens, self.score_fn, self.threshold = max_new_tokens, score_fn, threshold
        self.sampling = sampling or Sampling(temperature=0.0)
        self.live = resolve_live(live)
        first = split_prompt(self.prompts[0])[0] if self.prompts else None
        if first is None and results is not None and len(results):
            first = results["prompt"].iloc[0]
        self.initial_prompt = prompt_text(first) if first is not None else ""
        self._widget = None

    def generate(self, prompts=None, models=None, stream=None):
        """Run `compare` on `prompts` (default: the view's) for the named `models` (default: all)."""
        from .compare import compare

        chosen = {m: self.models[m] for m in (models or self.models)}
        return compare(chosen, self.tokenizer, prompts if prompts is not None else self.prompts,
                       self.max_new_tokens, self.sampling, self.score_fn, base_model=self.base_model,
                       assets=self.assets, stream=stream)

    def _ensure_results(self):
        if self.results is None and self.prompts:
            self.results = self.generate()
        return self.results

    def _summary_html(self, results) -> str:
        from .compare import BASE, summary

        table = summary(results, BASE, self.threshold)
        return table.to_html(float_format=lambda v: f"{v:.3f}", border=0)

    def static_html(self) -> str:
        """The side-by-side table and the per-model summary as one HTML string."""
        from .compare import BASE, to_html

        results = self._ensure_results()
        if results is None or not len(results):
            return "<p><i>no results yet: pass prompts or results to ComparisonView</i></p>"
        return to_html(results, BASE, self.threshold) + "<h4>Summary</h4>" + self._summary_html(results)

    def _repr_html_(self) -> str:
        return self.static_html()

    # --- the widget ---
    def widget(self):
        """The ipywidgets view (built once). Constructing it never generates anything."""
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        self.prompt_box = w.Textarea(value=self.initial_prompt, placeholder="a prompt", description="prompt",
                                     layout=w.Layout(width="100%", height="80px"))
        names = list(self.models)
        self.model_select = w.SelectMultiple(options=names, value=tuple(names), description="models",
                                             rows=min(len(names), 6))
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.status = w.HTML()
        self.columns = {n: w.HTML(layout=w.Layout(border="1px solid #ccc", padding="4px", min_height="60px"))
                        for n in names}
        self.score_table = w.HTML()
        self.button.on_click(lambda _: self.on_generate())
        self.model_select.observe(lambda _: self._layout_columns(), names="value")
        self.column_box = w.HBox(layout=w.Layout(width="100%"))
        self._layout_columns()
        self._widget = w.VBox([self.prompt_box, w.HBox([self.model_select, self.button, self.status]),
                               self.column_box, self.score_table])
        results = self.results
        if results is not None and len(results):
            self._fill(results[results["prompt_id"] == results["prompt_id"].iloc[0]])
        return self._widget

    def _layout_columns(self):
        import ipywidgets as w

        chosen = list(self.model_select.value)
        self.column_box.children = [w.VBox([w.HTML(f"<b>{_esc(n)}</b>"), self.columns[n]],
                                           layout=w.Layout(flex="1 1 0", min_width="0")) for n in chosen]

    def _fill(self, results) -> None:
        from .compare import _PRE

        for r in results.itertuples():
            if r.model in self.columns:
                score = "" if r.score != r.score else f"score {r.score:.2f} · "     # NaN check
                self.columns[r.model].value = (f'<pre style="{_PRE}">{_esc(r.text)}</pre><div style="color:#666;'
                                               f'font-size:11px">{score}{r.tokens} tok · ttft {r.ttft_s:.2f} s · '
                                               f'{r.latency_s:.2f} s</div>')
        self.score_table.value = self._summary_html(results)

    def on_generate(self):
        """What the Generate button does: the prompt box through the selected models, streamed in."""
        from .compare import _PRE

        chosen = list(self.model_select.value)
        text = self.prompt_box.value.strip()
        if not text or not chosen:
            self.status.value = "<i>type a prompt and choose at least one model</i>"
            return None
        self.button.disabled, self.status.value = True, "<i>generating…</i>"
        streamed = {n: "" for n in chosen}
        for n in chosen:
            self.columns[n].value = ""

        def stream(model, _i, piece):
            streamed[model] += piece
            self.columns[model].value = f'<pre style="{_PRE}">{_esc(streamed[model])}</pre>'

        try:
            results = self.generate([text], chosen, stream)
            self._fill(results)
            self.status.value = ""
            return results
        except Exception as err:     # shown in the view: a button callback has nowhere else to report
            self.status.value = f'<span style="color:#b00">{_esc(type(err).__name__)}: {_esc(str(err))}</span>'
            raise
        finally:
            self.button.disabled = False

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The widget for a widget front end, with the static table as the fallback for everything else."""
        bundle = {"text/html": self.static_html(), "text/plain": "ComparisonView"}
        if self.live:
            bundle.update(self.widget()._repr_mimebundle_())
        return bundle

    def show(self) -> None:
        """Display the view: widget + static fallback when live, the static table otherwise."""
        from IPython.display import HTML, display

        if self.live:
            display(self)
        else:
            display(HTML(self.static_html()))


def _esc(text: str) -> str:
    import html

    return html.escape(str(text))

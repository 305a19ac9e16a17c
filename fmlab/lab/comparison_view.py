"""The side-by-side comparison widget: base and checkpoints on the same prompt, one column per model.

Why this design. papermill (and nbclient, CI, `fmlab demo`) runs a real kernel with no front end, and
nothing inside the kernel can tell the two apart (papermill#481: "not really from inside the
notebook"). So nothing in `fmlab.lab` ever *waits* for a front end: `ComparisonView` displays an
ipywidgets view whose display bundle *also* carries the static HTML table. A widget front end shows
the widget, anything else (papermill output, nbviewer, GitHub) shows the table. No `interact`, no
waiting on events. `live=None` means: live when running inside an IPython kernel, unless
`FMLAB_WIDGETS=static` is set. ipywidgets is imported when the widget is built.
"""

from __future__ import annotations

from fmlab.infer.compare import (
    _PRE,
    BASE,
    compare,
    prompt_text,
    score_table,
    split_prompt,
    to_html,
)
from fmlab.infer.sampling import Sampling
from fmlab.lab.frontend import resolve_live


class ComparisonView:
    """Base and checkpoints side by side. With a widget front end: a prompt box, a model multi-select,
    a Generate button, one column per model (text streams in) and the score table. Without one: the
    static table of `compare.to_html` (see the module docstring); `static_html()` returns it.

    models: as for `compare.compare` (name → model, adapter path, or None for the base).
    results: an existing `compare()` DataFrame to show; otherwise `prompts` are generated when the
    static table is first needed (and the first prompt fills the prompt box)."""

    def __init__(
        self,
        models: dict,
        tokenizer,
        prompts=(),
        results=None,
        base_model=None,
        assets=None,
        max_new_tokens: int = 50,
        sampling=None,
        score_fn=None,
        threshold: float = 0.5,
        live: bool | None = None,
    ):
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

        chosen = {m: self.models[m] for m in (models or self.models)}
        return compare(
            chosen,
            self.tokenizer,
            prompts if prompts is not None else self.prompts,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            score_fn=self.score_fn,
            base_model=self.base_model,
            assets=self.assets,
            stream=stream,
        )

    def _ensure_results(self):
        if self.results is None and self.prompts:
            self.results = self.generate()
        return self.results

    def _summary_html(self, results) -> str:
        table = score_table(results, BASE, self.threshold)
        return table.to_html(float_format=lambda v: f"{v:.3f}", border=0)

    def static_html(self) -> str:
        """The side-by-side table and the per-model summary as one HTML string."""

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

        self.prompt_box = w.Textarea(
            value=self.initial_prompt,
            placeholder="a prompt",
            description="prompt",
            layout=w.Layout(width="100%", height="80px"),
        )
        names = list(self.models)
        self.model_select = w.SelectMultiple(
            options=names, value=tuple(names), description="models", rows=min(len(names), 6)
        )
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.status = w.HTML()
        self.columns = {
            n: w.HTML(layout=w.Layout(border="1px solid #ccc", padding="4px", min_height="60px")) for n in names
        }
        self.score_table = w.HTML()
        self.button.on_click(lambda _: self.on_generate())
        self.model_select.observe(lambda _: self._layout_columns(), names="value")
        self.column_box = w.HBox(layout=w.Layout(width="100%"))
        self._layout_columns()
        self._widget = w.VBox(
            [self.prompt_box, w.HBox([self.model_select, self.button, self.status]), self.column_box, self.score_table]
        )
        results = self.results
        if results is not None and len(results):
            self._fill(results[results["prompt_id"] == results["prompt_id"].iloc[0]])
        return self._widget

    def _layout_columns(self):
        import ipywidgets as w

        chosen = list(self.model_select.value)
        self.column_box.children = [
            w.VBox([w.HTML(f"<b>{_esc(n)}</b>"), self.columns[n]], layout=w.Layout(flex="1 1 0", min_width="0"))
            for n in chosen
        ]

    def _fill(self, results) -> None:
        for r in results.itertuples():
            if r.model in self.columns:
                score = "" if r.score != r.score else f"score {r.score:.2f} · "  # NaN check
                self.columns[r.model].value = (
                    f'<pre style="{_PRE}">{_esc(r.text)}</pre><div style="color:#666;'
                    f'font-size:11px">{score}{r.tokens} tok · ttft {r.ttft_s:.2f} s · '
                    f"{r.latency_s:.2f} s</div>"
                )
        self.score_table.value = self._summary_html(results)

    def on_generate(self):
        """What the Generate button does: the prompt box through the selected models, streamed in."""

        chosen = list(self.model_select.value)
        text = self.prompt_box.value.strip()
        if not text or not chosen:
            self.status.value = "<i>type a prompt and choose at least one model</i>"
            return None
        self.button.disabled, self.status.value = True, "<i>generating…</i>"
        streamed = dict.fromkeys(chosen, "")
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
        except Exception as err:  # shown in the view: a button callback has nowhere else to report
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

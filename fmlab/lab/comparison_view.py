"""The side-by-side comparison widget: base and checkpoints on the same prompt, one column per model.

Why this design. papermill (and nbclient, CI, `fmlab demo`) runs a real kernel with no front end, and
nothing inside the kernel can tell the two apart (papermill#481: "not really from inside the
notebook"). So nothing in `fmlab.lab` ever *waits* for a front end: `ComparisonView` displays an
ipywidgets view whose display bundle *also* carries the static HTML table. A widget front end shows
the widget, anything else (papermill output, nbviewer, GitHub) shows the table. No `interact`, no
waiting on events. `live=None` means: live when running inside an IPython kernel, unless
`FMLAB_WIDGETS=static` is set. ipywidgets is imported when the widget is built.

Generate runs on a thread of its own, one model after another (they share the base, whose adapter is
swapped per model under `fmlab.infer.compare.model_lock`), so Stop can be clicked while it runs and
each column and the summary fill as their model finishes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from fmlab.checkpoints.run_dir import read_manifest
from fmlab.errors import FmlabError
from fmlab.infer.compare import (
    _PRE,
    BASE,
    _diff_html,
    compare,
    model_lock,
    prompt_text,
    score_table,
    split_prompt,
    to_html,
)
from fmlab.infer.sampling import Sampling
from fmlab.lab.frontend import resolve_live
from fmlab.model.precision import AUTO, PRECISIONS

_STATS = "color:#666;font-size:11px;margin-top:4px"


class Stopped(Exception):
    """Raised inside a model's decoding when Stop is clicked; ends the run after that model."""


class ComparisonView:
    """Base and checkpoints side by side. With a widget front end: a prompt box (with what
    `explain_prompt` reads from it), one toggle per model (a checkpoint shows its step and eval loss),
    max new tokens, temperature and precision, Generate and Stop, one column per model (text streams
    in with tokens/s and time to first token; words that differ from the base are marked) and the
    score table. Without one: the static table of `compare.to_html` (see the module docstring);
    `static_html()` returns it.

    models: as for `compare.compare` (name → model, adapter path, or None for the base).
    results: an existing `compare()` DataFrame to show; otherwise `prompts` are generated when the
    view is first shown (the columns fill as each model finishes) and the first prompt fills the box.
    explain_prompt(text) → str: a line shown under the prompt box (e.g. `fmlab.tiny.plays.describe_request`)."""

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
        precision: str = AUTO,
        explain_prompt=None,
        live: bool | None = None,
    ):
        self.models, self.tokenizer, self.prompts = dict(models), tokenizer, list(prompts)
        self.results, self.base_model, self.assets = results, base_model, assets
        self.max_new_tokens, self.score_fn, self.threshold = max_new_tokens, score_fn, threshold
        self.sampling, self.precision = sampling or Sampling(temperature=0.0), precision
        self.explain_prompt = explain_prompt
        self.live = resolve_live(live)
        first = split_prompt(self.prompts[0])[0] if self.prompts else None
        if first is None and results is not None and len(results):
            first = results["prompt"].iloc[0]
        self.initial_prompt = prompt_text(first) if first is not None else ""
        self._widget = self._thread = self.error = self.last_results = None
        self._stop = threading.Event()

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
            precision=self.precision,
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

        label_style, auto_width = {"description_width": "initial"}, w.Layout(width="auto")  # labels are never cut short
        # width "auto" (not 100%) with no description: a 100%-wide box plus its label overflowed
        self.prompt_box = w.Textarea(
            value=self.initial_prompt, placeholder="a prompt", layout=w.Layout(width="auto", height="80px")
        )
        self.parsed = w.HTML()
        self.toggles = {
            n: w.ToggleButton(value=True, description=n, layout=w.Layout(width="auto")) for n in self.models
        }
        for name, toggle in self.toggles.items():
            toggle.tooltip = checkpoint_label(name, self.models[name])
            toggle.description = toggle.tooltip
            toggle.add_class("fmlab-model")
            toggle.observe(lambda _: self._layout_columns(), names="value")
        self.max_tokens_box = w.BoundedIntText(
            value=self.max_new_tokens, min=1, max=8192, description="max tokens", style=label_style, layout=auto_width
        )
        self.temperature_box = w.BoundedFloatText(
            value=self.sampling.temperature, min=0.0, max=2.0, step=0.1, description="temperature",
            style=label_style, layout=auto_width,
        )  # fmt: skip
        self.precision_box = w.Dropdown(
            options=PRECISIONS, value=self.precision, description="precision", style=label_style, layout=auto_width
        )
        self.button = w.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.status = w.HTML()
        self.headers = {n: w.HTML(f"<b>{_esc(n)}</b>") for n in self.models}
        self.columns = {n: w.HTML() for n in self.models}
        self.score_table = w.HTML()
        for widget, name in [
            (self.prompt_box, "prompt"),
            (self.button, "generate"),
            (self.stop_button, "stop"),
            (self.status, "status"),
            (self.score_table, "summary"),
        ]:
            widget.add_class(f"fmlab-{name}")
        self.button.on_click(lambda _: self.on_generate())
        self.stop_button.on_click(lambda _: self.stop())
        self.prompt_box.observe(lambda _: self._explain(), names="value")
        self.column_box = w.HBox(layout=w.Layout(width="100%"))
        self._layout_columns()
        self._explain()
        self._widget = w.VBox(
            [
                w.HTML("<b>prompt</b>"),
                self.prompt_box,
                self.parsed,
                w.HBox(list(self.toggles.values()), layout=w.Layout(flex_flow="row wrap")),
                w.HBox(
                    [self.max_tokens_box, self.temperature_box, self.precision_box, self.button, self.stop_button],
                    layout=w.Layout(flex_flow="row wrap", align_items="center"),
                ),
                self.status,
                self.column_box,
                self.score_table,
            ],
            layout=w.Layout(width="100%"),
        )
        self._widget.add_class("fmlab-comparison")
        results = self.results
        if results is not None and len(results):
            self._fill(results[results["prompt_id"] == results["prompt_id"].iloc[0]])
        return self._widget

    @property
    def selected(self) -> list[str]:
        return [n for n, t in self.toggles.items() if t.value]

    def _explain(self):
        if self.explain_prompt is not None:
            line = self.explain_prompt(self.prompt_box.value) if self.prompt_box.value.strip() else ""
            self.parsed.value = f'<div style="{_STATS}">{_esc(line)}</div>' if line else ""

    def _layout_columns(self):
        import ipywidgets as w

        for toggle in self.toggles.values():  # a selected model is green with a tick, unmistakably
            toggle.button_style, toggle.icon = ("success", "check") if toggle.value else ("", "")
        self.column_box.children = [
            w.VBox(
                [self.headers[n], self.columns[n]],
                layout=w.Layout(flex="1 1 0", min_width="0", border="1px solid #ccc", padding="4px"),
            ).add_class("fmlab-column")
            for n in self.selected
        ]

    def _show_reply(self, row, base_text: str | None) -> None:
        score = "" if row.score != row.score else f"score {row.score:.2f} · "  # NaN check
        text = _diff_html(row.text, base_text if row.model != BASE else None)
        self.columns[row.model].value = (
            f'<pre style="{_PRE}">{text}</pre><div class="fmlab-stats" style="{_STATS}">{score}{row.tokens} tok · '
            f"{row.tokens_per_s:.1f} tok/s · ttft {row.ttft_s:.2f} s · {row.latency_s:.2f} s</div>"
        )

    def _fill(self, results) -> None:
        base = results[results["model"] == BASE]
        base_text = base["text"].iloc[0] if len(base) else None
        for r in results.itertuples():
            if r.model in self.columns:
                self._show_reply(r, base_text)
        self.score_table.value = self._summary_html(results)

    # --- generating from the widget ---
    def on_generate(self):
        """What the Generate button does: the prompt box through the selected models, on a thread of its
        own (so Stop works), each column streaming in. Returns the thread; `wait()` joins it."""

        chosen, text = self.selected, self.prompt_box.value.strip()
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        if not text or not chosen:
            self.status.value = "<i>type a prompt and choose at least one model</i>"
            return None
        self.max_new_tokens, self.precision = self.max_tokens_box.value, self.precision_box.value
        self.sampling = dataclasses.replace(self.sampling, temperature=self.temperature_box.value)
        self.button.disabled, self.stop_button.disabled, self.error = True, False, None
        self._stop.clear()
        self.score_table.value = ""
        for n in chosen:
            self.columns[n].value = '<i style="color:#888">waiting…</i>'
        self._thread = threading.Thread(target=self._run_safely, args=([text], chosen), daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """What Stop does: the model decoding now stops at its next token, the rest are not run."""
        self._stop.set()

    def wait(self, timeout: float | None = None):
        """Wait for a Generate run; returns its results, or raises what it raised."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.last_results

    def _run_safely(self, prompts, chosen):
        try:
            self.last_results = self._run(prompts, chosen)
        except Exception as err:  # shown in the view: a button callback has nowhere else to report
            self.error = err
            self.status.value = f'<span style="color:#b00">{_esc(type(err).__name__)}: {_esc(str(err))}</span>'
        finally:
            self.button.disabled, self.stop_button.disabled = False, True

    def _run(self, prompts, chosen):
        """`compare` one model at a time (the first prompt streams into its column); the columns and
        the summary are filled as each model finishes. Returns the results of the models that finished."""
        import pandas as pd

        done, base_text, started = [], None, time.perf_counter()
        for k, name in enumerate(chosen):
            if self._stop.is_set():
                self.columns[name].value = '<i style="color:#888">not run (stopped)</i>'
                continue
            live = {"text": "", "pieces": 0, "first": None, "shown": 0.0, "start": time.perf_counter()}
            self.status.value = _esc(f"model {k + 1}/{len(chosen)}: {name} · generating…")
            self.columns[name].value = '<i style="color:#888">generating…</i>'

            def stream(_model, i, piece, name=name, live=live, k=k):
                if self._stop.is_set():
                    raise Stopped
                if i:
                    return
                now = time.perf_counter()
                live["text"] += piece
                live["pieces"] += 1
                live["first"] = live["first"] or now
                if now - live["shown"] >= 0.05:  # a comm message per token would flood a slow link
                    live["shown"] = now
                    rate = live["pieces"] / max(now - live["first"], 1e-9)
                    self.columns[name].value = (
                        f'<pre style="{_PRE}">{_esc(live["text"])}</pre><div style="{_STATS}">~{live["pieces"]} tok · '
                        f"{rate:.1f} tok/s · ttft {live['first'] - live['start']:.2f} s</div>"
                    )
                    self.status.value = _esc(
                        f"model {k + 1}/{len(chosen)}: {name} · {live['pieces']}/{self.max_new_tokens} tokens"
                    )

            lock = model_lock(self.base_model) if self.base_model is not None else None
            if lock is not None and lock.acquire(timeout=0.1):
                lock.release()  # free: compare() takes it again, in its own lock order
            elif lock is not None:  # a cell's compare() is using the base; ours starts when it is done
                self.status.value = _esc(f"model {k + 1}/{len(chosen)}: {name} · waiting for the base model")
            try:
                result = self.generate(prompts, [name], stream)
            except Stopped:
                self.columns[name].value += '<div style="color:#b00">stopped</div>'
                continue
            done.append(result)
            if name == BASE:
                base_text = result["text"].iloc[0]
            self._show_reply(next(result.itertuples()), base_text)
            so_far = pd.concat(done, ignore_index=True)
            self.score_table.value = self._summary_html(so_far)
        if done and base_text is not None:  # a model that ran before the base gets its marks now
            for result in done:
                self._show_reply(next(result.itertuples()), base_text)
        elapsed = time.perf_counter() - started
        finished = "stopped" if self._stop.is_set() else "done"
        self.status.value = _esc(f"{finished}: {len(done)}/{len(chosen)} models in {elapsed:.1f} s")
        if not done:
            return None
        return pd.concat(done, ignore_index=True).sort_values(["prompt_id"], kind="stable").reset_index(drop=True)

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The widget for a widget front end, with the static table as the fallback for everything else."""
        bundle = {"text/html": self.static_html(), "text/plain": "ComparisonView"}
        if self.live:
            bundle.update(self.widget()._repr_mimebundle_())
        return bundle

    def show(self) -> None:
        """Display the view: widget + static fallback when live, the static table otherwise. Without
        results, the widget is shown first and fills model by model; the fallback follows at the end."""
        from IPython.display import HTML, display

        if not self.live:
            display(HTML(self.static_html()))
            return
        if self.results is None and self.prompts:
            waiting = {"text/html": "<p><i>generating…</i></p>", "text/plain": "ComparisonView"}
            handle = display({**waiting, **self.widget()._repr_mimebundle_()}, raw=True, display_id=True)
            self.button.disabled = True
            try:
                self.results = self._run(self.prompts, list(self.models))
            finally:
                self.button.disabled = False
            handle.update(self, raw=False)
            return
        display(self)


def checkpoint_label(name: str, spec) -> str:
    """ "adapter-epoch2 · step 40 · eval 1.234" for a checkpoint in a run directory; the name otherwise."""
    if not isinstance(spec, (str, Path)) or not Path(spec).is_file():
        return name
    try:
        manifest = read_manifest(Path(spec).parent)
    except FmlabError:  # a checkpoint outside a run directory: no step or loss to show
        return name
    entries = manifest.get("checkpoints", []) + ([manifest["final"]] if manifest.get("final") else [])
    entry = next((e for e in entries if Path(e.get("path", "")).name == Path(spec).name), None)
    if entry is None:
        return name
    parts = [name] + ([f"step {entry['step']}"] if entry.get("step") is not None else [])
    if entry.get("eval_loss") is not None:
        parts.append(f"eval {entry['eval_loss']:.3f}")
    return " · ".join(parts)


def _esc(text: str) -> str:
    import html

    return html.escape(str(text))

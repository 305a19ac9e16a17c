"""The live loss plot: a training callback that redraws the loss curves while a run trains, and
`plot_metrics` for a finished run's `metrics.jsonl`.

It never waits for a front end (see `fmlab.lab.comparison_view` for why): `LiveLossPlot` re-renders a
PNG and sends it with `display(..., display_id=True)` / `update()`, one-way display messages that
JupyterLab shows live and papermill simply records (the last image stays in the executed notebook).
Outside a kernel (plain python, the CLI) it only writes the PNG file, rewritten atomically every
`png_interval_s` seconds so it can be watched during a CLI run. matplotlib is imported when drawing.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from fmlab.errors import FmlabError
from fmlab.files import atomic_write
from fmlab.lab.frontend import resolve_live

# --- loss curves -----------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl."""

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
        ax_loss.plot(
            [r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval", color="tab:orange"
        )
    ax_loss.set_title("loss")
    ax_lr.set_title("learning rate")
    ax_tps.set_title("tokens / s")
    if steps or evals:
        ax_loss.legend(loc="upper right")
    if title:
        axes[0].figure.suptitle(title, fontsize=10)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _status(steps: list[dict], evals: list[dict], total: int | None = None, eta_s: float | None = None) -> str:
    parts = []
    if steps:
        last = steps[-1]
        parts.append(f"step {last['step']}{f'/{total}' if total else ''} · loss {last['loss']:.4f}")
        if eta_s is not None:
            parts.append(f"ETA {_clock(eta_s)}")
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
    Drawing runs on the training thread, so both intervals stretch to keep it under `max_share` of the
    wall time (a render of three panels costs a few tenths of a second on a slow CPU).
    With `epochs` (the run's `TrainConfig.epochs`) the title shows step / total and the time left, from
    the pace since the first step it saw (so a resumed run's ETA is right too); at the end, the time taken.
    Rendering uses matplotlib's Agg canvas directly, so no pyplot state or GUI backend is touched."""

    def __init__(
        self,
        path: str | Path | None = None,
        live: bool | None = None,
        title: str | None = None,
        interval_s: float = 2.0,
        png_interval_s: float = 15.0,
        figsize=(13, 3.4),
        epochs: int | None = None,
        max_share: float = 0.05,
    ):
        self.path = Path(path) if path else None
        self.title, self.epochs = title, epochs
        self._first: tuple[float, int] | None = None  # (time, step) of the first step seen: the ETA's pace
        self.finished_s: float | None = None
        self.live = resolve_live(live)
        self.interval_s, self.png_interval_s, self.figsize = interval_s, png_interval_s, figsize
        self.max_share, self._render_s = max_share, 0.0
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

    def render(self, final_layout: bool = True) -> bytes:
        """The current plot as PNG bytes. `final_layout=False` keeps the panel positions of the last
        laid-out render: the constrained layout is half the cost of a render."""
        fig = self._figure()
        fig.set_layout_engine("constrained" if final_layout else "none")
        status = _status(self.steps, self.evals, self.total_steps, self.eta_s())
        if self.finished_s is not None:
            status += f" · took {_clock(self.finished_s)}"
        _draw(self._axes, self.steps, self.evals, f"{self.title}: {status}" if self.title else status)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def save(self, path: str | Path | None = None, png: bytes | None = None) -> Path | None:
        path = Path(path) if path else self.path
        if path is None:
            return None
        with atomic_write(path) as f:  # a viewer watching the file never sees half a PNG
            f.write(png if png is not None else self.render())
        return path

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        spacing = self._render_s / self.max_share  # the gap that keeps drawing under max_share
        show = self.live and (force or now - self._last_show >= max(self.interval_s, spacing))
        write = self.path is not None and (force or now - self._last_png >= max(self.png_interval_s, spacing))
        if not (show or write):
            return
        png = self.render(final_layout=force or self._fig is None)  # a first draw is always laid out
        self._render_s = time.monotonic() - now
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

    @property
    def total_steps(self) -> int | None:
        """epochs × steps per epoch, read off a step row (its `epoch` is fractional: step / steps per epoch)."""
        if not self.epochs or not self.steps or not self.steps[-1].get("epoch"):
            return None
        last = self.steps[-1]
        return round(self.epochs * last["step"] / last["epoch"])

    def eta_s(self) -> float | None:
        total = self.total_steps
        if total is None or self._first is None or self.finished_s is not None:
            return None
        done = self.steps[-1]["step"] - self._first[1]
        if done <= 0:
            return None
        return (time.monotonic() - self._first[0]) / done * max(total - self.steps[-1]["step"], 0)

    # the train() callback protocol
    def on_step(self, row: dict) -> None:
        if self._first is None:
            self._first = (time.monotonic(), row["step"])
        self.steps.append(row)
        self.refresh(force=len(self.steps) == 1)

    def on_eval(self, row: dict) -> None:
        self.evals.append(row)
        self.refresh()

    def on_end(self, summary: dict | None = None) -> None:
        if self._first is not None:
            self.finished_s = time.monotonic() - self._first[0]
        self.refresh(force=True)


# --- side-by-side comparison -----------------------------------------------------------------------

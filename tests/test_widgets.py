"""Widgets degrade to static output headlessly and never block; `fmlab generate` runs on a tiny assets dir."""

import json
import time

import pytest
from helpers import randomize_lora, write_assets

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.checkpoints.assets import load_base
from fmlab.cli import main
from fmlab.lab.comparison_view import ComparisonView
from fmlab.lab.frontend import resolve_live
from fmlab.lab.loss_plot import LiveLossPlot, plot_metrics, read_metrics
from fmlab.model.config import preset
from fmlab.model.transformer import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_rows(n=60):
    for step in range(1, n + 1):
        yield {
            "step": step,
            "epoch": step / 20,
            "loss": 3.0 / step**0.3,
            "lr": 1e-3 * min(1, step / 10),
            "grad_norm": 1.0,
            "tokens_per_s": 1000.0 + step,
            "peak_memory_mb": 12.0,
        }


def test_live_loss_plot_writes_a_png_headless_without_blocking(tmp_path):
    plot = LiveLossPlot(path=tmp_path / "run" / "loss.png", title="adapter", png_interval_s=3600)
    assert plot.live is False  # pytest is no kernel
    start = time.perf_counter()
    for row in synthetic_rows():
        plot.on_step(row)
        if row["step"] % 20 == 0:
            plot.on_eval({"step": row["step"], "epoch": row["epoch"], "eval_loss": row["loss"] + 0.1})
    first = (tmp_path / "run" / "loss.png").read_bytes()  # written at the first step
    plot.on_end({"loss": 1.0})
    final = (tmp_path / "run" / "loss.png").read_bytes()
    assert time.perf_counter() - start < 10
    assert first.startswith(PNG) and final.startswith(PNG) and final != first
    assert len(plot.steps) == 60 and len(plot.evals) == 3 and plot.handle is None
    assert [line.get_label() for line in plot._axes[0].lines] == ["train", "eval"]
    assert plot._fig._suptitle.get_text().startswith("adapter: step 60 · loss")


def test_live_loss_plot_updates_one_display_in_a_kernel(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle()

    monkeypatch.setattr("IPython.display.display", fake_display)
    plot = LiveLossPlot(live=True, interval_s=0)
    for row in synthetic_rows(5):
        plot.on_step(row)
    plot.on_end({})
    assert [kind for kind, _ in shown] == ["display"] + ["update"] * 5
    assert shown[-1][1].data.startswith(PNG)


def test_live_is_off_outside_a_kernel_and_can_be_forced(monkeypatch):
    assert resolve_live(None) is False and resolve_live(True) is True
    monkeypatch.setattr("fmlab.lab.frontend.in_kernel", lambda: True)
    assert resolve_live(None) is True
    monkeypatch.setenv("FMLAB_WIDGETS", "static")
    assert resolve_live(None) is False


def test_plot_metrics_of_a_finished_run(tmp_path):
    rows = list(synthetic_rows(10)) + [{"step": 10, "epoch": 0.5, "eval_loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps, evals = read_metrics(tmp_path)
    assert len(steps) == 10 and evals == rows[-1:]
    ax = plot_metrics(tmp_path / "metrics.jsonl")
    assert [line.get_label() for line in ax.lines] == ["train", "eval"]
    import matplotlib.pyplot as plt

    fig, own = plt.subplots()
    assert plot_metrics(tmp_path, ax=own) is own and len(own.lines) == 2
    plt.close("all")
    with pytest.raises(Exception, match="no metrics file"):
        read_metrics(tmp_path / "missing")


@pytest.fixture
def lm(tiny_tokenizer):
    model = build_model(preset("tiny", vocab_size=tiny_tokenizer.vocab_size), seed=0).eval()
    randomize_lora(model, 0.3)
    return model


def test_comparison_view_is_static_html_headless(lm, tiny_tokenizer):
    view = ComparisonView(
        {"base": None, "tuned": lm},
        tiny_tokenizer,
        ["Enter <the> king & queen."],
        base_model=lm,
        max_new_tokens=4,
        score_fn=lambda p, t: 1.0,
    )
    assert view.live is False
    page = view.static_html()
    assert "Enter &lt;the&gt; king &amp; queen." in page and ">base<" in page and ">tuned<" in page
    assert "Summary" in page and view.results is not None and len(view.results) == 2
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"} and bundle["text/html"] == page
    assert view._widget is None  # headless: no widget was built


def test_comparison_view_widget_builds_and_generates(lm, tiny_tokenizer):
    view = ComparisonView(
        {"base": None, "tuned": lm},
        tiny_tokenizer,
        ["Why is the king here?"],
        base_model=lm,
        max_new_tokens=4,
        live=True,
    )
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "<table" in bundle["text/html"]
    widget = view.widget()
    assert view.prompt_box.value == "Why is the king here?"
    assert all(view.columns[n].value for n in ("base", "tuned"))  # filled from the static run
    view.prompt_box.value = "Speak of love."
    view.model_select.value = ("tuned",)
    assert len(view.column_box.children) == 1
    view.columns["tuned"].value = ""
    view.button.click()  # what the Generate button runs
    assert "<pre" in view.columns["tuned"].value and "tok" in view.columns["tuned"].value
    assert "<table" in view.score_table.value and not view.button.disabled
    assert widget is view.widget()


@pytest.fixture
def assets(tmp_path, tiny_tokenizer):
    """A tiny assets directory in Apple's layout and a non-zero adapter for its base."""
    d = write_assets(tmp_path / "assets", tiny_tokenizer)
    save_adapter(randomize_lora(load_base(d), 0.3), tmp_path / "adapter-final.pt")
    return d


def test_cli_generate_text_and_jsonl(assets, tmp_path, capsys):
    rc = main(["generate", "--assets", str(assets), "-p", "Write a scene.", "-m", "5", "-t", "0", "--precision", "f32"])
    out = capsys.readouterr().out
    assert rc == 0 and "tokens" in out and "tokens/s" in out
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '[{"role": "user", "content": "Hi"}]\n[{"role": "system", "content": "Be brief."}, '
        '{"role": "user", "content": "Why?"}]\n'
    )
    rc = main(
        [
            "generate",
            "--assets",
            str(assets),
            "-p",
            str(prompts),
            "-m",
            "4",
            "-bs",
            "2",
            "--output",
            "jsonl",
            "-c",
            str(tmp_path / "adapter-final.pt"),
            "--top-k",
            "5",
            "--seed",
            "3",
        ]
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(records) == 2 and records[1]["prompt"].endswith("prompts.jsonl:2")
    assert all(1 <= r["tokens"] <= 4 for r in records)
    train = tmp_path / "test.jsonl"  # training samples: generated for without their answers
    train.write_text('[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "KING: Hello."}]\n')
    assert main(["generate", "--assets", str(assets), "-p", str(train), "-m", "2", "--output", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert "without its last assistant turn" in captured.err and len(captured.out.splitlines()) == 1


def test_cli_generate_with_a_draft_prints_acceptance(assets, capsys):
    args = [
        "generate",
        "--assets",
        str(assets),
        "-p",
        "<turn_start> user<n>Hello<turn_end>",
        "-m",
        "6",
        "-t",
        "0",
        "--precision",
        "f32",
    ]
    assert main(args + ["--output", "jsonl"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--output", "jsonl", "--draft-checkpoint", "default", "--num_draft_tokens", "3"]) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    assert spec["text"] == plain["text"] and spec["tokens"] == plain["tokens"]  # T=0: exactly plain greedy
    assert spec["speculative"]["proposed"] > 0 and "acceptance rate" in captured.err
    assert main(args + ["--draft-checkpoint", "default", "--num-draft-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and "k=2" in out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-m", "0"], "--max-new-tokens must be at least 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["-p", "missing.jsonl"], "no such prompt file"),
        (["--draft-checkpoint", "nowhere.pt"], "no such draft checkpoint"),
    ],
)
def test_cli_generate_bad_input_is_one_clear_line(assets, capsys, flags, message):
    argv = ["generate", "--assets", str(assets), "-p", "Hi"] + flags
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

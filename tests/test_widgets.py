"""Widgets degrade to static output headlessly and never block; `fmlab generate` runs on a tiny assets dir."""

import json
import threading
import time

import pytest
from helpers import randomize_lora, write_assets

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.checkpoints.assets import load_base
from fmlab.cli import main
from fmlab.infer.compare import adapter_swapping, compare, model_lock
from fmlab.lab.comparison_view import ComparisonView, checkpoint_label
from fmlab.lab.demo_page import write_demo_page
from fmlab.lab.frontend import resolve_live
from fmlab.lab.loss_plot import LiveLossPlot, plot_metrics, read_metrics
from fmlab.model.config import preset
from fmlab.model.transformer import build_model
from fmlab.tiny.plays import describe_request, play_format_checks, play_format_score

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
    renders, render = [], plot.render
    plot.render = lambda **kw: renders.append(1) or render(**kw)
    for row in synthetic_rows():
        plot.on_step(row)
        if row["step"] % 20 == 0:
            plot.on_eval({"step": row["step"], "epoch": row["epoch"], "eval_loss": row["loss"] + 0.1})
    first = (tmp_path / "run" / "loss.png").read_bytes()  # written at the first step
    plot.on_end({"loss": 1.0})
    final = (tmp_path / "run" / "loss.png").read_bytes()
    assert len(renders) == 2  # the first step and the end: headless, it never redraws per step
    assert first.startswith(PNG) and final.startswith(PNG) and final != first
    assert len(plot.steps) == 60 and len(plot.evals) == 3 and plot.handle is None
    assert [line.get_label() for line in plot._axes[0].lines] == ["train", "eval"]
    assert plot._fig._suptitle.get_text().startswith("adapter: step 60 · loss")


def test_live_loss_plot_title_has_the_eta_then_the_time_taken():
    plot = LiveLossPlot(epochs=3)  # synthetic rows: 20 steps per epoch
    rows = list(synthetic_rows(10))
    plot.on_step(rows[0])
    time.sleep(0.05)
    for row in rows[1:]:
        plot.on_step(row)
    assert plot.total_steps == 60 and 0 < plot.eta_s() < 60 * 5
    plot.render()
    title = plot._fig._suptitle.get_text()
    assert title.startswith("step 10/60 · loss") and "ETA 0:" in title
    plot.on_end({})
    plot.render()
    title = plot._fig._suptitle.get_text()
    assert plot.eta_s() is None and "ETA" not in title and "took 0:0" in title
    assert LiveLossPlot().total_steps is None  # without epochs: no total, no ETA


class Clock:
    """Stands in for the loss plot's `time`: only `tick` moves it."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def tick(self, seconds):
        self.now += seconds


def test_live_loss_plot_keeps_drawing_under_its_share_of_the_run(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr("fmlab.lab.loss_plot.time", clock)
    plot = LiveLossPlot(path=tmp_path / "loss.png", live=False, png_interval_s=0, max_share=0.05)
    renders, render = [], plot.render

    def slow_render(**kw):  # a render that costs 1 s of the clock
        renders.append(kw)
        clock.tick(1.0)
        return render(**kw)

    plot.render = slow_render
    for row in synthetic_rows(400):  # 0.1 s per step: 40 s of training
        clock.tick(0.1)
        plot.on_step(row)
    drawn = len(renders)
    # the first step, then one render (1 s) per 20 s of the run: 5% of the wall time
    assert drawn == 3 and (drawn - 1) / clock.now <= 0.05
    assert renders[0] == {"final_layout": True} and {"final_layout": False} in renders
    plot.on_end({})
    assert renders[-1] == {"final_layout": True}  # the end is always drawn, laid out afresh


def test_live_loss_plot_updates_one_display_in_a_kernel(monkeypatch):
    monkeypatch.setattr("fmlab.lab.loss_plot.time", Clock())  # renders take no time: no spacing
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
    view.toggles["base"].value = False
    assert len(view.column_box.children) == 1 and view.selected == ["tuned"]
    assert view.toggles["tuned"].button_style == "success" and view.toggles["base"].button_style == ""
    view.columns["tuned"].value = ""
    view.button.click()  # what the Generate button runs: on a thread, so Stop can be clicked meanwhile
    results = view.wait(60)
    assert list(results["model"]) == ["tuned"] and results["prompt"].iloc[0] == "Speak of love."
    assert "<pre" in view.columns["tuned"].value and "tok/s" in view.columns["tuned"].value
    assert "<table" in view.score_table.value and "base" not in view.score_table.value
    assert not view.button.disabled and view.stop_button.disabled and "done: 1/1" in view.status.value
    assert widget is view.widget()


def test_comparison_view_controls_reach_compare(lm, tiny_tokenizer):
    view = ComparisonView({"base": None, "tuned": lm}, tiny_tokenizer, base_model=lm, live=True, precision="f32")
    view.widget()
    assert view.precision_box.value == "f32"  # the notebook's PRECISION, not auto
    view.prompt_box.value = "Why?"
    view.max_tokens_box.value, view.temperature_box.value = 3, 0.7
    view.button.click()
    results = view.wait(60)
    assert view.sampling.temperature == 0.7 and (results["tokens"] <= 3).all() and len(results) == 2
    assert "score" not in view.columns["tuned"].value  # no score_fn: no score shown
    base, tuned = results["text"]
    assert base == tuned or "#fff2a8" in view.columns["tuned"].value  # words that differ from the base are marked
    assert "#fff2a8" not in view.columns["base"].value


def test_stop_ends_the_run_before_the_next_model(lm, tiny_tokenizer):
    view = ComparisonView({"a": lm, "b": lm}, tiny_tokenizer, max_new_tokens=400, live=True)
    view.widget()
    view.prompt_box.value = "Tell me everything."
    view.on_generate()
    assert view.button.disabled and not view.stop_button.disabled  # greyed out while generating
    view.stop_button.click()  # long before 400 tokens: model a stops at its next token, b never runs
    view.wait(60)
    assert "stopped" in view.status.value and "not run (stopped)" in view.columns["b"].value
    assert not view.button.disabled


def test_typed_prompt_explained_and_scored(lm, tiny_tokenizer):
    prompt = "Write a one-scene play about a fox and a crow."
    reply = "TITLE: Two\nCAST: FOX, GHOST\nSETTING: a park\nSCENE 1\n(They meet.)\nFOX: Hello there.\nTHE END"
    assert play_format_checks(prompt, reply)["characters"] == 0.5  # the crow is asked for and missing
    assert play_format_score(prompt, reply.replace("GHOST", "CROW")) == 1.0
    assert "CROW (not a toy character)" in describe_request(prompt) and "FOX" in describe_request(prompt)
    view = ComparisonView({"base": None}, tiny_tokenizer, [prompt], base_model=lm, explain_prompt=describe_request)
    view.widget()
    assert "CROW (not a toy character)" in view.parsed.value
    view.prompt_box.value = "A play with a dragon, in two scenes."
    assert "DRAGON" in view.parsed.value and "CROW" not in view.parsed.value and "scenes: 2" in view.parsed.value


def test_compare_on_a_shared_base_from_two_threads_at_once(lm, tiny_tokenizer, tmp_path):
    """A view's Generate (its own thread) and a cell's compare() on the same base: each must decode
    with its own weights, however their adapter swaps interleave."""
    adapter = tmp_path / "adapter.pt"
    save_adapter(randomize_lora(build_model(lm.config, seed=1), 0.5, seed=1), adapter)
    prompts, kwargs = ["Why is the king here?"], {"max_new_tokens": 6, "base_model": lm, "warmup": False}
    expected = {
        name: compare({name: spec}, tiny_tokenizer, prompts, **kwargs)["text"].iloc[0]
        for name, spec in (("base", None), ("tuned", adapter), ("own", lm))
    }
    assert len(set(expected.values())) == 3  # the three weights decode differently
    got, errors = {name: [] for name in expected}, []

    def run(name, spec):
        try:
            for _ in range(12):
                got[name].append(compare({name: spec}, tiny_tokenizer, prompts, **kwargs)["text"].iloc[0])
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=a) for a in (("base", None), ("tuned", adapter), ("own", lm))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and all(len(v) == 12 for v in got.values())
    assert {name: set(texts) for name, texts in got.items()} == {n: {t} for n, t in expected.items()}


def test_adapter_swapping_waits_for_another_threads_lock(lm):
    """`fmlab.eval` swaps adapters through `adapter_swapping`, not `compare`: the block itself must wait
    while another thread (a view's Generate inside compare) holds the model."""
    entered, held, release = threading.Event(), threading.Event(), threading.Event()

    def holder():
        with model_lock(lm):
            held.set()
            release.wait(30)

    def swapper():
        with adapter_swapping(lm):
            entered.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=swapper)]
    threads[0].start()
    assert held.wait(30)
    threads[1].start()
    assert not entered.wait(0.5)  # blocked while the other thread holds the model
    release.set()
    for t in threads:
        t.join(30)
    assert entered.is_set()


def test_checkpoint_label_shows_step_and_eval_loss(tmp_path):
    (tmp_path / "adapter-epoch2.pt").write_bytes(b"x")
    manifest = {"checkpoints": [{"path": "adapter-epoch2.pt", "step": 40, "eval_loss": 1.23456}], "final": None}
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    assert checkpoint_label("adapter-epoch2", tmp_path / "adapter-epoch2.pt") == "adapter-epoch2 · step 40 · eval 1.235"
    assert checkpoint_label("base", None) == "base" and checkpoint_label("x", tmp_path / "missing.pt") == "x"


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


def test_demo_page_links_each_executed_notebook(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("00_setup", "02_train_adapter"):
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text("{}")
    page = write_demo_page(tmp_path, [{"notebook": "00_setup", "seconds": 1.0}]).read_text()
    assert '<a href="notebooks/00_setup.ipynb">00_setup</a>' in page and "notebooks/02_train_adapter.ipynb" in page
    assert "executed notebooks" not in write_demo_page(tmp_path / "empty").read_text()

"""The notebooks' widgets in a real JupyterLab, driven by headless Chromium: the live loss plot redraws
during a training cell, the ComparisonView renders as a widget (not its static fallback), and typing a
prompt, choosing two models and clicking Generate fills one column per model with a reply and a score.
No JavaScript errors in the browser's log, no traceback in the outputs. Screenshots of each stage go to
the test's temp dir, and to out/browser-test/ when run by hand (CI unset). Skips, with the reason, only
where no browser can be had (tests/browser.py says what is missing)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from browser import Lab, chromium, missing_browser, notebook
from helpers import write_assets

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a one-scene play about a fox and a crow."

SETUP = """\
import time
from pathlib import Path

from fmlab.checkpoints.assets import load_base, load_tokenizer
from fmlab.checkpoints.run_dir import run_checkpoints
from fmlab.lab.comparison_view import ComparisonView
from fmlab.lab.loss_plot import LiveLossPlot
from fmlab.tiny.plays import describe_request, play_format_score
from fmlab.train.adapter import DataConfig, train_adapter
from fmlab.train.loop import TrainConfig

ASSETS, OUT = {assets!r}, Path({out!r})
"""
TRAIN = """\
class Pace:  # each step waits out the plot's spacing (twice its last render at max_share=0.5) and 0.3 s more,
    def on_step(self, row):  # so every step redraws, however slow rendering is, and the browser sees each
        time.sleep(0.3 + 2 * plot._render_s)

plot = LiveLossPlot(path=OUT / "loss.png", title="browser test", interval_s=0, max_share=0.5, epochs=2)
config = TrainConfig(epochs=2, batch_size=2, learning_rate=3e-3, precision="f32")
summary = train_adapter({train!r}, OUT, {valid!r}, config=config, data=DataConfig(), assets=ASSETS, callbacks=[plot, Pace()])
"""
VIEW = """\
view = ComparisonView(
    run_checkpoints(OUT),
    load_tokenizer(ASSETS),
    ["Write a play about a dragon and a baker."],
    base_model=load_base(ASSETS),
    max_new_tokens=16,
    score_fn=play_format_score,
    explain_prompt=describe_request,
    precision="f32",
)
view.show()  # no results yet: the widget fills model by model
"""


def short_play(k: int) -> list[dict]:
    a, b = [("dragon", "baker"), ("owl", "cat"), ("fox", "bear"), ("robot", "king")][k]
    play = f"TITLE: The {a.title()}\nCAST: {a.upper()}, {b.upper()}\nSETTING: a park\nSCENE 1\n(They meet.)\n"
    play += f"{a.upper()}: Hello!\nTHE END"
    return [{"role": "user", "content": f"Write a play about a {a} and a {b}."}, {"role": "assistant", "content": play}]


NOTEBOOK = "jupyterapp.shell.currentWidget"
CELL = NOTEBOOK + ".content.widgets[arguments[0]]"


@pytest.fixture
def shots(tmp_path):
    """Where the screenshots go; copied to out/browser-test/ afterwards when not in CI."""
    d = tmp_path / "screenshots"
    d.mkdir()
    yield d
    if not os.environ.get("CI"):
        dest = REPO / "out" / "browser-test"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(d, dest)


def _wait(what: str, check, timeout: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _errors(driver) -> list[str]:
    return driver.execute_script(
        f"return {NOTEBOOK}.content.widgets.flatMap(c => (c.model.outputs ? c.model.outputs.toJSON() : [])"
        ".filter(o => o.output_type === 'error' || (o.name === 'stderr' && String(o.text).includes('Traceback')))"
        ".map(o => o.ename ? o.ename + ': ' + o.evalue + '\\n' + o.traceback.join('\\n') : String(o.text)))"
    )


def _run_cell(driver, i: int, timeout: float, poll=None):
    """Run cell i as Shift-Enter would (JupyterLab's run command), calling `poll()` while it runs;
    returns when the kernel has answered and is idle."""
    driver.execute_script(
        f"{NOTEBOOK}.content.activeCellIndex = arguments[0]; jupyterapp.commands.execute('notebook:run-cell');", i
    )
    done = (
        f"const c = {CELL}; return c.model.executionCount !== null && !c.node.querySelector('.jp-InputPrompt')"
        f".textContent.includes('*') && {NOTEBOOK}.sessionContext.session.kernel.status === 'idle';"
    )
    deadline = time.monotonic() + timeout
    while not driver.execute_script(done, i):
        if poll:
            poll()
        if time.monotonic() > deadline:
            raise AssertionError(f"cell {i} did not finish in {timeout:.0f} s; errors: {_errors(driver)}")
        time.sleep(0.1)
    assert not _errors(driver), _errors(driver)


@pytest.mark.slow
def test_widgets_in_jupyterlab(tmp_path, tiny_tokenizer, shots):
    reason = missing_browser()
    if reason and os.environ.get("CI"):  # CI installs the browser (make system-packages): it must run there
        pytest.fail(f"the browser test must run in CI: {reason}")
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    root, assets, out = tmp_path / "root", tmp_path / "assets", tmp_path / "run"
    root.mkdir()
    write_assets(assets, tiny_tokenizer)
    data = {}
    for split, n in (("train", 4), ("valid", 1)):  # short plays: 4 steps of a few tokens
        data[split] = tmp_path / f"{split}.jsonl"
        data[split].write_text("".join(json.dumps(short_play(k)) + "\n" for k in range(n)))
    cells = [
        SETUP.format(assets=str(assets), out=str(out)),
        TRAIN.format(train=str(data["train"]), valid=str(data["valid"])),
        VIEW,
    ]
    (root / "view.ipynb").write_text(json.dumps(notebook(cells)))

    with Lab(root, tmp_path / "jupyter") as lab:
        driver = chromium()
        try:
            driver.get(lab.url("lab/tree/view.ipynb"))
            ready = (
                f"try {{ const s = {NOTEBOOK}.sessionContext.session; return s.kernel.status === 'idle' && "
                f"{NOTEBOOK}.content.widgets.length === 3; }} catch (e) {{ return false; }}"
            )
            _wait("the notebook and its kernel", lambda: driver.execute_script(ready), timeout=90)
            driver.save_screenshot(str(shots / "1-opened.png"))
            _run_cell(driver, 0, timeout=120)

            # the live loss plot: one image, redrawn in place while the cell runs
            images = []

            def watch_plot():
                src = driver.execute_script(f"const i = {CELL}.node.querySelector('img'); return i && i.src;", 1)
                if src and (not images or images[-1] != src):
                    images.append(src)
                    if len(images) == 2:
                        driver.save_screenshot(str(shots / "2-training.png"))

            _run_cell(driver, 1, timeout=180, poll=watch_plot)
            watch_plot()
            n_images = driver.execute_script(f"return {CELL}.node.querySelectorAll('img').length;", 1)
            assert len(images) >= 3 and n_images == 1, (len(images), n_images)  # first draw + at least two changes
            driver.save_screenshot(str(shots / "3-trained.png"))

            # the view: the widget renders, not the static table, and fills one column per model on display
            _run_cell(driver, 2, timeout=180)
            rendered = driver.execute_script(  # the widget, and not the static table (rendered as HTML)
                f"const n = {CELL}.node; return [n.querySelectorAll('.fmlab-comparison').length, "
                "n.querySelectorAll('.jp-RenderedHTMLCommon table').length];",
                2,
            )
            assert rendered == [1, 0], rendered
            view = driver.find_element(By.CSS_SELECTOR, ".fmlab-comparison")
            driver.execute_script("arguments[0].scrollIntoView();", view)
            columns = view.find_elements(By.CSS_SELECTOR, ".fmlab-column")
            assert len(columns) == 3 and all("score" in c.text for c in columns), [c.text for c in columns]
            overflow = driver.execute_script(
                f"return [...{CELL}.node.querySelectorAll('.jp-OutputArea-output')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).length;",
                2,
            )
            assert overflow == 0, "a horizontal scrollbar under the widget"
            driver.save_screenshot(str(shots / "4-view.png"))

            # type a prompt, keep two models, Generate
            box = view.find_element(By.CSS_SELECTOR, ".fmlab-prompt textarea")
            driver.execute_script("arguments[0].focus(); arguments[0].select();", box)
            box.send_keys(PROMPT)
            parsed = _wait("the parsed request", lambda: "CROW (not a toy character)" in view.text and view.text)
            assert "FOX" in parsed
            toggles = view.find_elements(By.CSS_SELECTOR, ".fmlab-model")
            assert len(toggles) == 3 and all("mod-active" in t.get_attribute("class") for t in toggles)
            toggles[-1].click()
            _wait("two columns", lambda: len(view.find_elements(By.CSS_SELECTOR, ".fmlab-column")) == 2, 20)
            assert "mod-active" not in toggles[-1].get_attribute("class")
            chosen = [t.text for t in toggles[:2]]
            generate = view.find_element(By.CSS_SELECTOR, ".fmlab-generate")
            driver.execute_script(  # remember whether Generate greyed out and what the status said meanwhile
                "const [b, s] = arguments; window.fmlabSeen = {disabled: false, status: []};"
                "new MutationObserver(() => { window.fmlabSeen.disabled ||= b.disabled; })"
                ".observe(b, {attributes: true});"
                "new MutationObserver(() => window.fmlabSeen.status.push(s.textContent))"
                ".observe(s, {subtree: true, childList: true, characterData: true});",
                generate,
                view.find_element(By.CSS_SELECTOR, ".fmlab-status"),
            )
            generate.click()
            began = "return window.fmlabSeen.disabled || window.fmlabSeen.status.length > 0;"
            _wait("Generate to start (it greys out and reports progress)", lambda: driver.execute_script(began), 30)
            _wait("the replies", lambda: "done: 2/2 models" in view.text, timeout=120)
            seen = driver.execute_script("return window.fmlabSeen;")
            assert seen["disabled"] and not generate.get_attribute("disabled"), seen
            assert any("model 2/2" in s for s in seen["status"]), seen["status"]
            columns = view.find_elements(By.CSS_SELECTOR, ".fmlab-column")
            assert len(columns) == 2
            for column, name in zip(columns, chosen):
                stats = column.find_element(By.CSS_SELECTOR, ".fmlab-stats").text
                assert name.split(" · ")[0] in column.text and "score" in stats and "tok/s" in stats, column.text
            assert "mean_score" in view.find_element(By.CSS_SELECTOR, ".fmlab-summary").text
            driver.execute_script("arguments[0].scrollIntoView();", view)
            driver.save_screenshot(str(shots / "5-generated.png"))

            assert "Traceback" not in driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, severe
        finally:
            driver.save_screenshot(str(shots / "last.png"))
            driver.quit()
    print(f"browser test: {time.monotonic() - started:.1f} s, screenshots in {shots}")

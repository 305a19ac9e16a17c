# fmlab: every target creates the virtualenv on first use, so each works on a fresh clone.
PY    ?= python3.11
VENV  ?= .venv
# torch is pinned so pip takes the CPU wheel where one is provided instead of a multi-GB CUDA build
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin

.PHONY: setup demo lint test browser lab bench assets clean

$(BIN)/.fmlab-installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[dev]"
	touch $@

setup: $(BIN)/.fmlab-installed

demo: setup          ## run the whole pipeline on the embedded default
	$(BIN)/fmlab demo

lint: setup          ## ruff: the lint rules and the formatting (pyproject's [tool.ruff])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser   ## lint, then the whole test suite, notebooks and the browser test included
	$(BIN)/python -m pytest -q

# tests/test_browser.py drives JupyterLab with Debian's headless Chromium (nothing downloads a browser
# build); installed here on Linux as root, else the test says why it skips
browser:
	@if [ "$$(uname)" = Linux ] && [ ! -x /usr/bin/chromedriver ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for tests/test_browser.py"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
			|| echo "could not install chromium: tests/test_browser.py will skip"; \
	fi

# LAB_FLAGS: e.g. "--no-browser --port=8888" on a remote machine (README: port forwarding)
LAB_FLAGS ?=
lab: setup           ## open JupyterLab on the notebooks, with the virtualenv's kernel
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/python -m fmlab.lab.frontend
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

bench: setup         ## peer benchmarks → benchmarks/RESULTS.md
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run_all

assets: setup        ## rebuild the embedded default from its seed
	$(BIN)/fmlab build-assets

clean:
	rm -rf out/ .pytest_cache

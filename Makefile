# fmlab: every target creates the virtualenv on first use, so each works on a fresh clone.
PY    ?= python3.11
VENV  ?= .venv
# torch is pinned so pip takes the CPU wheel where one is provided instead of a multi-GB CUDA build
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin

.PHONY: setup demo lint test system-packages lab bench assets clean

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

test: lint system-packages   ## lint, then the whole test suite, notebooks and the browser test included
	$(BIN)/python -m pytest -q

# Debian packages some tests need, installed on Linux as root where missing (else those tests say why
# they skip): chromium + chromium-driver for tests/test_browser.py (JupyterLab in a real browser; nothing
# downloads a browser build), wordnet-base for tests/test_real_text.py (regenerates data/wordnet_*.jsonl)
SYSTEM_PACKAGES = /usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver /usr/share/wordnet/data.noun:wordnet-base
system-packages:
	@missing=$$(for e in $(SYSTEM_PACKAGES); do [ -e "$${e%%:*}" ] || echo "$${e#*:}"; done); \
	if [ -n "$$missing" ] && [ "$$(uname)" = Linux ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing" $$missing; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 \
			|| echo "could not install $$missing: the tests that need them will skip"; \
	fi

# LAB_FLAGS: e.g. "--no-browser --port=8888" on a remote machine (README: port forwarding)
LAB_FLAGS ?=
lab: setup           ## open JupyterLab on the notebooks, with the virtualenv's kernel
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/python -m fmlab.lab.frontend
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_FLAGS)

bench: setup         ## peer benchmarks → benchmarks/RESULTS.md
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run_all

assets: setup system-packages   ## rebuild the embedded default from its seed (needs WordNet: wordnet-base)
	$(BIN)/fmlab build-assets

clean:
	rm -rf out/ .pytest_cache

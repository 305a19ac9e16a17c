# fmlab: every target creates the virtualenv on first use, so each works on a fresh clone.
PY    ?= python3.11
VENV  ?= .venv
# torch is pinned so pip takes the CPU wheel where one is provided instead of a multi-GB CUDA build
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin

.PHONY: setup demo lint test lab bench assets clean

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

test: lint           ## lint, then the whole test suite, notebooks included
	$(BIN)/python -m pytest -q

lab: setup           ## open JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks/

bench: setup         ## peer benchmarks → benchmarks/RESULTS.md
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run_all

assets: setup        ## rebuild the embedded default from its seed
	$(BIN)/fmlab build-assets

clean:
	rm -rf out/ .pytest_cache

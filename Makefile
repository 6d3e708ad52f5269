# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv (if needed), install PyTorch ($(TORCH_SPEC), from
# $(TORCH_INDEX) when set) when no torch is installed there, then install this
# package with its extras.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for PyTorch's CPU-only wheels
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.sklearn_cl3d-installed

.PHONY: install demo test lint unit docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,docs,cohorts,plot]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sklearn-cl3d demo

lint: $(STAMP)
	$(BIN)/ruff check sklearn_cl3d tests examples benchmarks docs/conf.py

unit: $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules sklearn_cl3d tests

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint unit docs

clean:
	rm -rf docs/_build docs/auto_examples docs/gen_modules demo_output

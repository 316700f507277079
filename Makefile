# The two commands of the README's Quick start: `make serve` and `make test`.
# Each creates .venv and installs the project (with the docs and test extras) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clusterlab-installed
TORCH := $(VENV)/.clusterlab-torch

# torch's CPU build (about 190 MB to download, 1 GB installed): the lab's last page runs one
# all-reduce under clusterlab, torchrun and srun. It comes from torch's CPU wheel index, so pip
# cannot pick the multi-GB CUDA build that PyPI serves for Linux x86-64; pip's own configured
# indexes and --find-links still apply. Set TORCH_INDEX to a mirror of that index if yours
# reaches only a mirror (TORCH_INDEX= uses your default index: check that it serves the CPU build).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := 2.13.0

.PHONY: serve test lint build bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[docs,test]'
	touch $@

$(TORCH): $(STAMP)
	$(BIN)/python -m pip install -q --retries 1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==$(TORCH_VERSION)
	@$(BIN)/python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build: remove it (.venv/bin/pip uninstall torch) and install the CPU build' if torch.version.cuda else 0)"
	touch $@

# compileall: the site's live runs write no bytecode (mkdocs serve watches src/), so compile it once here.
serve: $(TORCH)
	$(BIN)/python -m compileall -q src
	$(BIN)/mkdocs serve

# compileall: where PYTHONDONTWRITEBYTECODE is set, every launcher, agent and worker a test
# starts would otherwise compile clusterlab again (tests/test_launcher.py: 8.3 s -> 7.1 s).
test: $(TORCH) lint
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest

# ruff (its rules are chosen, and the exceptions justified, in pyproject.toml) and mypy (src/,
# untyped bodies checked too): part of `make test`, so CI runs them
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

build: $(TORCH)
	$(BIN)/python -m compileall -q src
	$(BIN)/mkdocs build --strict

bench: $(TORCH)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) site .pytest_cache build

# The two commands of the README's Quick start: `make serve` and `make test`.
# Each creates .venv and installs the project (with the docs and test extras) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clusterlab-installed

.PHONY: serve test build bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[docs,test]'
	touch $@

serve: $(STAMP)
	$(BIN)/mkdocs serve

# compileall: where PYTHONDONTWRITEBYTECODE is set, every launcher, agent and worker a test
# starts would otherwise compile clusterlab again (tests/test_launcher.py: 8.3 s -> 7.1 s).
test: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest

build: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench,torch]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) site .pytest_cache

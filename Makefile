# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run api test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

run: $(STAMP)  ## start the API on 127.0.0.1:8000
	$(BIN)/coherence api

api: run

test: $(STAMP)  ## the whole test suite (PostgreSQL tests start their own throwaway server)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/queue.py

clean:
	rm -rf $(VENV) build src/*.egg-info

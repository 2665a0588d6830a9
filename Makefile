# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run api test lint screenshots bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

run: $(STAMP)  ## the autonomous pipeline (API, runner, manager, monitor) on the example backlog; Ctrl-C stops it
	scripts/run_autonomous.sh --backlog examples/backlog.md

api: $(STAMP)  ## only the API on 127.0.0.1:8000
	$(BIN)/coherence api

# Tests mostly wait on real servers and subprocesses: two pytest workers per core (tests/conftest.py) keep both
# cores busy.
TEST_WORKERS ?= auto

test: $(STAMP)  ## the whole test suite, two workers per core (PostgreSQL tests start their own throwaway server)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)  ## ruff on src, tests and bench, mypy on src (pyproject.toml's settings); .ci/run runs it first
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

screenshots: $(STAMP)  ## the console's browser tests, keeping their screenshots in docs/console/ (the README's)
	SCREENSHOTS_DIR=docs/console $(BIN)/python -m pytest -q tests/browser

bench: $(STAMP)
	$(BIN)/python bench/queue_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info

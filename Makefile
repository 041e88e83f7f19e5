# The two commands: `make run` serves Modelyard on http://127.0.0.1:8000, `make test` runs the suite.
# `make bench BENCH_ARGS="--quick"` benchmarks it against a bare ASGI floor and MLServer (bench/).
# Each sets up what it needs (virtual environment, dependencies) on a fresh clone.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The test-only extras (CPU torch for the network tests): `make test` adds them, `make run` not.
TEST_STAMP := $(VENV)/.installed-test
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: install run test lint format migrate bench bench-log clean

install: $(STAMP)

# The client (./client) owns the `modelyard` command; the server depends on it and adds its
# commands. Upgrading a virtual environment where the server still owned the script, pip removes
# the script with the old server after installing the client: reinstall the client then.
$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./client -e '.[dev]'
	test -x $(BIN)/modelyard || $(BIN)/python -m pip install --quiet --no-deps --force-reinstall -e ./client
	touch $(STAMP)

# torch==2.13.0+cpu comes from the machine's local wheel folder (pip's find-links): pinned
# exactly, so that no CUDA build is ever pulled.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,dl-test]'
	touch $(TEST_STAMP)

run: install
	$(BIN)/modelyard migrate
	$(BIN)/modelyard serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests client
	$(BIN)/ruff format --check src tests client
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests client
	$(BIN)/ruff check --fix src tests client

migrate: install
	$(BIN)/modelyard migrate

bench: install
	PYTHON=$(PYTHON) bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The prediction log at scale on PostgreSQL: BENCH_LOG_ARGS="--rows 100000 --writer-rows 20000"
# for a quick run (default: 1 M then 10 M rows, a database of its own, dropped at the end).
bench-log: install
	$(BIN)/python bench/log_bench.py $(BENCH_LOG_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

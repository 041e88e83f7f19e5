# The two commands: `make run` serves Modelyard on http://127.0.0.1:8000, `make test` runs the suite.
# `make bench BENCH_ARGS="--quick"` benchmarks it against a bare ASGI floor and MLServer (bench/).
# Each sets up what it needs (virtual environment, dependencies) on a fresh clone.
# Dependencies come from the lock (requirements/dev.txt, hashes checked); `make lock` refreshes it
# after a change to a pyproject.toml. `make image` / `make image-test` build and prove the image;
# `make docs` builds the documentation site.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The test-only extras (CPU torch for the network tests): `make test` adds them, `make run` not.
TEST_STAMP := $(VENV)/.installed-test
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: install lock run test lint format migrate docs bench bench-log image image-test clean

install: $(STAMP)

# The client (./client) owns the `modelyard` command; the server depends on it and adds its
# commands. Upgrading a virtual environment where the server still owned the script, pip removes
# the script with the old server after installing the client: reinstall the client then.
# Every dependency exactly as the lock pins it (--require-hashes: a file whose hash differs is
# refused), then the two projects themselves without dependencies; `pip check` proves the lock
# is complete.
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e ./client -e .
	test -x $(BIN)/modelyard || $(BIN)/python -m pip install --quiet --no-deps --force-reinstall -e ./client
	$(BIN)/python -m pip check
	touch $(STAMP)

# The test-only extras on top (dl-test: CPU torch for the network tests), pinned with hashes in
# requirements/test.txt. torch==2.13.0+cpu comes from the machine's local wheel folder (pip's
# find-links): pinned exactly, so that no CUDA build is ever pulled.
$(TEST_STAMP): $(STAMP) requirements/test.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/test.txt
	$(BIN)/python -m pip check
	touch $(TEST_STAMP)

# The lock files (requirements/*.txt) from requirements/*.in: every version pinned, with the
# hashes of every file PyPI has for it (any platform, Python 3.11+). dev.txt first; test.txt
# (dev + the dl-test extra), server.txt (the image) and client.txt are held to dev.txt's
# versions, so CI tests what the image ships.
# Existing pins are kept unless a pyproject.toml needs otherwise: LOCK_ARGS=--upgrade moves
# everything to the newest releases, LOCK_ARGS="--upgrade-package NAME" one package. The
# machine's wheel folder (pip's find-links) is searched for local builds such as CPU torch.
LOCK_FLAGS = --quiet --universal --python-version 3.11 --generate-hashes \
	--no-emit-package modelyard --no-emit-package modelyard-client \
	--custom-compile-command "make lock" $(if $(wildcard /opt/wheels),--find-links /opt/wheels) $(LOCK_ARGS)

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet 'uv>=0.9'
	$(BIN)/uv pip compile $(LOCK_FLAGS) requirements/dev.in -o requirements/dev.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c requirements/dev.txt requirements/test.in -o requirements/test.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c requirements/dev.txt requirements/server.in -o requirements/server.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c requirements/dev.txt requirements/client.in -o requirements/client.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) requirements/build.in -o requirements/build.txt

# In development `serve` applies pending migrations itself (and says which), then logs the
# dashboard's and the API docs' URLs once it answers.
run: install
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

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link or anchor, or a
# page missing from the nav, fails. docs/hooks.py generates the configuration table, the HTTP
# reference (from the app's OpenAPI document) and the client page from the code.
docs: install
	$(BIN)/mkdocs build --strict

bench: install
	PYTHON=$(PYTHON) bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/dl.py $(BENCH_DL_ARGS)

# The prediction log at scale on PostgreSQL: BENCH_LOG_ARGS="--rows 100000 --writer-rows 20000"
# for a quick run (default: 1 M then 10 M rows, a database of its own, dropped at the end).
bench-log: install
	$(BIN)/python bench/log_bench.py $(BENCH_LOG_ARGS)

# The image, built with podman on our machines (users: `docker build`, docs/operations/deploy.md). The first time,
# ../shared/tools/container-base.sh installs podman and builds the stand-in base image.
IMAGE ?= localhost/modelyard:latest
BASE_IMAGE := docker.io/library/python:3.11-slim
CONTAINER_BASE ?= $(firstword $(wildcard ../shared/tools/container-base.sh ../../shared/tools/container-base.sh))

image:
	@if ! command -v podman >/dev/null || ! podman image exists $(BASE_IMAGE); then \
		test -n "$(CONTAINER_BASE)" || { echo "image: no ../shared/tools/container-base.sh (set CONTAINER_BASE)" >&2; exit 1; }; \
		bash $(CONTAINER_BASE); \
	fi
	podman build --layers --format docker -f deploy/Dockerfile -t $(IMAGE) .

# The image against PostgreSQL and Redis on 127.0.0.1 and an S3 server (moto) on loopback, with
# what deploy/compose.yaml and deploy/kubernetes give it (tests/deploy/image).
image-test: install image
	CI=true TEST_IMAGE=$(IMAGE) $(BIN)/python -m pytest tests/deploy/image -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

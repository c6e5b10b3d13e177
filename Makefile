# Flowyard: `make up` brings the platform up and runs a real flow through it;
# `make test` sets up and runs lint, types and the tests. Both work on a fresh machine
# with only Python, pip and apt. `make test-containers` builds and runs the compose stack
# (docs/containers.md, "How these files are tested"); it installs a Docker engine if missing.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FLOWYARD_HOME ?= $(if $(filter 0,$(shell id -u)),/var/lib/flowyard,$(HOME)/.flowyard)

.PHONY: up down status test test-containers lint fmt typecheck unit integration bench clean install browser

$(BIN)/flowyard: pyproject.toml flows/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,tracking]" -e ./flows
	touch $@

install: $(BIN)/flowyard

up: install
	$(BIN)/flowyard init
	$(BIN)/flowyard up
	$(BIN)/python -m flowyard.demo

down: install
	$(BIN)/flowyard down

status: install
	$(BIN)/flowyard status

PY_DIRS := src tests benchmarks flows
SHELL_SCRIPTS := deploy/scripts/*.sh deploy/docker/*.sh

lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/shellcheck --external-sources $(SHELL_SCRIPTS)
	$(BIN)/lint-imports

# Rewrites files: the lint fixes ruff can make safely (what is left is printed, for
# `make lint` to fail on), then formatting.
fmt: install
	$(BIN)/ruff check --fix --exit-zero $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

typecheck: install
	$(BIN)/mypy src/flowyard tests benchmarks flows/src flows/tests

unit: install
	$(BIN)/pytest -m "not integration" tests flows/tests

integration: install browser
	$(BIN)/pytest -m integration tests

test: lint typecheck browser
	$(BIN)/pytest tests flows/tests

# Docker Engine + Compose (installed and started if missing, stopped only if started here),
# images (test stand-ins only where the real ones cannot be pulled), then tests/containers.
test-containers: install
	deploy/ci/test-containers.sh

# The UI test's browser, Debian's chromium: installed if missing when root (deploy/ci/chromium.sh).
browser:
	deploy/ci/chromium.sh

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

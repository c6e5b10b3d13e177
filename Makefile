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

.PHONY: up down status test test-containers lint typecheck unit integration bench clean install

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

lint: install
	$(BIN)/ruff check src tests benchmarks flows
	$(BIN)/ruff format --check src tests benchmarks flows

typecheck: install
	$(BIN)/mypy src/flowyard

unit: install
	$(BIN)/pytest -m "not integration" tests flows/tests

integration: install
	$(BIN)/pytest -m integration tests

test: lint typecheck
	$(BIN)/pytest tests flows/tests

# Docker Engine + Compose (installed and started if missing, stopped only if started here),
# images (test stand-ins only where the real ones cannot be pulled), then tests/containers.
test-containers: install
	deploy/ci/test-containers.sh

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

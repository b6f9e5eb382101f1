# One command each: run (embedded default), test (lint, types, tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/email-service serve

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed sdk
	$(BIN)/python -m pytest

# Client SDKs (README, "Client SDKs"): sdk-tools installs the pinned generators when their
# pins change; sdk generates client-sdks/ from openapi/openapi.yaml, which tests/sdk drive.
.PHONY: sdk sdk-tools
sdk-tools:
	PYTHON=$(PYTHON) scripts/sdk.sh tools

sdk: sdk-tools
	PYTHON=$(PYTHON) scripts/sdk.sh generate

test: lint typecheck pytest

# Benchmarks (README, "Performance"): starts Dovecot, an S3 server and a fresh database,
# prints P1-P6 against baselines measured in the same run, writes bench/results/latest.json.
.PHONY: bench bench-push
bench: $(VENV)/.test-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

# Push sync (README "Push"): P7 freshness through the whole service, P8 one watcher
# holding 1,000 idle accounts; results in bench/results/push.json.
bench-push: $(VENV)/.test-installed
	$(BIN)/python -m bench --only P7,P8 --out bench/results/push.json $(BENCH_ARGS)

# tenantledger — the two commands of a fresh machine are `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit reliability bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the receiver on the embedded DuckDB ledger (./tenantledger.duckdb), OTLP on 4317/4318.
run: $(STAMP)
	$(BIN)/tenantledger serve $(ARGS)

## ruff + mypy + pytest
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

## Full-size benchmarks (minutes; figures in bench/README.md). `make unit` runs only their smoke tests.
bench: $(STAMP)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/queries.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

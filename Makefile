# tenantledger — the two commands of a fresh machine are `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint typecheck unit reliability bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the receiver on the embedded DuckDB ledger (./tenantledger.duckdb), OTLP on 4317/4318.
run: $(STAMP)
	$(BIN)/tenantledger serve $(ARGS)

## Start a server on 4317/4318 and fill it with a realistic multi-tenant workload; open the printed /ui address.
demo: $(STAMP)
	$(BIN)/tenantledger demo $(ARGS)

## ruff + mypy + pytest
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

## Long reliability runs: 20 SIGKILLs, 1 M-span traces, longer fuzzing and overload (each test prints figures).
reliability: $(STAMP)
	TENANTLEDGER_RELIABILITY=long $(BIN)/pytest -q -s tests/reliability $(PYTEST_ARGS)

## Full-size benchmarks (minutes; figures in bench/README.md). `make unit` runs only their smoke tests.
bench: $(STAMP)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/queries.py
	$(BIN)/python bench/budget_check.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# tenantledger — the two commands of a fresh machine are `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The per-span hot paths compiled to C extensions by mypyc (build_compiled.py, docs/adr/0005). The .py sources stay the
# reference: without a build they run as Python.
COMPILED := $(VENV)/.compiled

.PHONY: install compile run demo test lint typecheck unit reliability bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) $(COMPILED)

# Rebuilt whenever a project module changes (a compiled module must never be older than its source: tests/conftest.py
# refuses to run on a stale one). mypyc ships with mypy, a test dependency; gcc and the Python headers are needed.
$(COMPILED): $(STAMP) build_compiled.py $(wildcard receiver/*.py processors/*.py)
	rm -rf build receiver/*.so processors/*.so
	$(BIN)/python build_compiled.py build_ext --inplace > $(VENV)/mypyc.log 2>&1 || (tail -30 $(VENV)/mypyc.log; exit 1)
	touch $(COMPILED)

## Compile the hot paths with mypyc (done by `make run` and `make test`; `make clean` removes the build).
compile: $(COMPILED)

## Start the receiver on the embedded DuckDB ledger (./tenantledger.duckdb), OTLP on 4317/4318.
run: $(STAMP) $(COMPILED)
	$(BIN)/tenantledger serve $(ARGS)

## Start a server on 4317/4318 and fill it with a realistic multi-tenant workload; open the printed /ui address.
demo: $(STAMP) $(COMPILED)
	$(BIN)/tenantledger demo $(ARGS)

## ruff + mypy + pytest
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(COMPILED)
	TENANTLEDGER_EXPECT_COMPILED=1 $(BIN)/pytest -q $(PYTEST_ARGS)

## Long reliability runs: 20 SIGKILLs, 1 M-span traces, longer fuzzing and overload (each test prints figures).
reliability: $(STAMP) $(COMPILED)
	TENANTLEDGER_RELIABILITY=long $(BIN)/pytest -q -s tests/reliability $(PYTEST_ARGS)

## Full-size benchmarks (minutes; figures in bench/README.md). `make unit` runs only their smoke tests.
bench: $(STAMP) $(COMPILED)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/queries.py
	$(BIN)/python bench/budget_check.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build receiver/*.so processors/*.so

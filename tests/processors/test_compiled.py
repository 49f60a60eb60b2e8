"""The mypyc build (Makefile `compile`, docs/adr/0005) against the Python sources it is compiled from: the same requests
extracted, attributed and priced by both must give the same spans, rejections and usage records."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from build_compiled import MODULES as COMPILED
from tests.conftest import FIXTURES, REPO, fixture_names, fixture_to_protobuf, load_fixture

# Run in two child processes, one importing the repository (the compiled modules) and one whose import path holds only
# a copy of the sources (the pure-Python modules): one JSON document of everything derived from each request.
_SETTLE = r"""
import json, sys
from collections import defaultdict
import pyarrow as pa
from processors._columns import records_table
from processors._dialects import EXTRA_KEYS, usage_problems
from processors._pricing import Pricer, PricingConfig
from processors._workers import settle_traces
from processors.config import IdentityConfig
from receiver import AttributeFilter
from receiver._otlp import decode_wire, extract
from receiver._spool import _published
from receiver.config import ReceiverConfig

def settle(paths):
    identity, pricer = IdentityConfig(), Pricer(PricingConfig())
    filt = AttributeFilter(identity.all_keys() | EXTRA_KEYS, ReceiverConfig().max_attribute_value_length)
    out = []
    for path in paths:
        with open(path, "rb") as f:
            ex = extract(decode_wire(f.read()), filt, usage_problems)
        spans = _published(ex, 1, "tenant.id=t1")
        by_trace = defaultdict(list)
        for s in spans:
            by_trace[s.trace_id].append(s)
        results = settle_traces(sorted(by_trace), by_trace, {}, identity, pricer)
        table = records_table([rec for r in results for rec in r.records])
        # Nanosecond timestamps as their integers (datetime has microseconds).
        table = pa.table({n: c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c
                          for n, c in zip(table.column_names, table.columns)})
        out.append({"spans": [repr(s) for s in spans], "rejected": ex.rejected, "errors": ex.errors,
                    "summaries": [repr(r.summary) for r in results], "records": table.to_pylist()})
    return json.dumps(out, default=str, sort_keys=True)

if __name__ == "__main__":
    import os, processors._attribution, receiver._otlp
    for m in (processors._attribution, receiver._otlp):  # the tree asked for: the build, or the copied sources
        source = m.__file__.endswith(".py")
        assert m.__file__.startswith(os.getcwd()) and source == (sys.argv[1] == "source"), m.__file__
    print(settle(sys.argv[2:]))
"""


def _bodies(tmp: Path) -> list[str]:
    """Every captured fixture, and the benchmark's realistic requests (15 attributes a span, 50 tenants)."""
    paths = []
    for name in fixture_names():
        p = tmp / f"{name}.bin"
        p.write_bytes(fixture_to_protobuf(load_fixture(name)).SerializeToString())
        paths.append(str(p))
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from _load import Workload, build_requests
    finally:
        sys.path.remove(str(REPO / "bench"))
    for i, body in enumerate(build_requests(Workload(4, trace_size=10, seed=3))):
        p = tmp / f"load{i}.bin"
        p.write_bytes(body)
        paths.append(str(p))
    return paths


def _is_compiled(module: str) -> bool:
    return not str(importlib.import_module(module).__file__).endswith(".py")


def test_the_build_is_compiled_when_make_built_it() -> None:
    # `make unit` sets this after `make compile`: a build that silently produced nothing must not pass as compiled.
    if os.environ.get("TENANTLEDGER_EXPECT_COMPILED") != "1":
        pytest.skip("not run by `make unit` (TENANTLEDGER_EXPECT_COMPILED unset)")
    assert [m for m in COMPILED if not _is_compiled(m)] == []


def test_compiled_modules_settle_every_fixture_as_the_python_sources_do(tmp_path: Path) -> None:
    if not all(_is_compiled(m) for m in COMPILED):
        pytest.skip("the modules are not compiled here (`make compile`)")
    assert len(fixture_names()) > 20, FIXTURES
    paths = _bodies(tmp_path)
    pure = tmp_path / "pure"
    for pkg in ("receiver", "processors", "ledger", "tenantledger"):
        shutil.copytree(REPO / pkg, pure / pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    script = tmp_path / "settle.py"
    script.write_text(_SETTLE)

    def run(kind: str, root: Path) -> Any:
        env = {**os.environ, "PYTHONPATH": str(root)}
        child = subprocess.run([sys.executable, "-B", str(script), kind, *paths], env=env, cwd=root,
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr[-3000:]
        return json.loads(child.stdout)

    compiled, python = run("build", REPO), run("source", pure)
    assert len(compiled) == len(python) == len(paths)
    records = sum(len(doc["records"]) for doc in compiled)
    assert records > 100  # the comparison covers real usage records, not empty lists
    for path, a, b in zip(paths, compiled, python, strict=True):
        assert a == b, Path(path).name

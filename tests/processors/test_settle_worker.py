"""The settle worker process: it settles exactly as the main process does (every captured fixture, links, events),
survives a kill -9 (restarted, nothing lost), and reports a failing batch without dying."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections import defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ledger import Ledger
from processors import LinkedContext, ProcessorsConfig, Settler, TraceResult, records_table
from processors._pricing import Pricer, PricingConfig
from processors._workers import SettleWorker, settle_traces
from processors.config import IdentityConfig
from receiver import StagedSpan
from tests.conftest import fixture_names
from tests.processors.test_dialects import load_spans
from tests.processors.test_settler import ALL, ListSource, calls, feed


def _batch(spans: list[StagedSpan]) -> tuple[list[str], dict[str, list[StagedSpan]]]:
    by_trace: dict[str, list[StagedSpan]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    return sorted(by_trace), dict(by_trace)


def _summaries(results: list[TraceResult]) -> list[tuple[object, ...]]:
    return [dataclasses.astuple(r.summary) for r in results]


def _same(remote: tuple[list[TraceResult], pa.Table], local: list[TraceResult]) -> None:
    """The worker's summaries and record table equal the in-process results, value for value."""
    results, table = remote
    assert _summaries(results) == _summaries(local)
    expected = records_table([rec for r in local for rec in r.records])
    assert table.schema == expected.schema
    assert table.equals(expected)


@pytest.fixture()
def worker() -> object:
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    yield w
    w.close()


def test_worker_settles_every_fixture_exactly_as_in_process(worker: SettleWorker) -> None:
    spans = [s for name in fixture_names() for s in load_spans(name)] + ALL
    order, batch = _batch(spans)
    outside = {"f" * 32: LinkedContext("f" * 32, "req-f", "tenant-f", "user-f")}
    local = settle_traces(order, batch, outside, IdentityConfig(), Pricer(PricingConfig()))
    remote = worker.settle(order, batch, outside)
    assert len(remote[0]) == len(order) and remote[1].num_rows > 50
    _same(remote, local)
    assert sum(1 for c in remote[1].column("list_cost").to_pylist() if c) > 40  # priced over there
    assert "tenant-f" not in remote[1].column("tenant_id").to_pylist()  # nothing links to it: not used


def test_worker_killed_is_restarted_and_the_settler_loses_nothing(tmp_path: Path) -> None:
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    settler = Settler(ProcessorsConfig(wait_duration_s=0), src, Ledger(con), Pricer(PricingConfig()), worker=w)
    try:
        feed(settler, src, ALL[:3])
        settler.flush()
        assert w._proc is not None
        os.kill(w._proc.pid, signal.SIGKILL)
        w._proc.join(10)
        feed(settler, src, ALL[3:])
        settler.flush()
        assert w.restarts == 1
    finally:
        w.close()
    rows = calls(con)
    assert len(rows) == 4 and all(r[8] is not None and r[8] > 0 for r in rows)  # the r9 duplicate billed once
    job = [r for r in rows if r[0].startswith("b")][0]
    assert job[3:5] == ("acme", "link")


def test_failing_batch_is_reported_and_the_worker_lives_on(worker: SettleWorker) -> None:
    order, batch = _batch(ALL)
    broken = dataclasses.replace(ALL[0], attributes=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="settle worker failed"):
        worker.settle([ALL[0].trace_id], {ALL[0].trace_id: [broken]}, {})
    _same(worker.settle(order, batch, {}), settle_traces(order, batch, {}, IdentityConfig(), Pricer(PricingConfig())))
    assert worker.restarts == 0

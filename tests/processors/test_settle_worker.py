"""The settle worker process: it settles exactly as the main process does (every captured fixture, links, events),
survives a kill -9 (restarted, nothing lost), and reports a failing batch without dying."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from ledger import Ledger
from processors import LinkedContext, ProcessorsConfig, Settler, TraceResult, records_table
from processors._dialects import EXTRA_KEYS
from processors._pricing import Pricer, PricingConfig
from processors._workers import (
    _MAX_READ_AMPLIFICATION,
    SettleWorker,
    _decode_batch,
    _encode_batch,
    _encode_refs,
    settle_traces,
)
from processors.config import IdentityConfig
from receiver import AttributeFilter, JSONAttributes, Spool, StagedSpan, extract
from tests.conftest import fixture_names, fixture_to_protobuf, load_fixture
from tests.processors.spans import chat, span
from tests.processors.test_dialects import load_spans
from tests.processors.test_settler import ALL, JOB, REQUEST, TWICE, ListSource, calls, feed, reference


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


def test_spans_carrying_their_attributes_as_json_text_settle_as_with_dicts(worker: SettleWorker) -> None:
    """With settle workers the receiver publishes spans whose attributes are still the spool's JSON text
    (JSONAttributes): the worker parses it, and every fixture settles exactly as with the attribute dicts."""
    spans = [s for name in fixture_names() for s in load_spans(name)] + ALL
    texts = [dataclasses.replace(s, attributes=JSONAttributes(orjson.dumps(dict(s.attributes)).decode()))
             for s in spans]
    order, batch = _batch(spans)
    _, text_batch = _batch(texts)
    local = settle_traces(order, batch, {}, IdentityConfig(), Pricer(PricingConfig()))
    remote = worker.settle(order, text_batch, {})
    assert remote[1].num_rows > 50
    _same(remote, local)
    assert all(s.attributes._parsed is None for s in texts if isinstance(s.attributes, JSONAttributes))


def test_the_batch_wire_format_keeps_every_span_field_event_link_and_context() -> None:
    """What the worker decodes is what the settler sent: every field of every span, in its trace, in order; the
    events and links; attributes sent as JSON text come back as the same dicts as those sent as dicts."""
    spans = [s for name in fixture_names() for s in load_spans(name)] + ALL
    assert any(s.events for s in spans) and any(s.links for s in spans)
    mixed = [dataclasses.replace(s, attributes=JSONAttributes(orjson.dumps(dict(s.attributes)).decode())) if i % 2
             else s for i, s in enumerate(spans)]
    order, batch = _batch(spans)
    _, mixed_batch = _batch(mixed)
    outside = {"f" * 32: LinkedContext("f" * 32, "req-f", "tenant-f", None)}
    for sent in (batch, mixed_batch):
        got_order, got, got_outside = _decode_batch(*_encode_batch(order, sent, outside))
        assert got_order == order and got_outside == outside
        assert got == batch
    all_text = {tid: [s for s in mixed if s.trace_id == tid and isinstance(s.attributes, JSONAttributes)]
                for tid in order}
    all_text = {tid: ss for tid, ss in all_text.items() if ss}
    _, got, _ = _decode_batch(*_encode_batch(list(all_text), all_text, {}))
    assert {tid: [dataclasses.replace(s, attributes=dict(s.attributes)) for s in ss] for tid, ss in all_text.items()} \
        == got
    assert _decode_batch(*_encode_batch([], {}, {})) == ([], {}, {})


def test_worker_killed_is_restarted_and_the_settler_loses_nothing(tmp_path: Path) -> None:
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    settler = Settler(ProcessorsConfig(wait_duration_s=0), src, Ledger(con), Pricer(PricingConfig()), workers=[w])
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


def test_a_batch_sent_by_reference_is_read_from_the_spool_and_settles_exactly_as_in_process(
    worker: SettleWorker, tmp_path: Path
) -> None:
    """With the spool as the spans' source, a batch goes as sequence numbers and frames (~10 bytes a span): the worker
    reads the spans from the spool's files and every fixture, links and events included, settles exactly as in the
    main process with the spans it holds (JSON-text attributes, as the receiver publishes them with workers)."""
    spool = Spool(tmp_path / "spool", segment_bytes=64 << 10, attribute_text=True)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    for name in fixture_names():
        spool.append(extract(fixture_to_protobuf(load_fixture(name)), filt), "tenant.id=acme")
    assert len(published) > 100 and len(spool._segments) > 1
    order, batch = _batch(published[::-1])  # numbers out of order within the batch
    local = settle_traces(order, batch, {}, IdentityConfig(), Pricer(PricingConfig()))
    assert _encode_refs(order, batch, {}, spool.locate) is not None
    _same(worker.settle(order, batch, {}, spool.locate), local)
    assert all(s.attributes._parsed is None for s in published if isinstance(s.attributes, JSONAttributes))
    # Spans that are not in the spool (another source, numbered alike) go by value.
    stray = dataclasses.replace(published[0], seq=spool.last_seq + 1)
    assert _encode_refs([stray.trace_id], {stray.trace_id: [stray]}, {}, spool.locate) is None
    # So do a few spans of large frames (late spans of old traces, say): the worker would read whole frames for them.
    widest = max(spool._frames, key=lambda f: f.count)
    n = widest.count
    assert n >= 2
    size = _MAX_READ_AMPLIFICATION * n

    def large(seqs: Sequence[int]) -> list[Any] | None:  # the spool's frames, as if each held ``size`` spans
        found = spool.locate(seqs)
        return None if found is None else [(p, o, k, first, size) for p, o, k, first, _ in found]

    of_widest = [s for s in published if widest.first <= s.seq <= widest.last]
    assert _encode_refs(*_batch(of_widest), {}, large) is not None  # 16x the batch's spans read: still by reference
    assert _encode_refs(*_batch(of_widest[1:]), {}, large) is None  # more than 16x: by value


def test_a_settler_whose_workers_read_the_spool_settles_every_fixture_as_in_process_through_a_worker_kill(
    tmp_path: Path,
) -> None:
    """The settler with two workers and the spool as its source, batches by reference (small batches, so several
    are pipelined and some span frames), one worker killed with -9 halfway: the ledger holds exactly what settling
    in the main process gives, and the batches went by reference."""
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    requests = [extract(fixture_to_protobuf(load_fixture(name)), filt) for name in fixture_names()]

    def settle(path: Path, workers: list[SettleWorker]) -> tuple[duckdb.DuckDBPyConnection, list[int]]:
        spool = Spool(path.with_suffix(".spool"), attribute_text=bool(workers))
        con = duckdb.connect(str(path))
        located: list[int] = []

        def locate(seqs: Sequence[int]) -> list[Any] | None:
            located.append(len(seqs))
            return spool.locate(seqs)

        cfg = ProcessorsConfig(wait_duration_s=0, max_batch_spans=40)
        settler = Settler(cfg, spool, Ledger(con), Pricer(PricingConfig()), workers=workers,
                          locate=locate if workers else None)
        spool.subscribe(settler.on_spans)
        for i, ex in enumerate(requests):
            spool.append(ex, "tenant.id=acme" if i % 3 == 0 else None)
            if i == len(requests) // 2 and workers:
                settler.flush()
                assert workers[0]._proc is not None
                os.kill(workers[0]._proc.pid, signal.SIGKILL)
                workers[0]._proc.join(10)
        settler.flush()
        return con, located

    ref, _ = settle(tmp_path / "ref.duckdb", [])
    ws = [SettleWorker(IdentityConfig(), PricingConfig()) for _ in range(2)]
    for w in ws:
        w.start()
    try:
        con, located = settle(tmp_path / "l.duckdb", ws)
    finally:
        for w in ws:
            w.close()
    assert len(calls(ref)) > 20
    assert calls(con) == calls(ref)
    assert ws[0].restarts == 1
    assert len(located) > 3 and sum(located) >= sum(len(ex) for ex in requests)


def test_a_batch_by_reference_that_fails_is_retried_by_value_once(worker: SettleWorker, tmp_path: Path) -> None:
    """A batch the worker could not read from the spool (a file gone) is reported, and its retry goes by value and
    settles; the batch after that goes by reference again."""
    spool = Spool(tmp_path / "spool")
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    spool.append(extract(fixture_to_protobuf(load_fixture(fixture_names()[0])), filt))
    spans = spool.read_after(0)
    order, batch = _batch(spans)
    local = settle_traces(order, batch, {}, IdentityConfig(), Pricer(PricingConfig()))

    def gone(seqs: Sequence[int]) -> list[Any] | None:
        return [(str(tmp_path / "missing.arrows"), 0, 10, seqs[0], len(seqs))]

    with pytest.raises(RuntimeError, match="settle worker failed"):
        worker.settle(order, batch, {}, gone)
    _same(worker.settle(order, batch, {}, gone), local)  # by value
    with pytest.raises(RuntimeError, match="missing.arrows"):
        worker.settle(order, batch, {}, gone)  # by reference again
    _same(worker.settle(order, batch, {}, spool.locate), local)
    assert worker.restarts == 0


def _recording_ledger(
    con: duckdb.DuckDBPyConnection, worker: SettleWorker | list[SettleWorker], fail_on: set[int]
) -> tuple[Ledger, list[Any]]:
    """A real ledger whose writes are recorded: the traces written (by their test letter), and how many of the
    workers held a batch then."""
    workers = worker if isinstance(worker, list) else [worker]
    ledger = Ledger(con)
    writes: list[Any] = []
    write = ledger.write

    def recording(settlement: Any) -> None:
        writes.append(([r.summary.trace_id[0] for r in settlement.results], sum(w._inflight for w in workers)))
        if len(writes) in fail_on:
            raise duckdb.IOException("disk full (injected)")
        write(settlement)

    ledger.write = recording  # type: ignore[method-assign]
    return ledger, writes


def test_a_backlog_is_pipelined_and_a_link_to_the_batch_being_written_resolves(tmp_path: Path) -> None:
    """Several batches due at once: the worker computes the next batch while the previous one is written, and
    the ledger is the one a single in-process transaction gives. The job links to the request settled in the
    batch before it; with no settled-trace cache, it resolves from that batch's results (not yet in the ledger)
    at once instead of being settled again later."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    ledger, writes = _recording_ledger(con, w, fail_on=set())
    _collects_wait_for_writes([w], writes, {2: 1, 3: 2})  # each write, while the next batch is collected
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=0, max_batch_spans=2)
    settler = Settler(cfg, src2, ledger, Pricer(PricingConfig()), workers=[w])
    try:
        feed(settler, src2, REQUEST + JOB + TWICE)
        settler.flush()
    finally:
        w.close()
    assert calls(con) == calls(ref_con)
    # REQUEST (alone: a trace is never split), JOB, the two TWICE traces; each written while the next was computed
    assert writes == [(["a"], True), (["b"], True), (["c", "d"], False)]
    job = [r for r in calls(con) if r[0].startswith("b")][0]
    assert job[3:5] == ("acme", "link")


def test_a_failed_write_in_a_pipelined_backlog_loses_nothing(tmp_path: Path) -> None:
    """The first transaction of a pipelined backlog fails while the worker holds the next batch: both batches stay
    pending, the worker is not restarted (the pipe stays in step), and the retry gives the same ledger."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    ledger, writes = _recording_ledger(con, w, fail_on={1})
    cfg = ProcessorsConfig(wait_duration_s=0, max_batch_spans=2)
    settler = Settler(cfg, src2, ledger, Pricer(PricingConfig()), workers=[w])
    try:
        feed(settler, src2, ALL)
        with pytest.raises(duckdb.IOException, match="injected"):
            settler.run_once(force=True)
        assert calls(con) == [] and settler.pending_spans == len(ALL)
        settler.flush()
        assert w.restarts == 0 and not w._inflight
    finally:
        w.close()
    assert writes[0] == (["a"], True)
    assert calls(con) == calls(ref_con)


def test_a_batch_left_in_the_worker_is_written_next_tick_and_a_span_arriving_meanwhile_is_kept(tmp_path: Path) -> None:
    """A tick leaves its batch computing in the worker; the next tick once its results are back writes it (a tick
    does not wait for a worker when it has nothing to send). A span of that trace arriving in
    between is neither lost nor written with the batch: it stays pending (the watermark stays below it) and
    re-settles the trace, which ends as if all its spans had come at once."""
    late = span("a", "4", "1", kind=3, attrs=chat(30, 3, response_id="r4"), seq=8)
    src = ListSource()
    ref_con = duckdb.connect(str(tmp_path / "ref.duckdb"))
    ref = Settler(ProcessorsConfig(wait_duration_s=0, settle_workers=0), src, Ledger(ref_con), Pricer(PricingConfig()))
    feed(ref, src, [*REQUEST, late])
    ref.flush()

    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    cfg = ProcessorsConfig(wait_duration_s=0, settle_batch_spans=1)  # every tick settles what is due
    settler = Settler(cfg, src2, ledger, Pricer(PricingConfig()), workers=[w])
    try:
        feed(settler, src2, REQUEST)
        settler.run_once()
        assert w._inflight and calls(con) == [] and ledger.watermark() == 0
        feed(settler, src2, [late])
        SettleWorker.wait_any([w], 30.0)
        assert w.ready()
        settler.run_once()  # writes the batch in flight; the late span waits
        assert len(calls(con)) == 2 and settler.pending_spans == 1 and ledger.watermark() == late.seq - 1
        settler.flush()
    finally:
        w.close()
    assert calls(con) == calls(ref_con)
    assert len(calls(con)) == 3 and ledger.watermark() == late.seq


def _workers(n: int) -> list[SettleWorker]:
    ws = [SettleWorker(IdentityConfig(), PricingConfig()) for _ in range(n)]
    for w in ws:
        w.start()
    return ws


def _collects_wait_for_writes(ws: list[SettleWorker], writes: list[Any], gates: dict[int, int]) -> None:
    """Collect number k (across the workers, from 1) waits until ``gates[k]`` writes have begun. A write runs on the
    writer thread while the settler goes on to collect the next batch; tests that record how many workers held a
    batch during a write gate that collect on it (without this, a busy machine sometimes let the settler collect
    first, and the recorded count was one lower)."""
    collects = [0]
    for w in ws:
        def gated(collect: Any = w.collect) -> Any:
            collects[0] += 1
            deadline = time.monotonic() + 10
            while len(writes) < gates.get(collects[0], 0) and time.monotonic() < deadline:
                time.sleep(0.001)
            return collect()
        w.collect = gated  # type: ignore[method-assign]


def test_two_workers_compute_side_by_side_and_a_link_into_a_batch_still_computing_waits_for_it(
    tmp_path: Path,
) -> None:
    """Two workers: a batch goes to whichever worker is free, and batches are written in the order they were sent.
    The job links to the request, whose batch is still computing when the job's is prepared: the request's batch
    is written first, so the link resolves (from the ledger: no settled-trace cache) instead of being settled
    again later. The ledger is the one a single in-process transaction gives."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ws = _workers(2)
    ledger, writes = _recording_ledger(con, ws, fail_on=set())
    _collects_wait_for_writes(ws, writes, {3: 2})  # JOB's write, while TWICE's batch is collected
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=0, max_batch_spans=2)
    settler = Settler(cfg, src2, ledger, Pricer(PricingConfig()), workers=ws)
    try:
        feed(settler, src2, REQUEST + JOB + TWICE)
        settler.flush()
        assert not any(w._inflight for w in ws) and settler.pending_spans == 0
    finally:
        for w in ws:
            w.close()
    assert calls(con) == calls(ref_con)
    # REQUEST is written before JOB is sent (JOB links into it); TWICE is computed while JOB is written.
    assert writes == [(["a"], 0), (["b"], 1), (["c", "d"], 0)]
    job = [r for r in calls(con) if r[0].startswith("b")][0]
    assert job[3:5] == ("acme", "link")


def test_two_workers_a_failed_write_loses_nothing(tmp_path: Path) -> None:
    """A write fails while both workers hold batches: every batch not written stays pending, both pipes stay in step
    (no restart), and the retry gives the in-process ledger. One trace a batch: REQUEST is written first (JOB
    links into it), then JOB's write fails while TWICE's two traces are computing."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ws = _workers(2)
    ledger, writes = _recording_ledger(con, ws, fail_on={2})
    _collects_wait_for_writes(ws, writes, {3: 2})  # JOB's write, while TWICE's first batch is collected
    cfg = ProcessorsConfig(wait_duration_s=0, max_batch_spans=1)
    settler = Settler(cfg, src2, ledger, Pricer(PricingConfig()), workers=ws)
    try:
        feed(settler, src2, ALL)
        with pytest.raises(duckdb.IOException, match="injected"):
            settler.run_once(force=True)
        assert writes == [(["a"], 0), (["b"], 2)]  # both workers held a batch when JOB's write failed
        assert len(calls(con)) == 2 and settler.pending_spans == len(JOB + TWICE)
        settler.flush()
        assert all(w.restarts == 0 and not w._inflight for w in ws)
    finally:
        for w in ws:
            w.close()
    assert calls(con) == calls(ref_con)


def test_a_worker_that_finishes_first_gets_the_next_batches_while_an_older_one_computes(tmp_path: Path) -> None:
    """Two workers, six one-trace batches: the first worker is stopped (SIGSTOP) before its batch arrives, as a
    worker busy with a large batch would be. Each batch the second worker finishes is collected at once and the
    next batch goes to it, instead of both waiting for the oldest; once two batches per worker are sent and not
    written, the settler waits for the oldest (it is resumed after the second worker's third batch). Writes still
    follow the order the batches were sent, and the ledger is the one settling in process gives."""
    spans = [span(t, "1", kind=3, attrs=chat(10 * (i + 1), i + 1, response_id=f"r{t}", **{"tenant.id": "acme"}),
                  seq=i + 1) for i, t in enumerate("uvwxyz")]
    ref_src = ListSource()
    ref_con = duckdb.connect(str(tmp_path / "ref.duckdb"))
    ref = Settler(ProcessorsConfig(wait_duration_s=0, settle_workers=0), ref_src, Ledger(ref_con),
                  Pricer(PricingConfig()))
    feed(ref, ref_src, spans)
    ref.flush()

    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ws = _workers(2)
    ledger, writes = _recording_ledger(con, ws, fail_on=set())
    second_fed = _counting_sends(ws[1], 3)
    submit, stopped = ws[0].submit, threading.Event()

    def stop_then_submit(*args: Any) -> None:
        if not stopped.is_set():
            os.kill(ws[0]._proc.pid, signal.SIGSTOP)
            stopped.set()
        submit(*args)

    ws[0].submit = stop_then_submit  # type: ignore[method-assign]
    in_time: list[bool] = []

    def resume() -> None:
        stopped.wait(30)
        in_time.append(second_fed.wait(10))  # settling the oldest first would wait here for the 10 s
        os.kill(ws[0]._proc.pid, signal.SIGCONT)

    resumer = threading.Thread(target=resume)
    resumer.start()
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=0, max_batch_spans=1)
    settler = Settler(cfg, src, ledger, Pricer(PricingConfig()), workers=ws)
    try:
        feed(settler, src, spans)
        settler.flush()
        resumer.join()
        assert all(w.restarts == 0 and not w._inflight for w in ws)
    finally:
        for w in ws:
            w.close()
    assert in_time == [True]
    assert [letters for letters, _ in writes] == [[t] for t in "uvwxyz"]
    assert calls(con) == calls(ref_con) and len(calls(con)) == 6


def _counting_sends(w: SettleWorker, n: int) -> threading.Event:
    """An event set once ``w`` has been sent ``n`` batches."""
    sent = threading.Event()
    submit, count = w.submit, [0]

    def counting(*args: Any) -> None:
        submit(*args)
        count[0] += 1
        if count[0] >= n:
            sent.set()

    w.submit = counting  # type: ignore[method-assign]
    return sent


def test_the_next_batches_are_collected_prepared_and_sent_while_a_batch_is_written(tmp_path: Path) -> None:
    """The ledger write runs on its own thread: while the first batch (REQUEST) is being written, the settler
    collects the second (JOB, whose link into REQUEST resolves from REQUEST's results) and sends the third (TWICE)
    to the worker. The ledger is the one a single in-process transaction gives, and the watermark covers every
    span."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    third_sent = _counting_sends(w, 3)
    ledger = Ledger(con)
    write, seen = ledger.write, []

    def first_waits(settlement: Any) -> None:
        if not seen:
            seen.append(third_sent.wait(10))  # a write on the settler's own thread would wait here in vain
        write(settlement)

    ledger.write = first_waits  # type: ignore[method-assign]
    settler = Settler(ProcessorsConfig(wait_duration_s=0, settled_cache_traces=0, max_batch_spans=2), src, ledger,
                      Pricer(PricingConfig()), workers=[w])
    try:
        feed(settler, src, ALL)
        settler.flush()
    finally:
        w.close()
    assert seen == [True]
    assert calls(con) == calls(ref_con)
    assert ledger.watermark() == ALL[-1].seq and settler.pending_spans == 0


def test_a_failed_write_drops_the_write_queued_behind_it_and_loses_nothing(tmp_path: Path) -> None:
    """The first write fails while the second is already queued on the writer thread: the second is not made
    (its watermark counted on the first), nothing reaches the ledger, every span stays pending, and the retry gives
    the in-process ledger."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    w = SettleWorker(IdentityConfig(), PricingConfig())
    w.start()
    ledger = Ledger(con)
    write, writes = ledger.write, []
    settler = Settler(ProcessorsConfig(wait_duration_s=0, max_batch_spans=2), src, ledger, Pricer(PricingConfig()),
                      workers=[w])

    def queued(letter: str) -> bool:
        return any(job.trace_ids[0].startswith(letter) for job, _ in list(settler._writing))

    def first_fails(settlement: Any) -> None:
        writes.append([r.summary.trace_id[0] for r in settlement.results])
        if len(writes) == 1:
            deadline = time.monotonic() + 10
            while not queued("b") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert queued("b")
            raise duckdb.IOException("disk full (injected)")
        write(settlement)

    ledger.write = first_fails  # type: ignore[method-assign]
    try:
        feed(settler, src, ALL)
        with pytest.raises(duckdb.IOException, match="injected"):
            settler.run_once(force=True)
        assert writes == [["a"]] and calls(con) == [] and ledger.watermark() == 0
        assert settler.pending_spans == len(ALL) and settler.stats.write_errors == 1
        settler.flush()
        assert w.restarts == 0 and not w._inflight
    finally:
        w.close()
    assert calls(con) == calls(ref_con)
    assert ledger.watermark() == ALL[-1].seq


def test_the_ledger_answers_the_settler_while_a_write_transaction_is_open(tmp_path: Path) -> None:
    """The settler asks the ledger about earlier traces while the writer thread is inside a transaction: the
    answers come at once (they do not wait for the transaction) and hold only what was committed."""
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    settler = Settler(ProcessorsConfig(wait_duration_s=0, settle_workers=0), src, ledger, Pricer(PricingConfig()))
    feed(settler, src, REQUEST)
    settler.flush()
    a, z = REQUEST[0].trace_id, "f" * 32
    in_txn, done = threading.Event(), threading.Event()

    def open_write() -> None:  # what Ledger.write holds while its transaction runs
        with ledger._lock:
            ledger._con.execute("BEGIN TRANSACTION")
            ledger._con.execute("INSERT INTO traces VALUES (?, 'r', 't', NULL, false, 1, now(), 90, 90)", [z])
            ledger._con.execute("INSERT INTO settled_watermarks VALUES (99, 90)")
            in_txn.set()
            done.wait(10)
            ledger._con.execute("ROLLBACK")

    writer = threading.Thread(target=open_write)
    writer.start()
    try:
        assert in_txn.wait(10)
        answers: list[Any] = []
        reader = threading.Thread(target=lambda: answers.append(
            (ledger.known_traces([a, z]), ledger.trace_contexts([a, z]), ledger.watermark())))
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the read helpers waited for the write transaction"
        known, contexts, watermark = answers[0]
        assert set(known) == {a} and set(contexts) == {a} and contexts[a].tenant_id == "acme"
        assert watermark == REQUEST[-1].seq
    finally:
        done.set()
        writer.join()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_backlog_is_settled_tick_after_tick_without_waiting_out_the_interval(tmp_path: Path, workers: int) -> None:
    """The settle loop waits settle_interval_s between ticks only when there is nothing to do at once: spans left in
    the spool that fit in memory again are read back by the very next tick, and a batch left computing in a worker
    is collected as soon as its results are back. With a 60 s interval, a backlog read back two spans at a time
    (one tick each) is settled in seconds, and the ledger is the one settling everything at once gives."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    cfg = ProcessorsConfig(wait_duration_s=0, settle_interval_s=60, settle_batch_spans=1, max_pending_spans_in_memory=2)
    settler = Settler(cfg, src, ledger, Pricer(PricingConfig()), workers=_workers(workers))
    feed(settler, src, ALL)
    assert settler._spilling
    settler.start()
    try:
        deadline = time.monotonic() + 30
        while ledger.watermark() < ALL[-1].seq and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ledger.watermark() == ALL[-1].seq, "the backlog waited for the next interval"
    finally:
        settler.stop()
    assert calls(con) == calls(ref_con) and settler.pending_spans == 0

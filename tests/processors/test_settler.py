"""The settle loop over a real spool and a real DuckDB ledger: batch splits, late spans, links, restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import Ledger
from processors import ProcessorsConfig, Settler, _settler
from processors._pricing import Pricer, PricingConfig
from receiver import StagedSpan
from tests.processors.spans import chat, span


class ListSource:
    """The spool's read side over a list (the real Spool is exercised end to end)."""

    def __init__(self) -> None:
        self.spans: list[StagedSpan] = []

    def read_after(self, seq: int, limit: int = 100_000) -> list[StagedSpan]:
        return sorted((s for s in self.spans if s.seq > seq), key=lambda s: s.seq)[:limit]

    def read_traces(self, trace_ids: Any, seq_from: int | None = None, seq_to: int | None = None) -> list[StagedSpan]:
        want = set(trace_ids)
        lo, hi = (seq_from, seq_to) if seq_from is not None and seq_to is not None else (0, 1 << 62)
        return [s for s in self.spans if s.trace_id in want and lo <= s.seq <= hi]


def make(path: Path, source: ListSource) -> tuple[duckdb.DuckDBPyConnection, Settler]:
    con = duckdb.connect(str(path))
    ledger = Ledger(con)
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=2, settle_workers=0)
    return con, Settler(cfg, source, ledger, Pricer(PricingConfig()))


def feed(settler: Settler, source: ListSource, spans: list[StagedSpan]) -> None:
    source.spans.extend(spans)
    settler.on_spans(spans)


def reference(path: Path) -> duckdb.DuckDBPyConnection:
    """The ledger of settling every span of ALL at once."""
    src = ListSource()
    con, settler = make(path, src)
    feed(settler, src, ALL)
    settler.flush()
    return con


def calls(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT trace_id, span_id, request_id, tenant_id, tenant_source, unattributed_reason, input_tokens, "
        "output_tokens, list_cost FROM llm_calls ORDER BY trace_id, span_id"
    ).fetchall()


REQUEST = [
    span("a", "1", kind=2, attrs={"tenant.id": "acme"}, seq=1),
    span("a", "2", "1", kind=3, attrs=chat(100, 20, response_id="r1"), seq=2),
    span("a", "3", "1", kind=3, attrs=chat(50, 10, response_id="r2"), seq=3),
]
JOB = [
    span("b", "1", kind=5, links=(("a", "1"),), seq=4),
    span("b", "2", "1", kind=3, attrs=chat(70, 7, response_id="r3"), seq=5),
]
TWICE = [  # the same call reported by two instrumentations in two different traces
    span("c", "1", kind=3, attrs=chat(10, 1, response_id="r9", **{"tenant.id": "acme"}), seq=6),
    span("d", "1", kind=3, attrs=chat(10, 1, response_id="r9", **{"tenant.id": "acme", "server.address": "x"}),
         seq=7),
]
ALL = REQUEST + JOB + TWICE


def test_whole_set_at_once(tmp_path: Path) -> None:
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, ALL)
    s.flush()
    rows = calls(con)
    assert len(rows) == 4  # r9 billed once
    job = [r for r in rows if r[0].startswith("b")][0]
    assert job[3:5] == ("acme", "link") and job[2] == "a".ljust(32, "0") + "-" + "1".ljust(16, "0")
    assert all(r[8] is not None and r[8] > 0 for r in rows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations(ALL), st.lists(st.integers(1, len(ALL)), max_size=4), st.lists(st.sampled_from(ALL)))
def test_any_split_order_and_duplication_gives_the_same_ledger(
    tmp_path_factory: Any, order: list[StagedSpan], cuts: list[int], dups: list[StagedSpan]
) -> None:
    ref_con = reference(tmp_path_factory.mktemp("ref") / "l.duckdb")
    expected = calls(ref_con)

    src2 = ListSource()
    con, s = make(tmp_path_factory.mktemp("x") / "l.duckdb", src2)
    stream = list(order) + [s_ for s_ in dups]
    bounds = sorted(set(cuts)) + [len(stream)]
    start = 0
    for b in bounds:
        if b > start:
            feed(s, src2, stream[start:b])
            s.run_once(force=True)  # settle after every batch: later batches re-settle
            start = b
    s.flush()
    assert calls(con) == expected


def test_late_span_corrects_instead_of_charging_twice(tmp_path: Path) -> None:
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, [span("e", "2", "1", kind=3, attrs=chat(100, 20), seq=1)])
    s.flush()
    assert calls(con)[0][5] == "parent_not_received"
    for i in range(5):  # push the trace out of the settled cache: the late span must read the spool
        feed(s, src, [span(f"f{i}", "1", attrs=chat(1, 1), seq=10 + i)])
        s.flush()
    feed(s, src, [span("e", "1", kind=2, attrs={"tenant.id": "acme"}, seq=20)])
    s.flush()
    rows = [r for r in calls(con) if r[0].startswith("e")]
    assert len(rows) == 1 and rows[0][3:5] == ("acme", "ancestor")


@pytest.mark.parametrize("bound", ["from the filter", "a false positive's, too late"])
def test_a_re_settle_replaces_exactly_the_earlier_rows_whatever_bound_the_filter_gives(
    tmp_path: Path, monkeypatch: Any, bound: str
) -> None:
    """A re-settle looks for its traces' earlier rows only among those settled since the filter of settled traces
    says they were (so it does not scan the whole ledger); a bound that would miss some (a false positive in a newer
    generation) is caught against the ledger and not used."""
    from ledger._seen import TimedFilter

    if bound != "from the filter":
        monkeypatch.setattr(TimedFilter, "added_since_ns", lambda self, keys: 2**62)
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, [span("e", "2", "1", kind=3, attrs=chat(100, 20, response_id="r1"), seq=1),
                  span("x", "1", kind=3, attrs=chat(10, 1, response_id="r2", **{"tenant.id": "beta"}), seq=2)])
    s.flush()
    feed(s, src, [span("e", "1", kind=2, attrs={"tenant.id": "acme"}, seq=3)])
    s.flush()
    assert [r[3:5] for r in calls(con)] == [("acme", "ancestor"), ("beta", "span")]
    assert con.execute("SELECT count(*) FROM calls").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM traces").fetchall() == [(2,)]


@pytest.mark.parametrize("hot", [True, False])
def test_a_late_span_re_settles_a_cached_trace_from_memory_or_from_its_spool_range(
    tmp_path: Path, monkeypatch: Any, hot: bool
) -> None:
    """The cache remembers a settled trace's sequence range; only the newest traces keep their spans in memory
    (HOT_TRACES). Either way the late span gives the same ledger as settling everything at once, and a trace
    that is not hot is read back by its range only."""
    monkeypatch.setattr(_settler, "HOT_TRACES", 1_000 if hot else 0)
    expected = calls(reference(tmp_path / "ref.duckdb"))
    asked: list[tuple[Any, ...]] = []

    class Recording(ListSource):
        def read_traces(self, trace_ids: Any, seq_from: int | None = None,
                        seq_to: int | None = None) -> list[StagedSpan]:
            asked.append((tuple(trace_ids), seq_from, seq_to))
            return super().read_traces(trace_ids, seq_from, seq_to)

    src = Recording()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=100, settle_workers=0)
    s = Settler(cfg, src, Ledger(con), Pricer(PricingConfig()))
    feed(s, src, [x for x in ALL if x is not REQUEST[0]])
    s.flush()
    feed(s, src, [REQUEST[0]])  # the request's root, late: the job linked to it re-settles too
    s.flush()
    assert calls(con) == expected
    tid = REQUEST[0].trace_id
    cold = [a for a in asked if tid in a[0]]
    assert cold == ([] if hot else [((tid,), 2, 3)])


def test_job_before_its_request_is_re_settled_when_the_request_arrives(tmp_path: Path) -> None:
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, JOB)
    s.flush()
    assert calls(con)[0][5] == "link_unresolved"
    feed(s, src, REQUEST)
    s.flush()
    job = [r for r in calls(con) if r[0].startswith("b")]
    assert job[0][3:5] == ("acme", "link")


def test_restart_mid_trace_resumes_from_the_spool(tmp_path: Path) -> None:
    src = ListSource()
    path = tmp_path / "l.duckdb"
    con, s = make(path, src)
    feed(s, src, REQUEST[:2])
    s.flush()  # settled with the first two spans, watermark advanced
    src.spans.extend(REQUEST[2:])  # committed to the spool, then the process died before settling it
    con.close()
    con, s = make(path, src)
    assert s.recover() == 1
    s.flush()
    assert len(calls(con)) == 2


def test_a_backlog_is_settled_in_bounded_transactions_with_the_same_result(tmp_path: Path) -> None:
    """processors.max_batch_spans: a backlog (the settler fell behind) is written in several transactions of at
    most that many spans, and the ledger is the one a single transaction gives: a job whose request lands in a
    later batch is re-settled, the call reported twice is still billed once."""
    ref_con = reference(tmp_path / "ref.duckdb")

    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    writes: list[list[int]] = []  # span count of each trace, per transaction
    write = ledger.write

    def counting(settlement: Any) -> None:
        writes.append([r.summary.span_count for r in settlement.results])
        write(settlement)

    ledger.write = counting  # type: ignore[method-assign]
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=2, settle_workers=0, max_batch_spans=2)
    s = Settler(cfg, src2, ledger, Pricer(PricingConfig()))
    feed(s, src2, JOB + TWICE + REQUEST)  # the job's request arrives last: it is settled in a later batch
    s.flush()
    assert calls(con) == calls(ref_con)
    # JOB (2 spans), the two TWICE traces (1 + 1), REQUEST (3: alone, a trace is never split), then the job again
    assert writes[:3] == [[2], [1, 1], [3]]
    assert len(writes) == 4 and writes[3] == [2]


def test_job_settled_before_a_restart_is_re_settled_when_its_request_arrives_after_it(tmp_path: Path) -> None:
    """The ledger skips the dependents lookup while no settled trace waits for a link: after a restart it must
    still know that one does (the job settled before it)."""
    src = ListSource()
    path = tmp_path / "l.duckdb"
    con, s = make(path, src)
    feed(s, src, JOB)
    s.flush()
    assert calls(con)[0][5] == "link_unresolved"
    con.close()
    con, s = make(path, src)
    s.recover()
    feed(s, src, REQUEST)
    s.flush()
    job = [r for r in calls(con) if r[0].startswith("b")]
    assert job[0][3:5] == ("acme", "link")


def test_a_call_reported_again_in_a_later_settlement_is_billed_once(tmp_path: Path) -> None:
    """The lookup of a call's other reports is bounded to calls that started within a day of it (ledger
    DEDUP_WINDOW); span times carry nanoseconds."""
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    t0 = 1_767_225_600_123_456_789
    feed(s, src, [span("g", "1", kind=3, attrs=chat(10, 1, response_id="r7", **{"tenant.id": "acme"}), start=t0)])
    s.flush()
    feed(s, src, [span("h", "1", kind=3, start=t0 + 3_000_001,
                       attrs=chat(10, 1, response_id="r7", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls ORDER BY trace_id").fetchall()
    assert [(t[0], d) for t, d in rows] == [("g", True), ("h", False)]  # the wire span wins
    assert len(calls(con)) == 1


def test_a_call_reported_again_after_a_restart_is_billed_once(tmp_path: Path) -> None:
    """After a restart the ledger's filter of dedup keys is rebuilt from the ledger: a second report of a call
    settled before the restart still finds the first."""
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, [span("g", "1", kind=3, attrs=chat(10, 1, response_id="r7", **{"tenant.id": "acme"}), seq=1)])
    s.flush()
    con.close()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, [span("h", "1", kind=3, seq=2,
                       attrs=chat(10, 1, response_id="r7", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls ORDER BY trace_id").fetchall()
    assert rows == [("g".ljust(32, "0"), True), ("h".ljust(32, "0"), False)]


def test_reports_older_than_the_filter_covers_are_matched_exactly(tmp_path: Path) -> None:
    """A restart builds the filter from the calls of the last DEDUP_WINDOW only; a report of an older call
    (a replayed backlog) is then matched by looking in the ledger itself."""
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    t0 = 1_767_225_600_000_000_000
    day = 86_400 * 10**9
    feed(s, src, [span("g", "1", kind=3, start=t0, seq=1,
                       attrs=chat(10, 1, response_id="old", **{"tenant.id": "acme"})),
                  span("k", "1", kind=3, start=t0 + day, seq=2,
                       attrs=chat(10, 1, response_id="new", **{"tenant.id": "acme"}))])
    s.flush()
    con.close()
    con, s = make(tmp_path / "l.duckdb", src)
    feed(s, src, [span("h", "1", kind=3, start=t0 + 5_000, seq=3,
                       attrs=chat(10, 1, response_id="old", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls WHERE response_id = 'old' "
                       "ORDER BY trace_id").fetchall()
    assert [(t[0], d) for t, d in rows] == [("g", True), ("h", False)]


def test_a_full_filter_generation_passes_to_the_next_and_earlier_reports_are_still_found(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import ledger._ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "FILTER_KEYS", 4096)  # four generations of 1 024 keys
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    many = [span(f"m{i:04d}", "1", kind=3, seq=i + 1, attrs=chat(1, 1, response_id=f"r{i}", **{"tenant.id": "acme"}))
            for i in range(1100)]
    feed(s, src, many)
    s.flush()
    ledger = s._sink
    assert isinstance(ledger, Ledger) and ledger._seen.count == 1100
    feed(s, src, [span("z", "1", kind=3, seq=2000,
                       attrs=chat(1, 1, response_id="r5", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls WHERE response_id = 'r5' ORDER BY trace_id").fetchall()
    assert [(t[:5], d) for t, d in rows] == [("m0005", True), ("z0000", False)]
    # A second generation took the new key; the filter still covers every call (no fallback to a full scan).
    assert ledger._seen.generations == 2 and ledger._seen.count == 1101 and ledger._seen.covers_from_ns < 0


def test_traffic_beyond_what_the_filter_holds_in_an_hour_shrinks_its_window_instead_of_scanning_the_ledger(
    tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Once more calls arrive in DEDUP_WINDOW than the filter of dedup keys holds, a fresh settlement still asks the
    filter (its calls started within what it covers) instead of looking every key up in an hour of the ledger;
    the window it answers for is what it holds, reported (tenantledger_dedup_window_seconds) and logged once. A
    report of a call older than that is still looked up in the ledger."""
    import ledger._ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "FILTER_KEYS", 4096)  # four generations of 1 024 keys
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    ledger = s._sink
    assert isinstance(ledger, Ledger) and ledger.dedup_window_s == 3600
    t0 = 1_767_225_600_000_000_000
    second = 10**9
    # 5 000 calls half a second apart, settled in batches of 500 as they come: 2 500 s of calls, more than the
    # filter holds (3 072-4 096 keys: 1 536-2 048 s).
    for b in range(10):
        feed(s, src, [span(f"m{i:04d}", "1", kind=3, seq=i + 1, start=t0 + i * second // 2,
                           attrs=chat(1, 1, response_id=f"r{i}", **{"tenant.id": "acme"}))
                      for i in range(b * 500, (b + 1) * 500)])
        s.flush()
    assert ledger._seen.covers_from_ns > t0  # the oldest generations were emptied
    assert ledger.exact_lookups == 0
    assert 1536 <= ledger.dedup_window_s < 2048
    assert sum("filter of recent dedup keys holds only the last" in r.getMessage() for r in caplog.records) == 1
    # A second report of a recent call: found through the filter, not by a lookup in the ledger.
    feed(s, src, [span("z", "1", kind=3, seq=6000, start=t0 + 4990 * second // 2,
                       attrs=chat(1, 1, response_id="r4990", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls WHERE response_id = 'r4990' "
                       "ORDER BY trace_id").fetchall()
    assert [(t[:5], d) for t, d in rows] == [("m4990", True), ("z0000", False)]
    assert ledger.exact_lookups == 0
    # A report of a call older than the filter covers (a replayed backlog): looked up in the ledger.
    feed(s, src, [span("y", "1", kind=3, seq=6001, start=t0 + 10 * second // 2,
                       attrs=chat(1, 1, response_id="r10", **{"tenant.id": "acme", "server.address": "x"}))])
    s.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls WHERE response_id = 'r10' "
                       "ORDER BY trace_id").fetchall()
    assert [(t[:5], d) for t, d in rows] == [("m0010", True), ("y0000", False)]
    assert ledger.exact_lookups == 1


def test_at_start_the_filters_take_the_newest_keys_that_fit_and_cover_from_after_the_rest(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Memory is fixed at start (ledger.key_filter_mib): a ledger with more recent calls than the filter holds loads
    the newest and answers only from after the newest it left out; older settlements are looked up exactly."""
    import ledger._ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "FILTER_KEYS", 4096)  # room for 3 072 at start
    src = ListSource()
    con, s = make(tmp_path / "l.duckdb", src)
    t0 = 1_767_225_600_000_000_000
    many = [span(f"m{i:04d}", "1", kind=3, seq=i + 1, start=t0 + i * 1000,
                 attrs=chat(1, 1, response_id=f"r{i}", **{"tenant.id": "acme"})) for i in range(3100)]
    feed(s, src, many)
    s.flush()
    s.stop()
    again = Ledger(con)
    assert again._seen.count == 3072 and again._traces.count == 3072
    assert again._seen.covers_from_ns == t0 + 27 * 1000 + 1  # the 28 oldest calls (0-27) did not fit
    keys = [con.execute("SELECT dedup_key FROM calls WHERE response_id = ?", [f"r{i}"]).fetchall()[0][0]
            for i in (28, 3099)]
    assert again._seen.maybe(keys) == keys
    # A late report of a call older than that is still found: looked up in the ledger, not the filter.
    s2 = Settler(ProcessorsConfig(wait_duration_s=0, settle_interval_s=0.01), src, again, Pricer(PricingConfig()))
    feed(s2, src, [span("late", "1", kind=3, seq=5000, start=t0 + 3 * 1000,
                        attrs=chat(1, 1, response_id="r3", **{"tenant.id": "acme", "server.address": "x"}))])
    s2.flush()
    rows = con.execute("SELECT trace_id, is_duplicate FROM calls WHERE response_id = 'r3' ORDER BY trace_id").fetchall()
    assert [t[:5] for t, _ in rows] == ["late0", "m0003"] and sorted(d for _, d in rows) == [False, True]


@pytest.mark.parametrize("recent", [True, False], ids=["started-now", "settled-days-ago"])
def test_late_span_after_a_restart_re_settles_its_trace(tmp_path: Path, recent: bool) -> None:
    """Whether a trace was settled before is answered by the ledger's filter of the last day's traces for spans
    that started in that day (ledger.TRACE_WINDOW), and by a lookup for older ones; either way, after a restart
    (filter rebuilt from the ledger) and with the trace gone from the settled cache, its late root re-settles it."""
    start = time.time_ns() if recent else 1_767_225_600_000_000_000
    path = tmp_path / "l.duckdb"
    src = ListSource()
    con, s = make(path, src)
    feed(s, src, [span("e", "2", "1", kind=3, attrs=chat(100, 20), start=start, seq=1)])
    s.flush()
    assert calls(con)[0][5] == "parent_not_received"
    if not recent:
        con.execute("UPDATE traces SET settled_at = settled_at - INTERVAL 3 DAY")
    con.close()
    con, s = make(path, src)
    feed(s, src, [span("e", "1", kind=2, attrs={"tenant.id": "acme"}, start=start, seq=2)])
    s.flush()
    rows = calls(con)
    assert len(rows) == 1 and rows[0][3:5] == ("acme", "ancestor")
    assert con.execute("SELECT count(*) FROM traces").fetchall() == [(1,)]


def test_a_dependent_whose_re_settle_fails_is_retried(tmp_path: Path) -> None:
    """The job settled before its request is settled again once the request is; when that write fails, the
    next tick retries it (the job is not pending: only the retry list brings it back)."""
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    write, writes = ledger.write, []

    def failing_third(settlement: Any) -> None:
        writes.append(settlement)
        if len(writes) == 3:
            raise duckdb.IOException("disk full (injected)")
        write(settlement)

    ledger.write = failing_third  # type: ignore[method-assign]
    s = Settler(ProcessorsConfig(wait_duration_s=0, settle_workers=0), src, ledger, Pricer(PricingConfig()))
    feed(s, src, JOB)
    s.run_once(force=True)
    feed(s, src, REQUEST)
    s.run_once(force=True)  # the request; the job becomes a dependent
    with pytest.raises(duckdb.IOException):
        s.run_once(force=True)
    s.run_once(force=True)
    job = [r for r in calls(con) if r[0].startswith("b")]
    assert len(writes) == 4 and job[0][3:5] == ("acme", "link")


def test_a_backlog_beyond_the_memory_bound_stays_in_the_spool_and_is_read_back(tmp_path: Path) -> None:
    """processors.max_pending_spans_in_memory: once that many spans wait in memory, newly committed ones are left
    in the spool (only counted); the settler reads them back in order as it catches up, and the ledger is the one
    an unbounded settler gives. Spans published after the backlog was read go through memory again."""
    ref_con = reference(tmp_path / "ref.duckdb")

    src2 = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=0, settle_workers=0, max_pending_spans_in_memory=4)
    s = Settler(cfg, src2, Ledger(con), Pricer(PricingConfig()))
    feed(s, src2, REQUEST)  # 3 in memory
    feed(s, src2, JOB)  # 3 + 2 > 4: left in the spool
    feed(s, src2, TWICE)
    assert s._inbox_spans == 3 and s.pending_spans == len(ALL) and s.stats.spans_spilled == 4
    s.flush()
    assert calls(con) == calls(ref_con) and s.pending_spans == 0 and not s._spilling
    extra = span("z", "1", kind=3, attrs=chat(5, 1, **{"tenant.id": "acme"}), seq=8)
    feed(s, src2, [extra])
    assert s._inbox_spans == 1 and s.stats.spans_spilled == 4


def test_spans_read_back_wait_from_their_arrival_not_from_their_read_back(tmp_path: Path) -> None:
    """wait_duration_s holds a trace until no span of it arrived for that long. A span left in the spool (backlog)
    arrived when it was committed: once read back it is due when its own window ends, not a full window later."""
    now = [100.0]
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=5, settle_workers=0, max_pending_spans_in_memory=4)
    s = Settler(cfg, src, Ledger(con), Pricer(PricingConfig()), clock=lambda: now[0])
    feed(s, src, REQUEST)  # 3 in memory, admitted at the next tick
    feed(s, src, JOB)  # left in the spool: arrived at 100
    s.run_once()
    assert s.stats.spans_spilled == 2 and s.pending_spans == 5 and s.stats.traces_settled == 0
    now[0] = 105.5
    s.run_once()  # the request's trace is due (admitted at 100); memory is still full, so the job stays in the spool
    assert s.stats.traces_settled == 1 and s._spilling
    now[0] = 105.6
    s.run_once()  # read back now, and due at once: its window ended at 105, not at 110.6
    assert not s._spilling and s.pending_spans == 0 and s.stats.traces_settled == 2
    assert con.execute("SELECT count(*) FROM llm_calls").fetchall()[0][0] == 3


def test_while_spans_keep_arriving_due_traces_wait_for_a_full_batch_or_the_max_delay(tmp_path: Path) -> None:
    """A ledger transaction has a fixed cost, so while spans keep arriving a tick settles what is due only once it
    holds settle_batch_spans spans or its oldest trace has been due for settle_max_delay_s; a tick with no new span
    settles what is due at once. Nothing is settled twice or lost on the way."""
    now = [100.0]
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=1, settle_workers=0, settle_batch_spans=5, settle_max_delay_s=2)
    s = Settler(cfg, src, Ledger(con), Pricer(PricingConfig()), clock=lambda: now[0])
    feed(s, src, REQUEST)
    s.run_once()  # admitted at 100, due at 101
    now[0] = 102.5
    feed(s, src, JOB[:1])
    s.run_once()  # the request (3 spans < 5) has been due 1.5 s < 2 s, and a span arrived: it waits
    assert s.stats.traces_settled == 0
    now[0] = 103.2
    feed(s, src, JOB[1:])
    s.run_once()  # due for 2.2 s: settled, alone (the job's trace is not due)
    assert s.stats.traces_settled == 1 and s.pending_spans == 2
    now[0] = 104.3
    s.run_once()  # no span arrived since the last tick: the job is settled at once, below the batch size
    assert s.stats.traces_settled == 2 and s.pending_spans == 0

    feed(s, src, TWICE)
    s.run_once()  # admitted at 104.3
    now[0] = 105.4
    extra = span("z", "1", kind=3, attrs=chat(5, 1, **{"tenant.id": "acme"}), seq=8)
    feed(s, src, [extra])
    s.run_once()  # TWICE due for 0.1 s, 2 spans: waits while spans arrive
    assert s.stats.traces_settled == 2
    s.flush()
    assert s.stats.traces_settled == 5 and s.pending_spans == 0
    assert [c for c in calls(con) if c[0] != extra.trace_id] == calls(reference(tmp_path / "ref.duckdb"))


def test_a_full_batch_is_settled_without_waiting(tmp_path: Path) -> None:
    """settle_batch_spans due spans are settled at the tick that finds them, even while spans keep arriving."""
    now = [100.0]
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=1, settle_workers=0, settle_batch_spans=5, settle_max_delay_s=60)
    s = Settler(cfg, src, Ledger(con), Pricer(PricingConfig()), clock=lambda: now[0])
    feed(s, src, [*REQUEST, *JOB])
    s.run_once()
    now[0] = 101.0
    feed(s, src, TWICE)
    s.run_once()  # 5 spans due: a full batch
    assert s.stats.traces_settled == 2 and s.pending_spans == len(TWICE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, len(ALL)), st.lists(st.integers(1, len(ALL)), max_size=4), st.lists(st.booleans(), max_size=6))
def test_any_memory_bound_and_arrival_split_gives_the_same_ledger(
    tmp_path_factory: Any, bound: int, cuts: list[int], ticks: list[bool]
) -> None:
    """Spans published in sequence order (as the spool does) in any split, with settle ticks between (forced or
    not) and any memory bound: the same ledger as settling everything at once."""
    ref_con = reference(tmp_path_factory.mktemp("ref") / "l.duckdb")

    src2 = ListSource()
    con = duckdb.connect(str(tmp_path_factory.mktemp("x") / "l.duckdb"))
    cfg = ProcessorsConfig(wait_duration_s=0, settle_workers=0, settled_cache_traces=2,
                           max_pending_spans_in_memory=bound)
    s = Settler(cfg, src2, Ledger(con), Pricer(PricingConfig()))
    start = 0
    for i, b in enumerate([*sorted(set(cuts)), len(ALL)]):
        if b > start:
            feed(s, src2, ALL[start:b])
            if i < len(ticks):
                s.run_once(force=ticks[i])
            start = b
    s.flush()
    assert calls(con) == calls(ref_con)
    assert con.execute("SELECT arg_max(value, write_no) FROM settled_watermarks").fetchall() == [(len(ALL),)]


def test_in_process_the_next_batch_is_computed_while_a_batch_is_written(tmp_path: Path) -> None:
    """Without settle workers too, the ledger write runs on the writer thread: while the first batch (REQUEST) is
    written, the settler prepares and computes the second (JOB, whose link into REQUEST resolves from REQUEST's
    results, not yet in the ledger). The ledger is the one a single transaction gives, the watermark covers every
    span, and nothing is left pending."""
    ref_con = reference(tmp_path / "ref.duckdb")
    src = ListSource()
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    write, known, seen = ledger.write, ledger.known_traces, []
    second_prepared = threading.Event()

    def first_waits(settlement: Any) -> None:
        if not seen:
            seen.append(second_prepared.wait(10))  # a write the settler waited for would wait here in vain
        write(settlement)

    def count(trace_ids: Any, started_ns: Any = None) -> Any:
        if JOB[0].trace_id in trace_ids:  # the second batch (JOB) is being prepared
            second_prepared.set()
        return known(trace_ids, started_ns)

    ledger.write = first_waits  # type: ignore[method-assign]
    ledger.known_traces = count  # type: ignore[method-assign]
    cfg = ProcessorsConfig(wait_duration_s=0, settled_cache_traces=0, max_batch_spans=2, settle_workers=0)
    settler = Settler(cfg, src, ledger, Pricer(PricingConfig()))
    feed(settler, src, ALL)
    settler.flush()
    assert seen == [True]
    assert calls(con) == calls(ref_con)
    assert ledger.watermark() == ALL[-1].seq and settler.pending_spans == 0



def test_the_default_memory_bound_makes_room_for_the_settle_window_at_the_arrival_rate(tmp_path: Path) -> None:
    """processors.max_pending_spans_in_memory unset: spans waiting out the settle window are the pipeline's contents,
    not a backlog. The bound is its base plus that window's spans at the rate spans arrive and are settled (at most
    MAX_WINDOW_SPANS more), so a stall's backlog as large as the base still fits in memory on top of them instead of
    being spilled and read back (a bound fixed at the base spills it); the bound returns to its base once the load
    stops. A configured bound does not move."""
    now = [100.0]
    cfg = ProcessorsConfig(wait_duration_s=2, settle_max_delay_s=0, settle_batch_spans=1, settle_interval_s=0.5,
                           settle_workers=0)
    base = _settler.MIN_IN_MEMORY_SPANS
    settlers = []
    for name, c in (("default", cfg), ("fixed", cfg.model_copy(update={"max_pending_spans_in_memory": base}))):
        src = ListSource()
        s = Settler(c, src, Ledger(duckdb.connect(str(tmp_path / f"{name}.duckdb"))), Pricer(PricingConfig()),
                    clock=lambda: now[0])
        settlers.append((s, src))
    assert all(s.in_memory_bound == base for s, _ in settlers)
    for tick in range(40):  # 500 spans every 0.5 s (1 000 a second) for 20 s, each tick's a trace, due 2 s later
        batch = [span(f"t{tick:03d}", f"{i:016x}", seq=tick * 500 + i + 1) for i in range(500)]
        for s, src in settlers:
            feed(s, src, batch)
            s.run_once()
        now[0] += 0.5
    (s, src), (fixed, fixed_src) = settlers
    window_s = 2 + 0 + 2 * 0.5
    assert abs(s.in_memory_bound - (base + 1_000 * window_s)) < 0.02 * 1_000 * window_s
    assert s.pending_spans == fixed.pending_spans == 2_000  # four ticks' traces in their window
    stall = [span("stall", f"{i:016x}", seq=20_000 + i + 1) for i in range(base)]
    for x, x_src in settlers:
        feed(x, x_src, stall)
    assert s.stats.spans_spilled == 0 and s.pending_spans == 2_000 + base
    assert fixed.stats.spans_spilled == base and fixed.pending_spans == 2_000 + base  # the same, part in the spool
    for _ in range(40):  # the load stops: everything settles, and the bound returns to its base
        for x, _ in settlers:
            x.run_once()
        now[0] += 0.5
    assert s.pending_spans == 0 and s.stats.spans_spilled == 0 and s.in_memory_bound == base
    assert fixed.pending_spans == 0 and fixed.in_memory_bound == base


def test_spans_arriving_during_a_spill_wait_in_memory_and_only_the_backlog_is_read_back(tmp_path: Path) -> None:
    """processors.max_pending_spans_in_memory unset: while a backlog waits in the spool, spans that keep arriving are
    held in the room the bound keeps for them (reading them back would cost each ~10 us more), and the read-back takes
    the rest. The backlog is read back once, in order, as memory allows; the ledger's watermark never passes a span
    still in the spool; everything is settled in the end. A configured bound has no window's room: there, spans
    arriving during a spill are left in the spool too."""
    now = [100.0]
    cfg = ProcessorsConfig(wait_duration_s=2, settle_max_delay_s=0, settle_batch_spans=1, settle_interval_s=0.5,
                           settle_workers=0)
    base = _settler.MIN_IN_MEMORY_SPANS
    runs = []
    for name, c in (("default", cfg), ("fixed", cfg.model_copy(update={"max_pending_spans_in_memory": base + 3_000}))):
        src = ListSource()
        reads: list[int] = []
        read_after = src.read_after

        def counted(seq: int, limit: int = 100_000, read_after: Any = read_after, reads: list[int] = reads) -> Any:
            got = read_after(seq, limit)
            reads.extend(s.seq for s in got)
            return got

        src.read_after = counted  # type: ignore[method-assign]
        ledger = Ledger(duckdb.connect(str(tmp_path / f"{name}.duckdb")))
        runs.append((Settler(c, src, ledger, Pricer(PricingConfig()), clock=lambda: now[0]), src, ledger, reads))
    seq = 0

    def batch(tid: str, n: int) -> list[StagedSpan]:
        nonlocal seq
        seq += n
        return [span(tid, f"{i:016x}", seq=seq - n + i + 1) for i in range(n)]

    def tick(spans: list[StagedSpan]) -> None:
        for s, src, ledger, _ in runs:
            feed(s, src, spans)
            s.run_once()
            if s._spilled:  # the oldest span still in the spool is above the watermark
                assert ledger.watermark() < s._spilled[0][0]
        now[0] += 0.5

    for t in range(40):  # 500 spans every 0.5 s for 20 s, each tick's a trace
        tick(batch(f"a{t:03d}", 500))
    stall = batch("stall", base + 2_000)  # more than the bound has room for: left in the spool
    for t in range(40):  # the load goes on while the backlog is read back and settled
        tick(stall if t == 0 else batch(f"b{t:03d}", 500))
    (default, _, default_ledger, default_reads), (fixed, _, _, fixed_reads) = runs
    assert default.stats.spans_spilled == len(stall)
    assert sorted(default_reads) == [s.seq for s in stall]  # each backlog span read back once, nothing else
    assert fixed.stats.spans_spilled > len(stall) and len(fixed_reads) == fixed.stats.spans_spilled
    for _ in range(20):
        tick([])
    for s, _, ledger, _ in runs:
        assert s.pending_spans == 0 and not s._spilled and s._backlog_spans == 0
        assert ledger.watermark() == seq
        assert ledger._con.execute("SELECT sum(span_count) FROM traces").fetchall()[0][0] == seq

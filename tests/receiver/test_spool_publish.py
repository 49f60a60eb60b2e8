"""The spool publishes exactly what it committed: spans handed to listeners equal the spans read back from disk."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import pytest

from processors._dialects import EXTRA_KEYS
from processors.config import IdentityConfig
from receiver import AttributeFilter, Spool, StagedSpan, StorageUnavailable, extract
from tests.conftest import fixture_names, fixture_to_protobuf, load_fixture


@pytest.mark.parametrize("baggage", [None, "tenant.id=acme"])
def test_published_spans_equal_the_committed_rows(baggage: str | None) -> None:
    con = duckdb.connect(":memory:")
    spool = Spool(con)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    for name in fixture_names():
        doc = load_fixture(name)
        # The fixtures carry no span links: give one span a link (a job linked to the request that enqueued it).
        span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        span["links"] = [
            {"traceId": "ab" * 16, "spanId": "cd" * 8,
             "attributes": [{"key": "tenant.id", "value": {"stringValue": "t1"}}]},
            {"traceId": "ab", "spanId": "cd" * 8},  # unusable: ignored
        ]
        spool.append(extract(fixture_to_protobuf(doc), filt), baggage)
    read_back = spool.read_after(0, 1_000_000)
    assert len(read_back) > 100
    assert any(s.links for s in read_back) and any(s.events for s in read_back)
    assert published == read_back


def _requests(filt: AttributeFilter) -> list[tuple[str, object]]:
    return [(name, extract(fixture_to_protobuf(load_fixture(name)), filt)) for name in fixture_names()]


def test_concurrent_appends_are_committed_once_each_in_sequence_order(tmp_path: Any) -> None:
    """Group commit: whichever thread commits takes every queued request; each request is still committed exactly
    once, sequence numbers are contiguous, and listeners see them in order."""
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    spool = Spool(con)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS))
    per_thread = 12
    barrier = threading.Barrier(8)

    def work(k: int) -> int:
        barrier.wait()
        return sum(spool.append(reqs[(k + i) % len(reqs)][1], f"tenant.id=t{k}") for i in range(per_thread))

    with ThreadPoolExecutor(8) as pool:
        acked = sum(pool.map(work, range(8)))
    rows = con.execute("SELECT seq, export_baggage FROM staging_spans ORDER BY seq").fetchall()
    assert acked == len(rows) == len(published) and acked > 8 * per_thread
    assert [r[0] for r in rows] == list(range(1, acked + 1))
    assert [s.seq for s in published] == list(range(1, acked + 1))
    assert spool.read_after(0, 1_000_000) == published
    for k in range(8):  # every request's spans kept their own baggage
        assert sum(1 for r in rows if r[1] == f"tenant.id=t{k}") == sum(
            len(reqs[(k + i) % len(reqs)][1]) for i in range(per_thread))


def test_a_failed_group_commit_refuses_every_request_of_the_group_and_publishes_nothing(tmp_path: Any) -> None:
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    spool = Spool(con)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    con.cursor().execute("DROP TABLE staging_spans")  # every commit now fails
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            spool.append(reqs[k % len(reqs)][1])
        except StorageUnavailable as e:
            errors.append(e)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(16)))
    assert len(errors) == 16 and not published
    assert all("could not commit spans" in str(e) for e in errors)
    assert spool.last_seq == 0


def test_read_after_pages_through_the_spool_in_order_and_skips_a_gap(tmp_path: Any) -> None:
    """Recovery and the spill path page with read_after(last seq read, limit): every span comes back once, in
    order, each page at most ``limit`` long, and a run of missing numbers does not end the paging early."""
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    spool = Spool(con)
    for _, ex in _requests(AttributeFilter(IdentityConfig().all_keys())):
        spool.append(ex)  # type: ignore[arg-type]
    total = spool.last_seq
    assert total > 100
    con.cursor().execute("DELETE FROM staging_spans WHERE seq BETWEEN 20 AND 60")  # a gap longer than a page
    seen: list[int] = []
    seq = 0
    while page := spool.read_after(seq, 7):
        assert len(page) <= 7
        seen += [s.seq for s in page]
        seq = page[-1].seq
    assert seen == [n for n in range(1, total + 1) if not 20 <= n <= 60]
    assert spool.read_after(total, 7) == []


def test_read_traces_within_a_sequence_range_returns_only_those_spans(tmp_path: Any) -> None:
    """A late span re-settles its trace from the sequence numbers the trace's spans had (the settler remembers
    them instead of the spans): spans of the trace outside the range are left out, other traces never come."""
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    spool = Spool(con)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for _, ex in reqs + reqs:  # every trace twice: once early, once late
        spool.append(ex)  # type: ignore[arg-type]
    all_spans = spool.read_after(0, 1_000_000)
    tid = all_spans[0].trace_id
    of_trace = [s.seq for s in all_spans if s.trace_id == tid]
    assert len(of_trace) >= 2
    lo = of_trace[0]
    hi = max(s for s in of_trace if s < spool.last_seq // 2 + 1)  # the first copy only
    got = spool.read_traces([tid], lo, hi)
    assert [s.seq for s in got] == [s for s in of_trace if lo <= s <= hi]
    assert [s.seq for s in spool.read_traces([tid])] == of_trace

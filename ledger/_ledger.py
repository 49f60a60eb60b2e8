"""The ledger writer: commits each settlement (records, trace summaries, link edges, watermark) in one DuckDB
transaction, replacing a re-settled trace's earlier rows so that a correction is never a second charge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger._arrow import registered
from ledger._file import Cursors, LedgerFile, guard
from ledger._schema import CALLS_DDL
from ledger._seen import TimedFilter
from ledger._totals import BY_DAY, BY_MODEL, SpendTotals, Totals, grouped_sql
from ledger._views import create_views
from processors import LinkedContext, Settlement

_SUPPORT_DDL = (
    """
    CREATE TABLE IF NOT EXISTS traces (
        trace_id VARCHAR NOT NULL,
        request_id VARCHAR NOT NULL,
        tenant_id VARCHAR,
        user_id VARCHAR,
        unresolved_links BOOLEAN NOT NULL,
        span_count INTEGER NOT NULL,
        settled_at TIMESTAMP NOT NULL,
        first_seq BIGINT,
        last_seq BIGINT
    )
    """,
    # Ledger files written before the spool numbers were kept here (NULL: the spool is read without a range).
    "ALTER TABLE traces ADD COLUMN IF NOT EXISTS first_seq BIGINT",
    "ALTER TABLE traces ADD COLUMN IF NOT EXISTS last_seq BIGINT",
    "CREATE TABLE IF NOT EXISTS trace_links (trace_id VARCHAR NOT NULL, linked_trace_id VARCHAR NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    # The settled watermark, one row appended by each write (the newest write_no holds it); see WATERMARK_KEEP.
    "CREATE TABLE IF NOT EXISTS settled_watermarks (write_no BIGINT NOT NULL, value BIGINT NOT NULL)",
)

# The watermark is appended by each write, not updated in place: a transaction that UPDATEs any row does not
# checkpoint automatically while another connection has a transaction open (DuckDB 1.5; a settler lookup, a query,
# /metrics), so the rows appended since the last checkpoint piled up in DuckDB's memory (up to 164 MiB where
# appends alone stayed under 30: bench/README.md, 2026-12-02 07:45). Inserts and deletes do not hold it back; the
# is_duplicate UPDATE runs only when a flag changes (rare), and then the next write's commit checkpoints.
# Every this many writes, one of them deletes the rows before its own.
WATERMARK_KEEP = 1_000


# The other reports of a call are looked for among the calls that started within an hour of it: two spans reporting
# one provider response (same gen_ai.response.id) describe the same request, seconds apart (an hour also covers
# clock skew between two reporting hosts). Rows are appended in arrival order, so DuckDB's per-row-group min/max
# of start_time skips the rest of the table when that lookup runs (rarely: see _seen_keys).
DEDUP_WINDOW = dt.timedelta(hours=1)
# The filter of dedup keys keeps two windows of calls, so that it answers for a settlement whose calls started up to
# one window before the newest call (a long trace, or one settled late); older ones are looked up in the ledger.
SEEN_KEYS_KEEP = 2 * DEDUP_WINDOW
DEDUP_WINDOW_SQL = " AND start_time BETWEEN ? AND ?"
# Keys each of the two filters below holds (dedup keys, settled traces): 4 bytes a key, allocated at start
# (ledger.key_filter_mib sets it in serve).
FILTER_KEYS = 1 << 23  # 32 MiB a filter

# Which traces were settled before: a filter of the traces settled in the last day (wall clock; a re-settle renews a
# trace's settled_at) answers for a trace whose spans all started after that day began; a trace with an older span
# is looked up in the ledger. Without it, the lookup scanned every settled trace id on each settle tick (~30 ns a
# trace: 15 ms at 500 k traces, which is how the 10-minute benchmark fell behind). Building it at start reads the
# day's newest trace ids that fit (~2 s per million); after that it ages out a day's generations itself, and under
# more traffic than it holds in a day it covers a shorter time (older traces are looked up). Known limit: a trace
# that receives no span for over a day, then new spans that started within the last day, may be settled as a new
# trace instead of replacing its earlier rows (the filter no longer holds it, and the new spans are recent enough
# that the ledger is not asked).
TRACE_WINDOW = dt.timedelta(days=1)


# Re-attaching waits this long for the file's users to leave, and when they did not, is tried again this much later.
REATTACH_WAIT_S = 1.0
REATTACH_RETRY_S = 30.0

_EPOCH = dt.datetime(1970, 1, 1)

log = logging.getLogger("tenantledger.ledger")


def _ns(t: dt.datetime | dt.timedelta) -> int:
    """A time (ns since the epoch) or a duration, in ns."""
    return (t - _EPOCH if isinstance(t, dt.datetime) else t) // dt.timedelta(microseconds=1) * 1000


def _window(calls: pa.Table) -> tuple[list[dt.datetime], int, int]:
    """The start_time bounds within which earlier reports of ``calls`` are looked for, and the oldest and newest
    start (ns)."""
    if calls.num_rows == 0:
        return [_EPOCH, _EPOCH], 0, 0
    span = pc.min_max(calls.column("start_time").cast(pa.int64()))  # ns since the epoch (as_py refuses ns)
    lo_ns, hi_ns = span["min"].as_py(), span["max"].as_py()
    lo, hi = (_EPOCH + dt.timedelta(microseconds=ns // 1000) for ns in (lo_ns, hi_ns))
    return [lo - DEDUP_WINDOW, hi + DEDUP_WINDOW], lo_ns, hi_ns


def _ranked(calls: pa.Table) -> pa.Table:
    """``calls`` with ``is_duplicate`` set among its own rows sharing a dedup_key: all but the best-ranked (lowest
    dedup_rank, then trace_id, span_id, as the ledger's query below). In Arrow: the same window function in the
    INSERT cost ~11 ms per 900-call settlement, duplicates or not."""
    order = pc.sort_indices(calls, sort_keys=[("dedup_key", "ascending"), ("dedup_rank", "ascending"),
                                              ("trace_id", "ascending"), ("span_id", "ascending")])
    key = pc.take(calls.column("dedup_key"), order).combine_chunks()
    # In sorted order a row is a duplicate when its key equals the previous row's (nulls sort last, never equal).
    same = pc.fill_null(pc.equal(key.slice(1), key.slice(0, len(key) - 1)), False)
    dup_sorted = pa.concat_arrays([pa.array([False]), same])
    return calls.append_column("is_duplicate", pc.take(dup_sorted, pc.sort_indices(order)))


class Ledger:
    """Threading: ``write`` is called from one thread at a time (the settler's ledger writer); the read helpers
    (``watermark``, ``known_traces``, ``trace_contexts``, ``dependents``) may be called from other threads while a
    write runs: they read through their own cursor, so they see what the last committed write left and wait only
    for each other, not for a write's transaction. Query APIs open their own cursors (see ``ledger.query``)."""

    def __init__(self, con: Cursors, *, outbox: bool = False, filter_keys: int | None = None,
                 reattach_after_calls: int = 0) -> None:
        """``filter_keys``: keys held by each of the in-memory filters (dedup keys, settled traces), 4 bytes a
        key, allocated here; FILTER_KEYS if None. ``reattach_after_calls``: with a LedgerFile, re-attach it (see
        LedgerFile.reattach) on the writing thread, between writes, once this many calls were written since it
        was attached; 0: never."""
        self._filter_keys = FILTER_KEYS if filter_keys is None else filter_keys
        self._src = con
        self._file = con if isinstance(con, LedgerFile) else None
        self._reattach_after = reattach_after_calls
        self._written_since_attach = 0
        self._reattach_not_before = 0.0
        self._con = con.cursor()
        self._lock = threading.Lock()  # the write cursor: one transaction at a time
        self._reader = con.cursor()
        self._read_lock = threading.Lock()  # the read cursor
        # The filters are read by the read helpers and updated by write, each for a few milliseconds at most.
        self._filters_lock = threading.Lock()
        self._outbox = outbox
        # Totals per (tenant, provider, model) for /metrics and per (tenant, day) for budgets: each read from the
        # ledger once, on first use, then kept by ``write`` (None until then: unused ones cost nothing).
        self._by_model: SpendTotals | None = None
        self._by_day: SpendTotals | None = None
        # Fresh settlements whose earlier reports were looked up in the ledger, not the filter (the slow path).
        self.exact_lookups = 0
        self._window_warned = False
        self._by_day_from = dt.date.max  # the first day whose totals are complete in _by_day
        self._day_lock = threading.Lock()  # daily_spend: one caller at a time (it drops the days before its own)
        self._con.execute(CALLS_DDL)
        for ddl in _SUPPORT_DDL:
            self._con.execute(ddl)
        if outbox:
            # Traces settled but not yet published to the shared ledger (ledger._lake), written in the same
            # transaction as the rows; a newer version means the trace was re-settled after being read.
            existed = next(iter(self._con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'lake_outbox'").fetchall()), None)
            self._con.execute("CREATE SEQUENCE IF NOT EXISTS lake_outbox_version")
            self._con.execute("CREATE TABLE IF NOT EXISTS lake_outbox (trace_id VARCHAR PRIMARY KEY, "
                              "version BIGINT NOT NULL)")
            if existed is not None and existed[0] == 0:  # first start with a shared ledger: publish the past too
                self._con.execute("INSERT INTO lake_outbox SELECT trace_id, nextval('lake_outbox_version') "
                                  "FROM traces")
        # Ledger files written before settled_watermarks kept the watermark in ledger_meta (updated in place).
        self._con.execute("INSERT INTO settled_watermarks SELECT 0, coalesce((SELECT value FROM ledger_meta WHERE "
                          "key = 'settled_watermark'), 0) WHERE NOT EXISTS (SELECT 1 FROM settled_watermarks)")
        rows = self._con.execute("SELECT max(write_no) FROM settled_watermarks").fetchall()
        self._write_no = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        create_views(self._con)
        # Whether some settled trace may still wait for a linked trace: until one does, ``dependents`` has nothing
        # to find and skips its query (one per settle tick). Conservative: once set, it stays set.
        rows = self._con.execute("SELECT count(*) FROM traces WHERE unresolved_links").fetchall()
        self._maybe_unresolved = bool(rows and rows[0][0])
        self._seen = self._seen_keys()
        self._traces = self._settled_traces()

    def _settled_traces(self) -> TimedFilter:
        """A filter of the traces settled within TRACE_WINDOW (times: settled_at, wall clock); it answers for
        traces whose spans started after its ``covers_from_ns``."""
        since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - TRACE_WINDOW
        return self._filter_of("SELECT trace_id, epoch_ns(settled_at) AS t FROM traces WHERE settled_at >= ?",
                               since, TRACE_WINDOW)

    def _filter_of(self, sql: str | None, since: dt.datetime, keep: dt.timedelta) -> TimedFilter:
        """A filter of the keys ``sql`` selects with their times (ns; those of times from ``since`` on): the newest
        that fit, so that it still takes new keys; if some were left out, it covers from after the newest of
        them. Empty without ``sql``."""
        f = TimedFilter(covers_from_ns=_ns(since), keep_ns=_ns(keep), capacity=self._filter_keys)
        if sql is None:
            return f
        known = self._con.execute(f"SELECT * FROM ({sql}) ORDER BY t DESC LIMIT ?",
                                  [since, f.room + 1]).to_arrow_table()
        if known.num_rows > f.room:
            f.covers_from_ns = max(f.covers_from_ns, int(known.column(1)[f.room].as_py()) + 1)
            known = known.slice(0, f.room)
        per = f.generation_keys
        for end in range(known.num_rows, 0, -per):  # oldest first, a generation at a time
            chunk = known.slice(max(0, end - per), end - max(0, end - per))
            times = chunk.column(1)  # newest first
            f.add(chunk.column(0).to_pylist(), int(times[0].as_py()), int(times[len(times) - 1].as_py()))
        return f

    def _seen_keys(self) -> TimedFilter:
        """A filter of the dedup keys of the calls that started within SEEN_KEYS_KEEP of the latest one (times: call
        start): a fresh settlement whose window starts after its ``covers_from_ns`` looks in the ledger only for
        the keys the filter may hold. Without it, finding a call's earlier reports scanned every dedup key in the
        window on each settle (~8 us a call at 1 M calls, growing with the ledger)."""
        rows = self._con.execute("SELECT max(start_time) FROM calls").fetchall()
        latest = rows[0][0] if rows else None
        if latest is None:  # an empty ledger: every key ever added is in the filter
            return self._filter_of(None, dt.datetime.min, SEEN_KEYS_KEEP)
        return self._filter_of("SELECT dedup_key, max(epoch_ns(start_time)) AS t FROM calls "
                               "WHERE dedup_key IS NOT NULL AND start_time >= ? GROUP BY dedup_key",
                               latest - SEEN_KEYS_KEEP, SEEN_KEYS_KEEP)

    def watermark(self) -> int:
        with guard(self._src), self._read_lock:
            rows = self._reader.execute("SELECT arg_max(value, write_no) FROM settled_watermarks").fetchall()
            row = rows[0] if rows else None
        return int(row[0]) if row and row[0] is not None else 0

    def spend_totals(self) -> list[tuple[tuple[str | None, str | None, str | None], Totals]]:
        """Effective cost, input, output and cache-read tokens and calls of all billable calls in the ledger, by
        (tenant, provider, model): the first call reads them from the ledger (one scan, holding writes meanwhile);
        after it each write adds what it changed once it committed, so a later call groups only the rows written
        since the one before (ledger._totals)."""
        if self._by_model is None:
            with guard(self._src), self._lock:
                if self._by_model is None:
                    self._by_model = SpendTotals(BY_MODEL, self._con.execute(grouped_sql(BY_MODEL, "calls")).fetchall())
        return self._by_model.snapshot()

    def daily_spend(self, since: dt.date, tenant: str | None = None,
                    until: dt.date | None = None) -> dict[tuple[str, dt.date], Decimal]:
        """Effective cost of the billable calls attributed to a tenant, per (tenant, UTC day the call started), for
        the days from ``since`` on; with ``tenant``, that tenant's alone, up to ``until`` (default: 31 days on),
        looked up rather than listed. Kept as ``spend_totals`` is: the first call, or one asking for days before
        those kept, reads them from the ledger; one asking from a later day drops the days before it (a budget asks
        for its current periods, so they go when a month ends)."""
        with self._day_lock:
            if self._by_day is None or since < self._by_day_from:
                with guard(self._src), self._lock:
                    rows = self._con.execute(grouped_sql(BY_DAY, "calls", "NOT is_duplicate AND start_time >= ?"),
                                             [since]).fetchall()
                    self._by_day, self._by_day_from = SpendTotals(BY_DAY, rows), since
            if since > self._by_day_from:  # a later period: the days before it are not asked for any more
                self._by_day.drop(keep=lambda k: bool(k[1] >= since))
                self._by_day_from = since
            if tenant is not None:
                last = until or since + dt.timedelta(days=31)
                days = (since + dt.timedelta(days=i) for i in range((last - since).days + 1))
                return {(tenant, k[1]): t[0] for k, t in self._by_day.get((tenant, d) for d in days).items()}
            snap = self._by_day.snapshot()
        return {(k[0], k[1]): t[0] for k, t in snap if k[0] is not None and k[1] >= since}

    def _maybe_seen(self, keys: list[str], oldest_ns: int) -> list[str]:
        """Of ``keys`` (of calls that started from ``oldest_ns`` on), those that earlier reports in the ledger may
        carry: the filter's candidates, or all of them when the calls started before what it covers (counted in
        exact_lookups). Earlier reports that started from its covers_from_ns on carry keys it has seen. Asking that
        it cover the whole window back from the oldest call (as before 2026-12-04) sent every settlement to the
        ledger once traffic outgrew what it holds in a DEDUP_WINDOW: each settle then scanned an hour of calls, and
        one core fell from ~55 to ~120 us a span after 11 minutes at 12 600 calls/s (bench/README.md). Instead, the
        window it answers for shrinks to what it holds (dedup_window_s)."""
        with self._filters_lock:
            covered = oldest_ns >= self._seen.covers_from_ns
            maybe = self._seen.maybe(keys) if covered else keys
        if not covered:
            self.exact_lookups += 1
        return maybe

    def _replaced_since(self, replaced: frozenset[str] | None) -> dt.datetime | None:
        """A time at or before which the earlier rows of the traces ``replaced`` were settled (settled_at), or None
        (not known: statements on them scan the whole ledger). From the filter of settled traces, which keeps each
        one's settled_at; checked against the ledger (a pruned scan of `traces`): a trace the filter wrongly holds
        in a newer generation than its own (a false positive) would otherwise leave its rows behind."""
        if not replaced:
            return None
        ids = sorted(replaced)
        with self._filters_lock:
            since_ns = self._traces.added_since_ns(ids)
        if since_ns is None:
            return None
        since = _EPOCH + dt.timedelta(microseconds=since_ns // 1000)
        with registered(self._con, _replaced=pa.table({"trace_id": pa.array(ids, pa.string())})):
            rows = self._con.execute("SELECT count(*) FROM traces WHERE trace_id IN (SELECT trace_id FROM _replaced) "
                                     "AND settled_at >= ?", [since]).fetchall()
        return since if rows and rows[0][0] == len(ids) else None

    @property
    def dedup_window_s(self) -> float:
        """How far before the newest call (by start time) the filter of dedup keys finds earlier reports of a call,
        at most DEDUP_WINDOW: the whole window until traffic outgrows what the filter holds in one (ledger/_seen.py),
        then what it holds. Two reports of a call that started further apart than this are both billed."""
        full = DEDUP_WINDOW.total_seconds()
        with self._filters_lock:
            f = self._seen
            if not f.count:
                return full
            return min(full, max(0.0, (f.newest_ns - f.covers_from_ns) / 1e9))

    def memory(self) -> dict[str, int]:
        """Bytes held in this process for the ledger: DuckDB's buffer cache (``duckdb_memory()``, capped by
        ``ledger.serve_duckdb_memory_limit_mib``) and the filters of recent dedup keys and settled traces (fixed at
        start by ``filter_keys``): where a server's memory goes."""
        with guard(self._src), self._read_lock:
            rows = self._reader.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()
        with self._filters_lock:
            filters = self._seen.nbytes + self._traces.nbytes
        return {"duckdb_cache": int(rows[0][0]) if rows else 0, "filters": filters}

    def _ask(self, sql: str, ids: Sequence[str]) -> list[Any]:
        """``sql`` (which selects from ``_ask``, a table of the trace ids ``ids``) on the read cursor."""
        ask = pa.table({"trace_id": pa.array(list(ids), pa.string())})
        with guard(self._src), self._read_lock, registered(self._reader, _ask=ask):
            return self._reader.execute(sql).fetchall()

    def known_traces(
        self, trace_ids: Sequence[str], started_ns: Mapping[str, int] | None = None
    ) -> dict[str, tuple[int, int] | None]:
        """The traces of ``trace_ids`` settled before, each with the spool sequence numbers its settled spans had
        (lowest, highest; None when not recorded). ``started_ns``: when each trace's spans to settle started
        (their earliest start time); with it, a trace that started after TRACE_WINDOW began is looked up only if
        the filter of recently settled traces may hold it. Without it, every trace is looked up."""
        if started_ns is not None:
            with self._filters_lock:
                maybe = set(self._traces.maybe(trace_ids))
                horizon = self._traces.covers_from_ns
            trace_ids = [t for t in trace_ids if t in maybe or started_ns.get(t, 0) < horizon]
        if not trace_ids:
            return {}
        rows = self._ask("SELECT trace_id, first_seq, last_seq FROM traces "
                         "WHERE trace_id IN (SELECT trace_id FROM _ask)", trace_ids)
        return {r[0]: (r[1], r[2]) if r[1] is not None and r[2] is not None else None for r in rows}

    def trace_contexts(self, trace_ids: Sequence[str]) -> dict[str, LinkedContext]:
        rows = self._ask("SELECT trace_id, request_id, tenant_id, user_id FROM traces "
                         "WHERE trace_id IN (SELECT trace_id FROM _ask)", trace_ids)
        return {r[0]: LinkedContext(r[0], r[1], r[2], r[3]) for r in rows}

    def dependents(self, trace_ids: Sequence[str]) -> set[str]:
        if not self._maybe_unresolved:
            return set()
        rows = self._ask("SELECT DISTINCT l.trace_id FROM trace_links l JOIN traces t USING (trace_id) "
                         "WHERE t.unresolved_links AND l.linked_trace_id IN (SELECT trace_id FROM _ask)", trace_ids)
        return {r[0] for r in rows}

    def write(self, settlement: Settlement) -> None:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        summaries = [r.summary for r in settlement.results]
        trace_ids = [s.trace_id for s in summaries]
        if any(s.unresolved_links for s in summaries):
            self._maybe_unresolved = True  # before the commit: a failed write leaves it set, which is safe
        calls = settlement.table()
        traces = pa.table(
            {
                "trace_id": pa.array(trace_ids, pa.string()),
                "request_id": pa.array([s.request_id for s in summaries], pa.string()),
                "tenant_id": pa.array([s.tenant_id for s in summaries], pa.string()),
                "user_id": pa.array([s.user_id for s in summaries], pa.string()),
                "unresolved_links": pa.array([s.unresolved_links for s in summaries], pa.bool_()),
                "span_count": pa.array([s.span_count for s in summaries], pa.int32()),
                "settled_at": pa.array([now] * len(summaries), pa.timestamp("us")),
                "first_seq": pa.array([s.first_seq or None for s in summaries], pa.int64()),
                "last_seq": pa.array([s.last_seq or None for s in summaries], pa.int64()),
            }
        )
        links = pa.table(
            {
                "trace_id": pa.array([s.trace_id for s in summaries for _ in s.linked_traces], pa.string()),
                "linked_trace_id": pa.array([x for s in summaries for x in s.linked_traces], pa.string()),
            }
        )
        keys = pa.table({"dedup_key": pc.unique(pc.drop_null(calls.column("dedup_key")))})
        key_list: list[str] = keys.column(0).to_pylist()
        if len(key_list) < len(calls) - calls.column("dedup_key").null_count:
            calls = _ranked(calls)  # reports of one call within this settlement; against earlier ones, below
        bounds, oldest_ns, newest_ns = _window(calls)
        fresh = settlement.replaced is not None and not settlement.replaced
        con = self._con
        # Each statement costs ~1 ms of DuckDB overhead whatever its size, and a settle tick is one transaction of a
        # few hundred calls (bench/README.md): statements with nothing to do are skipped.
        tables = [("_calls", calls), ("_traces", traces)]
        if not fresh:
            tables.append(("_keys", keys))  # a fresh settlement looks up only the filter's candidates (_maybe)
        if links.num_rows:
            tables.append(("_links", links))
        with guard(self._src), self._lock, contextlib.ExitStack() as scope:
            active = [t for t in (self._by_model, self._by_day) if t is not None]
            # What this write changes in the billable totals (totals, sign, grouped rows), applied once committed.
            deltas: list[tuple[SpendTotals, int, list[tuple[Any, ...]]]] = []
            scope.enter_context(registered(con, **dict(tables)))
            con.execute("BEGIN TRANSACTION")
            try:
                if fresh:
                    # No trace of this settlement was settled before: nothing to replace (the DELETEs scan
                    # the whole ledger, so skipping them matters as it grows); the dedup keys it touches are
                    # its own.
                    maybe = self._maybe_seen(key_list, oldest_ns)
                else:
                    # A re-settle: the traces' earlier rows are replaced. Every statement on them is bounded by
                    # when they were settled (settled_at; rows are appended in that order, so DuckDB's per-row-group
                    # min/max skips the rest): unbounded, each scanned the whole ledger, and under a spill's read-back
                    # (a trace split between spans held and spans spilled settles twice) one core's ledger writes
                    # went from ~15 to ~50 us a span after 10 M calls (bench/README.md, 2026-12-04).
                    since = self._replaced_since(settlement.replaced)
                    bound, args = (" AND settled_at >= ?", [since]) if since is not None else ("", [])
                    mine = "trace_id IN (SELECT trace_id FROM _traces)" + bound
                    old = con.execute("SELECT dedup_key, start_time FROM calls "
                                      f"WHERE dedup_key IS NOT NULL AND {mine}", args).to_arrow_table()
                    scope.enter_context(registered(con, _old=old))
                    # The window covers the earlier rows' reports too (a call may no longer be reported alike).
                    started = pc.min_max(old.column("start_time"))
                    if started["min"].is_valid:
                        bounds = [min(bounds[0], started["min"].as_py() - DEDUP_WINDOW),
                                  max(bounds[1], started["max"].as_py() + DEDUP_WINDOW)]
                    # Whose flags may change: keys reported more than once (one of their rows is a duplicate: the
                    # flag's zone maps skip the row groups without one), and this settlement's new keys that may
                    # have been reported elsewhere (the filter, as for a fresh settlement). `= true`, not the bare
                    # column: DuckDB 1.5 prunes row groups by the comparison only (23 against 209 ms at 9 M rows).
                    dup = con.execute("SELECT DISTINCT dedup_key FROM calls WHERE is_duplicate = true AND dedup_key IN "
                                      "(SELECT dedup_key FROM _keys UNION SELECT dedup_key FROM _old)"
                                      + DEDUP_WINDOW_SQL, bounds).fetchall()
                    before = set(old.column("dedup_key").to_pylist())
                    new_keys = [k for k in key_list if k not in before]
                    maybe = sorted({*self._maybe_seen(new_keys, oldest_ns), *(r[0] for r in dup)})
                    replaced = "NOT is_duplicate AND " + mine
                    for t in active:  # the rows replaced are no longer billed
                        deltas.append((t, -1, con.execute(grouped_sql(t.grouping, "calls", replaced), args).fetchall()))
                    con.execute("DELETE FROM calls WHERE " + mine, args)
                    con.execute("DELETE FROM traces WHERE " + mine, args)
                    con.execute("DELETE FROM trace_links WHERE trace_id IN (SELECT trace_id FROM _traces)")
                touched = "_maybe" if maybe else ""
                if maybe:
                    scope.enter_context(registered(con, _maybe=pa.table({"dedup_key": pa.array(maybe, pa.string())})))
                con.execute("INSERT INTO calls BY NAME SELECT *, ? AS settled_at FROM _calls", [now])
                con.execute("INSERT INTO traces BY NAME SELECT * FROM _traces")
                if links.num_rows:
                    con.execute("INSERT INTO trace_links BY NAME SELECT * FROM _links")
                # The same call reported by two spans (even in two traces) is billed once: the best-ranked
                # report wins, ties broken by ids so the choice does not depend on arrival order. Only rows
                # whose flag changes are updated: the UPDATE's join scans the whole table, so it runs only
                # when there is something to change (rarely: a call reported twice).
                flips = None if not touched else con.execute(
                    f"""
                    SELECT trace_id, span_id, dup FROM (
                        SELECT trace_id, span_id, is_duplicate, row_number() OVER (
                            PARTITION BY dedup_key ORDER BY dedup_rank, trace_id, span_id) > 1 AS dup
                        FROM calls WHERE dedup_key IN (SELECT dedup_key FROM {touched}){DEDUP_WINDOW_SQL}
                    ) WHERE dup IS DISTINCT FROM is_duplicate
                    """, bounds
                ).to_arrow_table()
                if flips is not None and flips.num_rows:
                    with registered(con, _flips=flips):
                        for t in active:  # a row that becomes a duplicate is no longer billed
                            for dup, *group in con.execute(grouped_sql(
                                    t.grouping, "calls c JOIN _flips f ON c.trace_id = f.trace_id AND "
                                    "c.span_id = f.span_id", "true" + DEDUP_WINDOW_SQL, first="f.dup"),
                                    bounds).fetchall():
                                deltas.append((t, -1 if dup else 1, [tuple(group)]))
                        con.execute("UPDATE calls SET is_duplicate = f.dup FROM _flips f "
                                    "WHERE calls.trace_id = f.trace_id AND calls.span_id = f.span_id")
                if self._outbox:
                    con.execute("INSERT OR REPLACE INTO lake_outbox SELECT trace_id, "
                                "nextval('lake_outbox_version') FROM _traces")
                write_no = self._write_no + 1
                con.execute("INSERT INTO settled_watermarks VALUES (?, ?)", [write_no, settlement.watermark])
                if write_no % WATERMARK_KEEP == 0:
                    con.execute("DELETE FROM settled_watermarks WHERE write_no < ?", [write_no])
                # Before the commit: if it fails, the extra keys and traces are only false positives.
                with self._filters_lock:
                    self._seen.add(key_list, newest_ns)
                    self._traces.add(trace_ids, _ns(now))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            # Committed; still under the write lock, so in commit order.
            self._write_no = write_no
            for t, sign, rows in deltas:
                t.add(rows, sign)
            for t in active:
                t.add_calls(calls)
        self._written_since_attach += calls.num_rows
        window_s = self.dedup_window_s
        if window_s < DEDUP_WINDOW.total_seconds() and not self._window_warned:
            self._window_warned = True
            log.warning("the filter of recent dedup keys holds only the last %.0f s of calls at this traffic: two "
                        "reports of one call (same gen_ai.response.id) that started further apart are both billed; "
                        "ledger.key_filter_mib (4 bytes a key) sets how many it holds", window_s)
        elif window_s >= DEDUP_WINDOW.total_seconds():
            self._window_warned = False
        if (self._file is not None and 0 < self._reattach_after <= self._written_since_attach
                and time.monotonic() >= self._reattach_not_before):
            self._reattach()

    def _reattach(self) -> None:
        """Give back DuckDB's metadata of the row groups written since the file was attached (LedgerFile.reattach).
        After the write has committed: a failure here loses nothing (the server stops; see LedgerFile.check)."""
        assert self._file is not None
        t0 = time.perf_counter()
        try:
            # A short wait: meanwhile new readers (the settler's look-ups, queries) wait too.
            done = self._file.reattach(wait_s=REATTACH_WAIT_S)
        except duckdb.Error:
            # Not raised to the writer: its settlement committed. LedgerFile.check reports the ledger lost.
            log.exception("could not re-attach the ledger file")
            return
        if done:
            log.info("re-attached the ledger file after %d calls written (%.0f ms)", self._written_since_attach,
                     (time.perf_counter() - t0) * 1000)
            self._written_since_attach = 0
        else:  # a long query (an export) holds the file: try again later, not after every write
            self._reattach_not_before = time.monotonic() + REATTACH_RETRY_S
            log.debug("re-attaching the ledger file waits for the queries that hold it")

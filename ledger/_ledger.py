"""The ledger writer: commits each settlement (records, trace summaries, link edges, watermark) in one DuckDB
transaction, replacing a re-settled trace's earlier rows so that a correction is never a second charge.
"""

from __future__ import annotations

import datetime as dt
import operator
import threading
from collections.abc import Sequence
from decimal import Decimal

import duckdb
import pyarrow as pa

from ledger._schema import CALLS_DDL
from ledger._views import create_views
from processors import ComponentPrice, LinkedContext, Settlement, UsageRecord

_Q = Decimal("1e-12")
_MONEY = pa.decimal128(38, 12)

_SUPPORT_DDL = (
    """
    CREATE TABLE IF NOT EXISTS traces (
        trace_id VARCHAR NOT NULL,
        request_id VARCHAR NOT NULL,
        tenant_id VARCHAR,
        user_id VARCHAR,
        unresolved_links BOOLEAN NOT NULL,
        span_count INTEGER NOT NULL,
        settled_at TIMESTAMP NOT NULL
    )
    """,
    "CREATE TABLE IF NOT EXISTS trace_links (trace_id VARCHAR NOT NULL, linked_trace_id VARCHAR NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
)


def _money(d: Decimal | None) -> Decimal | None:
    return None if d is None else d.quantize(_Q)


_PLAIN = (
    "trace_id", "span_id", "request_id", "tenant_id", "tenant_source", "unattributed_reason", "tenant_conflict",
    "user_id", "feature", "environment", "workflow_id", "conversation_id", "agent_name", "service_name",
    "span_name", "provider", "operation", "request_model", "response_model", "response_id", "streamed",
    "usage_status", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "dedup_key", "dedup_rank", "batch", "service_tier", "currency", "pricing_status", "pricing_reason",
    "price_source", "priced_model",
)
# One C-level call per record instead of a getattr per field (this runs for every call settled).
_plain_fields = operator.attrgetter(*_PLAIN)
_other_fields = operator.attrgetter(
    "start_time_unix_nano", "end_time_unix_nano", "list_cost", "effective_cost", "list_rates", "effective_rates")


def _column_type(name: str) -> pa.DataType:
    if name.endswith("_cost") or name.endswith("_per_mtok"):
        return _MONEY
    if name.endswith("_tokens"):
        return pa.int64()
    if name == "dedup_rank":
        return pa.int32()
    if name in ("tenant_conflict", "streamed", "batch"):
        return pa.bool_()
    return pa.string()


def _calls_table(records: Sequence[UsageRecord], now: dt.datetime) -> pa.Table:
    arrays: dict[str, pa.Array] = {}
    if records:
        plain = list(zip(*map(_plain_fields, records), strict=True))
        other = list(zip(*map(_other_fields, records), strict=True))
    else:
        plain = [()] * len(_PLAIN)
        other = [()] * 6
    for name, values in zip(_PLAIN, plain, strict=True):
        arrays[name] = pa.array(values, _column_type(name))
    starts, ends, list_costs, eff_costs, list_rates, eff_rates = other
    arrays["start_time"] = pa.array(starts, pa.int64()).cast(pa.timestamp("ns"))
    arrays["end_time"] = pa.array(ends, pa.int64()).cast(pa.timestamp("ns"))
    arrays["list_cost"] = pa.array([_money(c) for c in list_costs], _MONEY)
    arrays["effective_cost"] = pa.array([_money(c) for c in eff_costs], _MONEY)
    # Rates are shared objects (the pricer reuses a model's rates for a minute): each distinct object is
    # quantized and converted once, and the columns are gathered from those few rows by index.
    index: dict[int, int] = {}
    distinct: list[ComponentPrice] = []

    def slot(rates: ComponentPrice) -> int:
        i = index.get(id(rates))
        if i is None:
            i = index[id(rates)] = len(distinct)
            distinct.append(rates)  # kept alive, so its id stays unique while the dict is in use
        return i

    list_idx = pa.array([slot(r) for r in list_rates], pa.int32())
    eff_idx = pa.array([slot(r) for r in eff_rates], pa.int32())
    for prefix, idx in (("list", list_idx), ("effective", eff_idx)):
        for part in ("input", "cache_read", "cache_write", "output"):
            values = pa.array([_money(getattr(r, f"{part}_per_mtok")) for r in distinct], _MONEY)
            arrays[f"{prefix}_{part}_per_mtok"] = values.take(idx)
    arrays["settled_at"] = pa.array([now] * len(records), pa.timestamp("us"))
    return pa.table(arrays)


class Ledger:
    """Threading: ``write`` is called by the settler thread only; the read helpers may be called from it too.
    Query APIs open their own cursors (see ``ledger.query``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, outbox: bool = False) -> None:
        self._con = con.cursor()
        self._lock = threading.Lock()
        self._outbox = outbox
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
        create_views(self._con)

    def watermark(self) -> int:
        with self._lock:
            rows = self._con.execute("SELECT value FROM ledger_meta WHERE key = 'settled_watermark'").fetchall()
            row = rows[0] if rows else None
        return int(row[0]) if row else 0

    def _ids(self, name: str, ids: Sequence[str]) -> None:
        self._con.register(name, pa.table({"trace_id": pa.array(list(ids), pa.string())}))

    def known_traces(self, trace_ids: Sequence[str]) -> set[str]:
        with self._lock:
            self._ids("_ask", trace_ids)
            try:
                rows = self._con.execute(
                    "SELECT trace_id FROM traces WHERE trace_id IN (SELECT trace_id FROM _ask)"
                ).fetchall()
            finally:
                self._con.unregister("_ask")
        return {r[0] for r in rows}

    def trace_contexts(self, trace_ids: Sequence[str]) -> dict[str, LinkedContext]:
        with self._lock:
            self._ids("_ask", trace_ids)
            try:
                rows = self._con.execute(
                    "SELECT trace_id, request_id, tenant_id, user_id FROM traces "
                    "WHERE trace_id IN (SELECT trace_id FROM _ask)"
                ).fetchall()
            finally:
                self._con.unregister("_ask")
        return {r[0]: LinkedContext(r[0], r[1], r[2], r[3]) for r in rows}

    def dependents(self, trace_ids: Sequence[str]) -> set[str]:
        with self._lock:
            self._ids("_ask", trace_ids)
            try:
                rows = self._con.execute(
                    "SELECT DISTINCT l.trace_id FROM trace_links l JOIN traces t USING (trace_id) "
                    "WHERE t.unresolved_links AND l.linked_trace_id IN (SELECT trace_id FROM _ask)"
                ).fetchall()
            finally:
                self._con.unregister("_ask")
        return {r[0] for r in rows}

    def write(self, settlement: Settlement) -> None:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        records = [rec for r in settlement.results for rec in r.records]
        summaries = [r.summary for r in settlement.results]
        calls = _calls_table(records, now)
        traces = pa.table(
            {
                "trace_id": pa.array([s.trace_id for s in summaries], pa.string()),
                "request_id": pa.array([s.request_id for s in summaries], pa.string()),
                "tenant_id": pa.array([s.tenant_id for s in summaries], pa.string()),
                "user_id": pa.array([s.user_id for s in summaries], pa.string()),
                "unresolved_links": pa.array([s.unresolved_links for s in summaries], pa.bool_()),
                "span_count": pa.array([s.span_count for s in summaries], pa.int32()),
                "settled_at": pa.array([now] * len(summaries), pa.timestamp("us")),
            }
        )
        links = pa.table(
            {
                "trace_id": pa.array([s.trace_id for s in summaries for _ in s.linked_traces], pa.string()),
                "linked_trace_id": pa.array([x for s in summaries for x in s.linked_traces], pa.string()),
            }
        )
        keys = pa.table({"dedup_key": pa.array(sorted({r.dedup_key for r in records if r.dedup_key}), pa.string())})
        con = self._con
        with self._lock:
            for name, tbl in (("_calls", calls), ("_traces", traces), ("_links", links), ("_keys", keys)):
                con.register(name, tbl)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute("CREATE OR REPLACE TEMP TABLE _touched AS SELECT dedup_key FROM _keys UNION "
                                "SELECT dedup_key FROM calls WHERE dedup_key IS NOT NULL AND trace_id IN "
                                "(SELECT trace_id FROM _traces)")
                    con.execute("DELETE FROM calls WHERE trace_id IN (SELECT trace_id FROM _traces)")
                    con.execute("INSERT INTO calls BY NAME SELECT * FROM _calls")
                    con.execute("DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM _traces)")
                    con.execute("INSERT INTO traces BY NAME SELECT * FROM _traces")
                    con.execute("DELETE FROM trace_links WHERE trace_id IN (SELECT trace_id FROM _traces)")
                    con.execute("INSERT INTO trace_links BY NAME SELECT * FROM _links")
                    # The same call reported by two spans (even in two traces) is billed once: the best-ranked
                    # report wins, ties broken by ids so the choice does not depend on arrival order.
                    con.execute(
                        """
                        UPDATE calls SET is_duplicate = d.dup FROM (
                            SELECT trace_id, span_id, row_number() OVER (
                                PARTITION BY dedup_key ORDER BY dedup_rank, trace_id, span_id) > 1 AS dup
                            FROM calls WHERE dedup_key IN (SELECT dedup_key FROM _touched)
                        ) d
                        WHERE calls.trace_id = d.trace_id AND calls.span_id = d.span_id
                        """
                    )
                    if self._outbox:
                        con.execute("INSERT OR REPLACE INTO lake_outbox SELECT trace_id, "
                                    "nextval('lake_outbox_version') FROM _traces")
                    con.execute(
                        "INSERT OR REPLACE INTO ledger_meta VALUES ('settled_watermark', ?)", [settlement.watermark]
                    )
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                for name in ("_calls", "_traces", "_links", "_keys"):
                    con.unregister(name)

"""The shared ledger (DuckLake: PostgreSQL catalog + Parquet): opening it offline, its tables and views, publishing
an instance's settled traces into it, and re-settling traces whose spans reached two instances (docs/adr/0002).

It never replaces the embedded ledger: each instance settles locally first; this module only copies the result.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger._arrow import registered
from ledger._errors import LedgerError, LedgerNotFound, QueryError
from ledger._file import Cursors, guard
from ledger._focus import FOCUS_VIEW_SQL
from ledger._query import QueryResult, check_read_only, harden, run_query
from ledger._schema import CALLS_DDL
from ledger._views import VIEWS
from ledger.config import SharedLedgerConfig
from processors import UsageRecord, records_table

log = logging.getLogger("tenantledger.lake")

LAKE = "lake"
# DuckDB loads extensions from PyPI wheels that pin its exact version (notes §5): `INSTALL` would download from
# the extension repository, which CI and air-gapped hosts cannot reach. postgres_scanner serves the catalog.
EXTENSIONS = (("postgres_scanner", "duckdb_extension_postgres_scanner"), ("ducklake", "duckdb_extension_ducklake"))

# Table functions a query on the lake must not call: they reach the catalog database directly (postgres_query
# runs any SQL the catalog role may run), run lake maintenance, or execute SQL given as a string.
_DENIED_PREFIXES = ("postgres_", "pg_", "ducklake_", "mysql_", "sqlite_")
_DENIED_NAMES = {"query", "query_table", "iceberg_scan", "delta_scan"}


def _calls_columns_ddl() -> str:
    body = CALLS_DDL.split("(", 1)[1].rsplit(")", 1)[0]
    # is_duplicate is not stored: the `calls` view recomputes it across all instances.
    return "\n".join(line for line in body.strip().splitlines() if "is_duplicate" not in line).strip()


_LAKE_DDL = (
    f"CREATE TABLE IF NOT EXISTS instance_calls (instance_id VARCHAR NOT NULL, published_at TIMESTAMP NOT NULL, "
    f"{_calls_columns_ddl()})",
    f"CREATE TABLE IF NOT EXISTS merged_calls (merged_by VARCHAR NOT NULL, merged_at TIMESTAMP NOT NULL, "
    f"{_calls_columns_ddl()})",
    """CREATE TABLE IF NOT EXISTS fragments (
        instance_id VARCHAR NOT NULL, trace_id VARCHAR NOT NULL, request_id VARCHAR NOT NULL, tenant_id VARCHAR,
        user_id VARCHAR, unresolved_links BOOLEAN NOT NULL, span_count INTEGER NOT NULL,
        settled_at TIMESTAMP NOT NULL, published_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS merged_traces (
        trace_id VARCHAR NOT NULL, span_count INTEGER NOT NULL, merged_by VARCHAR NOT NULL,
        merged_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS spans (
        instance_id VARCHAR NOT NULL, seq BIGINT NOT NULL, trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL,
        parent_span_id VARCHAR, name VARCHAR NOT NULL, kind TINYINT NOT NULL, start_ns BIGINT NOT NULL,
        end_ns BIGINT NOT NULL, service_name VARCHAR, scope_name VARCHAR, scope_version VARCHAR,
        attributes VARCHAR NOT NULL, resource_attributes VARCHAR NOT NULL, events VARCHAR, links VARCHAR,
        export_baggage VARCHAR, status_code TINYINT NOT NULL)""",
)

# `calls` in the lake has the embedded ledger's columns, so the contract views and the FOCUS view run unchanged.
# Per trace: the latest merge (all instances' spans settled together) replaces the instances' own rows; then one
# row per (trace_id, span_id) — the same span delivered to two instances is billed once — and one billed row per
# dedup key (provider response id) across all instances, with the embedded ledger's ranking.
CALLS_VIEW = """
CREATE OR REPLACE VIEW calls AS
WITH latest AS (
    SELECT trace_id, merged_at, merged_by FROM merged_traces
    QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY span_count DESC, merged_at DESC, merged_by) = 1
),
candidates AS (
    SELECT c.* EXCLUDE (instance_id, published_at), c.instance_id AS source FROM instance_calls c
    WHERE c.trace_id NOT IN (SELECT trace_id FROM latest)
    UNION ALL BY NAME
    SELECT m.* EXCLUDE (merged_by, merged_at), 'merged' AS source FROM merged_calls m
    JOIN latest l ON m.trace_id = l.trace_id AND m.merged_at = l.merged_at AND m.merged_by = l.merged_by
),
one_per_span AS (
    SELECT * FROM candidates
    QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY settled_at DESC, source) = 1
)
SELECT * EXCLUDE (source),
    coalesce(dedup_key IS NOT NULL AND row_number() OVER (
        PARTITION BY dedup_key ORDER BY dedup_rank, trace_id, span_id) > 1, false) AS is_duplicate
FROM one_per_span
"""


def default_instance_id(ledger_path: Path) -> str:
    digest = hashlib.sha256(str(ledger_path.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def extension_path(name: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LedgerError(
            f"the DuckDB extension {name} is not installed",
            f"pip install {module.replace('_', '-')}=={duckdb.__version__} (it ships the extension for offline LOAD)",
        )
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise LedgerError(
            f"{path} is missing: the {module} wheel does not match duckdb {duckdb.__version__}",
            f"pip install {module.replace('_', '-')}=={duckdb.__version__}",
        )
    return path


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect_lake(cfg: SharedLedgerConfig, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as ``lake`` (and selected). Raises LedgerError."""
    if cfg.catalog_dsn is None or cfg.data_path is None:
        raise LedgerError("no shared ledger configured", "set ledger.shared.catalog_dsn and data_path in --config")
    con = duckdb.connect()
    try:
        con.execute("SET autoinstall_known_extensions = false")
        for name, module in EXTENSIONS:
            con.execute(f"LOAD {_literal(str(extension_path(name, module)))}")
        opts = f"DATA_PATH {_literal(cfg.data_path)}" + (", READ_ONLY" if read_only else "")
        con.execute(f"ATTACH {_literal('ducklake:postgres:' + cfg.catalog_dsn)} AS {LAKE} ({opts})")
        con.execute(f"USE {LAKE}")
    except duckdb.Error as e:
        con.close()
        first = str(e).splitlines()[0]
        if read_only and ("does not exist" in first or "not initialized" in first.lower()):
            raise LedgerNotFound(f"no shared ledger at the catalog: {first}", "start `tenantledger serve` with "
                                 "ledger.shared configured first") from e
        raise LedgerError(f"cannot open the shared ledger: {first}",
                          "check ledger.shared.catalog_dsn (is PostgreSQL reachable?) and data_path") from e
    return con


def _retry(what: str, fn: Callable[[], None], attempts: int = 8) -> None:
    """DuckLake commits are optimistic: a concurrent writer's commit to the same table can fail ours with a
    TransactionException; the work is idempotent (replace-per-key), so it is simply redone."""
    for i in range(attempts):
        try:
            fn()
            return
        except (duckdb.TransactionException, duckdb.IOException) as e:
            if i == attempts - 1:
                raise
            log.debug("%s: conflict, retrying: %s", what, str(e).splitlines()[0])
            time.sleep(0.05 * (2**i))


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the lake's tables and (re)create its views; idempotent, safe with several instances starting."""

    def run() -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            for ddl in _LAKE_DDL:
                con.execute(ddl)
            con.execute(CALLS_VIEW)
            for name, sql in VIEWS.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
            con.execute(FOCUS_VIEW_SQL)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    _retry("lake schema", run)


def open_lake_read_only(cfg: SharedLedgerConfig) -> duckdb.DuckDBPyConnection:
    """The lake for `tenantledger sql --lake` / `export focus --lake`: attached READ_ONLY (the catalog runs
    read-only transactions), file access limited to the lake's own data directory, configuration locked."""
    con = connect_lake(cfg, read_only=True)
    assert cfg.data_path is not None
    data = cfg.data_path if cfg.data_path.endswith("/") else cfg.data_path + "/"
    con.execute(f"SET allowed_directories = [{_literal(data)}]")
    harden(con)
    return con


def _function_names(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            out.add(name.lower())
        for v in node.values():
            _function_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _function_names(v, out)


def check_lake_query(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Read-only check for the lake: SELECT/EXPLAIN only, and none of the functions that reach the catalog
    database or run SQL from a string (found in DuckDB's own parse tree, json_serialize_sql)."""
    check_read_only(sql)
    for stmt in duckdb.extract_statements(sql):
        if stmt.type == duckdb.StatementType.EXPLAIN:
            continue
        row = next(iter(con.execute("SELECT json_serialize_sql(?)", [stmt.query]).fetchall()), None)
        tree = json.loads(row[0]) if row else {"error": True}
        if tree.get("error"):
            raise QueryError("this query cannot be checked for the shared ledger; simplify it",
                             str(tree.get("error_message", "")))
        names: set[str] = set()
        _function_names(tree, names)
        bad = sorted(n for n in names if n.startswith(_DENIED_PREFIXES) or n in _DENIED_NAMES)
        if bad:
            raise QueryError(f"{', '.join(bad)} is not allowed on the shared ledger",
                             "query the ledger views (llm_calls, requests, focus, ...)")


# --- publishing -----------------------------------------------------------------------------------------------

Resettle = Callable[[list[dict[str, Any]]], Sequence[UsageRecord]]
"""Re-settle one whole trace from its staged-span rows (the spool's columns), as the settler would."""

SpanRows = Callable[[Sequence[str], "int | None", "int | None"], pa.Table]
"""The staged-span rows of these traces (the spool's columns, ``_SPAN_COLUMNS``), only those numbered
``seq_from..seq_to`` when given: where the spans of a settled trace are read from (the entry point wires the
receiver's spool here)."""

_SPAN_COLUMNS = (
    "seq, trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, service_name, scope_name, "
    "scope_version, attributes, resource_attributes, events, links, export_baggage, status_code"
)


@dataclass
class PublishStats:
    traces_published: int = 0
    traces_merged: int = 0
    publish_errors: int = 0
    last_publish_s: float = 0.0


class LakePublisher:
    """Copies settled traces from the embedded ledger to the lake, replacing this instance's earlier rows for
    each trace; re-settles traces that other instances also hold. Threading: its own thread; ``flush`` from
    the caller's thread once the thread is stopped."""

    def __init__(
        self,
        cfg: SharedLedgerConfig,
        local: Cursors,
        instance_id: str,
        resettle: Resettle,
        span_rows: SpanRows,
    ) -> None:
        self._cfg = cfg
        self._src = local
        self._local = local.cursor()
        self.instance_id = instance_id
        self._resettle = resettle
        self._span_rows = span_rows
        self._lake = connect_lake(cfg, read_only=False)
        ensure_schema(self._lake)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = PublishStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lake-publisher", daemon=True)
        self._thread.start()

    def stop(self, *, flush: bool = True) -> None:
        """Stop the loop, publish everything still waiting (unless ``flush`` is false: the outbox keeps it for the
        next start), close the lake connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if flush:
                self.flush()
        finally:
            self._lake.close()

    def flush(self) -> None:
        while self.publish_once():
            pass

    def backlog(self) -> int:
        with guard(self._src):
            row = next(iter(self._local.execute("SELECT count(*) FROM lake_outbox").fetchall()), None)
        return int(row[0]) if row else 0

    def _loop(self) -> None:
        while not self._stop.wait(self._cfg.publish_interval_s):
            try:
                while self.publish_once() and not self._stop.is_set():
                    pass
            except Exception:  # the outbox keeps the work; the next interval retries
                self.stats.publish_errors += 1
                log.exception("publishing to the shared ledger failed; retrying in %ss", self._cfg.publish_interval_s)

    def publish_once(self) -> int:
        """Publish one batch from the outbox; returns the number of traces published (0 = nothing waiting)."""
        with self._lock:
            t0 = time.monotonic()
            cur = self._local
            # One local snapshot: the outbox versions and the rows they stand for are read together, so a trace
            # re-settled meanwhile keeps a newer version and is published again. The ledger is held attached for the
            # local reads and the delete below, not for the write to the lake between them.
            with guard(self._src):
                cur.execute("BEGIN TRANSACTION")
                try:
                    outbox = cur.execute(
                        "SELECT trace_id, version FROM lake_outbox ORDER BY version LIMIT ?",
                        [self._cfg.publish_batch_traces],
                    ).fetch_arrow_table()
                    if outbox.num_rows == 0:
                        return 0
                    with registered(cur, _pub=outbox):
                        calls = cur.execute("SELECT * FROM calls WHERE trace_id IN (SELECT trace_id FROM _pub)"
                                            ).fetch_arrow_table()
                        frags = cur.execute(
                            "SELECT trace_id, request_id, tenant_id, user_id, unresolved_links, span_count, "
                            "settled_at, first_seq, last_seq FROM traces WHERE trace_id IN (SELECT trace_id FROM _pub)"
                        ).fetch_arrow_table()
                finally:
                    cur.execute("COMMIT")
            # The spans as they were settled: within the sequence numbers the ledger recorded for these traces
            # (the whole spool only for traces settled before those were recorded).
            known = frags.num_rows == outbox.num_rows and frags.column("first_seq").null_count == 0
            lo = pc.min(frags.column("first_seq")).as_py() if known else None
            hi = pc.max(frags.column("last_seq")).as_py() if known else None
            spans = self._span_rows(outbox.column("trace_id").to_pylist(), lo, hi)
            frags = frags.drop_columns(["first_seq", "last_seq"])
            ids = pa.table({"trace_id": outbox.column("trace_id")})
            self._write_instance_rows(ids, calls, frags, spans)
            merged = self._merge_split_traces(ids)
            with guard(self._src), registered(cur, _done=outbox):
                cur.execute("DELETE FROM lake_outbox WHERE EXISTS (SELECT 1 FROM _done d "
                            "WHERE d.trace_id = lake_outbox.trace_id AND d.version = lake_outbox.version)")
            self.stats.traces_published += outbox.num_rows
            self.stats.traces_merged += merged
            self.stats.last_publish_s = time.monotonic() - t0
            published: int = outbox.num_rows
            return published

    def _write_instance_rows(self, ids: pa.Table, calls: pa.Table, frags: pa.Table, spans: pa.Table) -> None:
        lake = self._lake
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        me = self.instance_id

        def run() -> None:
            with registered(lake, _ids=ids, _calls=calls, _frags=frags, _spans=spans):
                lake.execute("BEGIN TRANSACTION")
                try:
                    for table in ("instance_calls", "fragments", "spans"):
                        lake.execute(f"DELETE FROM {table} WHERE instance_id = ? AND trace_id IN "
                                     "(SELECT trace_id FROM _ids)", [me])
                    lake.execute("INSERT INTO instance_calls BY NAME SELECT * EXCLUDE (is_duplicate), "
                                 "? AS instance_id, ? AS published_at FROM _calls", [me, now])
                    lake.execute("INSERT INTO fragments BY NAME SELECT *, ? AS instance_id, ? AS published_at "
                                 "FROM _frags", [me, now])
                    lake.execute("INSERT INTO spans BY NAME SELECT *, ? AS instance_id FROM _spans", [me])
                    lake.execute("COMMIT")
                except BaseException:
                    lake.execute("ROLLBACK")
                    raise

        _retry("publish", run)

    def _merge_split_traces(self, ids: pa.Table) -> int:
        """Traces whose fragments come from more than one instance (trace affinity broke: a rebalance, or a
        retry routed elsewhere) are settled again from all instances' spans, as one trace. This runs after our
        own publish commits, so of two instances publishing halves of a trace at once, the later one to commit
        always sees both halves."""
        lake = self._lake
        merged = 0

        def run() -> None:
            nonlocal merged
            with registered(lake, _ids=ids):
                split = [r[0] for r in lake.execute(
                    "SELECT trace_id FROM fragments WHERE trace_id IN (SELECT trace_id FROM _ids) "
                    "GROUP BY trace_id HAVING count(DISTINCT instance_id) > 1").fetchall()]
            if not split:
                return
            want = pa.table({"trace_id": pa.array(split, pa.string())})
            with registered(lake, _split=want):
                lake.execute("BEGIN TRANSACTION")
                try:
                    cur = lake.execute(
                        f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id IN (SELECT trace_id FROM _split) "
                        "QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY instance_id, seq) = 1 "
                        "ORDER BY trace_id, instance_id, seq")
                    names = [d[0] for d in cur.description or ()]
                    by_trace: dict[str, list[dict[str, Any]]] = {}
                    for row in cur.fetchall():
                        d = dict(zip(names, row, strict=True))
                        by_trace.setdefault(d["trace_id"], []).append(d)
                    records: list[UsageRecord] = []
                    for rows in by_trace.values():
                        records.extend(self._resettle(rows))
                    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                    marks = pa.table({
                        "trace_id": pa.array(list(by_trace), pa.string()),
                        "span_count": pa.array([len(v) for v in by_trace.values()], pa.int32()),
                    })
                    with registered(lake, _merged=records_table(records), _marks=marks):
                        lake.execute("DELETE FROM merged_calls WHERE trace_id IN (SELECT trace_id FROM _split)")
                        lake.execute("DELETE FROM merged_traces WHERE trace_id IN (SELECT trace_id FROM _split)")
                        lake.execute("INSERT INTO merged_calls BY NAME SELECT *, ? AS merged_by, "
                                     "? AS merged_at, ? AS settled_at FROM _merged", [self.instance_id, now, now])
                        lake.execute("INSERT INTO merged_traces BY NAME SELECT *, ? AS merged_by, ? AS merged_at "
                                     "FROM _marks", [self.instance_id, now])
                    lake.execute("COMMIT")
                except BaseException:
                    lake.execute("ROLLBACK")
                    raise
            merged = len(split)

        _retry("merge", run)
        return merged


def query_lake(cfg: SharedLedgerConfig, sql: str, max_rows: int = 100_000) -> QueryResult:
    """`tenantledger sql --lake`: one read-only query on the shared ledger, from any host that reaches it."""
    con = open_lake_read_only(cfg)
    try:
        check_lake_query(con, sql)
        return run_query(con, sql, max_rows)
    finally:
        con.close()

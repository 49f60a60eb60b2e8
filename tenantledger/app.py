"""The entry point's wiring: the only module that knows all three stages and connects them
receiver -> processors -> ledger, plus the HTTP routes of the query API.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import hmac
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ledger import (
    LakePublisher,
    Ledger,
    LedgerError,
    LedgerFile,
    LedgerInvalidated,
    QueryService,
    ScopedViews,
    default_instance_id,
    harden,
    jsonable,
    run_query,
)
from processors import LinkedContext, Settler, UsageRecord, attribute_trace
from processors._dialects import EXTRA_KEYS, usage_problems
from processors._pricing import Pricer
from processors._workers import SettleWorker
from receiver import (
    AttributeFilter,
    DecodePool,
    ExportHandler,
    GrpcServer,
    HttpRequest,
    HttpResponse,
    HttpServer,
    Spool,
)
from receiver._spool import rows_to_spans
from tenantledger.config import Config
from tenantledger.finops import BudgetMonitor, FinopsError, QueryFn
from tenantledger.finops._anomalies import anomalies_sql
from tenantledger.finops._budgets import budget_check, spend_from_daily

log = logging.getLogger("tenantledger")

# How often serve checks that DuckDB still accepts the ledger: a failed checkpoint invalidates it until it is
# reopened, and every write is refused meanwhile (ledger.LedgerFile.check).
LEDGER_CHECK_INTERVAL_S = 1.0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def duckdb_threads(worker_processes: int) -> int:
    """DuckDB's threads in `serve` when ledger.duckdb_threads is unset: the CPUs this process may run on, less the
    worker processes it runs, at least one. DuckDB itself counts the machine's CPUs, so on one CPU of two it ran two
    threads that took turns (a spool commit, when the spool was a DuckDB table, cost 40 % more CPU). On two CPUs
    beside three worker processes, a second DuckDB thread only competed with them: one settled 6 of 8 interleaved
    2-core bursts faster, median gain +7 % (bench/README.md, 2026-12-01 10:30)."""
    return max(1, usable_cpus() - worker_processes)


def tune_malloc(*, worker_pipes: bool) -> bool:
    """Keep glibc's heap from growing under sustained load (bench/README.md, memory); False where not glibc.

    With one malloc arena per busy thread (gRPC's pool) and the default dynamic mmap threshold, the 0.5-1 MiB
    request buffers were carved out of the arenas and the freed space was not reused across them: the heap grew
    ~1.4 MiB/s at 7 000 spans/s while less than 50 MiB of it was in use. Two arenas and a fixed mmap threshold
    keep it flat: 128 KiB, so large buffers go back to the kernel on free.

    With worker processes (``worker_pipes``), every request and settle batch also crosses a pipe both ways, and
    at 128 KiB each of those buffers was a fresh mapping with its page faults: there the threshold is 4 MiB (a
    request's buffers are reused from the heap; a settle batch and its records, larger, are still mapped) and the
    top of a heap is given back only beyond 64 MiB (at glibc's 128 KiB it was given back and faulted in again
    after each large buffer). On two cores: page faults 50-54 k/s -> 24-29 k/s, kernel time ~21 % -> ~14 % of
    the machine, +7-9 % end to end in each of two A/B series. On one core (no pipes) the same settings gained
    nothing and widened the RSS band in a 480 s run (816-997 against 825-950 MiB), so they are not used there
    (bench/README.md, 2026-11-30). Call before the server's threads start; workers forked after it inherit it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    if not worker_pipes:
        return bool(mallopt(m_arena_max, 2)) and bool(mallopt(m_mmap_threshold, 128 << 10))
    return (bool(mallopt(m_arena_max, 2)) and bool(mallopt(m_mmap_threshold, 4 << 20))
            and bool(mallopt(m_trim_threshold, 64 << 20)))


def spool_path(ledger_path: Path) -> Path:
    """Where the receiver's spool of acknowledged spans lives: a directory beside the ledger file (docs/adr/0004)."""
    return ledger_path.with_name(ledger_path.name + ".spool")


def move_staging_table(con: duckdb.DuckDBPyConnection, spool: Spool, chunk: int = 100_000) -> int:
    """Ledger files written before the spool had its own files kept the spans in a ``staging_spans`` table: move
    them into the spool (with their sequence numbers, so the ledger's watermark still applies), then drop the table.
    Resumable: a restart moves only what the spool does not hold yet. Returns how many spans were moved."""
    rows = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'staging_spans'").fetchall()
    if not rows or not rows[0][0]:
        return 0
    moved = 0
    bounds = con.execute("SELECT min(seq), max(seq) FROM staging_spans WHERE seq > ?", [spool.last_seq]).fetchall()
    lo, hi = bounds[0] if bounds else (None, None)
    if lo is not None and hi is not None:
        for start in range(lo - 1, hi, chunk):  # ranges of numbers, not ORDER BY .. LIMIT (a sort of the table)
            part = con.execute("SELECT * FROM staging_spans WHERE seq > ? AND seq <= ?",
                               [start, start + chunk]).to_arrow_table()
            part = part.sort_by("seq")
            spool.import_rows(part)
            moved += part.num_rows
    con.execute("DROP TABLE staging_spans")
    con.execute("CHECKPOINT")
    return moved


def discovery_path(ledger_path: Path) -> Path:
    """Where a running server advertises its query endpoint, so `tenantledger sql` can reach it."""
    return ledger_path.with_name(ledger_path.name + ".server.json")


@dataclass(frozen=True)
class Endpoints:
    grpc: str
    http: str


class Service:
    """A running tenantledger: open the ledger, recover, listen. ``stop`` drains and flushes everything."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Arrow buffers (spool appends, ledger rows) from the system allocator: with pyarrow's default jemalloc
        # pool the server's RSS kept growing under sustained load (bench/README.md, memory).
        pa.set_memory_pool(pa.system_memory_pool())
        # Worker processes first, while this process has no other thread and no open database, so they may be
        # forked (cheap) rather than spawned. Unset counts: one of each when this process may use 2+ CPUs.
        fork = threading.active_count() == 1
        # Unset counts, with 2+ CPUs: one decode worker and two settle workers (with one, it idled while the main
        # process prepared the next batch: 2 CPUs settled 16.8k spans/s with one, 18.3k with two; bench/README.md).
        two_cpus = usable_cpus() >= 2
        decode = int(two_cpus) if config.receiver.decode_workers is None else config.receiver.decode_workers
        settle = 2 * two_cpus if config.processors.settle_workers is None else config.processors.settle_workers
        tune_malloc(worker_pipes=decode + settle > 0)  # before the workers: they inherit it
        self.filter = AttributeFilter(
            config.processors.identity.all_keys() | EXTRA_KEYS, config.receiver.max_attribute_value_length
        )
        # With settle workers, only they read span attributes: spans keep them as JSON text until then.
        self.decoder = DecodePool(self.filter, usage_problems, config.receiver.max_spans_per_request, decode,
                                  attribute_dicts=settle == 0)
        self.workers: list[SettleWorker] = []
        try:
            self.decoder.start(fork=fork)
            for _ in range(settle):
                self.workers.append(SettleWorker(config.processors.identity, config.pricing))
                self.workers[-1].start(fork=fork)
            self._open(config)
        except BaseException:
            self._close_workers()
            raise

    def _close_workers(self) -> None:
        self.decoder.close()
        for w in self.workers:
            w.close()

    def _open(self, config: Config) -> None:
        path = config.ledger.path
        try:
            self.file = LedgerFile(path)
        except duckdb.IOException as e:
            raise LedgerError(
                f"cannot open the ledger {path}: {str(e).splitlines()[0]}",
                "is another `tenantledger serve` using it? Stop it or pass another --ledger",
            ) from e
        self.con = self.file.con
        shared = config.ledger.shared
        self.ledger = Ledger(self.file, outbox=shared.enabled, filter_keys=config.ledger.key_filter_mib * 2**20 // 4,
                             reattach_after_calls=config.ledger.reattach_after_calls)
        self.spool = Spool(spool_path(path), attribute_text=bool(self.workers))  # as the decoder's spans
        moved = move_staging_table(self.con, self.spool)
        if moved:
            log.info("moved %d spans from the ledger's staging_spans table to %s", moved, self.spool.directory)
        # Numbers continue after the settled ones even if the spool's files were removed: spans numbered at or
        # below the watermark would never be read back after a restart.
        self.spool.skip_to(self.ledger.watermark() + 1)
        # The anomaly view bakes in the configured method parameters (README: spend anomalies).
        anomaly_view = anomalies_sql(config.anomalies, bounded=False)
        self.con.execute(f"CREATE OR REPLACE VIEW spend_anomalies AS {anomaly_view}")
        self.budgets = BudgetMonitor(config.budgets, self.file.cursor(), guard=self.file.use,
                                     daily=self.ledger.daily_spend)
        duckdb_mib = config.ledger.serve_duckdb_memory_limit_mib
        if config.receiver.memory_limit_mib:
            # DuckDB's buffer cache lives in this process too: keep it to a quarter of the memory limit.
            duckdb_mib = min(duckdb_mib, max(16, int(config.receiver.memory_limit_mib / 4)))
        self.con.execute(f"SET memory_limit = '{duckdb_mib}MiB'")
        # The rows appended since the last checkpoint stay in DuckDB's cache at up to ~4x their WAL size
        # (duckdb_memory(), IN_MEMORY_TABLE; bench/README.md, 2026-12-01 10:30), and a checkpoint that cannot pin a
        # block invalidates the database: at most a sixteenth of the cap (ledger.checkpoint_threshold_mib; an eighth,
        # 16 MiB under 128, invalidated it in a 10-minute sustained run: bench/README.md, 2026-12-01 16:50).
        sixteenth = max(1, duckdb_mib // 16)
        checkpoint_mib = min(config.ledger.checkpoint_threshold_mib, sixteenth)
        self.con.execute(f"SET checkpoint_threshold = '{checkpoint_mib}MiB'")
        # DuckDB's allocator (jemalloc on Linux) keeps what DuckDB frees for reuse, by default up to 128 MiB after
        # each task: under steady ingest that showed as the process's memory rising for 10 minutes outside DuckDB's
        # own count (duckdb_memory()), 500 -> 659 MiB. Flushed after any task that peaked above a sixteenth of the
        # cap (a checkpoint does), with its background threads returning freed pages: 512 -> ~560 (bench/README.md,
        # 2026-12-01 18:30). Elsewhere these settings do nothing.
        self.con.execute(f"SET allocator_flush_threshold = '{sixteenth}MiB'")
        self.con.execute("SET allocator_background_threads = true")
        # DuckDB's blocks (its cache, up to the cap) come from a region of their own that is never given back: the
        # process holds its cache's high-water mark from then on, instead of giving back and taking again the
        # 100+ MiB by which the cache swings between checkpoints and evictions, which made RSS swing as much
        # (20.8 % after the warm-up of the 10-minute steady run, 7.3 % with it; 20.4 % and 4.0 % in a 480 s run:
        # bench/README.md, 2026-12-02 13:15).
        self.con.execute(f"SET block_allocator_memory = '{duckdb_mib}MiB'")
        threads = config.ledger.duckdb_threads or duckdb_threads(len(self.workers) + self.decoder.workers)
        self.con.execute(f"SET threads = {threads}")
        # After the schema exists: no query may reach files, ATTACH or extensions (docs/security.md).
        harden(self.con)
        self.scoped = ScopedViews(self.con, {"spend_anomalies": anomaly_view})
        self._tokens = [(t.value(), t.tenant) for t in config.api.tokens]
        self.pricer = Pricer(config.pricing)
        self.handler = ExportHandler(config.receiver, self.spool, self.filter, usage_problems, self.decoder)
        self.settler = Settler(
            config.processors, self.spool, self.ledger, self.pricer, on_pressure=self.handler.set_backpressure,
            workers=self.workers, locate=self.spool.locate,
        )
        self.spool.subscribe(self.settler.on_spans)
        self.handler.memory.relief.append(self.settler.shed_cache)
        self.queries = QueryService(self.file)
        # Scale-out (docs/adr/0002): settled rows are also published to the shared DuckLake.
        self.lake: LakePublisher | None = None
        if shared.enabled:
            self.lake = LakePublisher(shared, self.file, shared.instance_id or default_instance_id(path),
                                      self._resettle, self.spool.read_trace_rows)
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.recovered = 0
        self._stopped = threading.Event()
        self.failed = threading.Event()
        """Set when DuckDB invalidated the ledger (``failure`` says how): the process must stop and be restarted."""
        self.failure: LedgerInvalidated | None = None

    def start(self) -> Endpoints:
        self.recovered = self.settler.recover()
        # The hot path allocates millions of short-lived, acyclic objects (spans, attribute dicts, records) that
        # reference counting frees; the cyclic collector's frequent passes over them and over the long-lived
        # settled-trace cache cost ~10 % of the settle CPU (bench/README.md). Startup objects (price catalogue,
        # config) are frozen out of its reach and young collections are made rarer; cycles are still collected.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        # DuckDB releases the GIL around its work and must win it back to finish a commit; with the default 5 ms
        # switch interval a busy Python thread made a 3 ms spool commit take ~35 ms (bench/README.md).
        sys.setswitchinterval(0.0005)
        self.settler.start()
        threading.Thread(target=self._watch_ledger, name="ledger-watch", daemon=True).start()
        self.budgets.start()
        if self.lake is not None:
            self.lake.start()
        self.grpc = GrpcServer(self.config.receiver, self.handler)
        self.http = HttpServer(self.config.receiver, self.handler)
        self.http.add_route("POST", "/v1/sql", self._sql_route)
        self.http.add_route("GET", "/healthz", lambda r: HttpResponse(200, "ok\n"))
        self.http.add_route("GET", "/metrics", self._metrics_route)
        self.http.add_route("POST", "/v1/export/focus", self._export_route)
        self.http.add_route("GET", "/v1/budget/", self._budget_route)
        for name in ("audit", "anomalies", "concentration", "budgets"):
            self.http.add_route("GET", f"/v1/{name}", self._finops_route)
        self.http.add_route("GET", "/v1/statement/", self._finops_route)
        self.http.add_route("GET", "/ui", self._ui_route)
        self.http.add_route("GET", "/ui/", self._ui_route)
        self.http.add_route(  # last: "/" matches every GET path the routes above did not
            "GET", "/", lambda r: HttpResponse(302, "", "text/plain", {"Location": "/ui"}) if r.path == "/"
            else HttpResponse(404, f"no route for GET {r.path}\n"))
        self.grpc.start()
        self.http.start()
        ep = Endpoints(f"{self.grpc.host}:{self.grpc.port}", f"{self.http.host}:{self.http.port}")
        scheme = "https" if self.config.receiver.tls.enabled else "http"
        discovery_path(self.config.ledger.path).write_text(
            json.dumps({"pid": os.getpid(), "http": f"{scheme}://{ep.http}", "grpc": ep.grpc})
        )
        return ep

    def _watch_ledger(self) -> None:
        while not self._stopped.wait(LEDGER_CHECK_INTERVAL_S):
            try:
                self.file.check()
            except LedgerInvalidated as e:
                self.failure = e
                log.critical("%s; stopping so that a restart reopens it", e.message)
                self.failed.set()
                return

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests, settle and flush everything pending, close the ledger. After
        ``failed``: stop without settling or writing anything (the ledger refuses it; the next start settles)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.failed.is_set():
            self._abandon()
            return
        grace = self.config.service.shutdown_grace_s
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.http is not None:
            self.http.stop(grace)
        self.decoder.close()  # no request is in flight any more
        self.settler.stop()  # also stops its worker
        self.budgets.stop()
        if self.config.budgets.enabled:
            try:  # the flushed spend may have crossed a threshold: fire it now, not at the next start
                self.budgets.check(dt.datetime.now(dt.UTC).replace(tzinfo=None))
            except duckdb.Error:
                log.exception("final budget check failed; it runs again at the next start")
        if self.lake is not None:
            try:
                self.lake.stop()
            except Exception:  # the outbox keeps what was not published; the next start publishes it
                log.exception("final publish to the shared ledger failed")
        self.spool.close()  # after the last publish, which reads spans from it
        try:
            # Every writer has stopped; FORCE only ends the idle read transactions cursors may still hold.
            self.con.execute("FORCE CHECKPOINT")
        except duckdb.Error as e:
            log.warning("checkpoint at shutdown failed (%s); the WAL will be replayed at next start", e)
        self.con.close()
        discovery_path(self.config.ledger.path).unlink(missing_ok=True)

    def _abandon(self) -> None:
        # Requests still in flight fail retryably (the spool refuses them): their senders retry after the restart.
        if self.grpc is not None:
            self.grpc.stop(0)
        if self.http is not None:
            self.http.stop(0)
        self.decoder.close()
        self.settler.stop(settle=False)
        self.budgets.stop()
        if self.lake is not None:
            self.lake.stop(flush=False)
        self.spool.close()
        try:
            self.con.close()
        except duckdb.Error:
            pass
        discovery_path(self.config.ledger.path).unlink(missing_ok=True)

    def _resettle(self, rows: list[dict[str, object]]) -> list[UsageRecord]:
        """One trace, settled from all instances' spans (a trace whose spans reached two instances)."""
        ledger = self.ledger

        class _Local:
            def resolve(self, trace_id: str) -> LinkedContext | None:
                return ledger.trace_contexts([trace_id]).get(trace_id)

        result = attribute_trace(rows_to_spans(rows), self.config.processors.identity, _Local())
        return [self.pricer.price(rec) for rec in result.records]

    # --- query API --------------------------------------------------------------------------------

    def _principal(self, req: HttpRequest) -> str | None | HttpResponse:
        """Who is asking: None = operator (all tenants), a tenant id = scoped, or the 401 to send back.

        The token comes from ``Authorization: Bearer`` or, for the dashboard in a browser, the
        ``tenantledger_token`` cookie. Compared in constant time (no timing oracle on the token)."""
        if not self._tokens:
            return None
        offered = ""
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        else:
            for part in req.headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "tenantledger_token":
                    offered = value
        for token, tenant in self._tokens:
            if offered and hmac.compare_digest(offered.encode(), token.encode()):
                return tenant
        return HttpResponse(401, json.dumps({"ok": False, "error": "a valid query API token is required",
                                             "hint": "send Authorization: Bearer <token> (config api.tokens)"}),
                            "application/json", {"WWW-Authenticate": 'Bearer realm="tenantledger"'})

    def query_fn(self, tenant: str | None) -> QueryFn:
        """Read-only queries for one principal: everything for an operator, scoped views for a tenant token."""

        def q(sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
            with self.queries.session() as cur:
                if tenant is None:
                    r = run_query(cur, sql, 1_000_000, params)
                else:
                    r = self.scoped.query(cur, tenant, sql, 1_000_000, params)
                return r.columns, r.rows

        return q

    def _budget_route(self, req: HttpRequest) -> HttpResponse:
        from urllib.parse import unquote

        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        tenant = unquote(req.path[len("/v1/budget/"):])
        if not tenant or "/" in tenant:
            return _json(404, {"ok": False, "error": "use GET /v1/budget/{tenant}"})
        if who is not None and who != tenant:
            return _json(403, {"ok": False, "error": "this token is scoped to another tenant"})
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        # A gateway may ask before every LLM call: from the totals the ledger writer keeps, not a scan of the month.
        daily = self.ledger.daily_spend(now.date().replace(day=1), tenant=tenant, until=now.date())
        doc = budget_check(self.query_fn(who), self.config.budgets, tenant, now, spend_from_daily(daily, now))
        doc["staleness_s"] = self.config.processors.wait_duration_s + self.config.budgets.check_interval_s
        return _json(200, {"ok": True, **doc})

    def _finops_route(self, req: HttpRequest) -> HttpResponse:
        """GET /v1/{audit,anomalies,concentration,budgets} and /v1/statement/{tenant}: the CLI's answers as JSON."""
        from decimal import Decimal, InvalidOperation
        from urllib.parse import unquote

        from tenantledger.finops import Period, audit, budget_status, concentration, find_anomalies, statement

        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        arg = {k: v[0] for k, v in req.query.items() if v}
        q = self.query_fn(who)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            end = dt.date.fromisoformat(arg["to"]) if "to" in arg else now.date() + dt.timedelta(days=1)
            default_days = 7 if req.path == "/v1/anomalies" else 30
            start = dt.date.fromisoformat(arg["from"]) if "from" in arg else end - dt.timedelta(days=default_days)
            period = Period(start, end)
            stripe = None
            if req.path == "/v1/audit":
                tables = audit(q, period)
            elif req.path == "/v1/anomalies":
                tables = [find_anomalies(q, self.config.anomalies, period)]
            elif req.path == "/v1/concentration":
                pcts = [Decimal(x) for x in arg.get("top_pct", "1,5,10,20").split(",")]
                tables = [concentration(q, period, pcts, arg.get("grain", "month"))]
            elif req.path == "/v1/budgets":
                tables = [budget_status(q, self.config.budgets, now, who)]
            else:
                tenant = unquote(req.path[len("/v1/statement/"):])
                if who is not None and who != tenant:
                    return _json(403, {"ok": False, "error": "this token is scoped to another tenant"})
                markup = Decimal(arg["markup_pct"]) if "markup_pct" in arg else None
                table, stripe = statement(q, self.config.statements, tenant, period, markup)
                tables = [table]
        except FinopsError as e:
            return _json(400, {"ok": False, "error": e.message, "hint": e.hint})
        except LedgerError as e:
            return _json(400, {"ok": False, "error": e.message, "hint": e.hint})
        except (ValueError, InvalidOperation) as e:
            return _json(400, {"ok": False, "error": f"bad parameter: {e}"})
        doc: dict[str, Any] = {"ok": True, "from": period.start.isoformat(), "to": period.end.isoformat()}
        for t in tables:
            doc[t.title.split(" ")[0]] = {"columns": t.columns, "rows": [[jsonable(v) for v in r] for r in t.rows],
                                          "notes": t.notes}
        if stripe is not None:
            doc["stripe"] = stripe
        return _json(200, doc)

    def _ui_route(self, req: HttpRequest) -> HttpResponse:
        from urllib.parse import unquote

        from tenantledger._dashboard import render_dashboard, render_request

        token = (req.query.get("token") or [""])[0]
        if token and self._tokens and any(hmac.compare_digest(token.encode(), t.encode()) for t, _ in self._tokens):
            # A browser cannot send a bearer header: /ui?token=... sets an HttpOnly cookie and drops the token
            # from the address bar.
            return HttpResponse(303, "", "text/plain", {
                "Location": "/ui", "Set-Cookie": f"tenantledger_token={token}; HttpOnly; SameSite=Strict; Path=/"})
        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        q = self.query_fn(who)
        try:
            if req.path.startswith("/ui/request/"):
                page = render_request(q, unquote(req.path[len("/ui/request/"):]), now, who)
                if page is None:
                    return HttpResponse(404, "no such request in the ledger\n")
            else:
                days = int((req.query.get("days") or ["30"])[0])
                page = render_dashboard(q, self.config.budgets, now, max(1, min(days, 400)), scope=who)
        except (LedgerError, FinopsError, ValueError) as e:
            return HttpResponse(400, f"{e}\n")
        return HttpResponse(200, page, "text/html; charset=utf-8")

    def _metrics_route(self, req: HttpRequest) -> HttpResponse:
        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        if who is not None:
            return _json(403, {"ok": False, "error": "/metrics needs an operator token (not scoped to a tenant)"})
        from tenantledger._metrics import CONTENT_TYPE, PipelineCollector, render

        def query(sql: str, params: list[object]) -> list[tuple[object, ...]]:
            with self.queries.session() as cur:
                return cur.execute(sql, params).fetchall()

        levels = {"ok": 0.0, "warn": 1.0, "over": 2.0}

        def budget_states() -> list[tuple[str, str, float]]:
            own = self.config.budgets.tenants
            states = [b for b in self.budgets.states if b.state != "ok" or b.tenant_id in own]
            states.sort(key=lambda b: (-levels[b.state], -b.used_pct, b.tenant_id))
            return [(b.tenant_id, b.period, levels[b.state]) for b in states]

        collector = PipelineCollector(self.ledger.spend_totals, query, lambda: _health(self),
                                      budget_states=budget_states,
                                      rejections=lambda: dict(self.handler.stats.spans_rejected_by_reason))
        return HttpResponse(200, render(collector), CONTENT_TYPE)

    def _export_route(self, req: HttpRequest) -> HttpResponse:

        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        if who is not None:
            return _json(403, {"ok": False, "error": "the FOCUS export needs an operator token",
                               "hint": "a tenant token can read its rows with SQL on the focus view"})

        from tenantledger._export_cli import export_archive

        try:
            doc = json.loads(req.body or b"{}")
            start, end = dt.date.fromisoformat(doc["from"]), dt.date.fromisoformat(doc["to"])
            fmt = doc.get("format", "csv")
            if fmt not in ("csv", "parquet"):
                raise ValueError("format must be csv or parquet")
        except (ValueError, KeyError, TypeError) as e:
            return _json(400, {"ok": False, "error": f"bad export request: {e}"})
        try:
            with self.queries.session() as cur:
                data, summary = export_archive(cur, start, end, fmt, str(doc.get("name", "")),
                                               self.config.ledger.billing_account_id,
                                               self.config.ledger.billing_account_name)
        except LedgerError as e:
            return _json(400, {"ok": False, "error": e.message, "hint": e.hint})
        return HttpResponse(200, data, "application/x-tar", {"X-Export-Summary": json.dumps(summary)})

    def _sql_route(self, req: HttpRequest) -> HttpResponse:
        who = self._principal(req)
        if isinstance(who, HttpResponse):
            return who
        try:
            doc = json.loads(req.body or b"{}")
            sql = doc.get("sql") if isinstance(doc, dict) else None
            if not isinstance(sql, str):
                return _json(400, {"ok": False, "error": "body must be JSON {\"sql\": \"SELECT ...\"}"})
            params = doc.get("params") or []
            if not isinstance(params, list) or not all(
                v is None or isinstance(v, str | int | float | bool) for v in params
            ):
                return _json(400, {"ok": False, "error": "params must be a JSON array of scalars"})
            max_rows = int(doc.get("max_rows", 100_000))
            if who is None:
                result = self.queries.query(sql, max_rows, params)
            else:
                with self.queries.session() as cur:
                    result = self.scoped.query(cur, who, sql, max_rows, params)
        except LedgerError as e:
            return _json(400, {"ok": False, "error": e.message, "hint": e.hint})
        except ValueError as e:
            return _json(400, {"ok": False, "error": f"bad request: {e}"})
        return _json(
            200,
            {
                "ok": True,
                "columns": result.columns,
                "types": result.types,
                "rows": [[jsonable(v) for v in row] for row in result.rows],
                "truncated": result.truncated,
            },
        )


def _health(service: Service) -> dict[str, float]:
    r, st = service.handler.stats, service.settler.stats
    memory = service.ledger.memory()
    return {
        "counter:export_requests": r.requests,
        "counter:spans_received": r.spans_accepted,
        "counter:spans_rejected": r.spans_rejected,
        "counter:exports_refused_overload": r.refused_overload,
        "counter:exports_refused_invalid": r.refused_invalid,
        "counter:exports_refused_storage": r.refused_storage,
        "counter:traces_settled": st.traces_settled,
        "counter:traces_resettled": st.resettled,
        "counter:traces_evicted_early": st.evicted_early,
        "counter:spans_spilled": st.spans_spilled,
        "counter:ledger_write_errors": st.write_errors,
        "gauge:traces_pending": service.settler.pending_traces,
        "gauge:spans_pending": service.settler.pending_spans,
        "gauge:spans_in_memory_bound": service.settler.in_memory_bound,
        "gauge:settle_lag_seconds": st.last_settle_lag_s,
        "gauge:ledger_write_seconds": st.last_write_s,
        "gauge:spool_bytes": service.spool.stats.bytes,
        "gauge:spool_segments": service.spool.stats.segments,
        "counter:spool_write_errors": service.spool.stats.write_errors,
        "gauge:duckdb_memory_bytes": memory["duckdb_cache"],
        "gauge:ledger_filter_bytes": memory["filters"],
        "gauge:dedup_window_seconds": service.ledger.dedup_window_s,
        "counter:dedup_exact_lookups": service.ledger.exact_lookups,
        "counter:ledger_reattaches": service.file.reattaches,
        **({
            "counter:lake_traces_published": service.lake.stats.traces_published,
            "counter:lake_traces_merged": service.lake.stats.traces_merged,
            "counter:lake_publish_errors": service.lake.stats.publish_errors,
            "gauge:lake_publish_seconds": service.lake.stats.last_publish_s,
        } if service.lake is not None else {}),
    }


def _json(status: int, doc: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc), "application/json")

"""The entry point's wiring: the only module that knows all three stages and connects them
receiver -> processors -> ledger, plus the HTTP routes of the query API.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ledger import Ledger, LedgerError, QueryService, harden, jsonable
from processors import Settler
from processors._dialects import EXTRA_KEYS, usage_problems
from processors._pricing import Pricer
from receiver import AttributeFilter, ExportHandler, GrpcServer, HttpRequest, HttpResponse, HttpServer, Spool
from tenantledger.config import Config

log = logging.getLogger("tenantledger")


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
        path = config.ledger.path
        try:
            self.con = duckdb.connect(str(path))
        except duckdb.IOException as e:
            raise LedgerError(
                f"cannot open the ledger {path}: {str(e).splitlines()[0]}",
                "is another `tenantledger serve` using it? Stop it or pass another --ledger",
            ) from e
        self.spool = Spool(self.con)
        self.ledger = Ledger(self.con)
        if config.receiver.memory_limit_mib:
            # DuckDB's buffer cache lives in this process too: keep it to a quarter of the memory limit.
            self.con.execute(f"SET memory_limit = '{max(16, int(config.receiver.memory_limit_mib / 4))}MB'")
        # After the schema exists: no query may reach files, ATTACH or extensions (docs/security.md).
        harden(self.con)
        self.pricer = Pricer(config.pricing)
        self.handler = ExportHandler(
            config.receiver,
            self.spool,
            AttributeFilter(
                config.processors.identity.all_keys() | EXTRA_KEYS, config.receiver.max_attribute_value_length
            ),
            usage_problems,
        )
        self.settler = Settler(
            config.processors, self.spool, self.ledger, self.pricer, on_pressure=self.handler.set_backpressure
        )
        self.spool.subscribe(self.settler.on_spans)
        self.handler.memory.relief.append(self.settler.shed_cache)
        self.queries = QueryService(self.con)
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.recovered = 0
        self._stopped = threading.Event()

    def start(self) -> Endpoints:
        self.recovered = self.settler.recover()
        self.settler.start()
        self.grpc = GrpcServer(self.config.receiver, self.handler)
        self.http = HttpServer(self.config.receiver, self.handler)
        self.http.add_route("POST", "/v1/sql", self._sql_route)
        self.http.add_route("GET", "/healthz", lambda r: HttpResponse(200, "ok\n"))
        self.http.add_route("GET", "/metrics", self._metrics_route)
        self.http.add_route("POST", "/v1/export/focus", self._export_route)
        self.grpc.start()
        self.http.start()
        ep = Endpoints(f"{self.grpc.host}:{self.grpc.port}", f"{self.http.host}:{self.http.port}")
        scheme = "https" if self.config.receiver.tls.enabled else "http"
        discovery_path(self.config.ledger.path).write_text(
            json.dumps({"pid": os.getpid(), "http": f"{scheme}://{ep.http}", "grpc": ep.grpc})
        )
        return ep

    def stop(self) -> None:
        """Stop accepting, finish in-flight requests, settle and flush everything pending, close the ledger."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.service.shutdown_grace_s
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.http is not None:
            self.http.stop(grace)
        self.settler.stop()
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.Error:
            log.warning("checkpoint at shutdown failed; the WAL will be replayed at next start")
        self.con.close()
        try:
            discovery_path(self.config.ledger.path).unlink()
        except FileNotFoundError:
            pass

    # --- query API --------------------------------------------------------------------------------

    def _metrics_route(self, req: HttpRequest) -> HttpResponse:
        from tenantledger._metrics import CONTENT_TYPE, PipelineCollector, render

        def query(sql: str, params: list[object]) -> list[tuple[object, ...]]:
            cur = self.queries.cursor()
            try:
                return cur.execute(sql, params).fetchall()
            finally:
                cur.close()

        return HttpResponse(200, render(PipelineCollector(query, lambda: _health(self))), CONTENT_TYPE)

    def _export_route(self, req: HttpRequest) -> HttpResponse:
        import datetime as dt

        from tenantledger._export_cli import export_archive

        try:
            doc = json.loads(req.body or b"{}")
            start, end = dt.date.fromisoformat(doc["from"]), dt.date.fromisoformat(doc["to"])
            fmt = doc.get("format", "csv")
            if fmt not in ("csv", "parquet"):
                raise ValueError("format must be csv or parquet")
        except (ValueError, KeyError, TypeError) as e:
            return _json(400, {"ok": False, "error": f"bad export request: {e}"})
        cur = self.queries.cursor()
        try:
            data, summary = export_archive(cur, start, end, fmt, str(doc.get("name", "")),
                                           self.config.ledger.billing_account_id,
                                           self.config.ledger.billing_account_name)
        except LedgerError as e:
            return _json(400, {"ok": False, "error": e.message, "hint": e.hint})
        finally:
            cur.close()
        return HttpResponse(200, data, "application/x-tar", {"X-Export-Summary": json.dumps(summary)})

    def _sql_route(self, req: HttpRequest) -> HttpResponse:
        try:
            doc = json.loads(req.body or b"{}")
            sql = doc.get("sql") if isinstance(doc, dict) else None
            if not isinstance(sql, str):
                return _json(400, {"ok": False, "error": "body must be JSON {\"sql\": \"SELECT ...\"}"})
            result = self.queries.query(sql, int(doc.get("max_rows", 100_000)))
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
        "counter:ledger_write_errors": st.write_errors,
        "gauge:traces_pending": service.settler.pending_traces,
        "gauge:spans_pending": service.settler.pending_spans,
        "gauge:settle_lag_seconds": st.last_settle_lag_s,
        "gauge:ledger_write_seconds": st.last_write_s,
    }


def _json(status: int, doc: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc), "application/json")

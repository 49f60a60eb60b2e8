"""The `tenantledger` command: parses flags, calls the library, and turns domain errors into one helpful line.

Exit codes: 0 ok; 1 a runtime error (the message says what to fix); 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import faulthandler
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger import LedgerError, QueryResult, jsonable, open_read_only, run_query
from tenantledger.config import Config, ConfigError, load_config
from tenantledger.finops import FinopsError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if getattr(args, "ledger", None):
        overrides.setdefault("ledger", {})["path"] = args.ledger
    if getattr(args, "grpc_endpoint", None):
        overrides.setdefault("receiver", {})["grpc_endpoint"] = args.grpc_endpoint
    if getattr(args, "http_endpoint", None):
        overrides.setdefault("receiver", {})["http_endpoint"] = args.http_endpoint
    return load_config(Path(args.config) if getattr(args, "config", None) else None, overrides)


# --- serve ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from tenantledger.app import Service

    config = _config(args)
    from tenantledger._logging import configure

    configure(config.service.log_level)
    service = Service(config)
    stop = threading.Event()
    # `kill -USR1 <pid>` prints every thread's stack: how an operator (or a test) sees where a stop is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ep = service.start()
    except OSError as e:
        service.stop()
        raise CliError(f"cannot listen: {e}; pick free ports with --grpc-endpoint/--http-endpoint (0 = any)") from e
    print(
        f"tenantledger serving: grpc={ep.grpc} http={ep.http} ledger={config.ledger.path} "
        f"(recovered {service.recovered} unsettled spans)",
        flush=True,
    )
    # A timed wait, not stop.wait(): SIGTERM may be delivered to any of the process's threads (gRPC, DuckDB), and
    # Python runs its handler only when the main thread next runs bytecode; an untimed wait could sleep through it.
    while not stop.wait(0.25):
        if service.failed.is_set():
            break
    if service.failure is not None:
        # Nothing can be written any more: exit non-zero at once so that a supervisor restarts the server, whose
        # start replays the WAL and settles every acknowledged span.
        service.stop()
        raise service.failure
    print("tenantledger: stopping (draining, settling, flushing the ledger)", flush=True)
    service.stop()
    print("tenantledger: stopped", flush=True)
    return EXIT_OK


# --- sql -----------------------------------------------------------------------------------------------


def _server_for(ledger_path: Path) -> str | None:
    from tenantledger.app import discovery_path

    p = discovery_path(ledger_path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    url = doc.get("http")
    return url if isinstance(url, str) else None


def _wire(value: Any) -> Any:
    """A query parameter as JSON: dates and times in ISO 8601, Decimal as a string (DuckDB casts them back)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _revive(value: Any, type_name: str) -> Any:
    """A JSON result cell back to the Python value a local query returns, so callers see one shape."""
    if value is None or not isinstance(value, str):
        return value
    t = type_name.upper()
    if t.startswith("DECIMAL"):
        return Decimal(value)
    if t == "DATE":
        return dt.date.fromisoformat(value)
    if t.startswith("TIMESTAMP"):
        return dt.datetime.fromisoformat(value)
    return value


def _query(
    ledger_path: Path, sql: str, token: str | None = None, params: Sequence[Any] = (), revive: bool = False
) -> QueryResult:
    url = _server_for(ledger_path)
    if url is not None:
        body = {"sql": sql, "params": [_wire(v) for v in params]}
        req = urllib.request.Request(
            f"{url}/v1/sql", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                doc = json.loads(e.read())
            except ValueError:
                raise CliError(f"the server at {url} answered HTTP {e.code}") from e
            hint = f" ({doc['hint']})" if doc.get("hint") else ""
            raise CliError(f"{doc.get('error')}{hint}") from e
        except urllib.error.URLError:
            url = None  # stale discovery file: the server is gone, read the file directly
        else:
            rows = [tuple(r) for r in doc["rows"]]
            if revive:
                rows = [tuple(_revive(v, t) for v, t in zip(r, doc["types"], strict=True)) for r in rows]
            return QueryResult(doc["columns"], doc["types"], rows, doc["truncated"])
    con = open_read_only(ledger_path)
    try:
        result = run_query(con, sql, params=params)
        if revive:
            return result
        return QueryResult(result.columns, result.types,
                           [tuple(jsonable(v) for v in row) for row in result.rows], result.truncated)
    finally:
        con.close()


def print_result(result: QueryResult, fmt: str, out: Any = None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps([dict(zip(result.columns, r, strict=True)) for r in result.rows], indent=1) + "\n")
        return
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(result.columns)
        w.writerows(["" if v is None else v for v in r] for r in result.rows)
        return
    cells = [[("NULL" if v is None else str(v)) for v in r] for r in result.rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(result.columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True))
    out.write(line + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + "\n")
    out.write(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
              f"{', truncated' if result.truncated else ''})\n")


def cmd_sql(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.lake:
        from ledger import query_lake

        r = query_lake(config.ledger.shared, args.query)
        result = QueryResult(r.columns, r.types, [tuple(jsonable(v) for v in row) for row in r.rows], r.truncated)
    else:
        result = _query(config.ledger.path, args.query, args.token)
    print_result(result, args.format)
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------------------


def progress_bar(label: str) -> Any:
    """A progress callback: a bar on a terminal (stderr), silent when piped so scripts get clean output."""
    tty = sys.stderr.isatty()

    def update(done: int, total: int) -> None:
        if not tty or total <= 0:
            return
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return update


def cmd_demo(args: argparse.Namespace) -> int:
    from tenantledger._demo import Workload
    from tenantledger.app import Service

    service = None
    if args.target:
        target, ui = args.target, None
    else:
        config = _config(args)
        from tenantledger._logging import configure

        configure("warning")
        service = Service(config)
        try:
            ep = service.start()
        except OSError as e:
            service.stop()
            raise CliError(f"cannot listen: {e}; is `tenantledger serve` already running? "
                           "Then use: tenantledger demo --target 127.0.0.1:4317") from e
        target, ui = ep.grpc, f"http://{ep.http}/ui"
        print(f"tenantledger demo: serving grpc={ep.grpc} http={ep.http} ledger={config.ledger.path}", flush=True)
    workload = Workload(target, args.seed, args.days)
    stats = workload.run(args.requests, args.live_s, progress_bar("sending"))
    workload.shutdown()
    print(f"tenantledger demo: sent {stats.requests} requests ({stats.llm_spans} LLM spans, {stats.spans} spans) "
          f"to {target}: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.by_kind.items())), flush=True)
    if service is None:
        return EXIT_OK
    if args.exit:
        service.stop()
        print("tenantledger demo: stopped (ledger flushed)", flush=True)
        return EXIT_OK
    print(f"tenantledger demo: dashboard at {ui} (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.25):  # timed: see cmd_serve
        pass
    service.stop()
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------------

EPILOG_SERVE = """examples:
  tenantledger serve
  tenantledger serve --ledger /var/lib/tenantledger/ledger.duckdb --grpc-endpoint 0.0.0.0:4317
  tenantledger serve --config tenantledger.yaml --http-endpoint 127.0.0.1:0
"""
EPILOG_SQL = """examples:
  tenantledger sql "SELECT tenant_id, sum(effective_cost) FROM llm_calls GROUP BY 1 ORDER BY 2 DESC"
  tenantledger sql "SELECT * FROM spend_daily" --format csv > spend.csv
Works while `serve` runs (the query goes through the server) and when it is stopped (the file is read directly).
"""


EPILOG_DEMO = """examples:
  tenantledger demo                      # start a server on 4317/4318 and fill it; open http://127.0.0.1:4318/ui
  tenantledger demo --target 127.0.0.1:4317 --requests 1000 --live-s 60
Several services (web-api with Baggage, an llm-gateway that drops it, a report-worker job linked to the request,
a search-indexer with no tenant), streaming with and without usage, agents with tool calls.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tenantledger",
        description="Per-tenant LLM cost ledger fed by OpenTelemetry GenAI spans.",
        epilog="exit codes: 0 ok, 1 runtime error, 2 usage or configuration error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE", help="YAML config file (flags override it)")
        sp.add_argument("--ledger", metavar="PATH", help="ledger file (default ./tenantledger.duckdb)")

    s = sub.add_parser("serve", help="run the OTLP receiver on the embedded ledger", epilog=EPILOG_SERVE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(s)
    s.add_argument("--grpc-endpoint", metavar="HOST:PORT", help="OTLP/gRPC listen address (default 127.0.0.1:4317)")
    s.add_argument("--http-endpoint", metavar="HOST:PORT", help="OTLP/HTTP listen address (default 127.0.0.1:4318)")
    s.set_defaults(func=cmd_serve)

    q = sub.add_parser("sql", help="run a read-only SQL query on the ledger", epilog=EPILOG_SQL,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(q)
    q.add_argument("query", metavar="SQL", help="a SELECT statement")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
    q.add_argument("--token", metavar="TOKEN", help="bearer token of the query API, when the server requires one")
    q.add_argument("--lake", action="store_true", help="query the shared ledger (ledger.shared in --config)")
    q.set_defaults(func=cmd_sql)

    d = sub.add_parser("demo", help="drive a server with a realistic multi-tenant workload (real OTel SDK)",
                       epilog=EPILOG_DEMO, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(d)
    d.add_argument("--target", metavar="HOST:PORT", help="send to this running server's OTLP/gRPC endpoint "
                   "instead of starting one")
    d.add_argument("--grpc-endpoint", metavar="HOST:PORT", help="when starting a server (default 127.0.0.1:4317)")
    d.add_argument("--http-endpoint", metavar="HOST:PORT", help="when starting a server (default 127.0.0.1:4318)")
    d.add_argument("--requests", type=int, default=400, metavar="N", help="user requests to send (default 400)")
    d.add_argument("--days", type=int, default=14, metavar="D", help="spread them over the last D days (default 14)")
    d.add_argument("--live-s", type=float, default=0.0, metavar="S", help="then S seconds of live traffic")
    d.add_argument("--seed", type=int, default=7, help="random seed (default 7: the same workload every time)")
    d.add_argument("--exit", action="store_true", help="stop the started server after the workload")
    d.set_defaults(func=cmd_demo)

    from tenantledger import _export_cli, _finops_cli

    _export_cli.register(sub, common)
    _finops_cli.register(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as e:
        print(f"tenantledger: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FinopsError as e:
        hint = f" — {e.hint}" if e.hint else ""
        print(f"tenantledger: {e.message}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as e:
        hint = f" — {e.hint}" if e.hint else ""
        print(f"tenantledger: {e.message}{hint}", file=sys.stderr)
        return EXIT_ERROR
    except CliError as e:
        print(f"tenantledger: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tenantledger audit | head`: the reader left; not an error
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

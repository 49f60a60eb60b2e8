"""Shared test harness: the real `tenantledger serve` process on ephemeral loopback ports, fixture loading."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TENANTLEDGER_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "otlp"

_STARTUP = re.compile(r"grpc=(\S+):(\d+) http=(\S+):(\d+)")


def stale_build() -> list[str]:
    """Sources changed since `make compile` built their packages' extension modules: Python would import the stale
    build (an extension module wins over its source), so the suite would test code that is no longer there."""
    built = [*REPO.glob("processors/*.so"), *REPO.glob("receiver/*.so")]
    if not built:
        return []
    oldest = min(p.stat().st_mtime for p in built)
    sources = [*REPO.glob("processors/*.py"), *REPO.glob("receiver/*.py"), REPO / "build_compiled.py"]
    return sorted(str(p.relative_to(REPO)) for p in sources if p.stat().st_mtime > oldest)


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_build()
    if stale:
        pytest.exit(f"the compiled modules are older than {', '.join(stale)}: run `make compile` (or `make test`)", 4)


def fixture_names() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json") if p.stat().st_size > 10)


def load_fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def fixture_to_protobuf(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """OTLP/JSON (hex ids) -> protobuf, independently of the receiver's own decoder."""
    d = copy.deepcopy(doc)
    for rs in d.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if span.get(k):
                        span[k] = base64.b64encode(bytes.fromhex(span[k])).decode()
                for link in span.get("links", []) or []:
                    for k in ("traceId", "spanId"):
                        link[k] = base64.b64encode(bytes.fromhex(link[k])).decode()
    msg = ExportTraceServiceRequest()
    json_format.ParseDict(d, msg)
    return msg


def fixture_span_ids(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (s["traceId"], s["spanId"])
        for rs in doc.get("resourceSpans", [])
        for ss in rs.get("scopeSpans", [])
        for s in ss.get("spans", [])
    }


# Every server a test starts; one still running when the suite ends (its test failed before stopping it) is
# killed then. Seen: a server left by a failed test was still running, idle, an hour after the suite.
_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True, scope="session")
def _no_server_outlives_the_suite() -> Iterator[None]:
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


class Server:
    """A real `tenantledger serve` subprocess."""

    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, ledger: Path | None = None) -> None:
        self.tmp = tmp
        self.ledger = ledger or tmp / "ledger.duckdb"
        cfg: dict[str, Any] = {"processors": {"wait_duration_s": 0.3, "settle_interval_s": 0.05}}
        for section, values in (config or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[str] | None = None
        self.grpc = self.http = ""
        self.output: list[str] = []

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tenantledger", "serve", "--config", str(self.config_path),
             "--ledger", str(self.ledger), "--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
        )
        _STARTED.append(self.proc)
        assert self.proc.stdout is not None
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            m = _STARTUP.search(line)
            if m:
                self.grpc = f"{m.group(1)}:{m.group(2)}"
                self.http = f"http://{m.group(3)}:{m.group(4)}"
                return self
        raise AssertionError("server did not start:\n" + "".join(self.output))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Ask the server for every thread's stack (faulthandler on SIGUSR1), then fail with it.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.proc.kill()
            out, _ = self.proc.communicate()
            tail = (out or "")[-8000:]
            raise AssertionError(f"server did not stop within {timeout} s; its threads:\n{tail}") from None
        self.output.append(out or "")
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def spool_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        """Every span the server acknowledged, as kept in its spool's files (the server must be stopped)."""
        from receiver import Spool
        from tenantledger.app import spool_path

        spool = Spool(spool_path(self.ledger))
        try:
            cols = spool.read_rows_after(0, 1 << 40).select(list(columns)).to_pydict()
        finally:
            spool.close()
        return list(zip(*(cols[c] for c in columns), strict=True))

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Read the ledger file directly (the server must be stopped)."""
        con = duckdb.connect(str(self.ledger), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def make(config: dict[str, Any] | None = None, ledger: Path | None = None) -> Server:
        s = Server(tmp_path, config, ledger).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.kill()

"""Load generation for the reliability tests: pre-serialised OTLP requests sent over gRPC so that exactly which
spans were acknowledged is known, a server whose output is drained, and RSS sampling."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.conftest import Server

LONG = os.environ.get("TENANTLEDGER_RELIABILITY") == "long"
"""`make reliability` sets TENANTLEDGER_RELIABILITY=long: the full-size versions of each test."""

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
RETRYABLE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
_T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku-latest"))


def _kv(key: str, value: str | int) -> KeyValue:
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


@dataclass
class Request:
    body: bytes
    calls: set[tuple[str, str]]  # (trace_id, span_id) of the billable LLM spans it carries


def make_requests(n: int, traces_per_request: int = 5, seed: int = 7) -> list[Request]:
    """n export requests. Every third trace is split: its LLM span travels one request ahead of its
    tenant-carrying SERVER parent, so the trace settles early and is re-settled when the parent arrives."""
    rnd = random.Random(seed)
    spans_of: list[list[tuple[Any, bool]]] = [[] for _ in range(n)]
    for r in range(n):
        for k in range(traces_per_request):
            tid = rnd.randbytes(16)
            root_sid, llm_sid = rnd.randbytes(8), rnd.randbytes(8)
            tenant = f"tenant-{rnd.randrange(12)}"
            provider, model = MODELS[rnd.randrange(len(MODELS))]
            start = _T0 + (r * traces_per_request + k) * 1_000_000_000
            root = _span(tid, root_sid, None, "POST /chat", 2, start, [_kv("tenant.id", tenant)])
            llm = _span(tid, llm_sid, root_sid, f"chat {model}", 3, start + 1000, [
                _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", provider),
                _kv("gen_ai.request.model", model), _kv("gen_ai.response.id", f"resp-{tid.hex()}"),
                _kv("gen_ai.usage.input_tokens", rnd.randrange(10, 5000)),
                _kv("gen_ai.usage.output_tokens", rnd.randrange(1, 800)),
            ])
            split = k % 3 == 0 and r + 1 < n
            spans_of[r].append((llm, True))
            spans_of[r + 1 if split else r].append((root, False))
    out = []
    for spans in spans_of:
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.append(_kv("service.name", "reliability-app"))
        ss = rs.scope_spans.add()
        ss.scope.name = "reliability"
        calls = set()
        for sp, billable in spans:
            ss.spans.append(sp)
            if billable:
                calls.add((sp.trace_id.hex(), sp.span_id.hex()))
        out.append(Request(req.SerializeToString(), calls))
    return out


def _span(tid: bytes, sid: bytes, parent: bytes | None, name: str, kind: int, start: int,
          attrs: list[KeyValue]) -> Any:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    s = Span(trace_id=tid, span_id=sid, name=name, kind=kind,  # type: ignore[arg-type]
             start_time_unix_nano=start, end_time_unix_nano=start + 500_000_000)
    if parent:
        s.parent_span_id = parent
    s.attributes.extend(attrs)
    return s


@dataclass
class Outcome:
    code: grpc.StatusCode
    retry_delay_s: float | None = None
    rejected: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


def export(channel: grpc.Channel, body: bytes, timeout: float = 15) -> Outcome:
    """One Export call with raw bytes; the outcome with the server's RetryInfo delay, if any."""
    try:
        raw = channel.unary_unary(EXPORT)(body, timeout=timeout)
    except grpc.RpcError as e:
        return Outcome(e.code(), retry_delay(e), 0, e.details() or "")
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(raw)
    return Outcome(grpc.StatusCode.OK, None, resp.partial_success.rejected_spans)


def retry_delay(e: Any) -> float | None:
    for k, v in e.trailing_metadata() or ():
        if k == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo()
            info.ParseFromString(v)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class DrainedServer(Server):
    """The conftest Server, with its output read continuously (a chatty server must never block on a full pipe)."""

    def start(self) -> DrainedServer:
        super().start()
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        self._pump = threading.Thread(target=lambda: self.output.extend(iter(out.readline, "")), daemon=True)
        self._pump.start()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._pump.join(10)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._pump.join(10)

    def recovered(self) -> int:
        for line in self.output:
            if "recovered" in line:
                return int(line.rsplit("recovered ", 1)[1].split()[0])
        return 0

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


def start_server(tmp: Path, config: dict[str, Any] | None = None, ledger: Path | None = None) -> DrainedServer:
    return DrainedServer(tmp, config, ledger).start()


def ledger_rows(srv: Server) -> list[tuple[Any, ...]]:
    """The billed calls, without settled_at (a re-settled row is the same charge at a later time)."""
    return srv.query(
        "SELECT trace_id, span_id, tenant_id, tenant_source, request_id, provider, response_model, input_tokens, "
        "output_tokens, list_cost, effective_cost, pricing_status FROM llm_calls ORDER BY trace_id, span_id"
    )


def totals(srv: Server) -> tuple[Any, ...]:
    row = srv.query("SELECT count(*), sum(input_tokens), sum(output_tokens), sum(list_cost), sum(effective_cost), "
                    "count(DISTINCT tenant_id) FROM llm_calls")[0]
    return tuple(row)


def sample_rss(srv: DrainedServer, stop: threading.Event, into: list[float], every_s: float = 0.02) -> None:
    while not stop.is_set():
        try:
            into.append(srv.rss_mib())
        except (OSError, AssertionError):
            return
        time.sleep(every_s)

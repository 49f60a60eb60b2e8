"""The transport-independent Export path shared by gRPC and HTTP: auth, backpressure, extract, commit."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver._decode import DecodePool
from receiver._errors import Overloaded, Unauthenticated
from receiver._memory import MemoryLimiter
from receiver._otlp import AttributeFilter, Extracted, SpanValidator, extract
from receiver._spool import Spool
from receiver.config import ReceiverConfig


@dataclass(frozen=True)
class ExportOutcome:
    accepted: int
    rejected: int
    error_message: str


@dataclass
class ReceiverStats:
    """Counters for /metrics; written under the receiver's lock."""

    requests: int = 0
    spans_accepted: int = 0
    spans_rejected: int = 0
    refused_overload: int = 0
    refused_invalid: int = 0
    refused_storage: int = 0
    spans_rejected_by_reason: dict[str, int] = field(default_factory=dict)


class ExportHandler:
    """Threading: ``export`` is called concurrently by the gRPC pool and the HTTP server threads."""

    def __init__(
        self,
        config: ReceiverConfig,
        spool: Spool,
        attribute_filter: AttributeFilter,
        validator: SpanValidator | None = None,
        decoder: DecodePool | None = None,
    ) -> None:
        """``decoder``: where protobuf bodies are decoded (default: in the calling thread)."""
        self._config = config
        self._decoder = decoder or DecodePool(attribute_filter, validator, config.max_spans_per_request, 0)
        self._spool = spool
        self._filter = attribute_filter
        self._validator = validator
        self._token = config.auth.token()
        self._slots = threading.BoundedSemaphore(config.max_inflight_requests)
        self._lock = threading.Lock()
        self._backpressure: list[str] = []
        self.memory = MemoryLimiter(config.memory_limit_mib, config.retry_after_s)
        self.stats = ReceiverStats()

    def set_backpressure(self, reason: str | None) -> None:
        """Downstream (the processors) asks the receiver to refuse new data retryably while it catches up."""
        with self._lock:
            self._backpressure = [reason] if reason else []

    def check_auth(self, authorization: str | None) -> None:
        if self._token is None:
            return
        expected = f"Bearer {self._token}"
        if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise Unauthenticated("missing or invalid bearer token: send 'Authorization: Bearer <token>'")

    def export(self, req: ExportTraceServiceRequest, export_baggage: str | None = None) -> ExportOutcome:
        """Export a decoded request (OTLP/JSON, decoded by the HTTP transport)."""
        return self._export(
            lambda: extract(req, self._filter, self._validator, self._config.max_spans_per_request), export_baggage)

    def export_body(self, body: bytes, export_baggage: str | None = None) -> ExportOutcome:
        """Export a serialized ExportTraceServiceRequest (OTLP/gRPC, OTLP/HTTP protobuf), decoded by the pool."""
        return self._export(lambda: self._decoder.extract(body), export_baggage)

    def _export(self, extracted: Callable[[], Extracted], export_baggage: str | None) -> ExportOutcome:
        with self._lock:
            self.stats.requests += 1
            pressure = self._backpressure[0] if self._backpressure else None
        if pressure is not None:
            self._count("refused_overload")
            raise Overloaded(
                f"tenantledger is catching up ({pressure}); retry later", retry_after_s=self._config.retry_after_s
            )
        try:
            self.memory.check()
        except Overloaded:
            self._count("refused_overload")
            raise
        if not self._slots.acquire(blocking=False):
            self._count("refused_overload")
            raise Overloaded(
                f"more than max_inflight_requests ({self._config.max_inflight_requests}) exports in flight; "
                "retry later",
                retry_after_s=self._config.retry_after_s,
            )
        try:
            ex = extracted()
            baggage = export_baggage if self._config.accept_export_baggage else None
            accepted = self._spool.append(ex, baggage)
        finally:
            self._slots.release()
        with self._lock:
            self.stats.spans_accepted += accepted
            self.stats.spans_rejected += ex.rejected
            for reason, n in ex.rejected_by_reason.items():
                self.stats.spans_rejected_by_reason[reason] = self.stats.spans_rejected_by_reason.get(reason, 0) + n
        return ExportOutcome(accepted, ex.rejected, ex.error_message())

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

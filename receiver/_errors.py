"""Receiver errors, permanent or retryable, and the one place that maps them to gRPC codes and HTTP statuses.

Follows the OTLP spec's failure semantics (opentelemetry-proto docs/specification.md, "Failures"):
permanent errors must not be retried (INVALID_ARGUMENT / 400); transient ones carry a retry hint
(UNAVAILABLE / 503, RESOURCE_EXHAUSTED + google.rpc.RetryInfo / 429 + Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class ReceiverError(Exception):
    """Base of every error the receiver answers on the wire."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequest(ReceiverError):
    """The request itself cannot be decoded or used; retrying it unchanged fails again."""


class RequestTooLarge(InvalidRequest):
    """Over the configured request size or span count."""


class UnsupportedMediaType(InvalidRequest):
    """HTTP Content-Type is neither application/x-protobuf nor application/json."""


class Unauthenticated(ReceiverError):
    """Missing or wrong bearer token."""


class Overloaded(ReceiverError):
    """Too much work in flight; the client should back off and retry."""

    retryable = True


class StorageUnavailable(ReceiverError):
    """The durable spool could not commit (disk full, ledger not writable); nothing was acknowledged."""

    retryable = True


class WorkerUnavailable(ReceiverError):
    """A decode worker died while decoding this request; it is being replaced, nothing was committed."""

    retryable = True


@dataclass(frozen=True)
class WireError:
    grpc_code: grpc.StatusCode
    http_status: int
    retry_after_s: float | None
    message: str


def to_wire(err: BaseException) -> WireError:
    """Map any exception to the wire. Unknown exceptions are internal trouble: retryable, never a crash.

    Mirrors the Collector's receiver/otlpreceiver/internal/errors: non-permanent -> UNAVAILABLE/503,
    ResourceExhausted -> 429, InvalidArgument -> 400, Unauthenticated -> 401.
    """
    if isinstance(err, RequestTooLarge):
        # Permanent on purpose: gRPC RESOURCE_EXHAUSTED would be retried forever by the Python SDK exporter.
        return WireError(grpc.StatusCode.INVALID_ARGUMENT, 413, None, err.message)
    if isinstance(err, UnsupportedMediaType):
        return WireError(grpc.StatusCode.INVALID_ARGUMENT, 415, None, err.message)
    if isinstance(err, InvalidRequest):
        return WireError(grpc.StatusCode.INVALID_ARGUMENT, 400, None, err.message)
    if isinstance(err, Unauthenticated):
        return WireError(grpc.StatusCode.UNAUTHENTICATED, 401, None, err.message)
    if isinstance(err, Overloaded):
        # The Collector's OTLP exporter retries RESOURCE_EXHAUSTED only when RetryInfo is attached;
        # the transport layer always attaches it for this error.
        return WireError(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, err.retry_after_s or 1.0, err.message)
    if isinstance(err, ReceiverError) and err.retryable:
        return WireError(grpc.StatusCode.UNAVAILABLE, 503, err.retry_after_s or 1.0, err.message)
    return WireError(grpc.StatusCode.UNAVAILABLE, 503, 1.0, f"internal error, retry later: {type(err).__name__}")

"""Stage 1 — the OTLP receiver: gRPC and HTTP Export, committed to a durable spool before acknowledging.

Hands on: ``StagedSpan`` (read back from the ``Spool`` or published to its listeners after commit), whose attributes
are a dict or, for processors that read them in other processes, ``JSONAttributes``; and, for a reader in another
process, where spans are in the spool's files (``Spool.locate``, ``FrameRef``) and how to read them there
(``read_spans_at``).
"""

from receiver._core import ExportHandler, ExportOutcome, ReceiverStats
from receiver._decode import DecodePool
from receiver._errors import (
    InvalidRequest,
    Overloaded,
    ReceiverError,
    RequestTooLarge,
    StorageUnavailable,
    Unauthenticated,
    UnsupportedMediaType,
    WorkerUnavailable,
    to_wire,
)
from receiver._grpc import GrpcServer
from receiver._http import HttpRequest, HttpResponse, HttpServer, Route
from receiver._model import JSONAttributes, SpanEvent, SpanLink, StagedSpan
from receiver._otlp import AttributeFilter, SpanValidator, decode_json, decode_protobuf, extract
from receiver._spool import FrameRef, Spool, read_spans_at
from receiver.config import AuthConfig, ReceiverConfig, TLSConfig, parse_endpoint

__all__ = [
    "AttributeFilter",
    "AuthConfig",
    "DecodePool",
    "ExportHandler",
    "ExportOutcome",
    "FrameRef",
    "GrpcServer",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "InvalidRequest",
    "JSONAttributes",
    "Overloaded",
    "ReceiverConfig",
    "ReceiverError",
    "ReceiverStats",
    "RequestTooLarge",
    "Route",
    "SpanEvent",
    "SpanLink",
    "SpanValidator",
    "Spool",
    "StagedSpan",
    "StorageUnavailable",
    "TLSConfig",
    "Unauthenticated",
    "UnsupportedMediaType",
    "WorkerUnavailable",
    "decode_json",
    "decode_protobuf",
    "extract",
    "parse_endpoint",
    "read_spans_at",
    "to_wire",
]

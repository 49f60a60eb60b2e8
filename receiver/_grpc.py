"""OTLP/gRPC: opentelemetry.proto.collector.trace.v1.TraceService/Export."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from receiver._core import ExportHandler
from receiver._errors import InvalidRequest, ReceiverError, StorageUnavailable, to_wire
from receiver.config import ReceiverConfig, parse_endpoint

log = logging.getLogger("tenantledger.receiver")
_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"  # opentelemetry/proto/collector/trace/v1


class _TraceService:
    """TraceService/Export with the request left serialized: the handler decodes it (possibly in a decode worker
    process), and a malformed body is answered INVALID_ARGUMENT by the receiver, not an opaque gRPC INTERNAL."""

    def __init__(self, handler: ExportHandler) -> None:
        self._handler = handler

    def export(self, request: bytes, context: grpc.ServicerContext) -> Any:
        md = {k: v for k, v in context.invocation_metadata()}
        try:
            self._handler.check_auth(md.get("authorization"))
            outcome = self._handler.export_body(request, md.get("baggage"))
        except Exception as e:  # every failure is mapped to the wire, never raised into grpc
            _abort(context, e, self._handler)
            raise AssertionError("unreachable") from e  # context.abort raises
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if outcome.rejected:
            # OTLP partial success: the request is accepted, the rejected spans are reported.
            resp.partial_success.rejected_spans = outcome.rejected
            resp.partial_success.error_message = outcome.error_message
        return resp


def _abort(context: grpc.ServicerContext, err: BaseException, handler: ExportHandler) -> None:
    wire = to_wire(err)
    if isinstance(err, InvalidRequest):
        handler._count("refused_invalid")
    elif isinstance(err, StorageUnavailable):
        handler._count("refused_storage")
    if not isinstance(err, ReceiverError):
        log.exception("internal error in Export")
    status = status_pb2.Status(code=getattr(code_pb2, wire.grpc_code.name), message=wire.message)
    trailers: list[tuple[str, bytes]] = []
    if wire.retry_after_s is not None:
        seconds = int(wire.retry_after_s)
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((wire.retry_after_s - seconds) * 1e9))
        )
        status.details.add().Pack(info)
        # The Python SDK reads RetryInfo from this trailer; the Collector reads the status details.
        trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    context.set_trailing_metadata(tuple(trailers))
    context.abort(wire.grpc_code, wire.message)


class GrpcServer:
    def __init__(self, config: ReceiverConfig, handler: ExportHandler) -> None:
        limit = config.max_request_bytes
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
            # gRPC's own limit answers RESOURCE_EXHAUSTED *without* RetryInfo, which the Collector's exporter
            # treats as permanent (data dropped): keep it far above max_inflight_requests so that overload is
            # refused by ExportHandler, with RetryInfo. It stays as a guard against connection floods.
            maximum_concurrent_rpcs=max(1024, config.max_inflight_requests * 4),
        )
        export = grpc.unary_unary_rpc_method_handler(
            _TraceService(handler).export,
            request_deserializer=None,  # raw bytes
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, {"Export": export}),)
        )
        host, port = parse_endpoint(config.grpc_endpoint)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if config.tls.enabled:
            assert config.tls.cert_file is not None and config.tls.key_file is not None
            creds = grpc.ssl_server_credentials(
                [(config.tls.key_file.read_bytes(), config.tls.cert_file.read_bytes())]
            )
            self.port = self._server.add_secure_port(address, creds)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind the gRPC endpoint {config.grpc_endpoint}")
        self.host = host

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_s: float) -> None:
        """Stop accepting; wait up to grace_s for in-flight Export calls to finish."""
        self._server.stop(grace_s).wait()

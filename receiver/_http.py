"""OTLP/HTTP: ``POST /v1/traces`` with application/x-protobuf or application/json, optionally gzip-compressed.

The same listener serves the routes other components register (query API, dashboard, metrics); the
receiver only knows them as (method, path prefix) -> handler.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from receiver._core import ExportHandler
from receiver._errors import (
    InvalidRequest,
    ReceiverError,
    RequestTooLarge,
    StorageUnavailable,
    UnsupportedMediaType,
    to_wire,
)
from receiver._otlp import decode_json
from receiver.config import ReceiverConfig, parse_endpoint

log = logging.getLogger("tenantledger.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class HttpResponse:
    status: int
    body: bytes | str
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[HttpRequest], HttpResponse]


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Decode Content-Encoding with a hard output limit (a small gzip bomb must not expand unbounded)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: use gzip or none")
    wbits = 16 + zlib.MAX_WBITS if enc in ("gzip", "x-gzip") else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidRequest(f"request body is not valid {enc}: {e}") from e
    if len(out) > limit:
        raise RequestTooLarge(f"decompressed request is over max_request_size_mib ({limit} bytes)")
    if not d.eof:
        raise InvalidRequest(f"request body is truncated {enc} data (stream ended early)")
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class HttpServer:
    def __init__(self, config: ReceiverConfig, handler: ExportHandler) -> None:
        self._config = config
        self._export = handler
        self._routes: list[tuple[str, str, Route]] = []
        self._inflight = 0
        self._cv = threading.Condition()
        self._closing = False
        host, port = parse_endpoint(config.http_endpoint)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "tenantledger"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
                # The request line is client-controlled: escaped (the stdlib escapes it, but only in the
                # method this overrides).
                log.debug("http %s", ascii(format % args))

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                outer._dispatch(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                outer._dispatch(self, "GET")

        self._httpd = _Server((host, port), Handler)
        if config.tls.enabled:
            assert config.tls.cert_file is not None and config.tls.key_file is not None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def add_route(self, method: str, path_prefix: str, route: Route) -> None:
        self._routes.append((method, path_prefix, route))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="otlp-http", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float) -> None:
        """Stop accepting, then wait up to grace_s for in-flight requests."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._cv:
            self._closing = True
            self._cv.wait_for(lambda: self._inflight == 0, timeout=grace_s)

    # --- request handling -------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._cv:
            self._inflight += 1
        try:
            url = urlsplit(h.path)
            headers = {k.lower(): v for k, v in h.headers.items()}
            if method == "POST" and url.path == "/v1/traces":
                resp = self._traces(h, headers)
            else:
                resp = self._route(h, method, url.path, parse_qs(url.query), headers)
            self._send(h, resp)
        except Exception:  # a handler bug must not kill the listener
            log.exception("http handler failed")
            try:
                self._send(h, HttpResponse(500, "internal error\n"))
            except OSError:
                pass
        finally:
            with self._cv:
                self._inflight -= 1
                self._cv.notify_all()

    def _read_body(self, h: BaseHTTPRequestHandler, limit: int) -> bytes:
        length = h.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise InvalidRequest("Content-Length is required")
        n = int(length)
        if n > limit:
            h.close_connection = True
            raise RequestTooLarge(f"request body is {n} bytes, over max_request_size_mib ({limit} bytes)")
        return h.rfile.read(n)

    def _route(
        self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> HttpResponse:
        for m, prefix, route in self._routes:
            if m == method and (path == prefix or (prefix.endswith("/") and path.startswith(prefix))):
                body = self._read_body(h, self._config.max_request_bytes) if method == "POST" else b""
                return route(HttpRequest(method, path, query, headers, body))
        if method == "POST":
            # Drain the body so a keep-alive connection stays usable.
            length = h.headers.get("Content-Length")
            if length and length.isdigit() and int(length) <= self._config.max_request_bytes:
                h.rfile.read(int(length))
            else:
                h.close_connection = True
        return HttpResponse(404, f"no route for {method} {path}\n")

    def _traces(self, h: BaseHTTPRequestHandler, headers: dict[str, str]) -> HttpResponse:
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        as_json = ctype == JSON
        try:
            self._export.check_auth(headers.get("authorization"))
            if ctype not in (PROTOBUF, JSON):
                h.close_connection = True
                raise UnsupportedMediaType(
                    f"Content-Type {ctype or '(none)'!r} is not supported: use {PROTOBUF} or {JSON}"
                )
            limit = self._config.max_request_bytes
            body = decompress(self._read_body(h, limit), headers.get("content-encoding", ""), limit)
            if as_json:
                outcome = self._export.export(decode_json(body), headers.get("baggage"))
            else:
                outcome = self._export.export_body(body, headers.get("baggage"))
        except Exception as e:
            return self._error(e, as_json)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if outcome.rejected:
            resp.partial_success.rejected_spans = outcome.rejected
            resp.partial_success.error_message = outcome.error_message
        if as_json:
            return HttpResponse(200, json_format.MessageToJson(resp, indent=None), JSON)
        return HttpResponse(200, resp.SerializeToString(), PROTOBUF)

    def _error(self, err: BaseException, as_json: bool) -> HttpResponse:
        wire = to_wire(err)
        if isinstance(err, InvalidRequest):
            self._export._count("refused_invalid")
        elif isinstance(err, StorageUnavailable):
            self._export._count("refused_storage")
        if not isinstance(err, ReceiverError):
            log.exception("internal error in /v1/traces")
        # OTLP/HTTP: 4xx/5xx bodies are a google.rpc.Status in the request's encoding.
        status = status_pb2.Status(code=getattr(code_pb2, wire.grpc_code.name), message=wire.message)
        headers = {}
        if wire.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(wire.retry_after_s)))
        if as_json:
            return HttpResponse(wire.http_status, json.dumps({"code": status.code, "message": wire.message}), JSON,
                                headers)
        return HttpResponse(wire.http_status, status.SerializeToString(), PROTOBUF, headers)

    def _send(self, h: BaseHTTPRequestHandler, resp: HttpResponse) -> None:
        body = resp.body.encode() if isinstance(resp.body, str) else resp.body
        h.send_response(resp.status)
        h.send_header("Content-Type", resp.content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in resp.headers.items():
            h.send_header(k, v)
        if h.close_connection:
            h.send_header("Connection", "close")
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

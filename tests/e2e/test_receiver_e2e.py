"""End to end through the real receiver: real OTel SDK exporters, the shared fixtures, failures, kill -9."""

from __future__ import annotations

import gzip
import json
import re
import signal
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tenantledger.app import spool_path
from tests.conftest import fixture_names, fixture_span_ids, fixture_to_protobuf, load_fixture


def post(url: str, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def grpc_export(endpoint: str, msg: Any, metadata: list[tuple[str, str]] | None = None) -> Any:
    with grpc.insecure_channel(endpoint) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        return stub.Export(msg, metadata=metadata, timeout=30)


def _sdk_send(exporter: Any, tenant: str, n: int) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-app"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for i in range(n):
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER, attributes={"tenant.id": tenant}):
            with tracer.start_as_current_span(
                "chat gpt-4o-mini",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.response.id": f"chatcmpl-{tenant}-{i}",
                    "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.usage.output_tokens": 20,
                },
            ):
                pass
    assert provider.force_flush(30_000)
    provider.shutdown()


def test_real_sdk_exporters_grpc_and_http_reach_the_ledger(server_factory: Any) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    srv = server_factory()
    _sdk_send(GrpcExporter(endpoint=srv.grpc, insecure=True), "tenant-grpc", 5)
    _sdk_send(HttpExporter(endpoint=f"{srv.http}/v1/traces"), "tenant-http", 7)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import Compression

    _sdk_send(GrpcExporter(endpoint=srv.grpc, insecure=True, compression=Compression.Gzip), "tenant-gzip", 3)
    assert srv.stop() == 0
    # A clean stop checkpoints: everything is in the ledger file itself, no write-ahead log left to replay.
    assert not srv.ledger.with_name(srv.ledger.name + ".wal").exists()
    assert "checkpoint at shutdown failed" not in "".join(srv.output)
    rows = dict(srv.query("SELECT tenant_id, count(*) FROM llm_calls GROUP BY 1"))
    assert rows == {"tenant-grpc": 5, "tenant-http": 7, "tenant-gzip": 3}
    assert len(srv.spool_rows("seq")) == 30
    sources = srv.query("SELECT DISTINCT tenant_source FROM llm_calls")
    assert sources == [("ancestor",)]


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_accepted_over_http_json_and_grpc(server_factory: Any, name: str) -> None:
    doc = load_fixture(name)
    srv = server_factory()
    status, body, _ = post(f"{srv.http}/v1/traces", json.dumps(doc).encode(), "application/json")
    assert status == 200, body
    resp = json.loads(body)
    assert not resp.get("partialSuccess", {}).get("rejectedSpans"), resp
    # The same spans again over gRPC, as protobuf: idempotent, nothing billed twice.
    out = grpc_export(srv.grpc, fixture_to_protobuf(doc))
    assert out.partial_success.rejected_spans == 0
    assert srv.stop() == 0
    stored = set(srv.spool_rows("trace_id", "span_id"))
    assert stored == fixture_span_ids(doc)
    dup = srv.query("SELECT count(*) - count(DISTINCT (trace_id, span_id)) FROM llm_calls")[0][0]
    assert dup == 0


def _request(n_spans: int, tenant: str = "t1", trace_byte: int = 1) -> trace_service_pb2.ExportTraceServiceRequest:
    spans = []
    for i in range(n_spans):
        spans.append(
            {
                "traceId": f"{trace_byte:02x}" * 16,
                "spanId": f"{i + 1:016x}",
                "name": "chat",
                "kind": 3,
                "startTimeUnixNano": "1767225600000000000",
                "endTimeUnixNano": "1767225601000000000",
                "attributes": [
                    {"key": "tenant.id", "value": {"stringValue": tenant}},
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                    {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}},
                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}},
                ],
            }
        )
    scope = {"scope": {"name": "t"}, "spans": spans}
    doc = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [scope]}]}
    return fixture_to_protobuf(doc)


def test_kill_9_right_after_ack_loses_nothing_and_duplicates_nothing(server_factory: Any, tmp_path: Any) -> None:
    srv = server_factory()
    sent = set()
    for b in range(1, 21):
        msg = _request(50, tenant=f"t{b % 3}", trace_byte=b)
        grpc_export(srv.grpc, msg)
        sent |= {(s.trace_id.hex(), s.span_id.hex()) for s in msg.resource_spans[0].scope_spans[0].spans}
    srv.kill()  # SIGKILL immediately after the last acknowledgement
    again = server_factory(ledger=srv.ledger)
    grpc_export(again.grpc, _request(50, tenant="t1", trace_byte=1))  # an exporter retry of an acked request
    assert again.stop() == 0
    stored = again.query("SELECT trace_id, span_id, count(*) FROM llm_calls GROUP BY 1, 2")
    assert {(t, s) for t, s, _ in stored} == sent
    assert all(c == 1 for _, _, c in stored)
    assert again.query("SELECT count(*) FROM llm_calls")[0][0] == 1000


def test_same_request_twice_is_billed_once(server_factory: Any) -> None:
    srv = server_factory()
    msg = _request(3)
    grpc_export(srv.grpc, msg)
    status, _, _ = post(f"{srv.http}/v1/traces", msg.SerializeToString(), "application/x-protobuf")
    assert status == 200
    assert srv.stop() == 0
    assert srv.query("SELECT count(*), sum(input_tokens) FROM llm_calls") == [(3, 30)]


def _status(body: bytes) -> Any:
    from google.rpc import status_pb2

    st = status_pb2.Status()
    st.ParseFromString(body)
    return st


def test_malformed_requests_get_documented_errors(server_factory: Any) -> None:
    srv = server_factory({"receiver": {"max_request_size_mib": 0.01}})
    url = f"{srv.http}/v1/traces"
    status, body, _ = post(url, b"\x0a\xff\xff\xff", "application/x-protobuf")
    assert status == 400 and b"not a valid OTLP" in _status(body).message.encode()
    status, body, _ = post(url, b"{}", "text/plain")
    assert status == 415
    good = _request(2).SerializeToString()
    truncated = gzip.compress(good)[:-6]
    status, body, _ = post(url, truncated, "application/x-protobuf", {"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in _status(body).message
    status, body, _ = post(url, b"{" + b" " * 20_000 + b"}", "application/json")
    assert status == 413
    status, body, _ = post(url, b"not json", "application/json")
    assert status == 400 and "not valid JSON" in json.loads(body)["message"]
    with pytest.raises(grpc.RpcError) as err:
        with grpc.insecure_channel(srv.grpc) as ch:
            ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(b"\x0a\xff\xff\xff",
                                                                                        timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL or err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert srv.stop() == 0


def test_bad_spans_rejected_alone_good_spans_kept(server_factory: Any) -> None:
    srv = server_factory()
    msg = _request(3)
    spans = msg.resource_spans[0].scope_spans[0].spans
    spans[0].span_id = b"\x01\x02"  # wrong length
    for kv in spans[1].attributes:
        if kv.key == "gen_ai.usage.input_tokens":
            kv.value.int_value = -5
    out = grpc_export(srv.grpc, msg)
    assert out.partial_success.rejected_spans == 2
    assert "spanId must be 8 bytes" in out.partial_success.error_message
    assert "gen_ai.usage.input_tokens" in out.partial_success.error_message
    # Same over OTLP/JSON: a span whose id is not hex, one with a non-numeric token count.
    doc = json_format.MessageToDict(_request(3, trace_byte=9))
    for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        import base64

        s["traceId"] = base64.b64decode(s["traceId"]).hex()
        s["spanId"] = base64.b64decode(s["spanId"]).hex()
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "zz" * 16
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"][4]["value"] = {"stringValue": "lots"}
    status, body, _ = post(f"{srv.http}/v1/traces", json.dumps(doc).encode(), "application/json")
    assert status == 200
    ps = json.loads(body)["partialSuccess"]
    assert int(ps["rejectedSpans"]) == 2 and "traceId" in ps["errorMessage"]
    # The operator sees the rejections by reason, and the pipeline's health, in /metrics.
    with urllib.request.urlopen(f"{srv.http}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'tenantledger_spans_rejected_by_reason_total{reason="invalid_id"} 2.0' in metrics
    assert 'tenantledger_spans_rejected_by_reason_total{reason="invalid_usage"} 2.0' in metrics
    assert "tenantledger_spans_rejected_total 4.0" in metrics
    for gauge in ("traces_pending", "spans_pending", "settle_lag_seconds", "ledger_write_seconds"):
        assert f"tenantledger_{gauge} " in metrics
    spool = dict(re.findall(r"^tenantledger_(spool_\w+) (\S+)$", metrics, re.M))
    assert float(spool["spool_bytes"]) == sum(f.stat().st_size for f in spool_path(srv.ledger).iterdir())
    assert float(spool["spool_bytes"]) > 0 and float(spool["spool_segments"]) == 1
    assert float(spool["spool_write_errors_total"]) == 0
    # Where the memory goes: DuckDB's cache (under serve's cap) and the ledger's two filters (ledger.key_filter_mib).
    memory = dict(re.findall(r"^tenantledger_(duckdb_memory_bytes|ledger_filter_bytes) (\S+)$", metrics, re.M))
    assert 0 < float(memory["duckdb_memory_bytes"]) <= 256 * 2**20
    assert float(memory["ledger_filter_bytes"]) == 2 * 32 * 2**20
    # Two reports of one call are matched within the whole hour (the filter holds far more than this traffic), and
    # no settlement had to look its calls' earlier reports up in the ledger.
    dedup = dict(re.findall(r"^tenantledger_(dedup_\w+) (\S+)$", metrics, re.M))
    assert float(dedup["dedup_window_seconds"]) == 3600 and float(dedup["dedup_exact_lookups_total"]) == 0
    assert srv.stop() == 0
    assert srv.query("SELECT count(*) FROM llm_calls") == [(2,)]


def test_bearer_token_auth_on_both_transports(server_factory: Any) -> None:
    srv = server_factory({"receiver": {"auth": {"bearer_token": "s3cret"}}})
    body = _request(1).SerializeToString()
    status, _, _ = post(f"{srv.http}/v1/traces", body, "application/x-protobuf")
    assert status == 401
    status, _, _ = post(f"{srv.http}/v1/traces", body, "application/x-protobuf", {"Authorization": "Bearer s3cret"})
    assert status == 200
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(srv.grpc, _request(1))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    grpc_export(srv.grpc, _request(1), [("authorization", "Bearer s3cret")])
    assert srv.stop(signal.SIGINT) == 0

"""Measure one instance's rate with the shared ledger on (docs/scaling.md): N traces, each a copy of a captured
fixture with fresh ids, sent over OTLP/HTTP by a few client threads to a `tenantledger serve` on loopback; then
SIGTERM, which settles and publishes everything. Prints spans/s acknowledged and spans/s end to end.

    .venv/bin/python -m tests.scale.measure_rate --traces 4000 --dsn "host=127.0.0.1 port=5432 dbname=x user=postgres"
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Server, fixture_to_protobuf, load_fixture


def requests(template: ExportTraceServiceRequest, traces: int, per_request: int) -> list[bytes]:
    out: list[bytes] = []
    batch = ExportTraceServiceRequest()
    for i in range(traces):
        copy = ExportTraceServiceRequest()
        copy.CopyFrom(template)
        tid = os.urandom(16)
        for rs in copy.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = tid
                    for kv in span.attributes:  # distinct calls: the same response id would be billed once
                        if kv.key == "gen_ai.response.id":
                            kv.value.string_value += f"-{i}"
        batch.resource_spans.extend(copy.resource_spans)
        if (i + 1) % per_request == 0:
            out.append(batch.SerializeToString())
            batch = ExportTraceServiceRequest()
    if batch.resource_spans:
        out.append(batch.SerializeToString())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=4000)
    ap.add_argument("--per-request", type=int, default=50)
    ap.add_argument("--fixture", default="baggage__otelv2_ug11_default__tool_roundtrip.json")
    ap.add_argument("--dsn", help="PostgreSQL DSN of an empty database; without it, the embedded ledger only")
    args = ap.parse_args()
    template = fixture_to_protobuf(load_fixture(args.fixture))
    spans_per_trace = sum(len(ss.spans) for rs in template.resource_spans for ss in rs.scope_spans)
    bodies = requests(template, args.traces, args.per_request)
    tmp = Path(tempfile.mkdtemp(prefix="tl-rate-"))
    cfg = {"ledger": {"shared": {"catalog_dsn": args.dsn, "data_path": str(tmp / "lake") + "/",
                                 "publish_interval_s": 1.0}}} if args.dsn else {}
    server = Server(tmp, cfg)
    server.start()

    def send(body: bytes) -> None:
        req = urllib.request.Request(f"{server.http}/v1/traces", data=body,
                                     headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(send, bodies))
    t1 = time.monotonic()
    assert server.stop() == 0
    t2 = time.monotonic()
    spans = args.traces * spans_per_trace
    calls = server.query("SELECT count(*) FROM llm_calls")[0][0]
    print(f"{spans} spans ({args.traces} traces, {calls} billed calls), lake={'on' if args.dsn else 'off'}: "
          f"ack {spans / (t1 - t0):.0f} spans/s, end to end (settled{' and published' if args.dsn else ''}) "
          f"{spans / (t2 - t0):.0f} spans/s")


if __name__ == "__main__":
    main()

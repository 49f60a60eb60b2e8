"""The minimal durable OTLP pipeline the ingest benchmark is measured against: a grpcio Export server that
decodes, extracts span fields into columns, builds an Arrow table, appends it to DuckDB and commits before acking.

    python bench/baseline.py [--requests N] [--cores 1|2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

from _load import LoadClient, Workload, machine, percentile

_DDL = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id VARCHAR, span_id VARCHAR, parent_span_id VARCHAR, name VARCHAR, kind TINYINT,
    start_ns BIGINT, end_ns BIGINT, service_name VARCHAR, attributes VARCHAR
)
"""


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def _serve(db_path: str, conn: Any, workers: int, cpus: set[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)  # before any thread starts: every thread inherits it
    import duckdb
    import grpc
    import pyarrow as pa
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    con = duckdb.connect(db_path)
    # As `tenantledger serve` does (ledger.duckdb_threads): DuckDB counts the machine's CPUs, not the affinity mask.
    con.execute(f"SET threads = {len(cpus)}")
    con.execute(_DDL)
    lock = threading.Lock()
    ok = ExportTraceServiceResponse().SerializeToString()
    dumps = json.dumps

    def export(body: bytes, context: Any) -> bytes:
        req = ExportTraceServiceRequest.FromString(body)
        cols: list[list[Any]] = [[] for _ in range(9)]
        tid, sid, pid, name, kind, start, end, svc, attrs = cols
        for rs in req.resource_spans:
            service = next((kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"), None)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    tid.append(sp.trace_id.hex())
                    sid.append(sp.span_id.hex())
                    pid.append(sp.parent_span_id.hex() or None)
                    name.append(sp.name)
                    kind.append(sp.kind)
                    start.append(sp.start_time_unix_nano)
                    end.append(sp.end_time_unix_nano)
                    svc.append(service)
                    attrs.append(dumps({kv.key: _value(kv.value) for kv in sp.attributes}, separators=(",", ":")))
        table = pa.table(
            {
                "trace_id": tid, "span_id": sid, "parent_span_id": pid, "name": name,
                "kind": pa.array(kind, pa.int8()), "start_ns": pa.array(start, pa.int64()),
                "end_ns": pa.array(end, pa.int64()), "service_name": svc, "attributes": attrs,
            }
        )
        with lock:
            cur = con.cursor()
            cur.register("_in", table)
            # One auto-committed statement: durable (WAL synced) before the response is sent.
            cur.execute("INSERT INTO spans SELECT * FROM _in")
            cur.close()
        return ok

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.recv()  # until told to stop
    server.stop(5).wait()
    rows = con.execute("SELECT count(*) FROM spans").fetchone()
    conn.send(int(rows[0]) if rows else 0)
    con.close()


def run_baseline(
    client: LoadClient, index: int, spans: int, rounds: int, cores: int, concurrency: int = 8
) -> dict[str, float]:
    """Start the baseline server (pinned to ``cores`` CPUs), send the client's workload ``index`` ``rounds`` times
    with fresh ids (``spans`` in all)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tl-baseline-") as tmp:
        parent, child = ctx.Pipe()
        cpus = set(range(min(cores, os.cpu_count() or 1)))
        proc = ctx.Process(target=_serve, args=(str(Path(tmp) / "baseline.duckdb"), child, 8, cpus), daemon=True)
        proc.start()
        port = parent.recv()
        res = client.run(index, f"127.0.0.1:{port}", concurrency=concurrency, rounds=rounds)
        parent.send("stop")
        stored = parent.recv()
        proc.join(10)
    if res.errors or stored != spans:
        raise SystemExit(f"baseline lost data: stored {stored} of {spans} spans; errors: {res.errors[:3]}")
    return {
        "spans_per_s": res.sent_spans / res.elapsed_s,
        "p50_ms": percentile(res.latencies_s, 50) * 1000,
        "p99_ms": percentile(res.latencies_s, 99) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100, help="distinct 512-span requests built (default 100)")
    p.add_argument("--rounds", type=int, default=4, help="times they are sent, with fresh ids (default 4)")
    p.add_argument("--cores", type=int, default=1, help="CPUs the server may use (default 1)")
    args = p.parse_args(argv)
    w = Workload(args.requests)
    print(f"machine: {machine()}", flush=True)
    client = LoadClient([w], cpus={(os.cpu_count() or 1) - 1})
    spans = w.spans * args.rounds
    try:
        r = run_baseline(client, 0, spans, args.rounds, args.cores)
    finally:
        client.close()
    print(f"baseline ({args.cores} core): {spans} spans in 512-span requests: {r['spans_per_s']:,.0f} spans/s "
          f"(Export p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms at full load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

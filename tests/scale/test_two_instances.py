"""Scale-out on loopback: two `tenantledger serve` processes publishing to one DuckLake (real PostgreSQL catalog),
traffic split by trace id as the Collector's loadbalancing exporter does; the shared ledger must equal what one
instance given all the traffic records — also when a trace's spans are split across the two (affinity broken).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import REPO, Server, fixture_names, fixture_to_protobuf, load_fixture
from tests.scale.conftest import Postgres

COMPARED = (
    "trace_id, span_id, request_id, tenant_id, tenant_source, unattributed_reason, user_id, provider, "
    "request_model, response_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "list_cost, effective_cost, pricing_status, tenant_conflict, response_id, usage_status"
)
QUERY = f"SELECT {COMPARED} FROM llm_calls ORDER BY trace_id, span_id"
TOTALS = "SELECT tenant_id, sum(effective_cost) AS cost, count(*) AS calls FROM llm_calls GROUP BY 1 ORDER BY 1"

SpanPick = Callable[[str, Any], "int | set[int]"]


def by_trace_id(n: int) -> SpanPick:
    """The loadbalancing exporter's routing_key traceID: every span of a trace goes to one backend chosen by a
    hash of the trace id (the exact hash does not matter for what is tested: affinity)."""
    return lambda trace_hex, span: zlib.crc32(bytes.fromhex(trace_hex)) % n


def split(msg: ExportTraceServiceRequest, n: int, pick: SpanPick) -> list[ExportTraceServiceRequest]:
    """One request per backend with the spans `pick` routes there; resource and scope are kept with each."""
    out = [ExportTraceServiceRequest() for _ in range(n)]
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                chosen = pick(span.trace_id.hex(), span)
                for target in sorted(chosen) if isinstance(chosen, set) else [chosen]:
                    req = out[target]
                    if not req.resource_spans or req.resource_spans[-1].resource != rs.resource:
                        new_rs = req.resource_spans.add()
                        new_rs.resource.CopyFrom(rs.resource)
                        new_rs.schema_url = rs.schema_url
                    cur_rs = req.resource_spans[-1]
                    if not cur_rs.scope_spans or cur_rs.scope_spans[-1].scope != ss.scope:
                        new_ss = cur_rs.scope_spans.add()
                        new_ss.scope.CopyFrom(ss.scope)
                    cur_rs.scope_spans[-1].spans.add().CopyFrom(span)
    return out


def post(server: Server, msg: ExportTraceServiceRequest) -> None:
    if not msg.resource_spans:
        return
    req = urllib.request.Request(f"{server.http}/v1/traces", data=msg.SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def cli(*args: str, cwd: Path) -> list[dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "tenantledger", *args, "--format", "json"], capture_output=True,
                       text=True, cwd=cwd, timeout=120)
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


class Topology:
    """N instances on one shared lake, plus one reference instance that gets all the traffic and no lake."""

    def __init__(self, tmp: Path, dsn: str, n: int = 2) -> None:
        self.tmp = tmp
        self.shared = {"catalog_dsn": dsn, "data_path": str(tmp / "lake-data") + "/", "publish_interval_s": 0.2}
        self.instances: list[Server] = []
        for i in range(n):
            d = tmp / f"instance{i}"
            d.mkdir()
            self.instances.append(
                Server(d, {"ledger": {"shared": {**self.shared, "instance_id": f"tl-{i}"}}}).start())
        ref = tmp / "reference"
        ref.mkdir()
        self.reference = Server(ref).start()
        self.lake_config = tmp / "lake.yaml"
        self.lake_config.write_text(json.dumps({"ledger": {"shared": self.shared}}))

    def send(self, msg: ExportTraceServiceRequest, pick: SpanPick) -> None:
        post(self.reference, msg)
        for server, part in zip(self.instances, split(msg, len(self.instances), pick), strict=True):
            post(server, part)

    def stop(self) -> None:
        for s in [*self.instances, self.reference]:
            assert s.stop() == 0, "".join(s.output)

    def lake(self, sql: str) -> list[dict[str, Any]]:
        return cli("sql", "--lake", "--config", str(self.lake_config), sql, cwd=self.tmp)

    def single(self, sql: str) -> list[dict[str, Any]]:
        return cli("sql", "--ledger", str(self.reference.ledger), sql, cwd=self.tmp)


@pytest.fixture
def topology(tmp_path: Path, postgres: Postgres) -> Any:
    made: list[Topology] = []

    def make(n: int = 2) -> Topology:
        t = Topology(tmp_path, postgres.new_database(), n)
        made.append(t)
        return t

    yield make
    for t in made:
        for s in [*t.instances, t.reference]:
            if s.proc is not None and s.proc.poll() is None:
                s.kill()


def test_split_by_trace_id_equals_one_instance(topology: Any) -> None:
    topo = topology(2)
    sent_to = [0, 0]
    for name in fixture_names():
        msg = fixture_to_protobuf(load_fixture(name))
        topo.send(msg, by_trace_id(2))
        for part, req in enumerate(split(msg, 2, by_trace_id(2))):
            sent_to[part] += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    assert min(sent_to) > 0, f"the hash must spread the fixtures over both instances: {sent_to}"
    topo.stop()
    single = topo.single(QUERY)
    assert len(single) > 40
    assert topo.lake(QUERY) == single
    assert topo.lake(TOTALS) == topo.single(TOTALS)
    # Every instance published (the lake is not just one instance's copy), and no trace was merged: affinity held.
    per = topo.lake("SELECT instance_id, count(DISTINCT trace_id) AS n FROM instance_calls GROUP BY 1 ORDER BY 1")
    assert [r["instance_id"] for r in per] == ["tl-0", "tl-1"]
    assert topo.lake("SELECT count(*) AS n FROM merged_traces") == [{"n": 0}]


def test_trace_split_across_instances_is_not_double_billed_nor_loses_its_tenant(topology: Any) -> None:
    """Affinity broken three ways: a process hop whose halves land on two instances (the tenant is only known
    on the first half: the LLM call on the second must still get it, via the ancestor), an agent trace whose
    LLM calls land apart from the agent span, and a span delivered to both instances (a retry re-routed after
    a rebalance)."""
    topo = topology(2)
    hop = fixture_to_protobuf(load_fixture("hop__tracecontext_only.json"))
    # Spans of the service that holds the root go to instance 0, the other service's spans to instance 1.
    svc_of = {s.span_id: i for i, rs in enumerate(hop.resource_spans) for ss in rs.scope_spans for s in ss.spans}
    root_rs = {svc_of[s.span_id] for rs in hop.resource_spans for ss in rs.scope_spans for s in ss.spans
               if not s.parent_span_id}
    assert len(root_rs) == 1 and len(set(svc_of.values())) == 2
    topo.send(hop, lambda t, s: 0 if svc_of[s.span_id] in root_rs else 1)

    agent = fixture_to_protobuf(load_fixture("baggage__otelv2_ug11_default__tool_roundtrip.json"))
    topo.send(agent, lambda t, s: 1 if "chat" in s.name else 0)

    twice = fixture_to_protobuf(load_fixture("otelv2_ug11_default__chat.json"))
    topo.send(twice, lambda t, s: {0, 1})
    topo.stop()

    single = topo.single(QUERY)
    lake = topo.lake(QUERY)
    assert lake == single
    hop_trace = hop.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    hop_rows = [r for r in lake if r["trace_id"] == hop_trace]
    assert hop_rows and all(r["tenant_id"] == "tenant-acme" for r in hop_rows)
    # What each instance settled alone differs (this is what the merge repairs): the half without the root
    # could not know the tenant.
    alone = topo.lake(f"SELECT tenant_id FROM instance_calls WHERE trace_id = '{hop_trace}' AND instance_id = 'tl-1'")
    assert alone and all(r["tenant_id"] is None for r in alone)
    # The three traces were merged. Two instances that publish halves of a trace at once may each merge it (the
    # later one to commit saw both halves): merged_traces then has a row per merge, and the `calls` view takes
    # the most complete, latest one — so count traces, not merges.
    merged = topo.lake("SELECT count(DISTINCT trace_id) AS n FROM merged_traces")
    assert merged == [{"n": 3}], topo.lake("SELECT * FROM merged_traces ORDER BY trace_id, merged_at")
    assert topo.lake(TOTALS) == topo.single(TOTALS)


def test_lake_sql_is_read_only_and_has_no_file_or_catalog_access(topology: Any) -> None:
    topo = topology(1)
    topo.stop()
    for sql, fragment in (
        ("DELETE FROM instance_calls", "read-only"),
        ("SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT 1')", "not allowed"),
        ("SELECT * FROM query('SELECT 1')", "not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        ("SELECT * FROM ducklake_snapshots('lake')", "not allowed"),
    ):
        r = subprocess.run([sys.executable, "-m", "tenantledger", "sql", "--lake", "--config", str(topo.lake_config),
                            sql], capture_output=True, text=True, cwd=topo.tmp, timeout=60)
        assert r.returncode == 1, (sql, r.stdout)
        assert fragment in r.stderr, (sql, r.stderr)


def test_focus_export_from_the_lake_equals_the_single_instance(topology: Any, tmp_path: Path) -> None:
    topo = topology(2)
    for name in ("baggage__traceloop_openai__chat.json", "baggage__anthropic_sdk_builtin__chat.json",
                 "baggage__otelv2_ug11_default__tool_roundtrip.json"):
        topo.send(fixture_to_protobuf(load_fixture(name)), by_trace_id(2))
    topo.stop()
    outs = []
    for extra in (["--lake", "--config", str(topo.lake_config)], ["--ledger", str(topo.reference.ledger)]):
        out = tmp_path / f"focus{len(outs)}.csv"
        r = subprocess.run([sys.executable, "-m", "tenantledger", "export", "focus", "--from", "2000-01-01",
                            "--to", "2100-01-01", "-o", str(out), *extra], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    assert outs[0].count("\n") > 3

"""The whole pipeline through the real server: fixtures per failure mode, a linked job trace, SQL and FOCUS
export while serving, then the ledger after a clean stop."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.conftest import SHARED, load_fixture
from tests.e2e.test_receiver_e2e import post

FIXTURES = [
    "baggage__otelv2_ug11_default__chat.json",  # tenant on the span itself
    "hop__tracecontext_only.json",  # (2) second service lost baggage: inherit from the ancestor
    "hop__late_baggage.json",  # baggage set after the root started
    "traceloop_anthropic__chat.json",  # the anthropic SDK + OpenLLMetry: one call, two spans; (1) no tenant
    "baggage__traceloop_anthropic__tool_roundtrip.json",  # (5) agent > LLM, tool, LLM; also reported twice
    "otelv2_ug11_default__chat_stream_nousage.json",  # (4) stream without usage
    "otelv2_ug11_default__embeddings.json",  # (6) embeddings with no tenant
]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantledger", *args], capture_output=True, text=True, timeout=300)


def llm_span(doc: dict[str, Any], name_part: str) -> str:
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                if name_part in s["name"]:
                    return str(s["spanId"])
    raise AssertionError(name_part)


def test_failure_modes_sql_and_export_while_serving(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory()
    for name in FIXTURES:
        status, body, _ = post(f"{srv.http}/v1/traces", json.dumps(load_fixture(name)).encode(), "application/json")
        assert status == 200, body
    import time

    time.sleep(1.5)  # wait_duration_s is 0.3 in tests: let the traces settle
    # SQL while the server holds the ledger: answered by the server, read-only.
    q = cli("sql", "SELECT tenant_source, count(*) AS n FROM llm_calls GROUP BY 1 ORDER BY 1", "--ledger",
            str(srv.ledger), "--format", "json")
    assert q.returncode == 0, q.stderr
    assert {r["tenant_source"] for r in json.loads(q.stdout)} >= {"span", "ancestor"}
    w = cli("sql", "DELETE FROM calls", "--ledger", str(srv.ledger))
    assert w.returncode == 1 and "read-only" in w.stderr and "\n" not in w.stderr.strip()
    # FOCUS export while serving, validated.
    out = tmp_path / "focus.csv"
    e = cli("export", "focus", "--from", "2026-01-01", "--to", "2027-01-01", "-o", str(out), "--ledger",
            str(srv.ledger))
    assert e.returncode == 0, e.stderr
    v = subprocess.run([str(SHARED / "tools" / "focus-validate"), str(out)], capture_output=True, text=True,
                       timeout=900)
    assert v.returncode == 0, v.stdout
    exported = sum(Decimal(r["BilledCost"]) for r in csv.DictReader(out.open()))
    assert srv.stop() == 0

    rows = {r[0]: r[1:] for r in srv.query(
        "SELECT span_id, tenant_id, tenant_source, unattributed_reason, usage_status, input_tokens, output_tokens, "
        "pricing_status FROM llm_calls")}
    hop = rows[llm_span(load_fixture("hop__tracecontext_only.json"), "chat")]
    assert hop[:2] == ("tenant-acme", "ancestor")
    late = rows[llm_span(load_fixture("hop__late_baggage.json"), "chat")]
    assert late[:2] == ("tenant-acme", "span")
    # Anthropic reported twice (SDK span + OpenLLMetry span): billed once, with the SDK's numbers.
    anth = srv.query("SELECT count(*), sum(input_tokens), sum(output_tokens), any_value(unattributed_reason) "
                     "FROM llm_calls WHERE response_id IN (SELECT response_id FROM calls WHERE trace_id = ?)",
                     [load_fixture("traceloop_anthropic__chat.json")["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
                      ["traceId"]])
    assert anth == [(1, 471, 17, "no_tenant_in_trace")]
    tool = srv.query("SELECT count(*), sum(input_tokens), min(tenant_id), max(tenant_id) FROM llm_calls "
                     "WHERE trace_id IN (SELECT trace_id FROM calls WHERE agent_name IS NOT NULL OR "
                     "operation = 'chat') AND provider = 'anthropic' AND tenant_id IS NOT NULL")
    assert tool == [(2, 461 + 521, "tenant-acme", "tenant-acme")]
    nousage = rows[llm_span(load_fixture("otelv2_ug11_default__chat_stream_nousage.json"), "chat")]
    assert nousage[3:] == ("missing", None, None, "usage_missing")
    emb = rows[llm_span(load_fixture("otelv2_ug11_default__embeddings.json"), "embeddings")]
    assert emb[2] == "infrastructure_call"
    total = srv.query("SELECT sum(effective_cost) FROM llm_calls")[0][0]
    assert exported == total and total > 0


def test_job_trace_inherits_tenant_through_span_link(server_factory: Any) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Link, SpanKind

    srv = server_factory()
    provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=srv.grpc, insecure=True)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("POST /reports", kind=SpanKind.SERVER,
                                      attributes={"tenant.id": "acme", "user.id": "u-1"}) as req:
        enqueue_ctx = req.get_span_context()
    # (3) the worker starts a new trace for the job, linked to the request that enqueued it
    with tracer.start_as_current_span("process report", kind=SpanKind.CONSUMER, links=[Link(enqueue_ctx)],
                                      context=None) as job:
        assert job.get_span_context().trace_id != enqueue_ctx.trace_id
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100}):
            pass
    provider.force_flush()
    provider.shutdown()
    assert srv.stop() == 0
    rows = srv.query("SELECT tenant_id, tenant_source, request_id, user_id FROM llm_calls")
    assert rows == [("acme", "link", f"{enqueue_ctx.trace_id:032x}-{enqueue_ctx.span_id:016x}", "u-1")]


def test_a_server_that_reattaches_its_ledger_loses_nothing_and_answers_queries_meanwhile(server_factory: Any) -> None:
    """ledger.reattach_after_calls set low, so the server re-attaches its ledger file many times while the real
    OTLP exporter sends traces and a client keeps querying it over SQL and /metrics: every query answers, every
    call is in the ledger once, attributed, and /metrics (whose totals the writes keep, from its first scrape on,
    across the re-attaches) counts exactly the calls and tokens the ledger holds."""
    import threading
    import urllib.request

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    srv = server_factory({"ledger": {"reattach_after_calls": 25}})
    failures: list[str] = []
    answered = [0]
    done = threading.Event()

    def client() -> None:
        body = json.dumps({"sql": "SELECT count(*), coalesce(sum(input_tokens), 0) FROM llm_calls"}).encode()
        while not done.is_set():
            for path, data in (("/v1/sql", body), ("/metrics", None)):
                req = urllib.request.Request(srv.http + path, data=data, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        r.read()
                        answered[0] += 1
                except Exception as e:  # any refusal is a failure of the test
                    failures.append(f"{path}: {e}")

    q = threading.Thread(target=client)
    q.start()
    provider = TracerProvider(resource=Resource.create({"service.name": "api"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=srv.grpc, insecure=True),
                                                   schedule_delay_millis=50, max_export_batch_size=64))
    tracer = provider.get_tracer("t")
    traces, calls_each = 60, 4
    for i in range(traces):
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER,
                                          attributes={"tenant.id": f"tenant-{i % 3}"}):
            for _ in range(calls_each):
                with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={
                        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 100,
                        "gen_ai.usage.output_tokens": 10}):
                    pass
        if i % 10 == 9:
            provider.force_flush()
            time.sleep(0.4)  # past the settle wait: the server writes (and re-attaches) while traffic goes on
    provider.force_flush()
    provider.shutdown()
    time.sleep(1.0)
    done.set()
    q.join(60)
    count = urllib.request.Request(srv.http + "/v1/sql", data=json.dumps({"sql": "SELECT count(*) FROM llm_calls"})
                                   .encode(), headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every call settled before the scrape below
        with urllib.request.urlopen(count, timeout=30) as r:
            if json.loads(r.read())["rows"] == [[traces * calls_each]]:
                break
        time.sleep(0.2)
    with urllib.request.urlopen(srv.http + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    scraped: dict[tuple[str, str], float] = {}
    for name, labels, value in re.findall(r'^tenantledger_(llm_calls|tokens)_total\{([^}]*)\} (\S+)$', metrics, re.M):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "llm_calls" or tags["type"] == "input":
            key = (tags["tenant"], name)
            scraped[key] = scraped.get(key, 0.0) + float(value)
    counted = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("tenantledger_ledger_reattaches_total ")]
    assert srv.stop() == 0
    assert not failures, failures[:5]
    assert answered[0] > 0
    reattached = [line for line in "".join(srv.output).splitlines() if "re-attached the ledger file" in line]
    assert len(reattached) >= 3, "".join(srv.output)[-3000:]
    assert counted and counted[0] >= 3  # /metrics counts them too
    rows = srv.query("SELECT tenant_id, count(*), sum(input_tokens) FROM llm_calls GROUP BY 1 ORDER BY 1")
    assert rows == [(f"tenant-{t}", traces // 3 * calls_each, traces // 3 * calls_each * 100) for t in range(3)]
    assert scraped == {k: float(v) for t, n, inp in rows for k, v in (((t, "llm_calls"), n), ((t, "tokens"), inp))}
    assert srv.query("SELECT count(*) FROM traces") == [(traces,)]

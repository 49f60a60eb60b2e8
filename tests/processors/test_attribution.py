"""Attribution of one trace: each of the six ways tenant context is lost, conflicts, rollup, leaf billing."""

from __future__ import annotations

from processors import IdentityConfig, LinkedContext, attribute_trace
from processors._attribution import TraceResult
from processors._dialects import view_of
from receiver import StagedSpan
from tests.processors.spans import chat, span

CFG = IdentityConfig()
SERVER, CLIENT, CONSUMER = 2, 3, 5


class Links:
    def __init__(self, known: dict[str, LinkedContext] | None = None) -> None:
        self.known = {k.ljust(32, "0"): v for k, v in (known or {}).items()}

    def resolve(self, trace_id: str) -> LinkedContext | None:
        return self.known.get(trace_id)


def run(spans: list[StagedSpan], links: Links | None = None, cfg: IdentityConfig = CFG) -> TraceResult:
    return attribute_trace(spans, cfg, links or Links())


def test_span_own_tenant() -> None:
    r = run([span("a", "1", attrs=chat(**{"tenant.id": "acme"}))])
    (rec,) = r.records
    assert (rec.tenant_id, rec.tenant_source, rec.unattributed_reason) == ("acme", "span", None)
    assert rec.request_id == "a".ljust(32, "0") + "-" + "1".ljust(16, "0")


def test_mode1_shared_key_no_tenant_anywhere() -> None:
    r = run([span("a", "1", kind=SERVER), span("a", "2", "1", kind=CLIENT, attrs=chat())])
    (rec,) = r.records
    assert rec.tenant_id is None and rec.unattributed_reason == "no_tenant_in_trace"


def test_mode2_proxy_strips_baggage_ancestor_carries_it() -> None:
    spans = [
        span("a", "1", kind=SERVER, attrs={"tenant.id": "acme", "user.id": "u1"}, service="frontend"),
        span("a", "2", "1", kind=CLIENT, attrs={"tenant.id": "acme"}, service="frontend"),
        span("a", "3", "2", kind=SERVER, service="llm-service"),
        span("a", "4", "3", kind=CLIENT, attrs=chat(), service="llm-service"),
    ]
    (rec,) = run(spans).records
    assert (rec.tenant_id, rec.tenant_source, rec.user_id) == ("acme", "ancestor", "u1")
    assert rec.request_id.endswith("1".ljust(16, "0"))  # the outermost SERVER span is the originating request


def test_mode2_upstream_never_received() -> None:
    spans = [span("a", "3", "2", kind=SERVER), span("a", "4", "3", kind=CLIENT, attrs=chat())]
    (rec,) = run(spans).records
    assert rec.unattributed_reason == "parent_not_received"


def test_mode3_job_trace_inherits_through_link_and_rolls_up() -> None:
    job = [
        span("b", "1", kind=CONSUMER, links=(("a", "9"),)),
        span("b", "2", "1", kind=CLIENT, attrs=chat()),
    ]
    origin = LinkedContext("a".ljust(32, "0"), "req-origin", "acme", "u7")
    (rec,) = run(job, Links({"a": origin})).records
    assert (rec.tenant_id, rec.tenant_source, rec.request_id, rec.user_id) == ("acme", "link", "req-origin", "u7")
    (rec,) = run(job).records
    assert rec.tenant_id is None and rec.unattributed_reason == "link_unresolved"


def test_mode4_stream_without_usage_is_flagged_not_zero() -> None:
    (rec,) = run([span("a", "1", attrs=chat(None, None, stream=True, **{"tenant.id": "acme"}))]).records
    assert rec.usage_status == "missing" and rec.streamed and rec.input_tokens is None


def test_mode5_agent_children_without_baggage_and_aggregate_not_double_billed() -> None:
    spans = [
        span("a", "1", kind=SERVER, attrs={"tenant.id": "acme"}),
        span("a", "2", "1", attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 300,
                                   "gen_ai.usage.output_tokens": 60, "gen_ai.agent.name": "weather"}),
        span("a", "3", "2", kind=CLIENT, attrs=chat(100, 20)),
        span("a", "4", "2", attrs={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather"}),
        span("a", "5", "2", kind=CLIENT, attrs=chat(200, 40)),
    ]
    recs = run(spans).records
    assert sorted(r.input_tokens or 0 for r in recs) == [100, 200]
    assert {r.tenant_id for r in recs} == {"acme"} and {r.tenant_source for r in recs} == {"ancestor"}


def test_aggregate_billed_only_when_no_descendant_reports_usage() -> None:
    spans = [
        span("a", "1", attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 300,
                              "gen_ai.usage.output_tokens": 60, "tenant.id": "acme",
                              "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}),
        span("a", "2", "1", attrs={"gen_ai.operation.name": "execute_tool"}),
    ]
    (rec,) = run(spans).records
    assert rec.usage_status == "aggregate" and rec.input_tokens == 300


def test_mode6_embeddings_without_tenant_are_infrastructure() -> None:
    (rec,) = run([span("a", "1", attrs=chat(8, None, model="text-embedding-3-small", op="embeddings"))]).records
    assert rec.unattributed_reason == "infrastructure_call"


def test_request_level_tenant_from_sibling_branch() -> None:
    spans = [
        span("a", "1", kind=SERVER),
        span("a", "2", "1", attrs={"tenant.id": "acme"}),  # e.g. the auth step, started after baggage was set
        span("a", "3", "1", kind=CLIENT, attrs=chat()),
    ]
    (rec,) = run(spans).records
    assert (rec.tenant_id, rec.tenant_source) == ("acme", "request")


def test_conflicts_are_flagged_never_guessed() -> None:
    spans = [
        span("a", "1", kind=SERVER, attrs={"tenant.id": "globex"}),
        span("a", "2", "1", kind=CLIENT, attrs=chat(**{"tenant.id": "acme"})),
    ]
    (rec,) = run(spans).records
    assert rec.tenant_id == "acme" and rec.tenant_conflict  # most specific wins, and is flagged
    spans = [
        span("a", "1", kind=SERVER),
        span("a", "2", "1", attrs={"tenant.id": "acme"}),
        span("a", "3", "1", attrs={"tenant.id": "globex"}),
        span("a", "4", "1", kind=CLIENT, attrs=chat()),
    ]
    (rec,) = run(spans).records
    assert rec.tenant_id is None and rec.unattributed_reason == "tenant_conflict" and rec.tenant_conflict


def test_untrusted_tenant_ids_are_rejected_with_a_reason() -> None:
    for bad in ("acme\x1b[31m", "x" * 500, "   "):
        (rec,) = run([span("a", "1", attrs=chat(**{"tenant.id": bad}))]).records
        assert rec.tenant_id is None and rec.unattributed_reason == "invalid_tenant_id", bad


def test_resource_and_metadata_sources() -> None:
    (rec,) = run([span("a", "1", attrs=chat(), resource={"tenant.id": "acme"})]).records
    assert (rec.tenant_id, rec.tenant_source) == ("acme", "resource")
    (rec,) = run([span("a", "1", attrs=chat(metadata='{"tenant_id": "acme"}'))]).records
    assert (rec.tenant_id, rec.tenant_source) == ("acme", "metadata")


def test_export_baggage_only_when_enabled() -> None:
    s = [span("a", "1", attrs=chat(), baggage="tenant.id=acme%20corp,other=1")]
    (rec,) = run(s).records
    assert rec.tenant_id is None
    (rec,) = run(s, cfg=IdentityConfig(use_export_baggage=True)).records
    assert (rec.tenant_id, rec.tenant_source) == ("acme corp", "export_baggage")


def test_same_call_reported_twice_shares_a_dedup_key_and_the_wire_span_ranks_first() -> None:
    spans = [
        span("a", "1", kind=CLIENT, scope="opentelemetry.instrumentation.anthropic",
             attrs=chat(471, 19, provider="anthropic", model="claude-haiku-4-5", response_id="msg_1")),
        span("a", "2", kind=CLIENT, scope="com.anthropic.sdk.python",
             attrs=chat(471, 18, provider="anthropic", model="claude-haiku-4-5", response_id="msg_1",
                        **{"server.address": "api.anthropic.com", "http.response.status_code": 200})),
    ]
    recs = sorted(run(spans).records, key=lambda r: r.dedup_rank)
    assert len(recs) == 2 and recs[0].dedup_key == recs[1].dedup_key == "anthropic:msg_1"
    assert recs[0].output_tokens == 18


def test_cyclic_parent_chain_terminates() -> None:
    spans = [span("a", "1", "2", attrs=chat()), span("a", "2", "1")]
    (rec,) = run(spans).records
    assert rec.tenant_id is None


def test_every_field_of_a_call_record_comes_from_its_own_attribute() -> None:
    """Each UsageRecord (and GenAIView) field read from a distinct value: a record built with two fields swapped
    (both are built positionally, for speed) fails here."""
    attrs = chat(
        1000, 200, model="gpt-4o", response_id="resp-1",
        **{
            "tenant.id": "acme", "user.id": "u-1", "feature": "search", "deployment.environment.name": "prod",
            "workflow.id": "wf-1", "gen_ai.conversation.id": "conv-1", "gen_ai.agent.name": "planner",
            "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.cache_read.input_tokens": 300,
            "gen_ai.usage.cache_creation.input_tokens": 40, "gen_ai.usage.reasoning.output_tokens": 50,
            "openai.response.service_tier": "flex", "gen_ai.request.batch": True, "gen_ai.request.stream": True,
            "gen_ai.workflow.name": "wf-name",
        },
    )
    s = span("a", "1", name="chat gpt-4o", kind=CLIENT, attrs=attrs, service="billing-api")
    (rec,) = run([s]).records
    assert (rec.trace_id, rec.span_id, rec.request_id) == (s.trace_id, s.span_id, f"{s.trace_id}-{s.span_id}")
    assert (rec.tenant_id, rec.tenant_source, rec.unattributed_reason, rec.tenant_conflict) == (
        "acme", "span", None, False)
    assert (rec.user_id, rec.feature, rec.environment, rec.workflow_id) == ("u-1", "search", "prod", "wf-1")
    assert (rec.conversation_id, rec.agent_name, rec.service_name, rec.span_name) == (
        "conv-1", "planner", "billing-api", "chat gpt-4o")
    assert (rec.provider, rec.operation, rec.request_model, rec.response_model, rec.response_id) == (
        "openai", "chat", "gpt-4o", "gpt-4o-2024-08-06", "resp-1")
    assert (rec.streamed, rec.usage_status, rec.batch, rec.service_tier) == (True, "reported", True, "flex")
    assert (rec.input_tokens, rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens,
            rec.reasoning_tokens) == (1000, 200, 300, 40, 50)
    assert (rec.start_time_unix_nano, rec.end_time_unix_nano) == (s.start_time_unix_nano, s.end_time_unix_nano)
    assert (rec.dedup_key, rec.dedup_rank) == ("openai:resp-1", 11)
    v = view_of(s)
    assert (v.is_genai, v.role, v.usage_reported, v.workflow_name, v.problems) == (
        True, "inference", True, "wf-name", ())


def test_settled_trace_is_freed_without_the_cyclic_collector() -> None:
    """Nothing attribution builds refers back to itself: once a result is dropped, the trace's spans, indexes and
    records are freed by reference counting. A cycle (compiled closures sharing an environment did this) kept every
    settled trace alive until a collection, which cost ~10 % of the server's CPU in bursts (bench/README.md)."""
    import gc

    origin = LinkedContext("a".ljust(32, "0"), "req-origin", "acme", "u7")
    traces = [
        [span("b", "1", kind=CONSUMER, links=(("a", "9"), ("c", "1"))), span("b", "2", "1", kind=CLIENT, attrs=chat())],
        [span("d", "1", kind=SERVER, attrs={"tenant.id": "acme"}),
         span("d", "2", "1", attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 3}),
         span("d", "3", "2", kind=CLIENT, attrs=chat(response_id="r1")), span("d", "4", "9", attrs=chat())],
    ]
    gc.collect()
    gc.disable()
    try:
        for spans in traces:
            for links in (Links({"a": origin}), Links()):
                r = run(spans, links)
                assert r.records
                del r
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        garbage = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, f"reference cycles left by attribution: {garbage}"

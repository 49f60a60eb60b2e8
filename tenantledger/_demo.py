"""`tenantledger demo`: a realistic multi-tenant workload sent through the real OpenTelemetry SDK and OTLP/gRPC
exporter — several services, Baggage, streaming, agents, a background job and a few failure modes — so a
newcomer sees a full dashboard within a minute.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "cyberdyne",
           "soylent", "oscorp"]
FEATURES = ["chat", "summarize", "search", "support-agent", "doc-qa"]
CHAT_MODELS = [("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
               ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku-20241022"),
               ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514")]


class BaggageToAttributes(SpanProcessor):
    """What a baggage span processor does in the apps: copy W3C Baggage entries onto every span started."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for key, value in baggage.get_all(parent_context).items():
            span.set_attribute(key, str(value))

    def on_end(self, span: ReadableSpan) -> None:
        pass


@dataclass
class DemoStats:
    requests: int = 0
    llm_spans: int = 0
    spans: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Workload:
    """Builds traces with explicit (back-dated) timestamps so the dashboard shows several days of history."""

    def __init__(self, target: str, seed: int = 7, days: float = 14) -> None:
        self.rng = random.Random(seed)
        self.days = days
        self.stats = DemoStats()
        self.providers: list[TracerProvider] = []
        self.web = self._tracer("web-api", target, baggage_processor=True)
        self.gateway = self._tracer("llm-gateway", target, baggage_processor=False)  # a proxy that drops Baggage
        self.worker = self._tracer("report-worker", target, baggage_processor=False)
        self.indexer = self._tracer("search-indexer", target, baggage_processor=False)
        # Tenant weights follow a power law: a few tenants drive most of the spend, as in real SaaS.
        self.weights = [1 / (i + 1) ** 1.2 for i in range(len(TENANTS))]

    def _tracer(self, service: str, target: str, baggage_processor: bool) -> trace.Tracer:
        provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                            "deployment.environment.name": "demo"}))
        if baggage_processor:
            provider.add_span_processor(BaggageToAttributes())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True),
                                                       max_export_batch_size=512, schedule_delay_millis=200))
        self.providers.append(provider)
        return provider.get_tracer("tenantledger.demo", "1.0")

    def shutdown(self) -> None:
        for p in self.providers:
            p.force_flush()
            p.shutdown()

    @contextmanager
    def _span(self, tracer: trace.Tracer, name: str, t0: int, dur_ns: int, ctx: Context | None,
              kind: SpanKind = SpanKind.INTERNAL, attrs: dict[str, Any] | None = None,
              links: list[Link] | None = None) -> Iterator[Span]:
        span = tracer.start_span(name, context=ctx, kind=kind, attributes=attrs, links=links, start_time=t0)
        self.stats.spans += 1
        try:
            yield span  # type: ignore[misc]
        finally:
            span.end(end_time=t0 + dur_ns)

    def _chat(self, tracer: trace.Tracer, ctx: Context, t0: int, model: tuple[str, str, str] | None = None,
              stream: bool = False, usage: bool = True, op: str = "chat") -> tuple[int, int]:
        provider, req_model, resp_model = model or self.rng.choice(CHAT_MODELS)
        inp, out = self.rng.randint(200, 4000), self.rng.randint(50, 900)
        cache = self.rng.choice([0, 0, 0, inp // 2])
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op, "gen_ai.provider.name": provider, "gen_ai.request.model": req_model,
            "gen_ai.response.model": resp_model, "gen_ai.response.id": f"resp_{self.rng.getrandbits(64):016x}",
        }
        if stream:
            attrs["gen_ai.request.stream"] = True
        if usage:
            attrs |= {"gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out}
            if cache:
                attrs["gen_ai.usage.cache_read.input_tokens"] = cache
        with self._span(tracer, f"{op} {req_model}", t0, self.rng.randint(300, 4000) * 1_000_000, ctx,
                        SpanKind.CLIENT, attrs):
            self.stats.llm_spans += 1
        return (inp, out) if usage else (0, 0)

    def request(self, t0: int) -> None:
        rng = self.rng
        tenant = rng.choices(TENANTS, self.weights)[0]
        user = f"{tenant}-user-{rng.randint(1, 6)}"
        feature = rng.choice(FEATURES)
        ctx = baggage.set_baggage("tenant.id", tenant)
        ctx = baggage.set_baggage("user.id", user, ctx)
        ctx = baggage.set_baggage("feature", feature, ctx)
        kind = rng.choices(["chat", "stream", "agent", "gateway", "job", "no_usage_stream"],
                           [40, 15, 15, 15, 10, 5])[0]
        self.stats.requests += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        with self._span(self.web, f"POST /v1/{feature}", t0, 9_000_000_000, ctx, SpanKind.SERVER,
                        {"http.request.method": "POST"}) as root:
            rctx = trace.set_span_in_context(root, ctx)
            t = t0 + 5_000_000
            if kind == "chat":
                self._chat(self.web, rctx, t)
            elif kind == "stream":
                self._chat(self.web, rctx, t, stream=True)
            elif kind == "no_usage_stream":  # stream without include_usage: kept, flagged, never $0
                self._chat(self.web, rctx, t, stream=True, usage=False)
            elif kind == "agent":
                # invoke_agent reports the summed usage of its children: billed once, on the leaves.
                with self._span(self.web, "invoke_agent support", t, 6_000_000_000, rctx, SpanKind.INTERNAL,
                                {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support",
                                 "gen_ai.provider.name": "openai"}) as agent:
                    actx = trace.set_span_in_context(agent, rctx)
                    tot_in = tot_out = 0
                    for i in range(rng.randint(2, 3)):
                        a, b = self._chat(self.web, actx, t + i * 1_500_000_000, CHAT_MODELS[0])
                        tot_in, tot_out = tot_in + a, tot_out + b
                        with self._span(self.web, "execute_tool lookup_order", t + i * 1_500_000_000 + 900_000_000,
                                        200_000_000, actx, attrs={"gen_ai.operation.name": "execute_tool",
                                                                  "gen_ai.tool.name": "lookup_order"}):
                            pass
                    agent.set_attribute("gen_ai.usage.input_tokens", tot_in)
                    agent.set_attribute("gen_ai.usage.output_tokens", tot_out)
            elif kind == "gateway":
                # The gateway hop keeps traceparent but not Baggage: the tenant is found on the ancestor.
                with self._span(self.gateway, "POST /gateway/chat", t, 5_000_000_000, rctx, SpanKind.SERVER) as gw:
                    self._chat(self.gateway, trace.set_span_in_context(gw, Context()), t + 1_000_000)
            elif kind == "job":
                link = Link(root.get_span_context())
                jt = t0 + rng.randint(10, 40) * 1_000_000_000  # the job runs shortly after
                with self._span(self.worker, "process report", jt, 20_000_000_000, Context(), SpanKind.CONSUMER,
                                links=[link]) as job:
                    jctx = trace.set_span_in_context(job, Context())
                    for i in range(rng.randint(1, 3)):
                        self._chat(self.worker, jctx, jt + i * 2_000_000_000, CHAT_MODELS[2])

    def infrastructure(self, t0: int) -> None:
        """Embeddings with no tenant anywhere (indexing): the audit lists them as infrastructure_call."""
        with self._span(self.indexer, "reindex", t0, 3_000_000_000, Context(), SpanKind.INTERNAL) as root:
            ctx = trace.set_span_in_context(root, Context())
            with self._span(self.indexer, "embeddings text-embedding-3-small", t0 + 1_000_000, 500_000_000, ctx,
                            SpanKind.CLIENT, {"gen_ai.operation.name": "embeddings",
                                              "gen_ai.provider.name": "openai",
                                              "gen_ai.request.model": "text-embedding-3-small",
                                              "gen_ai.usage.input_tokens": self.rng.randint(5_000, 50_000)}):
                self.stats.llm_spans += 1

    def run(self, requests: int, live_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> DemoStats:
        """``requests`` user requests spread over the last ``days`` days; then ``live_s`` seconds of live traffic."""
        now = time.time_ns() - 120_000_000_000
        span_ns = int(self.days * 86_400 * 1_000_000_000)
        for i in range(requests):
            t0 = now - span_ns + int(span_ns * (i + self.rng.random()) / max(requests, 1)) - 60_000_000_000
            self.request(min(t0, now - 60_000_000_000))
            if i % 25 == 0:
                self.infrastructure(t0)
            if progress is not None:
                progress(i + 1, requests)
        deadline = time.time() + live_s
        while time.time() < deadline:
            self.request(time.time_ns())
            time.sleep(self.rng.uniform(0.05, 0.3))
        return self.stats

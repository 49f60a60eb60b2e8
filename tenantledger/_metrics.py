"""Prometheus `/metrics`: spend and tokens per tenant/provider/model (bounded cardinality) and pipeline health.

Cardinality: only the top ``max_tenants`` tenants by spend get their own label value; the long tail is folded
into tenant="other" so a platform with 100 000 tenants does not melt the Prometheus server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SPEND_SQL = """
WITH per AS (
    SELECT coalesce(tenant_id, '(unattributed)') AS tenant, coalesce(provider, 'unknown') AS provider,
           coalesce(response_model, request_model, 'unknown') AS model,
           sum(effective_cost) AS cost, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cache_read_tokens) AS cache_read_tokens, count(*) AS calls
    FROM llm_calls GROUP BY ALL
), top AS (
    SELECT tenant FROM per GROUP BY tenant ORDER BY sum(cost) DESC NULLS LAST LIMIT ?
)
SELECT CASE WHEN tenant IN (SELECT tenant FROM top) OR tenant = '(unattributed)' THEN tenant ELSE 'other' END,
       provider, model, sum(cost), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(calls)
FROM per GROUP BY ALL
"""


class PipelineCollector(Collector):
    """Reads live numbers at scrape time. ``query`` runs SQL on the ledger; ``health`` returns gauges/counters."""

    def __init__(
        self,
        query: Callable[[str, list[Any]], list[tuple[Any, ...]]],
        health: Callable[[], dict[str, float]],
        max_tenants: int = 50,
        budget_states: Callable[[], list[tuple[str, str, float]]] | None = None,
        rejections: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._rejections = rejections
        self._query = query
        self._health = health
        self._max_tenants = max_tenants
        self._budget_states = budget_states

    def collect(self) -> Iterator[Any]:
        cost = CounterMetricFamily(
            "tenantledger_cost_usd", "Effective LLM cost attributed, USD", labels=["tenant", "provider", "model"]
        )
        tokens = CounterMetricFamily(
            "tenantledger_tokens", "Tokens billed", labels=["tenant", "provider", "model", "type"]
        )
        calls = CounterMetricFamily(
            "tenantledger_llm_calls", "Billable LLM calls", labels=["tenant", "provider", "model"]
        )
        for tenant, provider, model, c, inp, out, cache, n in self._query(_SPEND_SQL, [self._max_tenants]):
            labels = [tenant, provider, model]
            cost.add_metric(labels, float(c or Decimal(0)))  # Prometheus samples are floats by definition
            tokens.add_metric([*labels, "input"], float(inp or 0))
            tokens.add_metric([*labels, "output"], float(out or 0))
            tokens.add_metric([*labels, "cache_read"], float(cache or 0))
            calls.add_metric(labels, float(n))
        yield cost
        yield tokens
        yield calls
        if self._rejections is not None:
            by_reason = CounterMetricFamily("tenantledger_spans_rejected_by_reason",
                                            "Spans rejected alone (OTLP partial_success), by reason", labels=["reason"])
            for reason, n in sorted(self._rejections().items()):
                by_reason.add_metric([reason], float(n))
            yield by_reason
        if self._budget_states is not None:
            state = GaugeMetricFamily("tenantledger_budget_state", "Budget state: 0 ok, 1 warn, 2 over",
                                      labels=["tenant", "period"])
            # Bounded: only tenants not ok or with their own budget, and at most max_tenants of them.
            for tenant, period, value in self._budget_states()[: self._max_tenants]:
                state.add_metric([tenant, period], value)
            yield state
            alerts = CounterMetricFamily("tenantledger_budget_alerts", "Budget alerts fired",
                                         labels=["period", "threshold"])
            for period, threshold, n in self._query(
                "SELECT period, threshold, count(*) FROM budget_alerts GROUP BY ALL ORDER BY ALL", []
            ):
                alerts.add_metric([period, threshold], float(n))
            yield alerts
        for name, value in sorted(self._health().items()):
            kind, _, metric = name.partition(":")
            if kind == "counter":
                yield CounterMetricFamily(f"tenantledger_{metric}", metric.replace("_", " "), value=value)
            else:
                yield GaugeMetricFamily(f"tenantledger_{metric}", metric.replace("_", " "), value=value)


def render(collector: PipelineCollector) -> bytes:
    registry = CollectorRegistry()
    registry.register(collector)
    out: bytes = generate_latest(registry)
    return out

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

# (tenant, provider, model) -> (effective cost, input, output, cache-read tokens, calls): ledger.Ledger.spend_totals.
Spend = list[tuple[tuple[str | None, str | None, str | None], tuple[Decimal, int, int, int, int]]]
UNATTRIBUTED = "(unattributed)"


def fold(spend: Spend, max_tenants: int) -> list[tuple[str, str, str, Decimal, int, int, int, int]]:
    """``spend`` with one label per tenant for the ``max_tenants`` tenants that spent most (ties by name), every
    other tenant folded into "other", unattributed calls as "(unattributed)", a missing provider or model as
    "unknown"."""
    per_tenant: dict[str, Decimal] = {}
    for (tenant, _, _), t in spend:
        if tenant is not None:
            per_tenant[tenant] = per_tenant.get(tenant, Decimal(0)) + t[0]
    top = set(sorted(per_tenant, key=lambda k: (-per_tenant[k], k))[:max_tenants])
    out: dict[tuple[str, str, str], list[Any]] = {}
    for (tenant, provider, model), t in spend:
        label = UNATTRIBUTED if tenant is None else tenant if tenant in top else "other"
        acc = out.setdefault((label, provider or "unknown", model or "unknown"), [Decimal(0), 0, 0, 0, 0])
        for i, v in enumerate(t):
            acc[i] += v
    return [(*k, *v) for k, v in sorted(out.items())]


class PipelineCollector(Collector):
    """Reads live numbers at scrape time. ``spend`` returns the ledger's running totals (no scan of the ledger);
    ``query`` runs SQL on the ledger (small tables only); ``health`` returns gauges/counters."""

    def __init__(
        self,
        spend: Callable[[], Spend],
        query: Callable[[str, list[Any]], list[tuple[Any, ...]]],
        health: Callable[[], dict[str, float]],
        max_tenants: int = 50,
        budget_states: Callable[[], list[tuple[str, str, float]]] | None = None,
        rejections: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._rejections = rejections
        self._spend = spend
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
        for tenant, provider, model, c, inp, out, cache, n in fold(self._spend(), self._max_tenants):
            labels = [tenant, provider, model]
            cost.add_metric(labels, float(c))  # Prometheus samples are floats by definition
            tokens.add_metric([*labels, "input"], float(inp))
            tokens.add_metric([*labels, "output"], float(out))
            tokens.add_metric([*labels, "cache_read"], float(cache))
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

"""The attribution audit over all traffic of a period: how many dollars reached a tenant, and for the rest,
why not, where (service and span name), and what to change in the instrumentation — in plain words.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tenantledger.finops._common import Period, QueryFn, Table

# One plain-words fix per reason code of processors/_attribution.py (the six ways tenant context is lost).
ADVICE: dict[str, str] = {
    "no_tenant_in_trace": (
        "No span of these traces carries a tenant (one shared key, no Baggage). Put tenant.id in W3C Baggage where "
        "the request enters, after authentication, and add a baggage span processor so it is copied onto spans."
    ),
    "parent_not_received": (
        "The parent spans of these calls never arrived: an upstream hop (gateway, proxy, another service) does not "
        "export its spans here or strips the baggage header. Export that hop's traces to tenantledger too."
    ),
    "link_unresolved": (
        "Background jobs start a new trace linked to a request that never arrived or had no tenant. Export the "
        "enqueuing service's spans, or put tenant.id in the job's metadata/baggage when it is enqueued."
    ),
    "tenant_not_propagated": (
        "The tenant is on other spans of the trace but not on the path to these calls: agent/tool recursion or a "
        "thread pool lost the OpenTelemetry context. Carry the context into workers (copy contextvars) or set "
        "tenant.id on the agent span."
    ),
    "infrastructure_call": (
        "Embeddings or retrieval ran with no tenant anywhere in the trace (indexing, warm-up). If they serve one "
        "tenant, set tenant.id when the job starts; otherwise this is shared platform cost to allocate."
    ),
    "tenant_conflict": (
        "Different tenants appear on the path from these calls to their request: context leaked between requests "
        "(a reused worker or a global). Set baggage per request and detach it when the request ends."
    ),
    "invalid_tenant_id": (
        "The tenant value was empty, too long or contained control characters and was refused. Send a plain id."
    ),
}

_COVERAGE = """
SELECT count(*) AS calls,
       count(*) FILTER (WHERE tenant_id IS NOT NULL) AS attributed_calls,
       coalesce(sum(effective_cost), 0) AS cost,
       coalesce(sum(effective_cost) FILTER (WHERE tenant_id IS NOT NULL), 0) AS attributed_cost,
       count(*) FILTER (WHERE pricing_status = 'unpriced') AS unpriced_calls,
       count(*) FILTER (WHERE pricing_status = 'usage_missing') AS usage_missing_calls,
       count(*) FILTER (WHERE tenant_conflict) AS conflict_calls
FROM llm_calls WHERE start_time >= ? AND start_time < ?
"""
_REASONS = """
SELECT unattributed_reason, count(*), coalesce(sum(effective_cost), 0),
       count(*) FILTER (WHERE effective_cost IS NULL),
       string_agg(DISTINCT service_name, ', ' ORDER BY service_name)
FROM llm_calls WHERE tenant_id IS NULL AND start_time >= ? AND start_time < ?
GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1
"""
_WHERE = """
SELECT coalesce(service_name, '(unknown service)'), coalesce(span_name, '(unnamed)'), unattributed_reason,
       count(*), coalesce(sum(effective_cost), 0)
FROM llm_calls WHERE tenant_id IS NULL AND start_time >= ? AND start_time < ?
GROUP BY ALL ORDER BY 5 DESC, 4 DESC, 1, 2 LIMIT 25
"""
_CONFLICTS = """
SELECT request_id, min(trace_id), coalesce(min(service_name), '(unknown)'), count(*), coalesce(sum(effective_cost), 0),
       string_agg(DISTINCT tenant_id, ', ') FILTER (WHERE tenant_id IS NOT NULL)
FROM llm_calls WHERE tenant_conflict AND start_time >= ? AND start_time < ?
GROUP BY request_id ORDER BY 5 DESC, 1 LIMIT 50
"""
_UNPRICED = """
SELECT coalesce(provider, '(unknown)'), coalesce(response_model, request_model, '(no model)'), count(*),
       sum(input_tokens), sum(output_tokens), min(pricing_reason)
FROM llm_calls WHERE pricing_status = 'unpriced' AND start_time >= ? AND start_time < ?
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
"""
_NO_USAGE = """
SELECT coalesce(service_name, '(unknown)'), coalesce(response_model, request_model, '(no model)'), streamed, count(*)
FROM llm_calls WHERE pricing_status = 'usage_missing' AND start_time >= ? AND start_time < ?
GROUP BY ALL ORDER BY 4 DESC, 1, 2
"""


def _pct(part: Decimal, whole: Decimal) -> Decimal | None:
    return (part * 100 / whole).quantize(Decimal("0.01")) if whole else None


def audit(q: QueryFn, period: Period) -> list[Table]:
    """Sections: coverage, unattributed by reason (with the fix), where the tenant was lost, tenant conflicts,
    unpriced models, calls that reported no usage (typically streams without include_usage)."""
    p: list[Any] = [period.start_ts, period.end_ts]
    _, cov = q(_COVERAGE, p)
    calls, attributed_calls, cost, attributed_cost, unpriced, no_usage, conflicts = cov[0]
    cost, attributed_cost = Decimal(cost), Decimal(attributed_cost)
    coverage = Table("coverage", ["metric", "value"], [
        ("period", f"{period.start} to {period.end} (exclusive)"),
        ("billable_calls", calls),
        ("attributed_calls", attributed_calls),
        ("cost_usd", cost),
        ("attributed_cost_usd", attributed_cost),
        ("unattributed_cost_usd", cost - attributed_cost),
        ("attributed_cost_pct", _pct(attributed_cost, cost)),
        ("attributed_calls_pct", _pct(Decimal(attributed_calls), Decimal(calls))),
        ("unpriced_calls", unpriced),
        ("usage_missing_calls", no_usage),
        ("tenant_conflict_calls", conflicts),
    ])
    if calls == 0:
        coverage.notes.append("no billable call in this period")
    _, reasons = q(_REASONS, p)
    by_reason = Table(
        "unattributed_by_reason", ["reason", "calls", "cost_usd", "unpriced_calls", "services", "what_to_fix"],
        [(r, n, Decimal(c), u, s, ADVICE.get(r or "", "see the README's attribution section"))
         for r, n, c, u, s in reasons],
    )
    _, where = q(_WHERE, p)
    lost = Table("where_tenant_was_lost", ["service", "span_name", "reason", "calls", "cost_usd"],
                 [(a, b, r, n, Decimal(c)) for a, b, r, n, c in where])
    _, conf = q(_CONFLICTS, p)
    conflict = Table("tenant_conflicts", ["request_id", "trace_id", "service", "calls", "cost_usd", "tenants_billed"],
                     [(a, b, s, n, Decimal(c), t) for a, b, s, n, c, t in conf])
    if conf:
        conflict.notes.append(
            "conflicting tenants are never resolved by guessing: these calls stay unattributed and are listed here")
    _, unp = q(_UNPRICED, p)
    unpriced_t = Table("unpriced_models", ["provider", "model", "calls", "input_tokens", "output_tokens", "reason"],
                       list(unp))
    if unp:
        unpriced_t.notes.append("price them with a pricing.overrides entry (contract or self-hosted rate)")
    _, nou = q(_NO_USAGE, p)
    no_usage_t = Table("calls_without_usage", ["service", "model", "streamed", "calls"], list(nou))
    if nou:
        no_usage_t.notes.append(
            "streamed calls report usage only when asked: OpenAI stream_options={'include_usage': true}; "
            "these calls are kept with NULL cost, never $0")
    return [coverage, by_reason, lost, conflict, unpriced_t, no_usage_t]

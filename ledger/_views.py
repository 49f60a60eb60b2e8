"""The ledger contract: the views users and later tools query. Each view states its grain and units.

Units: money in the row's ``currency`` (USD by default) as DECIMAL(38,12); tokens as counts; times UTC.
"""

from __future__ import annotations

import duckdb

VIEWS: dict[str, str] = {
    # Grain: one row per billable LLM call (duplicates of the same call, e.g. the anthropic SDK's span plus an
    # instrumentation's span, are excluded). Tokens: input_tokens is the TOTAL input including cache reads and
    # writes (GenAI semconv gen_ai.usage.input_tokens); output_tokens includes reasoning_tokens.
    # list_cost/effective_cost are NULL when pricing_status is 'unpriced' or 'usage_missing' (never a silent 0).
    "llm_calls": """
        SELECT trace_id, span_id, request_id, tenant_id, tenant_source, unattributed_reason, user_id, feature,
               environment, workflow_id, service_name, provider, operation, request_model, response_model,
               input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
               list_cost, effective_cost, currency, pricing_status, start_time, end_time,
               tenant_conflict, conversation_id, agent_name, span_name, response_id, streamed, usage_status,
               batch, service_tier, pricing_reason, price_source, priced_model, settled_at
        FROM calls WHERE NOT is_duplicate
    """,
    # Grain: one row per originating user request (the entry span of the user-facing request; async jobs
    # linked to it roll up into it). tenant_id is NULL when its calls disagree or none was attributed.
    "requests": """
        SELECT request_id,
               CASE WHEN count(DISTINCT tenant_id) = 1 THEN min(tenant_id) END AS tenant_id,
               CASE WHEN count(DISTINCT user_id) = 1 THEN min(user_id) END AS user_id,
               min(service_name) AS service_name,
               count(*) AS calls,
               count(DISTINCT trace_id) AS traces,
               sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens,
               sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens,
               sum(list_cost) AS list_cost,
               sum(effective_cost) AS effective_cost,
               count(*) FILTER (WHERE list_cost IS NULL) AS unpriced_calls,
               min(start_time) AS first_time,
               max(end_time) AS last_time
        FROM llm_calls GROUP BY request_id
    """,
    # Grain: UTC day x tenant (NULL tenant = unattributed).
    "spend_daily": """
        SELECT CAST(date_trunc('day', start_time) AS DATE) AS day, tenant_id,
               count(*) AS calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(list_cost) AS list_cost, sum(effective_cost) AS effective_cost,
               count(*) FILTER (WHERE list_cost IS NULL) AS unpriced_calls
        FROM llm_calls GROUP BY ALL
    """,
    # Grain: one row per tenant over all time, ranked by effective cost; share is of attributed spend.
    "top_tenants": """
        SELECT tenant_id, count(*) AS calls, count(DISTINCT request_id) AS requests,
               sum(effective_cost) AS effective_cost, sum(list_cost) AS list_cost,
               sum(effective_cost) / nullif(sum(sum(effective_cost)) OVER (), 0) AS share,
               max(end_time) AS last_activity,
               rank() OVER (ORDER BY sum(effective_cost) DESC NULLS LAST) AS rank
        FROM llm_calls WHERE tenant_id IS NOT NULL GROUP BY tenant_id
    """,
    # Grain: provider x model (response model, else request model) over all time.
    "spend_by_model": """
        SELECT provider, coalesce(response_model, request_model) AS model, count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens, sum(output_tokens) AS output_tokens,
               sum(list_cost) AS list_cost, sum(effective_cost) AS effective_cost,
               count(*) FILTER (WHERE list_cost IS NULL) AS unpriced_calls
        FROM llm_calls GROUP BY ALL
    """,
    # Grain: feature x tenant over all time (feature NULL = not tagged).
    "spend_by_feature": """
        SELECT feature, tenant_id, count(*) AS calls, sum(effective_cost) AS effective_cost,
               sum(list_cost) AS list_cost
        FROM llm_calls GROUP BY ALL
    """,
    # Grain: unattributed reason over all time: what could not be charged to a tenant, and why.
    "unattributed": """
        SELECT unattributed_reason AS reason, count(*) AS calls, sum(effective_cost) AS effective_cost,
               count(*) FILTER (WHERE effective_cost IS NULL) AS unpriced_calls,
               string_agg(DISTINCT service_name, ', ') AS services
        FROM llm_calls WHERE tenant_id IS NULL GROUP BY ALL
    """,
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    try:
        from ledger._focus import FOCUS_VIEW_SQL
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    con.execute(FOCUS_VIEW_SQL)

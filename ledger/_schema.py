"""DDL of the embedded DuckDB ledger: the base tables the ledger writes and the contract views users query.

Grain and units of every view are documented next to it. Money is DECIMAL(38,12) in the billing currency
(USD unless overridden); token columns are counts of tokens; times are TIMESTAMP in UTC.
"""

from __future__ import annotations

MONEY = "DECIMAL(38,12)"

# One row per billable-call candidate, as settled. The same LLM call reported by two instrumentations
# (e.g. the anthropic SDK's own span plus OpenLLMetry's) yields two rows sharing dedup_key; exactly one of
# them has is_duplicate = false (lowest dedup_rank, then trace_id, span_id). Views hide duplicates.
CALLS_DDL = f"""
CREATE TABLE IF NOT EXISTS calls (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    tenant_id VARCHAR,
    tenant_source VARCHAR,
    unattributed_reason VARCHAR,
    tenant_conflict BOOLEAN NOT NULL,
    user_id VARCHAR,
    feature VARCHAR,
    environment VARCHAR,
    workflow_id VARCHAR,
    conversation_id VARCHAR,
    agent_name VARCHAR,
    service_name VARCHAR,
    span_name VARCHAR,
    provider VARCHAR,
    operation VARCHAR,
    request_model VARCHAR,
    response_model VARCHAR,
    response_id VARCHAR,
    streamed BOOLEAN NOT NULL,
    usage_status VARCHAR NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cache_read_tokens BIGINT,
    cache_write_tokens BIGINT,
    reasoning_tokens BIGINT,
    start_time TIMESTAMP NOT NULL,
    end_time TIMESTAMP NOT NULL,
    dedup_key VARCHAR,
    dedup_rank INTEGER NOT NULL,
    is_duplicate BOOLEAN NOT NULL DEFAULT false,
    batch BOOLEAN NOT NULL,
    service_tier VARCHAR,
    list_cost {MONEY},
    effective_cost {MONEY},
    currency VARCHAR NOT NULL,
    pricing_status VARCHAR NOT NULL,
    pricing_reason VARCHAR,
    price_source VARCHAR,
    priced_model VARCHAR,
    list_input_per_mtok {MONEY},
    list_cache_read_per_mtok {MONEY},
    list_cache_write_per_mtok {MONEY},
    list_output_per_mtok {MONEY},
    effective_input_per_mtok {MONEY},
    effective_cache_read_per_mtok {MONEY},
    effective_cache_write_per_mtok {MONEY},
    effective_output_per_mtok {MONEY},
    settled_at TIMESTAMP NOT NULL
)
"""

"""The processors' output type: one billable usage record per LLM call, attributed and priced.

Token semantics follow GenAI semconv (gen_ai.usage.*): ``input_tokens`` is the TOTAL input including
cache reads and cache writes; ``output_tokens`` includes reasoning tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ComponentPrice:
    """Rates per 1,000,000 tokens for one call; None when that rate does not apply or is unknown."""

    input_per_mtok: Decimal | None = None
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    output_per_mtok: Decimal | None = None


@dataclass(slots=True)
class UsageRecord:
    """One billable call. Not ``frozen`` (a frozen ``__init__`` costs ~0.1 us a field, 43 fields, every call): the
    pricer fills the pricing fields of a record fresh from attribution; treat it as immutable after that."""

    trace_id: str
    span_id: str
    request_id: str
    tenant_id: str | None
    tenant_source: str | None  # span | resource | metadata | ancestor | request | link | export_baggage
    unattributed_reason: str | None  # reason code when tenant_id is None
    tenant_conflict: bool
    user_id: str | None
    feature: str | None
    environment: str | None
    workflow_id: str | None
    conversation_id: str | None
    agent_name: str | None
    service_name: str | None
    span_name: str
    provider: str | None  # semconv gen_ai.provider.name value
    operation: str | None  # semconv gen_ai.operation.name value
    request_model: str | None
    response_model: str | None
    response_id: str | None
    streamed: bool
    usage_status: str  # reported | missing | aggregate
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    start_time_unix_nano: int
    end_time_unix_nano: int
    dedup_key: str | None  # provider:response_id; the same call reported twice shares it
    dedup_rank: int  # lower wins among records sharing dedup_key
    batch: bool = False
    service_tier: str | None = None
    # Filled by pricing.
    list_cost: Decimal | None = None
    effective_cost: Decimal | None = None
    currency: str = "USD"
    pricing_status: str = "unpriced"  # priced | contract | unpriced | usage_missing
    pricing_reason: str | None = None
    price_source: str | None = None
    priced_model: str | None = None
    list_rates: ComponentPrice = ComponentPrice()
    effective_rates: ComponentPrice = ComponentPrice()

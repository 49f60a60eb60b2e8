"""Pricing against the real genai-prices catalogue, with hand-computed expectations."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processors import ComponentPrice, UsageRecord
from processors._pricing import PROVIDER_MAP, Pricer, PricingConfig, RateOverride

NOV_2026 = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1e9)


def rec(**kw: Any) -> UsageRecord:
    base: dict[str, Any] = dict(
        trace_id="t" * 32, span_id="s" * 16, request_id="r", tenant_id="acme", tenant_source="span",
        unattributed_reason=None, tenant_conflict=False, user_id=None, feature=None, environment=None,
        workflow_id=None, conversation_id=None, agent_name=None, service_name="svc", span_name="chat",
        provider="openai", operation="chat", request_model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18",
        response_id="x", streamed=False, usage_status="reported", input_tokens=101, output_tokens=23,
        cache_read_tokens=40, cache_write_tokens=None, reasoning_tokens=7, start_time_unix_nano=NOV_2026,
        end_time_unix_nano=NOV_2026, dedup_key=None, dedup_rank=0,
    )
    base.update(kw)
    return UsageRecord(**base)


def components(r: UsageRecord, rates: ComponentPrice) -> Decimal:
    inp, cr, cw, out = r.input_tokens or 0, r.cache_read_tokens or 0, r.cache_write_tokens or 0, r.output_tokens or 0
    total = Decimal(0)
    for n, rate in ((inp - cr - cw, rates.input_per_mtok), (cr, rates.cache_read_per_mtok),
                    (cw, rates.cache_write_per_mtok), (out, rates.output_per_mtok)):
        if n:
            assert rate is not None
            total += n * rate / Decimal(1_000_000)
    return total


def test_openai_cached_tokens_at_cache_rate_never_twice() -> None:
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per 1M tokens (catalogue).
    # 101 input includes 40 cached: 61 x 0.15 + 40 x 0.075 + 23 x 0.60 (reasoning is inside output).
    p = Pricer(PricingConfig()).price(rec())
    assert p.list_cost == Decimal("0.00002595")
    assert p.effective_cost == p.list_cost and p.pricing_status == "priced"
    assert components(p, p.list_rates) == p.list_cost
    assert p.price_source and p.price_source.startswith("genai-prices")


def test_anthropic_cache_read_and_write() -> None:
    # claude-haiku-4-5: $1 input, $0.10 cache read, $1.25 cache write, $5 output per 1M.
    # Fixture: 471 input = 51 uncached + 300 cache read + 120 cache write; 17 output.
    r = rec(provider="anthropic", request_model="claude-haiku-4-5", response_model="claude-haiku-4-5",
            input_tokens=471, cache_read_tokens=300, cache_write_tokens=120, output_tokens=17, reasoning_tokens=None)
    p = Pricer(PricingConfig()).price(r)
    assert p.list_cost == Decimal("0.000316")  # (51x1 + 300x0.1 + 120x1.25 + 17x5) / 1e6
    assert components(p, p.list_rates) == p.list_cost


def test_tier_cliff_component_rates_sum_to_total() -> None:
    r = rec(provider="anthropic", request_model="claude-sonnet-4-5", response_model=None, input_tokens=250_000,
            cache_read_tokens=50_000, output_tokens=1_000, reasoning_tokens=None)
    p = Pricer(PricingConfig()).price(r)
    assert p.list_cost == Decimal("1.2525")  # 200k x 6 + 50k x 0.6 + 1k x 22.5, all at the >200k tier
    assert p.list_rates.input_per_mtok == Decimal("6")
    assert components(p, p.list_rates) == p.list_cost


def test_historic_price_depends_on_call_time() -> None:
    when = [int(dt.datetime(2026, 3, d, tzinfo=dt.UTC).timestamp() * 1e9) for d in (1, 20)]
    prices = []
    for t in when:
        r = rec(provider="anthropic", request_model="claude-opus-4-6", response_model=None, input_tokens=300_000,
                cache_read_tokens=0, output_tokens=0, start_time_unix_nano=t, end_time_unix_nano=t)
        prices.append(Pricer(PricingConfig()).price(r).list_cost)
    # claude-opus-4-6 had a >200k-input tier ($10/MTok) until 2026-03-13, then $5/MTok flat.
    assert prices == [Decimal("3"), Decimal("1.5")]


def test_unknown_model_is_unpriced_with_reason_never_zero() -> None:
    p = Pricer(PricingConfig()).price(rec(request_model="my-finetune-xyz", response_model=None))
    assert p.list_cost is None and p.effective_cost is None and p.pricing_status == "unpriced"
    assert p.pricing_reason and "pricing.overrides" in p.pricing_reason and "my-finetune-xyz" in p.pricing_reason


def test_usage_missing_is_not_priced() -> None:
    p = Pricer(PricingConfig()).price(rec(usage_status="missing", input_tokens=None, output_tokens=None,
                                          cache_read_tokens=None))
    assert p.pricing_status == "usage_missing" and p.list_cost is None


def test_overrides_change_effective_not_list() -> None:
    cfg = PricingConfig(overrides=(RateOverride(provider="openai", model="gpt-4o-mini*", discount_pct=Decimal(20)),))
    p = Pricer(cfg).price(rec())
    assert p.list_cost == Decimal("0.00002595") and p.effective_cost == Decimal("0.00002076")
    assert p.pricing_status == "contract"
    cfg = PricingConfig(overrides=(RateOverride(model="gpt-4o-mini*", input_per_mtok=Decimal("0.1")),))
    p = Pricer(cfg).price(rec())
    # 61 x 0.1 + 40 x 0.075 + 23 x 0.6 = 22.9 per 1M
    assert p.effective_cost == Decimal("0.0000229") and p.list_cost == Decimal("0.00002595")


def test_self_hosted_model_list_and_effective_from_override() -> None:
    cfg = PricingConfig(overrides=(RateOverride(model="llama-internal", input_per_mtok=Decimal("0.2"),
                                                output_per_mtok=Decimal("0.4"), applies_to="list_and_effective"),))
    p = Pricer(cfg).price(rec(request_model="llama-internal", response_model=None, cache_read_tokens=None))
    assert p.list_cost == p.effective_cost == Decimal("0.0000294")  # 101 x 0.2 + 23 x 0.4


def test_batch_discount() -> None:
    std = Pricer(PricingConfig()).price(rec())
    batch = Pricer(PricingConfig()).price(rec(batch=True))
    assert batch.list_cost is not None and std.list_cost is not None
    assert batch.list_cost < std.list_cost


def test_provider_map_targets_exist_in_the_catalogue() -> None:
    from genai_prices.data_snapshot import get_snapshot

    ids = {p.id for p in get_snapshot().providers}
    for semconv, pid in PROVIDER_MAP.items():
        assert pid in ids, (semconv, pid)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValidationError, match="either"):
        RateOverride(model="x")
    with pytest.raises(ValidationError, match="discount_pct"):
        RateOverride(model="x", discount_pct=Decimal(150))


def test_deterministic() -> None:
    p = Pricer(PricingConfig())
    assert dataclasses.astuple(p.price(rec())) == dataclasses.astuple(p.price(rec()))


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from([("openai", "gpt-4o-mini-2024-07-18"), ("openai", "gpt-4o"), ("anthropic",
                           "claude-3-5-haiku-20241022"), ("anthropic", "claude-sonnet-4-20250514"),
                           ("google", "gemini-1.5-pro"), ("openai", "o3-mini")]),
    uncached=st.integers(0, 400_000), cache_read=st.integers(0, 200_000), cache_write=st.integers(0, 50_000),
    out=st.integers(0, 50_000), minute=st.integers(0, 3), batch=st.booleans(),
)
def test_reused_rates_price_exactly_like_the_catalogue(model: tuple[str, str], uncached: int, cache_read: int,
                                                       cache_write: int, out: int, minute: int, batch: bool) -> None:
    """The per-minute rate reuse must give the price a fresh catalogue lookup gives, for any token counts
    (including tiered models, which are never reused)."""
    provider, name = model
    at = int(dt.datetime(2026, 3, 2, 10, minute, 17, tzinfo=dt.UTC).timestamp() * 1e9)
    r = rec(provider=provider, request_model=name, response_model=name, input_tokens=uncached + cache_read +
            cache_write, cache_read_tokens=cache_read, cache_write_tokens=cache_write, output_tokens=out,
            start_time_unix_nano=at, batch=batch)
    warm = SHARED_PRICER.price(r)  # a pricer that has seen many calls of this minute
    fresh = Pricer(PricingConfig()).price(r)
    assert (warm.list_cost, warm.effective_cost, warm.pricing_status) == \
        (fresh.list_cost, fresh.effective_cost, fresh.pricing_status)


SHARED_PRICER = Pricer(PricingConfig())

"""Chargeback statements: one tenant's line items for a period (model x token type: quantity, unit price, cost),
with an optional markup or rate card (cost-plus pricing), as a table/CSV and as Stripe invoice items.

Line items come from the `focus` view, so a statement at cost equals the tenant's FOCUS EffectiveCost for the
period. Stripe amounts are integers in the smallest currency unit (cents), each line rounded half-up; the
unrounded total is kept next to them so finance can see the rounding.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tenantledger.finops._common import FinopsError, Period, QueryFn, Table, require_tenant

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output")


class StatementsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    markup_pct: Decimal = Field(default=Decimal(0), ge=0)
    """Cost-plus: every line's cost x (1 + markup_pct/100). Ignored for lines the rate card prices."""
    rate_card: dict[str, dict[str, Decimal]] = {}
    """Resale prices per 1 000 000 tokens: {model: {input|cache_read|cache_write|output: USD}}."""
    stripe_customers: dict[str, str] = {}
    """Tenant id -> Stripe customer id (cus_...) for the invoice-item JSON."""


_SQL = """
SELECT x_Model AS model, x_TokenType AS token_type, ContractedUnitPrice AS unit_price_per_mtok,
       sum(ConsumedQuantity) AS quantity, sum(EffectiveCost) AS cost, sum(x_CallCount) AS calls
FROM focus
WHERE SubAccountId = ? AND ChargePeriodStart >= ? AND ChargePeriodStart < ?
GROUP BY ALL ORDER BY model, token_type, unit_price_per_mtok
"""

CENT = Decimal("0.01")


def statement(
    q: QueryFn, cfg: StatementsConfig, tenant: str, period: Period, markup_pct: Decimal | None = None
) -> tuple[Table, dict[str, Any]]:
    """The statement as a table (one row per line item) and as Stripe invoice items (JSON-ready dict)."""
    require_tenant(q, tenant)
    for model, prices in cfg.rate_card.items():
        for token_type in prices:
            if token_type not in TOKEN_TYPES:
                raise FinopsError(f"statements.rate_card.{model}.{token_type}: unknown token type",
                                  f"use {', '.join(TOKEN_TYPES)}")
    markup = cfg.markup_pct if markup_pct is None else markup_pct
    if markup < 0:
        raise FinopsError("--markup-pct must not be negative")
    _, rows = q(_SQL, [tenant, period.start_ts, period.end_ts])
    lines = []
    total_cost = total_charge = Decimal(0)
    unpriced_calls = 0
    for model, token_type, unit, quantity, cost, calls in rows:
        if token_type == "unpriced":
            unpriced_calls += int(calls)
            continue
        quantity, cost = Decimal(quantity), Decimal(cost)
        card = cfg.rate_card.get(model, {}).get(token_type)
        price: Decimal | None
        if card is not None:
            price, basis = card, "rate card"
            charge = quantity * card / 1_000_000
        else:
            price = (Decimal(unit) * (1 + markup / 100)) if unit is not None else None
            charge, basis = cost * (1 + markup / 100), (f"cost + {markup}%" if markup else "cost")
        total_cost += cost
        total_charge += charge
        lines.append((model, token_type, int(quantity), price, cost, charge, basis))
    table = Table(
        f"statement {tenant} {period.start}..{period.end}",
        ["model", "token_type", "quantity_tokens", "unit_price_per_mtok", "cost_usd", "charge_usd", "pricing"],
        lines,
    )
    table.notes.append(f"total cost {total_cost} USD, total charge {total_charge} USD "
                       f"({total_charge.quantize(CENT, ROUND_HALF_UP)} rounded)")
    if unpriced_calls:
        table.notes.append(f"{unpriced_calls} calls could not be priced and are not on this statement "
                           "(see `tenantledger audit`)")
    start = int(dt.datetime.combine(period.start, dt.time(), dt.UTC).timestamp())
    end = int(dt.datetime.combine(period.end, dt.time(), dt.UTC).timestamp())
    customer = cfg.stripe_customers.get(tenant)
    items = []
    for model, token_type, quantity, price, _cost, charge, _basis in lines:
        item: dict[str, Any] = {
            "amount": int(charge.quantize(CENT, ROUND_HALF_UP) * 100),
            "currency": "usd",
            "description": f"{model} {token_type.replace('_', ' ')} tokens: {quantity:,}",
            "period": {"start": start, "end": end},
            "metadata": {"tenant_id": tenant, "model": model, "token_type": token_type,
                         "quantity_tokens": str(quantity),
                         "unit_price_per_mtok_usd": "" if price is None else str(price)},
        }
        if customer:
            item["customer"] = customer
        items.append(item)
    stripe = {
        "tenant_id": tenant,
        "customer": customer,
        "period": {"start": start, "end": end},
        "invoice_items": items,
        "total_amount": sum(i["amount"] for i in items),
        "unrounded_total_usd": str(total_charge),
    }
    return table, stripe

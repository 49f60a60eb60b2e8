"""Spend concentration: what share of attributed spend the top N % of tenants drive, per period.

Answers the FinOps question "do the top 5-10 % of tenants drive 50-80 % of spend?". The number of tenants in
the top p % is ceil(p/100 x tenants with spend), so the top 10 % of 3 tenants is 1 tenant, never 0. The Gini
coefficient (0 = every tenant spends the same, 1 = one tenant spends everything) summarises the whole curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tenantledger.finops._common import FinopsError, Period, QueryFn, Table

GRAINS = {"day": "day", "month": "month", "all": None}

_SQL = """
SELECT {bucket} AS period_start, tenant_id, sum(effective_cost) AS cost
FROM llm_calls
WHERE tenant_id IS NOT NULL AND effective_cost IS NOT NULL AND start_time >= ? AND start_time < ?
GROUP BY ALL
ORDER BY period_start, cost DESC, tenant_id
"""


def _gini(costs: list[Decimal]) -> Decimal:
    n = len(costs)
    total = sum(costs, Decimal(0))
    if n < 2 or total == 0:
        return Decimal(0)
    asc = sorted(costs)
    weighted = sum((Decimal(i + 1) * c for i, c in enumerate(asc)), Decimal(0))
    return ((2 * weighted) / (n * total) - Decimal(n + 1) / n).quantize(Decimal("0.0001"))


def concentration(q: QueryFn, period: Period, top_pcts: Sequence[Decimal], grain: str = "month") -> Table:
    if grain not in GRAINS:
        raise FinopsError(f"unknown grain {grain!r}", "use day, month or all")
    for p in top_pcts:
        if not 0 < p <= 100:
            raise FinopsError(f"--top-pct {p} is not a percentage in (0, 100]")
    unit = GRAINS[grain]
    bucket = f"CAST(date_trunc('{unit}', start_time) AS DATE)" if unit else "CAST(? AS DATE)"
    params: list[Any] = [period.start] if unit is None else []
    _, rows = q(_SQL.format(bucket=bucket), [*params, period.start_ts, period.end_ts])
    by_period: dict[Any, list[tuple[str, Decimal]]] = {}
    for start, tenant, cost in rows:
        by_period.setdefault(start, []).append((tenant, Decimal(cost)))
    columns = ["period_start", "tenants", "spend_usd"]
    for p in top_pcts:
        columns += [f"top_{p}pct_tenants", f"top_{p}pct_share"]
    columns += ["gini", "top_tenant", "top_tenant_share"]
    out = []
    for start, ranked in by_period.items():
        costs = [c for _, c in ranked]
        total = sum(costs, Decimal(0))
        row: list[Any] = [start, len(ranked), total]
        for p in top_pcts:
            k = max(1, math.ceil(len(ranked) * p / 100))
            share = sum(costs[:k], Decimal(0)) / total if total else Decimal(0)
            row += [k, share.quantize(Decimal("0.0001"))]
        top_share = (costs[0] / total).quantize(Decimal("0.0001")) if total else Decimal(0)
        row += [_gini(costs), ranked[0][0], top_share]
        out.append(tuple(row))
    table = Table("concentration", columns, out)
    table.notes.append("shares are fractions of attributed effective spend in the period (1.0 = 100 %)")
    return table

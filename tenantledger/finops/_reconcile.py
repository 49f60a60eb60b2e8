"""Reconciliation of the ledger with a provider's own cost export, per UTC day and model: matched, mismatched,
ledger-only, provider-only, and the unattributed remainder, optionally allocated to tenants pro rata.

Adding a provider is one ``ProviderFormat`` entry: which columns hold the day, model and amount, and the amount's
unit. Allocation method ``prorata-attributed-cost``: a day x model remainder (provider cost - attributed ledger
cost) is split over that day x model's tenants by their share of its attributed effective cost; the last tenant
takes the sub-1e-12 rounding residue so allocations sum exactly to the remainder (FOCUS 1.3 split cost allocation).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tenantledger.finops._common import FinopsError, Period, QueryFn, Table

Q12 = Decimal("0.000000000001")


@dataclass(frozen=True)
class ProviderFormat:
    provider: str
    """The ledger's provider value (gen_ai.provider.name) these costs belong to."""
    description: str
    day: tuple[str, ...]
    model: tuple[str, ...]
    amount: tuple[str, ...]
    currency: tuple[str, ...]
    amount_per_usd: Decimal
    """How many amount units make one currency unit (100 when the export is in cents)."""
    model_of: Callable[[str], str] = str.strip


def _openai_line_item(value: str) -> str:
    # Costs API line items read "<model>, input" / "<model>, output" / "<model>, cached input".
    return value.split(",")[0].strip()


PROVIDER_FORMATS: dict[str, ProviderFormat] = {
    # OpenAI Costs API (GET /v1/organization/costs?group_by=line_item) flattened to CSV, one row per bucket x
    # line item: start_time (unix seconds or ISO 8601), line_item, amount_value, amount_currency.
    "openai": ProviderFormat(
        provider="openai",
        description="OpenAI costs export: start_time, line_item, amount_value, amount_currency",
        day=("start_time", "start_time_iso", "date"),
        model=("line_item", "model"),
        amount=("amount_value", "amount.value", "cost"),
        currency=("amount_currency", "amount.currency", "currency"),
        amount_per_usd=Decimal(1),
        model_of=_openai_line_item,
    ),
    # Anthropic Admin API cost report (GET /v1/organizations/cost_report, group_by description) as CSV:
    # starting_at (RFC 3339), model, amount (a decimal string in the lowest currency unit: cents), currency.
    "anthropic": ProviderFormat(
        provider="anthropic",
        description="Anthropic cost report export: starting_at, model, amount (cents), currency",
        day=("starting_at", "date"),
        model=("model",),
        amount=("amount",),
        currency=("currency",),
        amount_per_usd=Decimal(100),
    ),
}


def _day(value: str) -> dt.date:
    v = value.strip()
    if v.isdigit():
        return dt.datetime.fromtimestamp(int(v), dt.UTC).date()
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(dt.UTC).date() if "T" in v \
        else dt.date.fromisoformat(v)


def load_provider_export(path: Path, fmt_name: str) -> dict[tuple[dt.date, str], Decimal]:
    """Provider cost per (UTC day, model) in USD. Raises FinopsError naming the line and column at fault."""
    fmt = PROVIDER_FORMATS.get(fmt_name)
    if fmt is None:
        raise FinopsError(f"unknown provider format {fmt_name!r}", f"use one of: {', '.join(PROVIDER_FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise FinopsError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise FinopsError(f"{path} is not UTF-8 text: is it really a CSV export?") from e
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]

    def col(names: tuple[str, ...], what: str, required: bool = True) -> str | None:
        for n in names:
            if n in header:
                return n
        if required:
            raise FinopsError(
                f"{path} is not a {fmt_name} cost export: no {what} column (expected one of {', '.join(names)})",
                fmt.description,
            )
        return None

    day_c, model_c, amount_c = col(fmt.day, "day"), col(fmt.model, "model"), col(fmt.amount, "amount")
    cur_c = col(fmt.currency, "currency", required=False)
    out: dict[tuple[dt.date, str], Decimal] = {}
    reader.fieldnames = header
    for lineno, row in enumerate(reader, start=2):
        try:
            day = _day(row[day_c or ""] or "")
            amount = Decimal((row[amount_c or ""] or "").strip()) / fmt.amount_per_usd
            if not amount.is_finite():
                raise InvalidOperation
        except (ValueError, InvalidOperation, OverflowError) as e:
            raise FinopsError(f"{path}:{lineno}: cannot read the day or amount ({e.__class__.__name__})",
                              "dates must be ISO 8601 or unix seconds, amounts plain decimals") from e
        if cur_c and (row.get(cur_c) or "usd").strip().lower() != "usd":
            raise FinopsError(f"{path}:{lineno}: currency {row.get(cur_c)!r} is not USD",
                              "the ledger prices in USD; convert the export first")
        model = fmt.model_of(row.get(model_c or "") or "") or "(no model)"
        out[(day, model)] = out.get((day, model), Decimal(0)) + amount
    if not out:
        raise FinopsError(f"{path} has a header but no cost rows")
    return out


_LEDGER = """
SELECT CAST(start_time AS DATE) AS day, coalesce(response_model, request_model, '(no model)') AS model, tenant_id,
       coalesce(sum(effective_cost), 0) AS cost, sum(input_tokens) + sum(output_tokens) AS tokens
FROM llm_calls WHERE lower(provider) = ? AND start_time >= ? AND start_time < ?
GROUP BY ALL
"""


def reconcile(
    q: QueryFn, provider_costs: dict[tuple[dt.date, str], Decimal], fmt_name: str, period: Period,
    tolerance_usd: Decimal = Decimal("0.01"), tolerance_pct: Decimal = Decimal(1), allocate: bool = False,
) -> list[Table]:
    fmt = PROVIDER_FORMATS[fmt_name]
    _, rows = q(_LEDGER, [fmt.provider, period.start_ts, period.end_ts])
    ledger: dict[tuple[dt.date, str], dict[str | None, tuple[Decimal, int]]] = {}
    for day, model, tenant, cost, tokens in rows:
        ledger.setdefault((day, model.lower()), {})[tenant] = (Decimal(cost), int(tokens or 0))
    provider = {(d, m.lower()): v for (d, m), v in provider_costs.items() if period.start <= d < period.end}
    names = {(d, m.lower()): m for (d, m) in provider_costs} | {k: k[1] for k in ledger}
    out = []
    totals = {"provider": Decimal(0), "ledger": Decimal(0), "attributed": Decimal(0)}
    allocations: list[tuple[Any, ...]] = []
    for key in sorted(set(provider) | set(ledger)):
        per_tenant = ledger.get(key, {})
        l_cost = sum((c for c, _ in per_tenant.values()), Decimal(0))
        attributed = sum((c for t, (c, _) in per_tenant.items() if t is not None), Decimal(0))
        p_cost = provider.get(key)
        if p_cost is None:
            status = "ledger_only"
        elif not per_tenant:
            status = "provider_only"
        else:
            tol = max(tolerance_usd, abs(p_cost) * tolerance_pct / 100)
            status = "matched" if abs(p_cost - l_cost) <= tol else "mismatch"
        remainder = (p_cost if p_cost is not None else l_cost) - attributed
        out.append((key[0], names[key], p_cost, l_cost, attributed, l_cost - attributed,
                    None if p_cost is None else p_cost - l_cost, remainder, status))
        totals["provider"] += p_cost or Decimal(0)
        totals["ledger"] += l_cost
        totals["attributed"] += attributed
        if allocate and remainder != 0 and attributed > 0:
            tenants = sorted((t, c, n) for t, (c, n) in per_tenant.items() if t is not None and c > 0)
            given = Decimal(0)
            for i, (tenant, cost, tokens) in enumerate(tenants):
                ratio = cost / attributed
                share = remainder - given if i == len(tenants) - 1 else (remainder * ratio).quantize(Q12)
                given += share
                details = {"Elements": [{"AllocatedRatio": float(ratio.quantize(Decimal("0.000001"))),
                                         "UsageUnit": "Tokens", "UsageQuantity": tokens}]}
                allocations.append((key[0], names[key], tenant, share, "prorata-attributed-cost",
                                    json.dumps(details), tenant, tenant, json.dumps({"tenant": tenant})))
    summary = Table("reconciliation", ["day", "model", "provider_cost_usd", "ledger_cost_usd",
                                       "ledger_attributed_usd", "ledger_unattributed_usd", "difference_usd",
                                       "unattributed_remainder_usd", "status"], out)
    summary.notes.append(
        f"provider {fmt_name}: {totals['provider']} USD; ledger: {totals['ledger']} USD "
        f"({totals['attributed']} attributed); matched = within max({tolerance_usd} USD, {tolerance_pct} %)")
    tables = [summary]
    if allocate:
        tables.append(Table("allocations", ["day", "model", "tenant_id", "allocated_cost_usd", "AllocatedMethodId",
                                            "AllocatedMethodDetails", "AllocatedResourceId",
                                            "AllocatedResourceName", "AllocatedTags"], allocations))
    return tables

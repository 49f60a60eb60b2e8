"""/metrics rendering on a real ledger: per-tenant cost equals the ledger, the long tail folds into "other"."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from ledger import Ledger
from tenantledger._metrics import PipelineCollector, render
from tenantledger.finops._budgets import ALERTS_DDL
from tests.finops.test_finops_unit import add


def test_cost_per_tenant_with_bounded_cardinality(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    con.execute(ALERTS_DDL)
    at = dt.datetime(2026, 11, 2)
    for tenant, cost in [("big", "5"), ("mid", "3"), ("t1", "0.5"), ("t2", "0.25"), (None, "0.125")]:
        add(con, tenant, at, cost)

    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return con.execute(sql, list(params)).fetchall()

    # The rows were added behind the ledger's back: its totals read them on first use.
    text = render(PipelineCollector(ledger.spend_totals, query, lambda: {"gauge:traces_pending": 3.0},
                                    max_tenants=2, budget_states=lambda: [("big", "monthly", 2.0)],
                                    rejections=lambda: {"invalid_id": 4})).decode()
    costs: dict[str, Decimal] = {}
    for tenant, value in re.findall(r'tenantledger_cost_usd_total\{[^}]*tenant="([^"]+)"\} (\S+)', text):
        costs[tenant] = costs.get(tenant, Decimal(0)) + Decimal(value)
    assert costs == {"big": Decimal(5), "mid": Decimal(3), "other": Decimal("0.75"), "(unattributed)": Decimal("0.125")}
    assert 'tenantledger_budget_state{period="monthly",tenant="big"} 2.0' in text
    assert 'tenantledger_spans_rejected_by_reason_total{reason="invalid_id"} 4.0' in text
    assert "tenantledger_traces_pending 3.0" in text

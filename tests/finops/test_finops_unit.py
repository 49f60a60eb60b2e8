"""FinOps features on a real DuckDB ledger file filled directly: the anomaly method, budget thresholds and the
once-only alert rule, concentration arithmetic, provider-export parsing errors, statement rounding."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger import Ledger
from tenantledger.finops import (
    AnomaliesConfig,
    BudgetMonitor,
    BudgetsConfig,
    FinopsError,
    Period,
    StatementsConfig,
    concentration,
    find_anomalies,
    load_provider_export,
    statement,
)
from tenantledger.finops._budgets import evaluate

_ids = itertools.count(1)


def add(con: duckdb.DuckDBPyConnection, tenant: str | None, at: dt.datetime, cost: str, model: str = "gpt-4o",
        tokens: int = 1000) -> None:
    n = next(_ids)
    rate = Decimal(cost) * 1_000_000 / tokens
    con.execute(
        """INSERT INTO calls BY NAME SELECT ? AS trace_id, ? AS span_id, ? AS request_id, ? AS tenant_id,
           false AS tenant_conflict, false AS streamed, 'reported' AS usage_status, ? AS start_time, ? AS end_time,
           0 AS dedup_rank, false AS batch, 'USD' AS currency, 'priced' AS pricing_status, now() AS settled_at,
           'openai' AS provider, ? AS response_model, ? AS input_tokens, 0 AS output_tokens,
           ? AS list_cost, ? AS effective_cost, ? AS list_input_per_mtok, ? AS effective_input_per_mtok""",
        [f"{n:032x}", f"{n:016x}", f"r{n}", tenant, at, at, model, tokens, Decimal(cost), Decimal(cost), rate, rate],
    )


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    Ledger(c)
    return c


def qfn(con: duckdb.DuckDBPyConnection) -> Any:
    def q(sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = con.execute(sql, list(params))
        return [d[0] for d in cur.description or ()], cur.fetchall()

    return q


T0 = dt.datetime(2026, 11, 1)


def test_anomaly_needs_the_tenants_own_baseline(con: duckdb.DuckDBPyConnection) -> None:
    # 'steady' spends $2 +- 0.5 every hour; 'small' $0.01. An hour of $6 is an anomaly for steady only if far
    # above its own spread; 'small' jumping to $0.50 is 50x its baseline but under min_excess_usd.
    for h in range(72):
        add(con, "steady", T0 + dt.timedelta(hours=h), str(Decimal("2.0") + Decimal(h % 5 - 2) / 4))
        add(con, "small", T0 + dt.timedelta(hours=h), "0.01")
    add(con, "steady", T0 + dt.timedelta(hours=72), "6.0")
    add(con, "steady", T0 + dt.timedelta(hours=73), "2.6")  # within its usual spread: not flagged
    add(con, "small", T0 + dt.timedelta(hours=73), "0.50")
    t = find_anomalies(qfn(con), AnomaliesConfig(), Period(T0.date(), T0.date() + dt.timedelta(days=5)))
    assert [(r[0], r[1]) for r in t.rows] == [("steady", T0 + dt.timedelta(hours=72))]
    z = t.rows[0][5]
    assert z > Decimal("3.5")
    # Lowering the dollar floor lets the small tenant's 50x jump through.
    t = find_anomalies(qfn(con), AnomaliesConfig(min_excess_usd=Decimal("0.1")),
                       Period(T0.date(), T0.date() + dt.timedelta(days=5)))
    assert ("small", T0 + dt.timedelta(hours=73)) in [(r[0], r[1]) for r in t.rows]


def test_anomaly_robust_to_an_earlier_spike(con: duckdb.DuckDBPyConnection) -> None:
    # A mean/stddev baseline would be inflated by the first spike and miss the second; median/MAD is not.
    for h in range(60):
        add(con, "t", T0 + dt.timedelta(hours=h), str(Decimal(1) + Decimal(h % 3) / 10))
    add(con, "t", T0 + dt.timedelta(hours=30), "40")
    add(con, "t", T0 + dt.timedelta(hours=60), "8")
    t = find_anomalies(qfn(con), AnomaliesConfig(), Period(T0.date(), T0.date() + dt.timedelta(days=4)))
    assert (T0 + dt.timedelta(hours=60)) in [r[1] for r in t.rows]


@pytest.mark.parametrize("kept", [False, True])  # spend summed in SQL, or the ledger's daily totals (as in serve)
def test_budget_thresholds_and_alerts_fire_once(con: duckdb.DuckDBPyConnection, kept: bool) -> None:
    def monitor_of(cfg: BudgetsConfig, cur: duckdb.DuckDBPyConnection) -> BudgetMonitor:
        # Each monitor as after a restart: a new Ledger reads its totals from the rows added behind its back.
        return BudgetMonitor(cfg, cur, daily=Ledger(con).daily_spend if kept else None)

    cfg = BudgetsConfig(default={"daily_usd": "10"}, tenants={"big": {"daily_usd": "100", "monthly_usd": "1000"}})
    now = dt.datetime(2026, 11, 20, 12)
    add(con, "a", now - dt.timedelta(hours=1), "7.99")
    add(con, "b", now - dt.timedelta(hours=1), "8.00")
    add(con, "c", now - dt.timedelta(hours=1), "10.00")
    add(con, "c", now - dt.timedelta(days=1), "50")  # yesterday: not today's spend
    add(con, "big", now - dt.timedelta(hours=1), "99")
    states = {(s.tenant_id, s.period): s.state for s in evaluate(cfg, {}, now)}
    assert states == {("big", "daily"): "ok", ("big", "monthly"): "ok"}
    monitor = monitor_of(cfg, con.cursor())
    fired = monitor.check(now)
    assert sorted((f["tenant_id"], f["period"], f["threshold"]) for f in fired) == [
        ("b", "daily", "soft"), ("big", "daily", "soft"), ("c", "daily", "hard"), ("c", "daily", "soft")]
    assert {(s.tenant_id, s.period): s.state for s in monitor.states}[("a", "daily")] == "ok"
    assert monitor.check(now) == []  # same period: never again
    assert monitor_of(cfg, con.cursor()).check(now) == []  # a new monitor (restart) reads the table
    add(con, "a", now + dt.timedelta(days=1), "11")
    assert [(f["tenant_id"], f["period_start"]) for f in monitor_of(cfg, con.cursor()).check(
        now + dt.timedelta(days=1, hours=1)) if f["threshold"] == "hard"] == [("a", "2026-11-21")]


def test_budget_config_rejects_inverted_thresholds() -> None:
    with pytest.raises(ValueError, match="soft_threshold_pct must be below"):
        BudgetsConfig(soft_threshold_pct=Decimal(100), hard_threshold_pct=Decimal(90))


def test_concentration_counts_at_least_one_tenant_and_gini(con: duckdb.DuckDBPyConnection) -> None:
    for i, cost in enumerate(["80", "10", "5", "5"]):
        add(con, f"t{i}", T0, cost)
    t = concentration(qfn(con), Period(T0.date(), T0.date() + dt.timedelta(days=1)), [Decimal(10), Decimal(50)])
    (row,) = t.records()
    assert row["top_10pct_tenants"] == 1 and row["top_10pct_share"] == Decimal("0.8000")
    assert row["top_50pct_tenants"] == 2 and row["top_50pct_share"] == Decimal("0.9000")
    assert row["gini"] == Decimal("0.5750")  # sum|xi-xj| over ordered pairs / (2 n^2 mean) = 460 / 800
    with pytest.raises(FinopsError):
        concentration(qfn(con), Period(T0.date(), T0.date() + dt.timedelta(days=1)), [Decimal(0)])


def test_period_and_provider_export_errors(tmp_path: Path) -> None:
    with pytest.raises(FinopsError, match="inverted"):
        Period(dt.date(2026, 2, 1), dt.date(2026, 1, 1))
    f = tmp_path / "x.csv"
    f.write_text("start_time,line_item,amount_value,amount_currency\n1764547200,\"gpt-4o, input\",1.5,usd\n"
                 "notadate,\"gpt-4o, input\",2,usd\n")
    with pytest.raises(FinopsError, match=r"x.csv:3: cannot read the day or amount"):
        load_provider_export(f, "openai")
    f.write_text("start_time,line_item,amount_value,amount_currency\n1764547200,\"gpt-4o, input\",1.5,eur\n")
    with pytest.raises(FinopsError, match="not USD"):
        load_provider_export(f, "openai")
    f.write_text("starting_at,model,amount,currency\n2026-12-01T00:00:00Z,claude-x,123.45,USD\n"
                 "2026-12-01T00:00:00Z,claude-x,100,USD\n")
    assert load_provider_export(f, "anthropic") == {(dt.date(2026, 12, 1), "claude-x"): Decimal("2.2345")}
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FinopsError, match="not UTF-8"):
        load_provider_export(f, "anthropic")


def test_statement_rate_card_markup_and_cents(con: duckdb.DuckDBPyConnection) -> None:
    add(con, "acme", T0, "0.004999", model="gpt-4o", tokens=1000)
    add(con, "acme", T0, "1.000001", model="gpt-4o-mini", tokens=1_000_000)
    period = Period(T0.date(), T0.date() + dt.timedelta(days=1))
    cfg = StatementsConfig(markup_pct=Decimal(10), rate_card={"gpt-4o-mini": {"input": Decimal("2")}},
                           stripe_customers={"acme": "cus_123"})
    table, stripe = statement(qfn(con), cfg, "acme", period)
    lines = {r[0]: r for r in table.rows}
    assert lines["gpt-4o"][5] == Decimal("0.004999") * Decimal("1.1") and lines["gpt-4o"][6] == "cost + 10%"
    assert lines["gpt-4o-mini"][5] == Decimal(2) and lines["gpt-4o-mini"][6] == "rate card"
    amounts = {i["metadata"]["model"]: i["amount"] for i in stripe["invoice_items"]}
    assert amounts == {"gpt-4o": 1, "gpt-4o-mini": 200}  # $0.0054989 rounds half-up to 1 cent
    assert all(i["customer"] == "cus_123" for i in stripe["invoice_items"])
    with pytest.raises(FinopsError, match="unknown tenant"):
        statement(qfn(con), cfg, "nobody", period)

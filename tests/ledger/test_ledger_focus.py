"""The ledger contract views, read-only SQL, and the FOCUS export checked by the FinOps Foundation validator."""

from __future__ import annotations

import csv
import datetime as dt
import re
import subprocess
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from ledger import Ledger, QueryError, ReadOnlyViolation, harden, run_query
from ledger._focus import COLUMNS, FOCUS_COLUMNS, export_focus, ledger_totals
from processors import Settlement, TraceResult, TraceSummary
from processors._pricing import Pricer, PricingConfig
from tests.conftest import SHARED
from tests.processors.test_pricing import rec

VALIDATE = SHARED / "tools" / "focus-validate"
JAN = int(dt.datetime(2026, 1, 15, 10, tzinfo=dt.UTC).timestamp() * 1e9)
FEB = int(dt.datetime(2026, 2, 2, 10, tzinfo=dt.UTC).timestamp() * 1e9)

CONTRACT = ["trace_id", "span_id", "request_id", "tenant_id", "tenant_source", "unattributed_reason", "user_id",
            "feature", "environment", "workflow_id", "service_name", "provider", "operation", "request_model",
            "response_model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "list_cost", "effective_cost", "currency", "pricing_status", "start_time", "end_time"]


def build(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    ledger = Ledger(con)
    pricer = Pricer(PricingConfig())
    haiku = dict(provider="anthropic", request_model="claude-haiku-4-5", response_model="claude-haiku-4-5",
                 input_tokens=471, cache_read_tokens=300, cache_write_tokens=120, output_tokens=17)
    raw = [
        rec(trace_id="a" * 32, span_id="1" * 16, tenant_id="acme", start_time_unix_nano=JAN),
        rec(trace_id="a" * 32, span_id="2" * 16, tenant_id="acme", start_time_unix_nano=JAN, **haiku),
        rec(trace_id="b" * 32, span_id="1" * 16, tenant_id='=HYPERLINK("http://x")', start_time_unix_nano=JAN),
        rec(trace_id="c" * 32, span_id="1" * 16, tenant_id="+cmd", start_time_unix_nano=JAN + 86_400 * 10**9),
        rec(trace_id="d" * 32, span_id="1" * 16, tenant_id=None, unattributed_reason="no_tenant_in_trace",
            start_time_unix_nano=JAN),
        rec(trace_id="e" * 32, span_id="1" * 16, tenant_id="acme", request_model="my-finetune", response_model=None,
            start_time_unix_nano=JAN),
        # the same call twice (dedup_key): only one may be billed
        rec(trace_id="f" * 32, span_id="1" * 16, tenant_id="acme", dedup_key="openai:dup", dedup_rank=10,
            start_time_unix_nano=JAN),
        rec(trace_id="f" * 32, span_id="2" * 16, tenant_id="acme", dedup_key="openai:dup", dedup_rank=0,
            start_time_unix_nano=JAN),
        rec(trace_id="9" * 32, span_id="1" * 16, tenant_id="globex", start_time_unix_nano=FEB, **haiku),
    ]
    priced = [pricer.price(r) for r in raw]
    by_trace: dict[str, list] = {}
    for r in priced:
        by_trace.setdefault(r.trace_id, []).append(r)
    results = tuple(TraceResult(TraceSummary(t, f"{t}-req", None, None, (), False, len(rs)), tuple(rs))
                    for t, rs in by_trace.items())
    ledger.write(Settlement(results, 0))
    return con


def test_contract_views_have_the_documented_columns(tmp_path: Path) -> None:
    con = build(tmp_path / "l.duckdb")
    cols = [d[0] for d in con.execute("SELECT * FROM llm_calls LIMIT 0").description]
    assert cols[: len(CONTRACT)] == CONTRACT
    for view in ("requests", "spend_daily", "top_tenants", "spend_by_model", "spend_by_feature", "unattributed",
                 "focus"):
        con.execute(f"SELECT * FROM {view}").fetchall()
    assert con.execute("SELECT count(*) FROM llm_calls WHERE trace_id = ?", ["f" * 32]).fetchone() == (1,)
    unpriced = con.execute("SELECT list_cost, pricing_status FROM llm_calls WHERE request_model='my-finetune'")
    assert unpriced.fetchall() == [(None, "unpriced")]
    assert con.execute("SELECT typeof(list_cost) FROM llm_calls LIMIT 1").fetchone() == ("DECIMAL(38,12)",)


def test_sql_is_read_only_and_hardened(tmp_path: Path) -> None:
    con = build(tmp_path / "l.duckdb")
    harden(con)
    assert run_query(con, "SELECT count(*) FROM llm_calls").rows == [(8,)]
    for bad in ("DELETE FROM calls", "DROP VIEW llm_calls", "INSERT INTO calls SELECT * FROM calls",
                "ATTACH 'x.db'", "COPY calls TO 'x.csv'", "SELECT 1; DELETE FROM calls"):
        with pytest.raises(ReadOnlyViolation):
            run_query(con, bad)
    with pytest.raises(QueryError, match="ermission|disabled"):
        run_query(con, "SELECT * FROM read_csv('/etc/passwd')")


def validate(path: Path) -> None:
    out = subprocess.run([str(VALIDATE), str(path)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr


def test_focus_csv_passes_the_validator_and_reconciles(tmp_path: Path) -> None:
    con = build(tmp_path / "l.duckdb")
    out = tmp_path / "jan.csv"
    s = export_focus(con, out, start=dt.date(2026, 1, 1), end=dt.date(2026, 2, 1), billing_account_id="acct",
                     billing_account_name="Platform", fmt="csv")
    validate(out)
    rows = list(csv.DictReader(out.open()))
    assert s.rows == len(rows) > 0
    assert list(rows[0].keys()) == COLUMNS and COLUMNS.index("x_TenantId") == len(FOCUS_COLUMNS)
    effective, listed = ledger_totals(con, dt.date(2026, 1, 1), dt.date(2026, 2, 1))
    assert sum(Decimal(r["BilledCost"]) for r in rows) == effective == s.billed_cost
    assert sum(Decimal(r["ListCost"]) for r in rows) == listed
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    for r in rows:  # what the validator does not check
        for c in ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd"):
            assert iso.match(r[c]), r[c]
        assert r["ChargePeriodStart"] < r["ChargePeriodEnd"]
        assert r["BillingPeriodStart"] <= r["ChargePeriodStart"] and r["ChargePeriodEnd"] <= r["BillingPeriodEnd"]
        if r["ListUnitPrice"]:
            q = Decimal(r["PricingQuantity"])
            assert Decimal(r["ListCost"]) == Decimal(r["ListUnitPrice"]) * q
            assert Decimal(r["EffectiveCost"]) == Decimal(r["ContractedUnitPrice"]) * q
            assert r["ConsumedUnit"] == "Tokens" and r["PricingUnit"] == "1000000 Tokens"
        for c in ("BilledCost", "ListCost", "EffectiveCost", "ContractedCost"):
            assert "." in r[c]
    tenants = {r["SubAccountId"] for r in rows}
    assert "'=HYPERLINK(\"http://x\")" in tenants and "'+cmd" in tenants and "acme" in tenants
    assert {r["ServiceProviderName"] for r in rows} >= {"OpenAI", "Anthropic"}
    assert any(r["x_PricingStatus"] == "unpriced" and Decimal(r["BilledCost"]) == 0 for r in rows)
    # token-level quantities, not "1 Request": the haiku call's cache reads appear as their own row
    assert any(r["x_TokenType"] == "cache_read" and Decimal(r["ConsumedQuantity"]) == 300 for r in rows)


def test_focus_csv_export_fits_in_the_smallest_duckdb_cap_serve_allows(tmp_path: Path) -> None:
    """`serve` answers exports under its own DuckDB cap (ledger.serve_duckdb_memory_limit_mib, at least 64 MiB).
    The CSV formatting of a small ledger once needed 164 MiB of DuckDB memory: one hash table per text column for
    the CSV-injection check."""
    con = build(tmp_path / "l.duckdb")
    con.execute("SET memory_limit = '64MiB'")
    out = tmp_path / "year.csv"
    s = export_focus(con, out, start=dt.date(2026, 1, 1), end=dt.date(2027, 1, 1), billing_account_id="acct",
                     billing_account_name="Platform", fmt="csv")
    tenants = {r["SubAccountId"] for r in csv.DictReader(out.open())}
    assert s.rows > 0 and {"'=HYPERLINK(\"http://x\")", "'+cmd", "acme", "globex"} <= tenants


def test_focus_parquet_is_partitioned_validated_and_keeps_raw_values(tmp_path: Path) -> None:
    con = build(tmp_path / "l.duckdb")
    out = tmp_path / "focus"
    s = export_focus(con, out, start=dt.date(2026, 1, 1), end=dt.date(2026, 3, 1), billing_account_id="acct",
                     billing_account_name="Platform", fmt="parquet")
    parts = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert parts == ["billing_period=2026-01/part-0.parquet", "billing_period=2026-02/part-0.parquet"]
    validate(out / parts[0])
    r = duckdb.sql(f"SELECT billing_period, sum(BilledCost), list(DISTINCT SubAccountId) FROM "
                   f"read_parquet('{out}/**/*.parquet', hive_partitioning=true) GROUP BY 1 ORDER BY 1").fetchall()
    assert [x[0] for x in r] == ["2026-01", "2026-02"]
    assert sum(Decimal(x[1]) for x in r) == s.billed_cost
    assert '=HYPERLINK("http://x")' in r[0][2]

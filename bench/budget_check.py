"""Latency of the gateway budget check (GET /v1/budget/{tenant}) on a generated month of calls.

Usage: python bench/budget_check.py [--calls 10000000] [--tenants 1000]
Prints p50/p99 of the budget check for random tenants, over a real DuckDB ledger file with the ledger schema: as
`serve` answers it (from the per-tenant, per-day totals the ledger writer keeps, after their first read from the
ledger, which is timed too), and as a SQL sum over the month (the CLI's `tenantledger budget`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from ledger import Ledger
from tenantledger.finops import BudgetsConfig
from tenantledger.finops._budgets import budget_check, spend_from_daily


def generate(con: duckdb.DuckDBPyConnection, calls: int, tenants: int, month: dt.date) -> None:
    con.execute(
        """INSERT INTO calls BY NAME
           SELECT printf('%032x', i) AS trace_id, printf('%016x', i) AS span_id, printf('r%d', i // 3) AS request_id,
                  'tenant-' || (hash(i) % ?) AS tenant_id, false AS tenant_conflict, false AS streamed,
                  'reported' AS usage_status,
                  CAST(? AS TIMESTAMP) + to_seconds(CAST(i * (2592000 / ?) AS BIGINT)) AS start_time,
                  CAST(? AS TIMESTAMP) + to_seconds(CAST(i * (2592000 / ?) AS BIGINT)) AS end_time,
                  0 AS dedup_rank, false AS batch, 'USD' AS currency, 'priced' AS pricing_status,
                  now() AS settled_at, 'openai' AS provider, 'gpt-4o-mini' AS response_model,
                  1000 AS input_tokens, 100 AS output_tokens,
                  CAST(0.00021 AS DECIMAL(38,12)) AS list_cost, CAST(0.00021 AS DECIMAL(38,12)) AS effective_cost
           FROM range(?) t(i)""",
        [tenants, month, calls, month, calls, calls],
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--checks", type=int, default=200)
    args = ap.parse_args(argv)
    month = dt.date(2026, 11, 1)
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "ledger.duckdb"))
        Ledger(con)
        t0 = time.perf_counter()
        generate(con, args.calls, args.tenants, month)
        con.execute("CHECKPOINT")
        gen_s = time.perf_counter() - t0
        cfg = BudgetsConfig(default={"daily_usd": "50", "monthly_usd": "1000"})
        now = dt.datetime(2026, 11, 30, 23)

        def q(sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
            cur = con.cursor()
            try:
                r = cur.execute(sql, list(params))
                return [d[0] for d in r.description or ()], r.fetchall()
            finally:
                cur.close()

        ledger = Ledger(con)
        t0 = time.perf_counter()
        ledger.daily_spend(month)
        first_s = time.perf_counter() - t0

        def kept(tenant: str) -> dict[str, Any]:
            daily = ledger.daily_spend(month, tenant=tenant, until=now.date())
            return budget_check(q, cfg, tenant, now, spend_from_daily(daily, now))

        def summed(tenant: str) -> dict[str, Any]:
            return budget_check(q, cfg, tenant, now)

        figures = []
        for check in (kept, summed):
            rng = random.Random(1)
            samples = []
            for _ in range(args.checks):
                tenant = f"tenant-{rng.randrange(args.tenants)}"
                t = time.perf_counter()
                doc = check(tenant)
                samples.append(time.perf_counter() - t)
                assert doc["budgeted"]
            samples.sort()
            figures.append((statistics.median(samples) * 1000, samples[int(len(samples) * 0.99) - 1] * 1000))
        (p50, p99), (s50, s99) = figures
        print(f"budget_check: calls={args.calls} tenants={args.tenants} generate_s={gen_s:.1f} "
              f"p50_ms={p50:.2f} p99_ms={p99:.2f} (serve: the ledger's daily totals, first read {first_s:.2f} s); "
              f"summed in SQL (the CLI): p50_ms={s50:.1f} p99_ms={s99:.1f}")


if __name__ == "__main__":
    main()

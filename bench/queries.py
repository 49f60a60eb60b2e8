"""Query benchmark: a generated month of LLM calls bulk-inserted into a ledger file (the real schema and views),
then the per-tenant monthly total, the top-20 tenants and the full-month FOCUS export, each timed with peak RSS.

    python bench/queries.py [--calls 10000000] [--tenants 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from _load import machine

MONTH_START, MONTH_END = dt.date(2025, 5, 1), dt.date(2025, 6, 1)
# (provider, response model, list input/cache read/output rate per 1M tokens): priced rows like the real ledger's.
_MODELS = [
    ("openai", "gpt-4o-mini-2024-07-18", "0.15", "0.075", "0.6"),
    ("openai", "gpt-4o-2024-08-06", "2.5", "1.25", "10"),
    ("anthropic", "claude-3-5-sonnet-20241022", "3", "0.3", "15"),
    ("anthropic", "claude-3-5-haiku-20241022", "0.8", "0.08", "4"),
]


def generate(path: Path, calls: int, tenants: int) -> float:
    """Create the ledger (tables and views as `serve` does) and insert ``calls`` rows in one SQL statement."""
    import duckdb

    from ledger import Ledger

    con = duckdb.connect(str(path))
    Ledger(con)
    models = " UNION ALL ".join(
        f"SELECT {i} AS m, '{p}' AS provider, '{m}' AS model, {a}::DECIMAL(38,12) AS r_in, "
        f"{c}::DECIMAL(38,12) AS r_cr, {o}::DECIMAL(38,12) AS r_out"
        for i, (p, m, a, c, o) in enumerate(_MODELS)
    )
    seconds = (MONTH_END - MONTH_START).days * 86400
    t0 = time.perf_counter()
    con.execute(
        f"""
        INSERT INTO calls BY NAME
        WITH base AS (
            SELECT i, hash(i) AS h,
                   -- a skewed tenant mix: a few large tenants, a long tail
                   CAST(floor({tenants} * pow((hash(i * 31 + 7) % 1000000) / 1000000.0, 3)) AS INTEGER) AS t,
                   50 + hash(i * 17) % 4000 AS inp, 10 + hash(i * 13) % 800 AS outp
            FROM range({calls}) r(i)
        ), rows AS (
            SELECT b.*, m.*, inp // 4 AS cr,
                   TIMESTAMP '{MONTH_START}' + to_seconds(CAST(h % {seconds} AS BIGINT)) AS st
            FROM base b JOIN ({models}) m ON m.m = b.h % {len(_MODELS)}
        )
        SELECT printf('%032x', i // 9) AS trace_id, printf('%016x', i) AS span_id,
               printf('%032x-%016x', i // 9, i // 9 * 9) AS request_id,
               'tenant-' || lpad(CAST(t AS VARCHAR), 4, '0') AS tenant_id, 'span' AS tenant_source,
               NULL AS unattributed_reason, false AS tenant_conflict, 'user-' || (h % 1000) AS user_id,
               'chat' AS feature, 'production' AS environment, NULL AS workflow_id, NULL AS conversation_id,
               NULL AS agent_name, 'chat-api' AS service_name, 'chat ' || model AS span_name, provider,
               'chat' AS operation, model AS request_model, model AS response_model, 'resp-' || i AS response_id,
               false AS streamed, 'reported' AS usage_status, inp AS input_tokens, outp AS output_tokens,
               cr AS cache_read_tokens, 0 AS cache_write_tokens, NULL AS reasoning_tokens,
               st AS start_time, st + INTERVAL 850 MILLISECOND AS end_time,
               provider || ':resp-' || i AS dedup_key, 0 AS dedup_rank, false AS is_duplicate, false AS batch,
               NULL AS service_tier,
               CAST(((inp - cr) * r_in + cr * r_cr + outp * r_out) / 1000000 AS DECIMAL(38,12)) AS list_cost,
               CAST(((inp - cr) * r_in + cr * r_cr + outp * r_out) / 1000000 AS DECIMAL(38,12)) AS effective_cost,
               'USD' AS currency, 'priced' AS pricing_status, NULL AS pricing_reason,
               'genai-prices (generated)' AS price_source, model AS priced_model,
               r_in AS list_input_per_mtok, r_cr AS list_cache_read_per_mtok,
               CAST(NULL AS DECIMAL(38,12)) AS list_cache_write_per_mtok, r_out AS list_output_per_mtok,
               r_in AS effective_input_per_mtok, r_cr AS effective_cache_read_per_mtok,
               CAST(NULL AS DECIMAL(38,12)) AS effective_cache_write_per_mtok, r_out AS effective_output_per_mtok,
               now()::TIMESTAMP AS settled_at
        FROM rows
        """
    )
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def _measure(ledger: str, what: str, out_dir: str) -> None:
    """Child process: one measurement on a read-only ledger, printed as JSON with this process's peak RSS."""
    from ledger import open_read_only
    from ledger._focus import export_focus, ledger_totals

    con = open_read_only(Path(ledger), 1024)  # the default ledger.duckdb_memory_limit_mib, as `export` uses
    t0 = time.perf_counter()
    result: object
    if what == "tenant_total":
        # The largest tenant: the worst case of the per-tenant question.
        row = con.execute(
            "SELECT sum(effective_cost), count(*) FROM llm_calls WHERE tenant_id = 'tenant-0000' "
            "AND start_time >= ? AND start_time < ?", [MONTH_START, MONTH_END]).fetchone()
        assert row is not None
        result = {"effective_cost": str(row[0]), "calls": row[1]}
    elif what == "top20":
        rows = con.execute(
            "SELECT tenant_id, sum(effective_cost) AS cost FROM llm_calls WHERE start_time >= ? AND start_time < ? "
            "GROUP BY tenant_id ORDER BY cost DESC LIMIT 20", [MONTH_START, MONTH_END]).fetchall()
        result = {"rows": len(rows), "first": rows[0][0] if rows else None}
    else:
        fmt: Literal["csv", "parquet"] = "csv" if what == "focus_csv" else "parquet"
        target = Path(out_dir) / ("focus.csv" if fmt == "csv" else "focus")
        s = export_focus(con, target, start=MONTH_START, end=MONTH_END, billing_account_id="bench",
                         billing_account_name="bench", fmt=fmt)
        effective, _ = ledger_totals(con, MONTH_START, MONTH_END)
        result = {"rows": s.rows, "reconciles": abs(s.effective_cost - effective) < 1}
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": what, "seconds": elapsed, "peak_rss_mib": peak, "result": result}, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=10_000_000, help="calls in the generated month (default 10M)")
    p.add_argument("--tenants", type=int, default=2000, help="tenants (default 2000)")
    p.add_argument("--measure", nargs=3, metavar=("LEDGER", "WHAT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        _measure(*args.measure)
        return 0
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tl-queries-") as tmp:
        ledger = Path(tmp) / "month.duckdb"
        gen_s = generate(ledger, args.calls, args.tenants)
        size_mib = ledger.stat().st_size / 2**20
        print(f"generated {args.calls:,} calls ({args.tenants} tenants, {MONTH_START:%Y-%m}) in {gen_s:.1f} s; "
              f"ledger {size_mib:,.0f} MiB", flush=True)
        targets = {"tenant_total": 1.0, "top20": 1.0, "focus_csv": 60.0, "focus_parquet": 60.0}
        for what, target in targets.items():
            # A fresh process per measurement: its peak RSS is the measurement's own.
            out = subprocess.run([sys.executable, __file__, "--measure", str(ledger), what, tmp],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{what}: {r['seconds']:.3f} s (target < {target:g} s), peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"{r['result']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

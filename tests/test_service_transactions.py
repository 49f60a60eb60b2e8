"""The serving process must not leave a DuckDB transaction open after startup and its periodic operations: an
idle open transaction blocks DuckDB's automatic checkpoints, so the WAL and the in-memory table data grow while
serving. (The growth itself is measured by bench/ingest.py's RSS run.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tenantledger.app import Service
from tenantledger.config import load_config


def test_no_transaction_left_open_by_startup_or_queries(tmp_path: Path) -> None:
    config = load_config(None, {"ledger": {"path": str(tmp_path / "l.duckdb")},
                                "budgets": {"default": {"daily_usd": "1"}},
                                "api": {"tokens": [{"token": "t", "tenant": "acme"}]}})
    service = Service(config)
    try:
        probe = service.con.cursor()
        probe.execute("CHECKPOINT")  # raises "other write transactions active" if any cursor holds one
        service.ledger.watermark()
        service.settler.recover()
        service.budgets.check(dt.datetime(2026, 11, 2))
        service.query_fn(None)("SELECT count(*) FROM llm_calls", [])
        service.query_fn("acme")("SELECT count(*) FROM llm_calls", [])
        probe.execute("CHECKPOINT")
    finally:
        service.stop()

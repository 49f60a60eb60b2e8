"""The serving process must not leave a DuckDB transaction open after startup and its periodic operations: an
idle open transaction blocks DuckDB's automatic checkpoints, so the WAL and the in-memory table data grow while
serving. (The growth itself is measured by bench/ingest.py's RSS run.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tenantledger.app import Service, usable_cpus
from tenantledger.config import load_config


def test_no_transaction_left_open_by_startup_or_queries(tmp_path: Path) -> None:
    config = load_config(None, {"ledger": {"path": str(tmp_path / "l.duckdb")},
                                "budgets": {"default": {"daily_usd": "1"}},
                                "api": {"tokens": [{"token": "t", "tenant": "acme"}]}})
    service = Service(config)
    try:
        probe = service.file.cursor()  # in the ledger's database (a bare cursor starts in the in-memory one)
        probe.execute("CHECKPOINT")  # raises "other write transactions active" if any cursor holds one
        service.ledger.watermark()
        service.settler.recover()
        service.budgets.check(dt.datetime(2026, 11, 2))
        service.query_fn(None)("SELECT count(*) FROM llm_calls", [])
        service.query_fn("acme")("SELECT count(*) FROM llm_calls", [])
        probe.execute("CHECKPOINT")
    finally:
        service.stop()


def test_serve_caps_duckdb_cache_apart_from_export(tmp_path: Path) -> None:
    """DuckDB keeps what it reads up to its cap, so the serving process gets its own, smaller cap
    (ledger.serve_duckdb_memory_limit_mib); receiver.memory_limit_mib lowers it to a quarter of that limit. The
    checkpoint threshold (ledger.checkpoint_threshold_mib) is at most a sixteenth of the cap: the rows appended since
    the last checkpoint stay in it, at up to ~4x their WAL size, and a checkpoint holds up to ~3x it. DuckDB's
    allocator gives back what a task freed once that task peaked above a sixteenth of the cap, but its blocks (the
    cache) come from a region as large as the cap that is kept, so RSS does not swing with the cache."""
    for extra, expected, checkpoint, flush in (
        ({}, "256.0 MiB", "16.0 MiB", "16.0 MiB"),
        ({"ledger": {"checkpoint_threshold_mib": 32}}, "256.0 MiB", "16.0 MiB", "16.0 MiB"),
        ({"ledger": {"serve_duckdb_memory_limit_mib": 128}}, "128.0 MiB", "8.0 MiB", "8.0 MiB"),
        ({"ledger": {"serve_duckdb_memory_limit_mib": 512, "checkpoint_threshold_mib": 24}}, "512.0 MiB", "24.0 MiB",
         "32.0 MiB"),
        ({"receiver": {"memory_limit_mib": 200}}, "50.0 MiB", "3.0 MiB", "3.0 MiB"),
    ):
        ledger = {"path": str(tmp_path / f"l{expected[:3]}{checkpoint[:3]}.duckdb"), **extra.get("ledger", {})}
        service = Service(load_config(None, {**extra, "ledger": ledger}))
        try:
            got = service.con.execute("SELECT current_setting('memory_limit'), "
                                      "current_setting('checkpoint_threshold'), "
                                      "current_setting('allocator_flush_threshold'), "
                                      "current_setting('block_allocator_memory')").fetchall()[0]
            assert got == (expected, checkpoint, flush, expected)
        finally:
            service.stop()


def test_serve_runs_as_many_duckdb_threads_as_cpus_it_may_use_less_its_worker_processes(tmp_path: Path) -> None:
    """DuckDB counts the machine's CPUs, not the process's affinity mask; serve sets its threads to the latter, less
    the worker processes it runs (they use those CPUs), at least one; ledger.duckdb_threads overrides."""
    none = {"receiver": {"decode_workers": 0}, "processors": {"settle_workers": 0}}
    three = {"receiver": {"decode_workers": 1}, "processors": {"settle_workers": 2}}
    for name, extra, expected in (
        ("none", none, usable_cpus()),
        ("three", three, max(1, usable_cpus() - 3)),
        ("set", {**three, "ledger": {"duckdb_threads": 3}}, 3),
    ):
        ledger = {"path": str(tmp_path / f"{name}.duckdb"), **extra.get("ledger", {})}
        service = Service(load_config(None, {**extra, "ledger": ledger}))
        try:
            got = service.con.execute("SELECT current_setting('threads')").fetchall()[0][0]
            assert got == expected
            assert len(service.workers) + service.decoder.workers == (0 if extra is none else 3)
        finally:
            service.stop()


def test_the_ledgers_key_filters_take_the_memory_configured_at_start(tmp_path: Path) -> None:
    """ledger.key_filter_mib: each of the two filters (dedup keys, settled traces) is allocated at start, so the
    server's memory does not rise as they fill; /metrics reports it (tenantledger_ledger_filter_bytes)."""
    service = Service(load_config(None, {"ledger": {"path": str(tmp_path / "l.duckdb"), "key_filter_mib": 4}}))
    try:
        assert service.ledger.memory()["filters"] == 2 * 4 * 2**20
    finally:
        service.stop()

"""The settled watermark written with each settlement: read back after a restart (also from a ledger file of an
earlier version), kept to a few rows, and written so that DuckDB still checkpoints while other connections read."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import ledger._ledger as ledger_mod
from ledger import Ledger, LedgerFile
from processors import Settlement, TraceResult, TraceSummary
from processors._pricing import Pricer, PricingConfig
from tests.processors.test_pricing import rec

PRICER = Pricer(PricingConfig())


def settle(ledger: Ledger, trace_id: str, watermark: int, calls: int = 1) -> None:
    priced = tuple(PRICER.price(rec(trace_id=trace_id, span_id=f"{i:016x}")) for i in range(calls))
    summary = TraceSummary(trace_id, f"{trace_id}-req", "acme", None, (), False, len(priced))
    ledger.write(Settlement((TraceResult(summary, priced),), watermark, replaced=frozenset()))


def test_the_watermark_survives_a_restart_and_its_table_is_pruned(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "WATERMARK_KEEP", 3)
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    assert ledger.watermark() == 0
    for i in range(1, 8):
        settle(ledger, f"{i:032x}", 10 * i)
        assert ledger.watermark() == 10 * i
    # The 6th write deleted the rows before its own: rows 6 and 7 are left.
    assert con.execute("SELECT write_no, value FROM settled_watermarks ORDER BY 1").fetchall() == [(6, 60), (7, 70)]
    con.close()
    again = Ledger(duckdb.connect(str(tmp_path / "l.duckdb")))
    assert again.watermark() == 70
    settle(again, "e" * 32, 80)
    assert again.watermark() == 80


def test_a_ledger_file_that_kept_the_watermark_in_ledger_meta_resumes_from_it(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    Ledger(con)
    # What an earlier version left: the watermark as the one row of ledger_meta, no settled_watermarks table.
    con.execute("DROP TABLE settled_watermarks")
    con.execute("INSERT INTO ledger_meta VALUES ('settled_watermark', 123)")
    con.close()
    ledger = Ledger(duckdb.connect(str(tmp_path / "l.duckdb")))
    assert ledger.watermark() == 123
    settle(ledger, "a" * 32, 130)
    assert ledger.watermark() == 130


def test_writes_are_checkpointed_while_another_connection_holds_a_read_transaction(tmp_path: Path) -> None:
    """Serve's ledger always has readers (settler lookups, queries, /metrics). A write transaction that updates a row
    in place is not checkpointed while one is open, so the WAL and the rows DuckDB keeps in memory grew without
    bound; the writes must still checkpoint once the WAL passes the threshold."""
    f = LedgerFile(tmp_path / "l.duckdb")
    ledger = Ledger(f)
    f.con.execute("SET checkpoint_threshold = '256KiB'")
    reader = f.cursor()
    reader.execute("BEGIN TRANSACTION")
    assert reader.execute("SELECT count(*) FROM calls").fetchall() == [(0,)]
    wal = tmp_path / "l.duckdb.wal"
    sizes = []
    for i in range(30):
        settle(ledger, f"{i:032x}", i + 1, calls=100)
        sizes.append(wal.stat().st_size if wal.exists() else 0)
    # 3 000 calls, several times the threshold in WAL records; each write is ~1/10 of it.
    assert max(sizes) < 2 * 256 * 1024, sizes
    assert sizes.count(0) + sum(1 for a, b in zip(sizes, sizes[1:], strict=False) if b < a) >= 2, sizes
    # The reader still sees the ledger as it was when its transaction began; once it ends, every row.
    assert reader.execute("SELECT count(*) FROM calls").fetchall() == [(0,)]
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM calls").fetchall() == [(3000,)]
    assert ledger.watermark() == 30
    f.con.close()

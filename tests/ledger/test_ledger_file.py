"""The serving connection to the ledger file: small row groups, every cursor in the ledger's database, and the
check that DuckDB has not invalidated it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ledger import LedgerFile, LedgerInvalidated
from ledger._file import ROW_GROUP_SIZE


def test_rows_written_through_the_serving_connection_are_in_small_row_groups(tmp_path: Path) -> None:
    """A checkpoint that rewrites a partial 122 880-row group of ~1 KB spans pinned ~390 MiB; the serving
    connection writes row groups of ROW_GROUP_SIZE rows, whichever cursor wrote them."""
    path = tmp_path / "l.duckdb"
    f = LedgerFile(path)
    cur = f.cursor()
    cur.execute("CREATE TABLE t (i BIGINT, s VARCHAR)")
    for start in range(0, 60_000, 5_000):  # small commits, as the spool makes
        cur.execute("INSERT INTO t SELECT range, repeat('x', 100) FROM range(?, ?)", [start, start + 5_000])
    f.con.execute("CHECKPOINT")
    groups = f.cursor().execute(
        "SELECT row_group_id, max(\"count\") FROM pragma_storage_info('t') WHERE column_name = 'i' "
        "GROUP BY row_group_id"
    ).fetchall()
    assert len(groups) >= 60_000 // ROW_GROUP_SIZE and max(n for _, n in groups) <= ROW_GROUP_SIZE
    f.con.close()
    # The file is an ordinary ledger: a plain connection reads it back.
    assert duckdb.connect(str(path), read_only=True).execute("SELECT count(*) FROM t").fetchall() == [(60_000,)]


def test_every_cursor_starts_in_the_ledger_database(tmp_path: Path) -> None:
    f = LedgerFile(tmp_path / "l.duckdb")
    f.cursor().execute("CREATE TABLE t (i INTEGER)")
    assert f.cursor().execute("SELECT current_database(), count(*) FROM t").fetchall() == [("ledger", 0)]
    assert f.con.execute("SELECT current_database()").fetchall() == [("ledger",)]
    f.con.close()


def test_check_reports_a_ledger_that_duckdb_invalidated_and_the_committed_rows_survive(tmp_path: Path) -> None:
    """After a failed checkpoint (DuckDB's own fault injection) every statement is refused: check() says so with
    the fix; reopening the file replays the WAL, committed rows included."""
    path = tmp_path / "l.duckdb"
    f = LedgerFile(path)
    cur = f.cursor()
    cur.execute("CREATE TABLE t (i BIGINT)")
    cur.execute("INSERT INTO t SELECT range FROM range(1000)")
    f.check()  # healthy: no error
    f.con.execute("SET debug_checkpoint_abort = 'before_header'")
    with pytest.raises(duckdb.Error):
        f.con.execute("CHECKPOINT")
    with pytest.raises(LedgerInvalidated) as e:
        f.check()
    assert "invalidated" in e.value.message and e.value.hint and "restart" in e.value.hint
    f.con.close()
    again = LedgerFile(path)
    assert again.cursor().execute("SELECT count(*) FROM t").fetchall() == [(1000,)]
    again.check()

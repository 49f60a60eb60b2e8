"""The serving connection to the ledger file: small row groups, every cursor in the ledger's database, and the
check that DuckDB has not invalidated it."""

from __future__ import annotations

from collections.abc import Callable
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


def _glibc_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not taken back (``mallinfo2``), or None where that is not glibc."""
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return int(fn().uordblks)


def _wide_table(cur: duckdb.DuckDBPyConnection) -> Callable[[int, int], None]:
    """Create ``t`` (31 columns, as wide as the ledger's calls) and return a writer of its rows ``start`` to ``stop``
    in ledger-sized commits (8 192 rows)."""
    cols = ", ".join(f"c{i} VARCHAR" for i in range(30))
    cur.execute(f"CREATE TABLE t (i BIGINT, {cols})")
    values = ", ".join(f"'v' || (range % 991)::VARCHAR || '{i}'" for i in range(30))

    def write(start: int, stop: int) -> None:
        for lo in range(start, stop, 8_192):
            cur.execute(f"INSERT INTO t SELECT range, {values} FROM range(?, ?)", [lo, lo + 8_192])

    return write


def test_reattach_gives_back_the_row_group_metadata_and_keeps_every_row_and_cursor(tmp_path: Path) -> None:
    """What re-attaching is for: DuckDB holds each written row group's metadata in the C++ heap while the file is
    attached (~7 bytes a row of a wide table), so the heap grows with every row written; after a re-attach it is
    back where it was after the previous one, however many rows were written between. The rows are all there and
    cursors taken before it work."""
    f = LedgerFile(tmp_path / "l.duckdb")
    cur = f.cursor()
    write = _wide_table(cur)

    write(0, 24 * 8_192)
    assert f.reattach()
    settled = _glibc_in_use()  # DuckDB's own fixed allocations are made by now
    write(24 * 8_192, 122 * 8_192)
    grown = _glibc_in_use()
    assert f.reattach()
    after = _glibc_in_use()
    assert f.reattaches == 2
    n = 122 * 8_192
    assert cur.execute("SELECT count(*), sum(i) FROM t").fetchall() == [(n, n * (n - 1) // 2)]
    assert f.cursor().execute("SELECT current_database()").fetchall() == [("ledger",)]
    f.check()
    if settled is not None and grown is not None and after is not None:  # glibc
        held = grown - settled
        assert held > 3 << 20, f"800 000 rows held only {held} bytes of heap"
        assert after - settled < held / 2, f"re-attaching gave back {grown - after} of {held} bytes"
    f.con.close()


@pytest.mark.xfail(
    tuple(int(x) for x in duckdb.__version__.split(".")[:2]) < (2, 0), strict=True,
    reason="DuckDB 1.5 loads the metadata of every row group of a table again at the second checkpoint it has after "
           "a re-attach (2.0 keeps it unloaded: bench/README.md, 2026-12-02); when this passes, the pin has moved "
           "and ledger.reattach_after_calls can be on by default")
def test_the_metadata_a_reattach_gave_back_stays_out_while_the_table_is_written_and_checkpointed(
        tmp_path: Path) -> None:
    """What a writing server needs of a re-attach: the metadata it gave back stays out of the heap while new rows
    go to the same table and checkpoints run, so only what was written since is held."""
    f = LedgerFile(tmp_path / "l.duckdb")
    cur = f.cursor()
    write = _wide_table(cur)

    assert f.reattach()
    settled = _glibc_in_use()
    write(0, 98 * 8_192)
    grown = _glibc_in_use()
    assert f.reattach()
    for k in range(98, 104):  # six small writes, each followed by a checkpoint, as a serving ledger has them
        write(k * 8_192, (k + 1) * 8_192)
        cur.execute("CHECKPOINT")
    later = _glibc_in_use()
    f.con.close()
    if settled is None or grown is None or later is None:
        pytest.skip("needs glibc's mallinfo2")
    held = grown - settled
    assert held > 3 << 20, f"800 000 rows held only {held} bytes of heap"
    assert later - settled < held / 2, f"{later - settled} of the {held} bytes came back"


def test_reattach_waits_for_the_users_of_the_ledger_and_keeps_new_ones_out_while_it_runs(tmp_path: Path) -> None:
    import threading
    import time

    f = LedgerFile(tmp_path / "l.duckdb")
    f.cursor().execute("CREATE TABLE t (i INTEGER)")
    inside, leave = threading.Event(), threading.Event()

    def user() -> None:
        with f.use():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=user)
    t.start()
    assert inside.wait(10)
    t0 = time.monotonic()
    assert not f.reattach(wait_s=0.2)  # a user holds it: nothing done
    assert time.monotonic() - t0 >= 0.2 and f.reattaches == 0
    f.cursor().execute("INSERT INTO t VALUES (1)")  # still attached
    # A reattach that starts while a user is inside waits for it, and a user that comes meanwhile waits for the
    # reattach; the holder may take the ledger again (reentrant) without waiting.
    done: list[bool] = []
    r = threading.Thread(target=lambda: done.append(f.reattach(wait_s=10)))
    r.start()
    while not f._closing:  # the reattach is waiting for the holder
        time.sleep(0.01)
    came: list[float] = []

    def late_user() -> None:
        with f.use():
            came.append(time.monotonic())
            assert f.cursor().execute("SELECT count(*) FROM t").fetchall() == [(1,)]

    lu = threading.Thread(target=late_user)
    lu.start()
    time.sleep(0.2)
    assert not came and not done  # both wait for the holder
    t1 = time.monotonic()
    leave.set()
    t.join(10)
    r.join(10)
    lu.join(10)
    assert done == [True] and len(came) == 1 and f.reattaches == 1
    assert came[0] >= t1  # the late user came in only once the reattach was done
    f.con.close()


def test_use_is_reentrant_while_a_reattach_waits(tmp_path: Path) -> None:
    """A thread inside use() that enters it again (a helper calling another) does not wait for a pending reattach,
    which would wait for it in turn."""
    import threading
    import time

    f = LedgerFile(tmp_path / "l.duckdb")
    done: list[bool] = []
    with f.use():
        r = threading.Thread(target=lambda: done.append(f.reattach(wait_s=10)))
        r.start()
        while not f._closing:
            time.sleep(0.01)
        t0 = time.monotonic()
        with f.use():
            f.cursor().execute("SELECT 1").fetchall()
        assert time.monotonic() - t0 < 1
    r.join(10)
    assert done == [True]
    f.con.close()


def test_a_failed_reattach_is_reported_by_check_and_a_restart_finds_every_row(tmp_path: Path) -> None:
    """If the file cannot be attached again (here: its path now names a directory), every use fails and check()
    says so with the fix, as for an invalidated ledger; what was committed is in the file."""
    path = tmp_path / "l.duckdb"
    f = LedgerFile(path)
    f.cursor().execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
    moved = tmp_path / "moved.duckdb"
    f._path = tmp_path  # a directory: ATTACH fails for real
    with pytest.raises(duckdb.Error):
        f.reattach()
    with pytest.raises(LedgerInvalidated) as e:
        f.check()
    assert "attached again" in e.value.message and e.value.hint and "restart" in e.value.hint
    f.con.close()
    assert not moved.exists()
    again = LedgerFile(path)
    assert again.cursor().execute("SELECT count(*) FROM t").fetchall() == [(1000,)]
    again.check()

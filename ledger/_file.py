"""The serving process's connection to the ledger file: attached with a small row group, cursors that start in it
(a cursor of a DuckDB connection starts in the connection's default database, here an in-memory one), and the gate
that lets the file be detached and attached again while the server runs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import duckdb

from ledger._errors import LedgerInvalidated

CATALOG = "ledger"
# DuckDB's default row group holds 122 880 rows. Spool commits are small, so each checkpoint leaves a partial row
# group, and a later checkpoint rewrites it: with ~1 KB spans that rewrite held up to ~390 MiB of unevictable
# memory whatever the checkpoint threshold (16, 64 or 128 MiB), which is how a checkpoint once failed to pin a block
# and invalidated the database. With 16 384 rows the peak is ~1.6x the threshold and a 512-span commit costs ~25 %
# less CPU (bench/README.md, "2026-11-30, 19:00"). DuckDB 1.5 keeps each written row group's metadata in the heap
# while the file is attached (~3.5 KB a column): 32 768 rows halve it to ~4 bytes a call (8.4 at 16 384) at the
# same write cost; 65 536 and 122 880 cost 1.8-2.3x the CPU a row (bench/README.md, "2026-12-04, 23:50").
ROW_GROUP_SIZE = 32_768


class Cursors(Protocol):
    """What the ledger's components need of the serving connection: cursors on the ledger file, one per user."""

    def cursor(self) -> duckdb.DuckDBPyConnection: ...


class LedgerFile:
    """The ledger file, attached read-write. ``con`` is the root connection (settings, shutdown checkpoint), already
    pointed at the ledger.

    Threading: ``cursor`` from any thread; each caller owns its cursor. Every use of a cursor that may overlap a
    ``reattach`` (any thread but the caller of ``reattach``) runs inside ``use()``: any number at once, and reentrant
    within a thread. ``reattach`` waits until no thread is inside ``use()`` and keeps new ones out while it runs;
    its caller must not be inside ``use()`` itself."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.con = duckdb.connect()
        try:
            self._attach()
        except BaseException:
            self.con.close()
            raise
        self._lock = threading.Lock()
        self._gate = threading.Condition()
        self._users = 0
        self._closing = False
        self._held = threading.local()  # how deep this thread is inside use()
        self.reattaches = 0
        self._lost: str | None = None  # why the file is not attached (a failed reattach), else None
        self._probe = self.cursor()

    def _attach(self) -> None:
        quoted = str(self._path).replace("'", "''")
        self.con.execute(f"ATTACH '{quoted}' AS {CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        self.con.execute(f"USE {CATALOG}")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            cur = self.con.cursor()
        cur.execute(f"USE {CATALOG}")
        return cur

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Hold the ledger attached for the block (see the class's threading note)."""
        depth = getattr(self._held, "depth", 0)
        if depth == 0:
            with self._gate:
                while self._closing:
                    self._gate.wait()
                self._users += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if depth == 0:
                with self._gate:
                    self._users -= 1
                    if self._users == 0:
                        self._gate.notify_all()

    def reattach(self, wait_s: float = 5.0) -> bool:
        """Detach the ledger file and attach it again; False (nothing done) if its users did not all leave within
        ``wait_s``. DuckDB keeps the metadata of every row group it has written (column segments and their
        statistics, ~4 bytes a call with the ledger's row groups) in the C++ heap for as long as the file is
        attached: in a server that runs for months that alone grows without bound (bench/README.md, 2026-12-01
        12:40). Detaching gives it back (and checkpoints the WAL); cursors keep working once the file is attached
        again under the same name, and read the metadata they need lazily. The buffer cache starts empty."""
        deadline = time.monotonic() + wait_s
        with self._gate:
            self._closing = True
            try:
                while self._users:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._gate.wait(left)
                self.con.execute("USE memory")  # a connection cannot detach its default database
                try:
                    self.con.execute(f"DETACH {CATALOG}")
                except duckdb.Error:
                    self.con.execute(f"USE {CATALOG}")  # still attached: the root connection's work stays there
                    raise
                try:
                    self._attach()
                except duckdb.Error as e:
                    # Nothing committed is lost (it is in the file); the server stops and a restart attaches it.
                    self._lost = str(e).splitlines()[0]
                    raise
                self.reattaches += 1
                return True
            finally:
                self._closing = False
                self._gate.notify_all()

    def check(self) -> None:
        """Raise LedgerInvalidated if DuckDB has invalidated the ledger. After a failed checkpoint DuckDB refuses
        every statement on the database ("has been invalidated ... Detach and reattach it"; FatalException when
        it is not attached); what was committed is in the file and its WAL, replayed when it is opened again.
        Other errors are not this check's business and are ignored. Threading: one caller at a time."""
        if self._lost is not None:
            raise LedgerInvalidated(
                f"the ledger file could not be attached again ({self._lost})",
                "restart `tenantledger serve`: every acknowledged span is in the ledger file or its spool and is "
                "settled again at start",
            )
        try:
            with self.use():
                self._probe.execute("SELECT count(*) FROM duckdb_databases()").fetchall()  # every attached one
        except duckdb.Error as e:
            if isinstance(e, duckdb.FatalException) or "invalidated" in str(e):
                first = str(e).splitlines()[0]
                raise LedgerInvalidated(
                    f"DuckDB invalidated the ledger ({first})",
                    "restart `tenantledger serve` (under a supervisor it restarts by itself): every acknowledged "
                    "span is in the ledger file or its WAL and is settled again at start",
                ) from e


def guard(con: object) -> AbstractContextManager[object]:
    """``con.use()`` for a LedgerFile (see there); nothing to hold for a plain DuckDB connection."""
    return con.use() if isinstance(con, LedgerFile) else nullcontext()

"""The serving process's connection to the ledger file: attached with a small row group, and cursors that start
in it (a cursor of a DuckDB connection starts in the connection's default database, here an in-memory one)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import duckdb

from ledger._errors import LedgerInvalidated

CATALOG = "ledger"
# DuckDB's default row group holds 122 880 rows. Spool commits are small, so each checkpoint leaves a partial row
# group, and a later checkpoint rewrites it: with ~1 KB spans that rewrite held up to ~390 MiB of unevictable
# memory whatever the checkpoint threshold (16, 64 or 128 MiB), which is how a checkpoint once failed to pin a block
# and invalidated the database. With 16 384 rows the peak is ~1.6x the threshold and a 512-span commit costs ~25 %
# less CPU (bench/README.md, "2026-11-30, 19:00").
ROW_GROUP_SIZE = 16_384


class Cursors(Protocol):
    """What the ledger's components need of the serving connection: cursors on the ledger file, one per user."""

    def cursor(self) -> duckdb.DuckDBPyConnection: ...


class LedgerFile:
    """The ledger file, attached read-write. Threading: ``cursor`` from any thread; each caller owns its cursor.
    ``con`` is the root connection (settings, shutdown checkpoint), already pointed at the ledger."""

    def __init__(self, path: Path) -> None:
        self.con = duckdb.connect()
        try:
            quoted = str(path).replace("'", "''")
            self.con.execute(f"ATTACH '{quoted}' AS {CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
            self.con.execute(f"USE {CATALOG}")
        except BaseException:
            self.con.close()
            raise
        self._lock = threading.Lock()
        self._probe = self.cursor()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            cur = self.con.cursor()
        cur.execute(f"USE {CATALOG}")
        return cur

    def check(self) -> None:
        """Raise LedgerInvalidated if DuckDB has invalidated the ledger. After a failed checkpoint DuckDB refuses
        every statement on the database ("has been invalidated ... Detach and reattach it"; FatalException when
        it is not attached); what was committed is in the file and its WAL, replayed when it is opened again.
        Other errors are not this check's business and are ignored. Threading: one caller at a time."""
        try:
            self._probe.execute("SELECT count(*) FROM duckdb_databases()").fetchall()  # touches every attached one
        except duckdb.Error as e:
            if isinstance(e, duckdb.FatalException) or "invalidated" in str(e):
                first = str(e).splitlines()[0]
                raise LedgerInvalidated(
                    f"DuckDB invalidated the ledger ({first})",
                    "restart `tenantledger serve` (under a supervisor it restarts by itself): every acknowledged "
                    "span is in the ledger file or its WAL and is settled again at start",
                ) from e

"""Read-only SQL over the ledger: statement checks, hardened connections, and results as plain rows."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from ledger._errors import LedgerLocked, LedgerNotFound, QueryError, ReadOnlyViolation
from ledger._file import Cursors, guard

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

# DuckDB settings that close the doors a query could use to read or write outside the ledger: file functions
# (read_csv, glob), ATTACH, COPY, extension install/load. Locked so a query cannot turn them back on.
HARDENING = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)


def harden(con: duckdb.DuckDBPyConnection) -> None:
    for stmt in HARDENING:
        con.execute(stmt)


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {e}") from e
    if not statements:
        raise QueryError("no SQL statement given")
    for st in statements:
        if st.type not in _ALLOWED:
            kind = str(st.type).split(".")[-1]
            raise ReadOnlyViolation(
                f"{kind} statements are refused: the ledger is read-only over SQL",
                "use SELECT (the ledger is written only by `tenantledger serve`)",
            )


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 100_000, params: Sequence[Any] | None = None
) -> QueryResult:
    check_read_only(sql)
    # The statement check alone is not enough: `EXPLAIN ANALYZE DELETE ...` is an EXPLAIN statement that runs
    # its DELETE. A read-only transaction makes DuckDB itself refuse any write, whatever the statement says.
    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        cur = con.execute(sql, list(params) if params else None)
        columns = [d[0] for d in cur.description or ()]
        types = [str(d[1]) for d in cur.description or ()]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.Error as e:
        raise QueryError(str(e).splitlines()[0]) from e
    finally:
        con.execute("ROLLBACK")
    return QueryResult(columns, types, rows[:max_rows], len(rows) > max_rows)


def jsonable(value: Any) -> Any:
    """JSON form of a result cell: money stays exact as a string, times in ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def open_read_only(path: Path, memory_limit_mib: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open a ledger file that no server holds, read-only and hardened."""
    if not path.exists():
        raise LedgerNotFound(f"no ledger at {path}", "pass --ledger PATH, or start `tenantledger serve` first")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as e:
        raise LedgerLocked(
            f"the ledger {path} is held by a running server: {str(e).splitlines()[0]}",
            "query through the server: it must write its discovery file next to the ledger",
        ) from e
    if memory_limit_mib is not None:
        con.execute(f"SET memory_limit = '{int(memory_limit_mib)}MiB'")
    harden(con)
    return con


class QueryService:
    """Answers read-only SQL inside the serving process. Threading: any thread; each call uses its own cursor."""

    def __init__(self, con: Cursors) -> None:
        self._con = con
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._con.cursor()

    @contextlib.contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for the block, with the ledger held attached meanwhile (LedgerFile.use)."""
        with guard(self._con):
            cur = self.cursor()
            try:
                yield cur
            finally:
                cur.close()

    def query(self, sql: str, max_rows: int = 100_000, params: Sequence[Any] | None = None) -> QueryResult:
        with self.session() as cur:
            return run_query(cur, sql, max_rows, params)

"""Arrow tables made visible to a DuckDB connection's queries by name (DuckDB's replacement scans) for the length of
a block, and gone after it, whatever happened in it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pyarrow as pa


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, **tables: pa.Table) -> Iterator[None]:
    """``tables`` registered on ``con`` under their keyword names inside the block. On the way out every name that
    was registered is unregistered; when the block failed, an error doing so (a connection DuckDB invalidated) does
    not hide the block's own."""
    done: list[str] = []
    try:
        for name, table in tables.items():
            con.register(name, table)
            done.append(name)
        yield
    except BaseException:
        for name in reversed(done):
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
        raise
    for name in reversed(done):
        con.unregister(name)

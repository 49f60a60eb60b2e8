"""ledger._arrow.registered: Arrow tables queryable by name inside the block, gone after it, even when it fails."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from ledger._arrow import registered


def test_tables_are_queryable_inside_the_block_and_gone_after_it_even_when_it_fails() -> None:
    con = duckdb.connect()
    a, b = pa.table({"x": [1, 2]}), pa.table({"x": [3]})
    with registered(con, _a=a, _b=b):
        assert con.execute("SELECT sum(x) FROM (SELECT x FROM _a UNION ALL SELECT x FROM _b)").fetchall() == [(6,)]
    for name in ("_a", "_b"):
        with pytest.raises(duckdb.CatalogException):
            con.execute(f"SELECT * FROM {name}")
    with pytest.raises(ZeroDivisionError), registered(con, _a=a):
        assert con.execute("SELECT count(*) FROM _a").fetchall() == [(2,)]
        raise ZeroDivisionError
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM _a")

"""Tenant-scoped SQL: a query made with a token scoped to one tenant sees only that tenant's rows, through
every contract view, and cannot name anything else (no base tables, qualified names or table functions).

How: the statement is parsed by DuckDB (json_serialize_sql), every table reference is checked against the
contract view names and renamed to a per-cursor TEMP view built on ``calls WHERE tenant_id = <tenant>``, and the
tree is turned back into SQL (json_deserialize_sql). The contract views are rebuilt the same way on the scoped
base, so aggregates such as top_tenants.share are computed over the tenant's own rows only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

from ledger._errors import QueryError
from ledger._query import QueryResult, check_read_only, run_query
from ledger._views import VIEWS

PREFIX = "__scoped_"
_BASE = "calls"


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, dict):
        yield tree
        for v in tree.values():
            yield from _nodes(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _nodes(v)


def _serialize(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = next(iter(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()), None)
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise QueryError(f"SQL does not parse: {tree.get('error_message', 'unknown error')}")
    return tree


def rewrite(con: duckdb.DuckDBPyConnection, sql: str, allowed: Sequence[str]) -> str:
    """``sql`` with every reference to an allowed name pointed at its scoped view; anything else refused."""
    tree = _serialize(con, sql)
    ctes = {
        entry["key"].lower()
        for node in _nodes(tree)
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    names = {a.lower() for a in allowed}
    for node in _nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            raise QueryError("table functions are not available to a tenant-scoped token")
        if kind != "BASE_TABLE":
            continue
        name = str(node.get("table_name", "")).lower()
        if node.get("schema_name") or node.get("catalog_name"):
            raise QueryError(f"qualified name {node.get('schema_name')}.{name} is not available to a "
                             "tenant-scoped token: use the view names unqualified")
        if name in ctes and name not in names:
            continue
        if name not in names:
            raise QueryError(f"{name!r} is not available to a tenant-scoped token",
                             f"query one of: {', '.join(sorted(n for n in names if n != _BASE))}")
        node["table_name"] = PREFIX + name
    row = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()[0]
    return str(row[0])


class ScopedViews:
    """The scoped definitions of the contract views, rewritten once. Threading: immutable after init."""

    def __init__(self, con: duckdb.DuckDBPyConnection, extra_views: dict[str, str] | None = None) -> None:
        from ledger._focus import FOCUS_VIEW_SQL

        bodies = dict(VIEWS)
        bodies["focus"] = FOCUS_VIEW_SQL.split(" AS\n", 1)[1] if " AS\n" in FOCUS_VIEW_SQL else FOCUS_VIEW_SQL
        bodies.update(extra_views or {})
        self.names = [_BASE, *bodies]
        self._bodies = {name: rewrite(con, body, self.names) for name, body in bodies.items()}

    def install(self, cur: duckdb.DuckDBPyConnection, tenant: str) -> None:
        """Create this cursor's TEMP views for ``tenant`` (a parameterless view needs the id as a literal)."""
        literal = "'" + tenant.replace("'", "''") + "'"
        cur.execute(f"CREATE OR REPLACE TEMP VIEW {PREFIX}{_BASE} AS "
                    f"SELECT * FROM main.{_BASE} WHERE tenant_id = {literal}")
        for name, body in self._bodies.items():
            cur.execute(f"CREATE OR REPLACE TEMP VIEW {PREFIX}{name} AS {body}")

    def query(self, cur: duckdb.DuckDBPyConnection, tenant: str, sql: str, max_rows: int = 100_000,
              params: Sequence[Any] | None = None) -> QueryResult:
        check_read_only(sql)
        self.install(cur, tenant)
        return run_query(cur, rewrite(cur, sql, self.names), max_rows, params)

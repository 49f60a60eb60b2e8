"""Running totals of billable calls per (tenant, provider, model): what `/metrics` reports, kept up to date by the
ledger writer from each settlement's rows, so that a scrape costs the rows written since the last one, not a scan
of the ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# (tenant_id, provider, model): None where the ledger has NULL (unattributed, unknown provider or model).
Key = tuple[str | None, str | None, str | None]
# One group's totals: effective cost, input, output and cache-read tokens, calls.
Totals = tuple[Decimal, int, int, int, int]

# The same grouping over any relation with the columns of `calls`. Billable = not a duplicate report of a call (the
# `llm_calls` view's rule); model = the response model, else the requested one (gen_ai.response.model,
# gen_ai.request.model).
GROUPED_SQL = """
SELECT {first}tenant_id, provider, coalesce(response_model, request_model) AS model,
       coalesce(sum(effective_cost), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(cache_read_tokens), 0), count(*)
FROM {source} WHERE {where} GROUP BY ALL
"""

_SUMMED = ("effective_cost", "input_tokens", "output_tokens", "cache_read_tokens")
# Rows held before they are folded into the totals (about 100 bytes each): grouping them in one pass costs far less
# a row than grouping each settlement's few thousand (~2.3 us a row in DuckDB with the results turned into Python).
FOLD_ROWS = 1 << 16


def grouped_sql(source: str, where: str = "NOT is_duplicate", first: str = "") -> str:
    """GROUPED_SQL over ``source`` (rows ``where``), also grouped by ``first`` (a column put before the key)."""
    return GROUPED_SQL.format(source=source, where=where, first=f"{first}, " if first else "")


class SpendTotals:
    """Totals by key since the ledger began (all of `llm_calls`). Threading: every method from any thread; the
    caller that keeps them consistent with the ledger (the ledger writer) adds a write's rows only after it
    committed."""

    def __init__(self, rows: Iterable[Sequence[Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[Key, list[Any]] = {}
        self._rows: list[pa.Table] = []  # billable rows not folded in yet
        self._held = 0
        self.add(rows)

    def add(self, rows: Iterable[Sequence[Any]], sign: int = 1) -> None:
        """Add (``sign`` 1) or take away (-1) grouped rows: key columns, then the five totals (GROUPED_SQL)."""
        with self._lock:
            for tenant, provider, model, cost, inp, out, cache, n in rows:
                t = self._by_key.setdefault((tenant, provider, model), [Decimal(0), 0, 0, 0, 0])
                t[0] += sign * Decimal(cost)
                t[1] += sign * int(inp)
                t[2] += sign * int(out)
                t[3] += sign * int(cache)
                t[4] += sign * int(n)

    def add_calls(self, calls: pa.Table) -> None:
        """Add the billable rows of ``calls`` (columns of the `calls` table; rows with ``is_duplicate`` true, where
        it is present, are left out)."""
        if calls.num_rows == 0:
            return
        model = pc.coalesce(calls.column("response_model"), calls.column("request_model"))
        rows = pa.table([calls.column("tenant_id"), calls.column("provider"), model,
                         *(calls.column(c) for c in _SUMMED)],
                        names=["tenant_id", "provider", "model", *_SUMMED])
        if "is_duplicate" in calls.column_names:
            rows = rows.filter(pc.invert(calls.column("is_duplicate")))
        with self._lock:
            self._rows.append(rows)
            self._held += rows.num_rows
            if self._held >= FOLD_ROWS:
                self._fold()

    def _fold(self) -> None:
        """Group the rows held into the totals. Under the lock."""
        if not self._rows:
            return
        rows = pa.concat_tables(self._rows)
        self._rows, self._held = [], 0
        grouped = rows.group_by(["tenant_id", "provider", "model"], use_threads=False).aggregate(
            [*((c, "sum") for c in _SUMMED), ([], "count_all")])
        for g in grouped.to_pylist():
            t = self._by_key.setdefault((g["tenant_id"], g["provider"], g["model"]), [Decimal(0), 0, 0, 0, 0])
            for i, c in enumerate(_SUMMED):
                t[i] += g[f"{c}_sum"] or 0  # a sum over nulls only (unpriced calls) is null
            t[4] += g["count_all"]

    def snapshot(self) -> list[tuple[Key, Totals]]:
        """The totals of every key that has calls (a key whose calls were all replaced by re-settles, or found to
        be duplicates, is left out)."""
        with self._lock:
            self._fold()
            return [(k, (t[0], t[1], t[2], t[3], t[4])) for k, t in self._by_key.items() if t[4] > 0]

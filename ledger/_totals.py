"""Running totals of billable calls, grouped per (tenant, provider, model) for `/metrics` and per (tenant, UTC day)
for the budget monitor, kept up to date by the ledger writer from each settlement's rows: reading them costs the
rows written since the last read, not a scan of the ledger."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# One group's totals: effective cost, input, output and cache-read tokens, calls.
Totals = tuple[Decimal, int, int, int, int]


@dataclass(frozen=True)
class Grouping:
    """How calls are grouped: the key as SQL expressions over the `calls` table, and the same key computed from a
    settlement's rows (Arrow, the columns of `calls`)."""

    names: tuple[str, ...]
    sql: tuple[str, ...]
    arrow: Callable[[pa.Table], list[pa.Array | pa.ChunkedArray]]


# model = the response model, else the requested one (gen_ai.response.model, gen_ai.request.model).
BY_MODEL = Grouping(
    ("tenant_id", "provider", "model"), ("tenant_id", "provider", "coalesce(response_model, request_model)"),
    lambda t: [t.column("tenant_id"), t.column("provider"),
               pc.coalesce(t.column("response_model"), t.column("request_model"))])
# Budgets count a call on the UTC day it started (start_time is UTC).
BY_DAY = Grouping(
    ("tenant_id", "day"), ("tenant_id", "CAST(start_time AS DATE)"),
    lambda t: [t.column("tenant_id"), pc.cast(t.column("start_time"), pa.date32())])

_SUMMED = ("effective_cost", "input_tokens", "output_tokens", "cache_read_tokens")
# Rows held before they are folded into the totals (about 100 bytes each): grouping them in one pass costs far less
# a row than grouping each settlement's few thousand (~2.3 us a row in DuckDB with the results turned into Python).
FOLD_ROWS = 1 << 16


def grouped_sql(g: Grouping, source: str, where: str = "NOT is_duplicate", first: str = "") -> str:
    """The totals of the rows of ``source`` (a relation with the columns of `calls`) ``where``, grouped by ``g``'s
    key, and first by ``first`` if given (a column put before the key). Billable = not a duplicate report of a
    call, the `llm_calls` view's rule: ``where`` says it."""
    keys = ", ".join(g.sql)
    return (f"SELECT {first + ', ' if first else ''}{keys}, coalesce(sum(effective_cost), 0), "
            "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0), "
            f"count(*) FROM {source} WHERE {where} GROUP BY ALL")


class SpendTotals:
    """Totals by ``grouping``'s key. Threading: every method from any thread; the caller that keeps them consistent
    with the ledger (the ledger writer) adds a write's rows only after it committed."""

    def __init__(self, grouping: Grouping, rows: Iterable[Sequence[Any]] = ()) -> None:
        self.grouping = grouping
        self._lock = threading.Lock()
        self._by_key: dict[tuple[Any, ...], list[Any]] = {}
        self._rows: list[pa.Table] = []  # billable rows not folded in yet
        self._held = 0
        self.add(rows)

    def add(self, rows: Iterable[Sequence[Any]], sign: int = 1) -> None:
        """Add (``sign`` 1) or take away (-1) grouped rows: the key's columns, then the five totals (grouped_sql)."""
        n_keys = len(self.grouping.names)
        with self._lock:
            for row in rows:
                t = self._by_key.setdefault(tuple(row[:n_keys]), [Decimal(0), 0, 0, 0, 0])
                cost, inp, out, cache, n = row[n_keys:]
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
        names = self.grouping.names
        rows = pa.table([*self.grouping.arrow(calls), *(calls.column(c) for c in _SUMMED)], names=[*names, *_SUMMED])
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
        names = self.grouping.names
        grouped = rows.group_by(list(names), use_threads=False).aggregate(
            [*((c, "sum") for c in _SUMMED), ([], "count_all")])
        for g in grouped.to_pylist():
            t = self._by_key.setdefault(tuple(g[k] for k in names), [Decimal(0), 0, 0, 0, 0])
            for i, c in enumerate(_SUMMED):
                t[i] += g[f"{c}_sum"] or 0  # a sum over nulls only (unpriced calls) is null
            t[4] += g["count_all"]

    def snapshot(self) -> list[tuple[tuple[Any, ...], Totals]]:
        """The totals of every key that has calls (a key whose calls were all replaced by re-settles, or found to
        be duplicates, is left out)."""
        with self._lock:
            self._fold()
            return [(k, (t[0], t[1], t[2], t[3], t[4])) for k, t in self._by_key.items() if t[4] > 0]

    def drop(self, keep: Callable[[tuple[Any, ...]], bool]) -> None:
        """Forget for good the keys ``keep`` refuses (rows held for them are folded first)."""
        with self._lock:
            self._fold()
            self._by_key = {k: t for k, t in self._by_key.items() if keep(k)}

    def get(self, keys: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, ...], Totals]:
        """The totals of those of ``keys`` that have calls."""
        with self._lock:
            self._fold()
            found = ((k, self._by_key.get(k)) for k in keys)
            return {k: (t[0], t[1], t[2], t[3], t[4]) for k, t in found if t is not None and t[4] > 0}

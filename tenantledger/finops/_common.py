"""What every FinOps feature shares: the query function they read the ledger through, the period type, the
result table, and the domain error the CLI turns into one line with exit code 2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Runs one read-only SQL statement with positional parameters on the ledger; returns (columns, rows).
#: In the server it is a cursor on the serving connection; in the CLI it goes through the server's
#: /v1/sql or reads a stopped ledger file directly.
QueryFn = Callable[[str, Sequence[Any]], tuple[list[str], list[tuple[Any, ...]]]]


class FinopsError(Exception):
    """Bad input to a FinOps feature (unknown tenant, inverted period, malformed provider file)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Period:
    """A half-open UTC day range [start, end), as `export focus` uses."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise FinopsError(
                f"the period is empty or inverted: --from {self.start} is not before --to {self.end}",
                "--to is exclusive: for November use --from 2026-11-01 --to 2026-12-01",
            )

    @classmethod
    def month_of(cls, day: dt.date) -> Period:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        return cls(start, end)

    @property
    def start_ts(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time())

    @property
    def end_ts(self) -> dt.datetime:
        return dt.datetime.combine(self.end, dt.time())


@dataclass
class Table:
    """A titled result: what the CLI prints as a table, CSV or JSON, and what the API returns."""

    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def tenant_exists(q: QueryFn, tenant: str) -> bool:
    _, rows = q("SELECT 1 FROM llm_calls WHERE tenant_id = ? LIMIT 1", [tenant])
    return bool(rows)


def require_tenant(q: QueryFn, tenant: str) -> None:
    if not tenant_exists(q, tenant):
        raise FinopsError(
            f"unknown tenant {tenant!r}: no call in the ledger is attributed to it",
            "list tenants with: tenantledger sql \"SELECT tenant_id FROM top_tenants\"",
        )

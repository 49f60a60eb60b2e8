"""The running totals behind /metrics (Ledger.spend_totals) and the budget monitor (Ledger.daily_spend): after any
sequence of writes they equal what a scan of `llm_calls` gives, re-settles and duplicate reports included, and a
write that fails changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger import Ledger
from tests.ledger.test_ledger_reattach import settle

A, B, C, D, E = ("a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32)


def scanned(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """What a user computes from the contract view, independently of the ledger's own grouping."""
    rows = con.execute(
        "SELECT tenant_id, provider, coalesce(response_model, request_model), sum(effective_cost), sum(input_tokens), "
        "sum(output_tokens), sum(cache_read_tokens), count(*) FROM llm_calls GROUP BY ALL").fetchall()
    return sorted(((r[:3], (r[3] or Decimal(0), r[4] or 0, r[5] or 0, r[6] or 0, r[7])) for r in rows), key=_key)


def _key(r: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if x is None else x for x in r[0])


@pytest.mark.parametrize("fold_rows", [1, 1 << 16])  # rows folded in at each write, or held until the scrape
def test_totals_kept_by_writes_equal_a_scan_of_llm_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fold_rows: int) -> None:
    monkeypatch.setattr("ledger._totals.FOLD_ROWS", fold_rows)
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    assert ledger.spend_totals() == []  # read once, from the empty ledger; kept by the writes below
    settle(ledger, A, dict(span_id="1" * 16), dict(span_id="2" * 16, tenant_id="beta", output_tokens=500))
    settle(ledger, B, dict(span_id="1" * 16, dedup_key="openai:resp-1", dedup_rank=5),
           dict(span_id="2" * 16, tenant_id=None, tenant_source=None, unattributed_reason="no_tenant"),
           dict(span_id="3" * 16, provider="anthropic", request_model="claude-3-5-haiku-20241022",
                response_model=None))
    # Unpriced (a model the catalogue does not know): a call with tokens and no cost.
    settle(ledger, C, dict(span_id="1" * 16, request_model="no-such-model", response_model=None))
    # A late span re-settles trace A: its rows are replaced (three now, one of them moved to another tenant).
    settle(ledger, A, dict(span_id="1" * 16), dict(span_id="2" * 16, tenant_id="gamma"), dict(span_id="3" * 16),
           replaced=True)
    # Trace D reports B's provider response again, better ranked: D's row is billed, B's becomes the duplicate.
    settle(ledger, D, dict(span_id="1" * 16, dedup_key="openai:resp-1", dedup_rank=0))
    # Trace E reports it twice in one settlement, worse ranked: both duplicates from the start.
    settle(ledger, E, dict(span_id="1" * 16, dedup_key="openai:resp-1", dedup_rank=9),
           dict(span_id="2" * 16, dedup_key="openai:resp-1", dedup_rank=9))
    # And D is re-settled without that report: B's row is billed again.
    settle(ledger, D, dict(span_id="1" * 16, tenant_id="beta"), replaced=True)

    assert con.execute("SELECT trace_id, is_duplicate FROM calls WHERE dedup_key = 'openai:resp-1' "
                       "ORDER BY ALL").fetchall() == [(B, False), (E, True), (E, True)]
    expected = scanned(con)
    assert {k[0] for k, _ in expected} == {"acme", "beta", "gamma", None}
    assert sorted(ledger.spend_totals(), key=_key) == expected
    # A second ledger object on the same file reads the same totals from the ledger.
    assert sorted(Ledger(con).spend_totals(), key=_key) == expected


def test_a_write_that_fails_changes_neither_the_ledger_nor_the_totals(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    settle(ledger, A, dict(span_id="1" * 16))
    before = ledger.spend_totals()
    with pytest.raises(duckdb.Error):  # a NOT NULL column left empty: the transaction is rolled back
        settle(ledger, B, dict(span_id="1" * 16), dict(span_id="2" * 16, usage_status=None))
    assert sorted(ledger.spend_totals(), key=_key) == sorted(before, key=_key) == scanned(con)
    assert con.execute("SELECT count(*) FROM calls").fetchall() == [(1,)]


def _at(day: int, hour: int = 12) -> int:
    return int(dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC).timestamp() * 1e9)


def test_daily_spend_kept_by_writes_equals_a_scan_per_tenant_and_day(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    settle(ledger, A, dict(span_id="1" * 16, start_time_unix_nano=_at(1)))  # before the days asked for
    assert ledger.daily_spend(dt.date(2026, 11, 2)) == {}
    settle(ledger, B, dict(span_id="1" * 16, start_time_unix_nano=_at(2, 23)),
           dict(span_id="2" * 16, start_time_unix_nano=_at(3, 0), tenant_id="beta"),
           dict(span_id="3" * 16, start_time_unix_nano=_at(3), tenant_id=None, tenant_source=None,
                unattributed_reason="no_tenant"),  # not attributed: no tenant's budget
           dict(span_id="4" * 16, start_time_unix_nano=_at(3), dedup_key="openai:resp-9", dedup_rank=5))
    # A re-settle moves trace B's first call to another day and drops its others; trace C reports resp-9 better.
    settle(ledger, B, dict(span_id="1" * 16, start_time_unix_nano=_at(4)),
           dict(span_id="4" * 16, start_time_unix_nano=_at(3), dedup_key="openai:resp-9", dedup_rank=5),
           replaced=True)
    settle(ledger, C, dict(span_id="1" * 16, start_time_unix_nano=_at(3), dedup_key="openai:resp-9",
                           tenant_id="beta"))

    def scan(since: dt.date) -> dict[tuple[str, dt.date], Decimal]:
        return {(t, d): c for t, d, c in con.execute(
            "SELECT tenant_id, CAST(start_time AS DATE), sum(effective_cost) FROM llm_calls "
            "WHERE tenant_id IS NOT NULL AND start_time >= ? GROUP BY ALL", [since]).fetchall()}

    nov2 = dt.date(2026, 11, 2)
    assert ledger.daily_spend(nov2) == scan(nov2)
    assert set(scan(nov2)) == {("acme", dt.date(2026, 11, 4)), ("beta", dt.date(2026, 11, 3))}
    # One tenant's days, looked up (the gateway's budget check): the same figures.
    assert ledger.daily_spend(nov2, tenant="beta") == {k: v for k, v in scan(nov2).items() if k[0] == "beta"}
    assert ledger.daily_spend(nov2, tenant="acme", until=dt.date(2026, 11, 3)) == {}
    assert ledger.daily_spend(nov2, tenant="nobody") == {}
    # Days dropped when a later start was asked for are read again when an earlier one is.
    nov4 = dt.date(2026, 11, 4)
    assert ledger.daily_spend(nov4) == scan(nov4)
    nov1 = dt.date(2026, 11, 1)
    assert ledger.daily_spend(nov1) == scan(nov1) and ("acme", nov1) in scan(nov1)


def test_budget_spend_from_daily_totals_equals_the_sql_sum(tmp_path: Path) -> None:
    from tenantledger.finops._budgets import spend_from_daily, spend_now

    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    ledger = Ledger(con)
    for i, (day, hour, tenant) in enumerate([(1, 0, "acme"), (19, 23, "acme"), (20, 0, "acme"), (20, 11, "beta"),
                                             (20, 11, None)]):
        settle(ledger, f"{i:032x}", dict(span_id="1" * 16, start_time_unix_nano=_at(day, hour), tenant_id=tenant))
    settle(ledger, "f" * 32, dict(span_id="1" * 16, start_time_unix_nano=int(
        dt.datetime(2026, 10, 31, 23, tzinfo=dt.UTC).timestamp() * 1e9)))  # last month

    def q(sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = con.execute(sql, list(params))
        return [d[0] for d in cur.description or ()], cur.fetchall()

    now = dt.datetime(2026, 11, 20, 12)
    expected = spend_now(q, now)
    assert set(expected) == {"acme", "beta"} and expected["acme"][0] < expected["acme"][1]
    assert spend_from_daily(ledger.daily_spend(dt.date(2026, 11, 1)), now) == expected

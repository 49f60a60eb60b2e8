"""The running totals behind /metrics (Ledger.spend_totals): after any sequence of writes they equal what a scan of
`llm_calls` gives, re-settles and duplicate reports included, and a write that fails changes nothing."""

from __future__ import annotations

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

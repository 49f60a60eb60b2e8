"""The ledger writer re-attaching its file every ``reattach_after_calls`` calls (ledger.reattach_after_calls): what
was written before stays correct to build on, re-settles replace, and a call reported twice is billed once."""

from __future__ import annotations

from pathlib import Path

from ledger import Ledger, LedgerFile
from processors import Settlement, TraceResult, TraceSummary
from processors._pricing import Pricer, PricingConfig
from tests.processors.test_pricing import rec


def settle(ledger: Ledger, trace_id: str, *records: dict[str, object], replaced: bool = False) -> None:
    pricer = Pricer(PricingConfig())
    priced = tuple(pricer.price(rec(trace_id=trace_id, **r)) for r in records)
    summary = TraceSummary(trace_id, f"{trace_id}-req", "acme", None, (), False, len(priced))
    ledger.write(Settlement((TraceResult(summary, priced),), 0, replaced=frozenset({trace_id} if replaced else ())))


def test_writes_across_reattaches_replace_resettled_traces_and_bill_a_repeated_call_once(tmp_path: Path) -> None:
    f = LedgerFile(tmp_path / "l.duckdb")
    ledger = Ledger(f, reattach_after_calls=3)
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    settle(ledger, a, dict(span_id="1" * 16), dict(span_id="2" * 16))
    assert f.reattaches == 0  # 2 calls written
    settle(ledger, b, dict(span_id="1" * 16, dedup_key="openai:resp-1", dedup_rank=5))
    assert f.reattaches == 1  # 3 calls: re-attached after this write
    # After it: a late span re-settles trace a (its rows are replaced, not added), and trace c reports the same
    # provider response as trace b, better ranked (it wins; b's row becomes the duplicate).
    settle(ledger, a, dict(span_id="1" * 16), dict(span_id="2" * 16), dict(span_id="3" * 16), replaced=True)
    settle(ledger, c, dict(span_id="1" * 16, dedup_key="openai:resp-1", dedup_rank=0))
    assert f.reattaches == 2  # 4 more calls
    cur = f.cursor()
    rows = cur.execute("SELECT trace_id, count(*) FROM llm_calls GROUP BY ALL ORDER BY 1").fetchall()
    assert rows == [(a, 3), (c, 1)]  # llm_calls leaves duplicates out
    assert cur.execute("SELECT trace_id, is_duplicate FROM calls WHERE dedup_key = 'openai:resp-1' "
                       "ORDER BY 1").fetchall() == [(b, True), (c, False)]
    assert cur.execute("SELECT count(*) FROM traces").fetchall() == [(3,)]
    assert ledger.known_traces([a, b, "d" * 32]).keys() == {a, b}
    f.con.close()
    # And the file is an ordinary ledger afterwards.
    again = LedgerFile(tmp_path / "l.duckdb")
    assert again.cursor().execute("SELECT count(*) FROM llm_calls").fetchall() == [(4,)]


def test_no_reattach_by_default_in_the_library_and_none_for_a_plain_connection(tmp_path: Path) -> None:
    import duckdb

    f = LedgerFile(tmp_path / "l.duckdb")
    ledger = Ledger(f)
    for i in range(3):
        settle(ledger, f"{i:032x}", dict(span_id="1" * 16))
    assert f.reattaches == 0
    plain = Ledger(duckdb.connect(str(tmp_path / "p.duckdb")), reattach_after_calls=1)
    settle(plain, "e" * 32, dict(span_id="1" * 16))  # nothing to re-attach: writes as before
    assert plain._con.execute("SELECT count(*) FROM llm_calls").fetchall() == [(1,)]
    f.con.close()

"""The billable records are a pure function of the SET of spans: any order, any batch split, any duplication."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from processors import IdentityConfig, attribute_trace
from receiver import StagedSpan
from tests.processors.spans import chat, span
from tests.processors.test_attribution import Links

SPANS = [
    span("a", "1", kind=2, attrs={"tenant.id": "acme"}, seq=1),
    span("a", "2", "1", attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 9}, seq=2),
    span("a", "3", "2", kind=3, attrs=chat(100, 20, response_id="r1"), seq=3),
    span("a", "4", "2", kind=3, attrs=chat(200, 30, response_id="r2", stream=True), seq=4),
    span("a", "5", "4", kind=3, attrs=chat(200, 30, response_id="r2", **{"server.address": "x"}), seq=5),
    span("a", "6", "1", kind=3, attrs=chat(None, None, stream=True), seq=6),
    span("a", "7", "1", attrs=chat(8, None, op="embeddings"), seq=7),
]


def canonical(spans: list[StagedSpan]) -> list[tuple[object, ...]]:
    recs = attribute_trace(spans, IdentityConfig(), Links()).records
    return sorted(dataclasses.astuple(r) for r in recs)


EXPECTED = canonical(SPANS)


@settings(max_examples=200, deadline=None)
@given(st.permutations(SPANS), st.lists(st.sampled_from(SPANS), max_size=6))
def test_any_order_and_duplication_gives_identical_records(order: list[StagedSpan], dups: list[StagedSpan]) -> None:
    # A duplicate arrives later (higher spool seq) with identical content: first write wins, same result.
    later = [dataclasses.replace(s, seq=s.seq + 1000) for s in dups]
    assert canonical(list(order) + later) == EXPECTED

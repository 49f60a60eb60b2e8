"""The spool publishes exactly what it committed: spans handed to listeners equal the spans read back from disk."""

from __future__ import annotations

import duckdb
import pytest

from processors._dialects import EXTRA_KEYS
from processors.config import IdentityConfig
from receiver import AttributeFilter, Spool, StagedSpan, extract
from tests.conftest import fixture_names, fixture_to_protobuf, load_fixture


@pytest.mark.parametrize("baggage", [None, "tenant.id=acme"])
def test_published_spans_equal_the_committed_rows(baggage: str | None) -> None:
    con = duckdb.connect(":memory:")
    spool = Spool(con)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    for name in fixture_names():
        doc = load_fixture(name)
        # The fixtures carry no span links: give one span a link (a job linked to the request that enqueued it).
        span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        span["links"] = [
            {"traceId": "ab" * 16, "spanId": "cd" * 8,
             "attributes": [{"key": "tenant.id", "value": {"stringValue": "t1"}}]},
            {"traceId": "ab", "spanId": "cd" * 8},  # unusable: ignored
        ]
        spool.append(extract(fixture_to_protobuf(doc), filt), baggage)
    read_back = spool.read_after(0, 1_000_000)
    assert len(read_back) > 100
    assert any(s.links for s in read_back) and any(s.events for s in read_back)
    assert published == read_back

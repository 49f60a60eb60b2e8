"""Extraction of attribute values from OTLP: every AnyValue kind becomes the JSON-able value the processors read."""

from __future__ import annotations

import json
from typing import Any

from processors.config import IdentityConfig
from receiver import AttributeFilter, decode_json, extract
from tenantledger.app import EXTRA_KEYS

FILTER = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS, 64)


def _extract(attributes: list[dict[str, Any]]) -> Any:
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "chat", "kind": 3,
            "startTimeUnixNano": "1767225600000000000", "endTimeUnixNano": "1767225601000000000",
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}, *attributes]}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    return extract(decode_json(body), FILTER)


def test_arrays_of_every_kind_keep_their_values() -> None:
    """An array of strings (gen_ai.response.finish_reasons on every call) and a mixed array, nested arrays and
    key-value lists included, come out as lists of the same values."""
    mixed = {"arrayValue": {"values": [
        {"stringValue": "stop"}, {"intValue": "7"}, {"boolValue": True}, {"doubleValue": 0.5},
        {"arrayValue": {"values": [{"stringValue": "x"}]}}, {"kvlistValue": {"values": [
            {"key": "k", "value": {"stringValue": "v"}}]}}, {},
    ]}}
    ex = _extract([
        {"key": "gen_ai.response.finish_reasons", "value": {"arrayValue": {"values": [
            {"stringValue": "stop"}, {"stringValue": "length"}]}}},
        {"key": "gen_ai.request.stop_sequences", "value": mixed},
    ])
    attrs = ex.attribute_dicts[0]
    assert attrs["gen_ai.response.finish_reasons"] == ["stop", "length"]
    assert attrs["gen_ai.request.stop_sequences"] == ["stop", 7, True, 0.5, ["x"], '{"k": "v"}', None]
    assert json.loads(ex.attributes[0]) == attrs


def test_a_long_essential_value_rejects_its_span_with_its_length_and_a_long_other_value_is_dropped() -> None:
    ex = _extract([{"key": "gen_ai.request.model", "value": {"stringValue": "m" * 65}}])
    assert len(ex) == 0 and ex.rejected == 1
    assert "'gen_ai.request.model' is 65 characters, over max_attribute_value_length (64)" in ex.error_message()
    ex = _extract([{"key": "url.path", "value": {"stringValue": "/" * 65}},
                   {"key": "gen_ai.request.model", "value": {"stringValue": "m" * 64}}])
    assert len(ex) == 1 and "url.path" not in ex.attribute_dicts[0]
    assert ex.attribute_dicts[0]["gen_ai.request.model"] == "m" * 64


def test_spans_waiting_to_settle_share_their_ids_and_names_and_the_names_kept_are_bounded() -> None:
    """A span is held in memory until its trace settles: the spans of one trace in a request hold one copy of the
    trace id, a child holds its parent's span id, and spans of the same name hold one name, across requests. A
    sender that names every span differently gets its names right, and the shared copies stay bounded."""
    from receiver import _otlp

    def request(names: list[str]) -> bytes:
        spans = [{"traceId": "ab" * 16, "spanId": f"{i + 1:016x}", "parentSpanId": "" if i == 0 else f"{1:016x}",
                  "name": name, "kind": 3, "startTimeUnixNano": "1767225600000000000",
                  "endTimeUnixNano": "1767225601000000000",
                  "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]}
                 for i, name in enumerate(names)]
        return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()

    filt = AttributeFilter(FILTER.identity_keys, 64)
    first = extract(decode_json(request(["chat gpt-4o"] * 3)), filt)
    second = extract(decode_json(request(["chat gpt-4o"])), filt)
    assert first.trace_id == ["ab" * 16] * 3 and len({id(t) for t in first.trace_id}) == 1
    assert first.parent_span_id == [None, f"{1:016x}", f"{1:016x}"]
    assert first.parent_span_id[1] is first.span_id[0] and first.parent_span_id[2] is first.span_id[0]
    assert second.name[0] == "chat gpt-4o" and second.name[0] is first.name[0]
    many = [f"span {n}" for n in range(_otlp._MAX_SHARED_NAMES + 10)]
    ex = extract(decode_json(request(many)), filt)
    assert ex.name == many
    assert len(filt.names) == _otlp._MAX_SHARED_NAMES

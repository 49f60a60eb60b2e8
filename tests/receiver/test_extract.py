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

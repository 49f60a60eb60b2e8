"""The wire view of OTLP requests (receiver._wire; attributes as encoded KeyValues): it reads every key and
AnyValue exactly as protobuf's own messages do, and a bad one rejects only its span."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processors.config import IdentityConfig
from receiver import AttributeFilter, _otlp
from receiver._decode import extract_body
from receiver._wire import any_value, decode_any_value, split_key_value
from tenantledger.app import EXTRA_KEYS

FILTER = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS, 65_536)


def _values() -> list[AnyValue]:
    out = [AnyValue(), AnyValue(string_value=""), AnyValue(string_value="gpt-4o"), AnyValue(string_value="é" * 63),
           AnyValue(string_value="x" * 126), AnyValue(string_value="x" * 127), AnyValue(string_value="x" * 128),
           AnyValue(string_value="x" * 70_000), AnyValue(bool_value=True), AnyValue(bool_value=False),
           AnyValue(double_value=0.2), AnyValue(double_value=-1e300), AnyValue(double_value=math.nan),
           AnyValue(double_value=math.inf), AnyValue(bytes_value=b"\x00\xff")]
    for n in (0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**31, 2**63 - 1, -1, -(2**63)):
        out.append(AnyValue(int_value=n))
    arrays: list[list[str | int]] = [[], ["stop"], ["stop", "length"], [""], ["x" * 125], ["x" * 126], ["é" * 40],
                                     ["stop", 3], ["a"] * 30]
    for items in arrays:
        arr = AnyValue()
        arr.array_value.SetInParent()
        for item in items:
            if isinstance(item, str):
                arr.array_value.values.add(string_value=item)
            else:
                arr.array_value.values.add(int_value=item)
        out.append(arr)
    kv = AnyValue()
    kv.kvlist_value.values.add(key="k", value=AnyValue(string_value="v"))
    return [*out, kv]


@pytest.mark.parametrize("value", _values(), ids=lambda v: str(v.WhichOneof("value")))
def test_every_anyvalue_reads_as_protobuf_reads_it(value: AnyValue) -> None:
    got, want = decode_any_value(value.SerializeToString()), any_value(value)
    assert type(got) is type(want)
    assert got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got))  # type: ignore[arg-type]


def _request(attrs: list[tuple[str, AnyValue]], spans: int = 3) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(spans):
        sp = ss.spans.add(trace_id=b"\xab" * 16, span_id=bytes([0] * 7 + [i + 1]), name="chat gpt-4o", kind=3,
                          start_time_unix_nano=1_767_225_600_000_000_000, end_time_unix_nano=1_767_225_601_000_000_000,
                          trace_state="k=v", flags=0x301, dropped_attributes_count=2)
        sp.attributes.extend(KeyValue(key=k, value=v) for k, v in attrs)
        sp.attributes.add(key="span.no", value=AnyValue(int_value=i))
    return req


def test_a_value_that_is_not_utf8_rejects_its_span_alone_and_the_batch_is_kept() -> None:
    """Protobuf would refuse the whole request for one bad string (proto3 strings are UTF-8); the view reads values
    only when they are kept, and rejects just the span that carries the bad one (OTLP partial success)."""
    body = _request([("gen_ai.request.model", AnyValue(string_value="gpt-4o")),
                     ("tenant.id", AnyValue(string_value="acme"))]).SerializeToString()
    bad = body.replace(b"acme", b"ac\xffe", 1)  # the first span's tenant
    ex = extract_body(bad, FILTER, None, 100)
    assert len(ex) == 2 and ex.rejected == 1
    assert ex.rejected_by_reason == {"invalid_attribute": 1}
    assert "'tenant.id' is not a valid OTLP AnyValue (strings must be UTF-8)" in ex.error_message()
    assert [a["tenant.id"] for a in ex.attribute_dicts] == ["acme", "acme"]
    # a dropped attribute is never read, so its bytes cannot cost the span
    dropped = _request([("http.user_agent", AnyValue(string_value="curl")),
                        ("gen_ai.request.model", AnyValue(string_value="gpt-4o"))]).SerializeToString()
    ex = extract_body(dropped.replace(b"curl", b"cu\xffl"), FILTER, None, 100)
    assert len(ex) == 3 and ex.rejected == 0


def test_the_view_keeps_what_protobuf_keeps_and_its_text_does_not_depend_on_order() -> None:
    """Same spans, same attribute values and the same JSON text whichever order the sender wrote the attributes
    in; undeclared span fields (trace_state, flags, dropped counts) are skipped; a repeated key keeps its last value,
    as a dict built from the KeyValues would."""
    attrs = [("gen_ai.request.model", AnyValue(string_value="gpt-4o")), ("tenant.id", AnyValue(string_value="a")),
             ("gen_ai.usage.input_tokens", AnyValue(int_value=532)), ("tenant.id", AnyValue(string_value="b")),
             ("gen_ai.request.temperature", AnyValue(double_value=0.2))]
    forward = extract_body(_request(attrs).SerializeToString(), FILTER, None, 100)
    backward = extract_body(_request([attrs[4], attrs[2], attrs[1], attrs[0], attrs[3]]).SerializeToString(), FILTER,
                            None, 100)
    assert len(forward) == 3 and forward.attributes == backward.attributes
    assert forward.attribute_dicts[0] == {"gen_ai.request.model": "gpt-4o", "tenant.id": "b",
                                          "gen_ai.usage.input_tokens": 532, "gen_ai.request.temperature": 0.2}
    assert json.loads(forward.attributes[2]) == forward.attribute_dicts[2]
    assert forward.span_id == [f"{i:016x}" for i in (1, 2, 3)] and forward.kind == [3, 3, 3]


def _protobuf_reading(raw: bytes) -> object:
    try:
        return any_value(AnyValue.FromString(raw))
    except DecodeError:
        return DecodeError


def _our_reading(raw: bytes) -> object:
    try:
        return decode_any_value(raw)
    except (DecodeError, UnicodeDecodeError):
        return DecodeError


@settings(max_examples=3000, deadline=None)
@given(raw=st.binary(max_size=12) | st.sampled_from([b"\x0a", b"\x2a", b"\x18", b"\x21", b"\x10", b"\x0a\x01",
                                                      b"\x18\x80", b"\x2a\x02\x0a\x00", b"\x0a\x02\xc3\x28"])
       | st.builds(lambda v, cut: v.SerializeToString()[:cut], st.sampled_from(_values()), st.integers(0, 140)))
def test_any_bytes_read_as_protobuf_reads_them_or_are_refused_as_it_refuses_them(raw: bytes) -> None:
    """Truncated and hostile encodings included: the fast paths never read what protobuf would refuse, never
    crash, and give protobuf's value when they answer."""
    got, want = _our_reading(raw), _protobuf_reading(raw)
    if isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == want and type(got) is type(want), raw


def _protobuf_pair(raw: bytes) -> object:
    try:
        kv = KeyValue.FromString(raw)
    except DecodeError:
        return DecodeError
    return kv.key, any_value(kv.value)


def _our_pair(raw: bytes) -> object:
    try:
        key, value = split_key_value(raw)
        return key, decode_any_value(value)
    except (DecodeError, UnicodeDecodeError):
        return DecodeError


def _key_values() -> list[bytes]:
    keys = ["", "gen_ai.request.model", "k" * 127, "k" * 128, "é" * 70]
    out = [KeyValue(key=k, value=v).SerializeToString() for k in keys for v in _values()[:6]]
    out += [KeyValue(key="tenant.id").SerializeToString(),  # no value at all
            KeyValue(value=AnyValue(string_value="v")).SerializeToString()]  # no key
    v = AnyValue(string_value="v").SerializeToString()
    out += [b"\x12" + bytes([len(v)]) + v + b"\x0a\x01k",  # value before key
            b"\x0a\x01a\x0a\x01b\x12" + bytes([len(v)]) + v,  # the key twice: the last wins
            b"\x0a\x01k\x12" + bytes([len(v)]) + v + b"\x18\x07",  # an unknown field after the value
            b"\x0a\x01k\x12\x80\x00"]  # a length in a varint longer than it needs
    return out


@settings(max_examples=3000, deadline=None)
@given(raw=st.sampled_from(_key_values())
       | st.builds(lambda kv, cut: kv[:cut], st.sampled_from(_key_values()), st.integers(0, 200))
       | st.builds(lambda kv, pos, byte: kv[:pos] + bytes([byte]) + kv[pos + 1:], st.sampled_from(_key_values()),
                   st.integers(0, 40), st.integers(0, 255))
       | st.binary(max_size=12))
def test_an_attribute_reads_as_protobuf_reads_a_key_value_or_is_refused_as_it_refuses_it(raw: bytes) -> None:
    """Span.attributes are read as each KeyValue's bytes (receiver._wire): the key and the value come out as
    protobuf's KeyValue gives them, and what protobuf refuses is refused (so the span alone is rejected)."""
    got, want = _our_pair(raw), _protobuf_pair(raw)
    if want is not DecodeError and isinstance(want[1], float) and math.isnan(want[1]):  # type: ignore[index]
        assert isinstance(got, tuple) and math.isnan(got[1])
    else:
        assert got == want, raw


def test_a_key_that_is_not_utf8_rejects_its_span_alone_and_the_batch_is_kept() -> None:
    """Protobuf refuses a whole request whose attribute key is not UTF-8 (proto3 strings; so did this view while it
    read attributes as a map); now only the span that carries it is rejected (OTLP partial success)."""
    body = _request([("gen_ai.request.model", AnyValue(string_value="gpt-4o")),
                     ("tenant.idx", AnyValue(string_value="acme"))]).SerializeToString()
    ex = extract_body(body.replace(b"tenant.idx", b"tenant.i\xffx", 1), FILTER, None, 100)
    assert len(ex) == 2 and ex.rejected == 1
    assert ex.rejected_by_reason == {"invalid_attribute": 1}
    assert "an attribute is not a valid OTLP KeyValue (keys must be UTF-8)" in ex.error_message()


def test_attributes_seen_before_read_the_same_and_what_is_remembered_is_bounded() -> None:
    """Repeated attribute encodings are remembered, not read again: the spans read the same the second time,
    a key whose value differs on every span (a response id) is remembered at most _MAX_VALUES_PER_KEY times,
    and the whole is bounded by _MAX_REMEMBERED, however many distinct attributes arrive."""
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS, 65_536)
    shared = [("gen_ai.request.model", AnyValue(string_value="gpt-4o")), ("tenant.id", AnyValue(string_value="a")),
              ("gen_ai.response.finish_reasons", AnyValue(array_value={"values": [AnyValue(string_value="stop")]}))]
    first = extract_body(_request(shared, spans=50).SerializeToString(), filt, None, 100)
    again = extract_body(_request(shared, spans=50).SerializeToString(), filt, None, 100)
    assert first.attributes == again.attributes and first.attribute_dicts == again.attribute_dicts
    assert again.attribute_dicts[7] == {"gen_ai.request.model": "gpt-4o", "tenant.id": "a",
                                        "gen_ai.response.finish_reasons": ["stop"]}
    # span.no (0..49) is dropped: remembered as dropped (its key is not read again), its value never read
    assert len(filt.known_attributes) == 3 + 50
    assert {v for k, v in filt.known_attributes.items() if b"span.no" in k} == {(0, False, "span.no", None)}

    ids = [("gen_ai.response.id", AnyValue(string_value=f"resp-{i}")) for i in range(_otlp._MAX_VALUES_PER_KEY + 500)]
    for chunk in range(0, len(ids), 100):
        req = ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        for i, (k, v) in enumerate(ids[chunk:chunk + 100]):
            sp = ss.spans.add(trace_id=b"\xab" * 16, span_id=(chunk + i + 1).to_bytes(8, "big"), name="chat", kind=3,
                              start_time_unix_nano=1, end_time_unix_nano=2)
            sp.attributes.add(key=k, value=v)
        ex = extract_body(req.SerializeToString(), filt, None, 100)
        sent = [v.string_value for _, v in ids[chunk:chunk + 100]]
        assert [a["gen_ai.response.id"] for a in ex.attribute_dicts] == sent
    assert filt.value_counts["gen_ai.response.id"] == _otlp._MAX_VALUES_PER_KEY
    assert len(filt.known_attributes) == 3 + 50 + _otlp._MAX_VALUES_PER_KEY

    for n in range(_otlp._MAX_REMEMBERED // 1000 + 2):  # many keys, each with many values
        attrs = [(f"gen_ai.custom.k{n}", AnyValue(int_value=i)) for i in range(1000)]
        extract_body(_request(attrs, spans=1).SerializeToString(), filt, None, 100)
        assert len(filt.known_attributes) <= _otlp._MAX_REMEMBERED

"""A decode-only view of ExportTraceServiceRequest in which each span's attributes are the encoded KeyValue bytes,
and the decoding of those bytes. Same wire format, read ~3x faster in Python than KeyValue messages.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from receiver._model import AttrValue

# Why a second schema: protobuf's Python objects cost ~0.4 us per KeyValue to create and as much again for its
# AnyValue, at ~15 attributes per span the largest cost of receiving a span. A message field is length-delimited
# on the wire, as a bytes field is (protobuf encoding guide, "Length-Delimited Records"), so declaring
# Span.attributes (field 9) as repeated bytes reads the same bytes into one C-built list of each KeyValue's own
# encoding (opentelemetry/proto/common/v1/common.proto: key = 1, value = 2), split by ``split_key_value``. The
# encoding itself is what extraction caches (receiver._otlp): most attributes repeat byte for byte from span to
# span (model, provider, tenant), and a bytes object is looked up without decoding anything. Until 2026-12-02 the
# field was a map<string, bytes> (a KeyValue is encoded as a map entry): its keys are decoded into new strings on
# every read, and one key that is not UTF-8 refused the whole request. Everything else keeps the OTLP types
# (Resource, Event, Link, Status); fields this view does not declare (trace_state, flags, dropped counts,
# schema_url) are skipped as unknown fields.
_PKG = "tenantledger.receiver.wire"
_F = descriptor_pb2.FieldDescriptorProto
_TRACE = ".opentelemetry.proto.trace.v1."


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="tenantledger/receiver/wire.proto", package=_PKG, syntax="proto3",
        dependency=[trace_pb2.DESCRIPTOR.name, common_pb2.DESCRIPTOR.name, resource_pb2.DESCRIPTOR.name],
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        m = f.message_type.add(name=name)
        for field_name, number, typ, label, type_name in fields:
            fd = m.field.add(name=field_name, number=number, type=typ, label=label)
            if type_name:
                fd.type_name = type_name
        return m

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    # Field numbers and wire types of opentelemetry/proto/trace/v1/trace.proto, Span.
    message("Span", [
        ("trace_id", 1, _F.TYPE_BYTES, one, ""),
        ("span_id", 2, _F.TYPE_BYTES, one, ""),
        ("parent_span_id", 4, _F.TYPE_BYTES, one, ""),
        ("name", 5, _F.TYPE_STRING, one, ""),
        ("kind", 6, _F.TYPE_INT32, one, ""),  # an enum on the wire is its varint
        ("start_time_unix_nano", 7, _F.TYPE_FIXED64, one, ""),
        ("end_time_unix_nano", 8, _F.TYPE_FIXED64, one, ""),
        ("attributes", 9, _F.TYPE_BYTES, many, ""),
        ("events", 11, _F.TYPE_MESSAGE, many, _TRACE + "Span.Event"),
        ("links", 13, _F.TYPE_MESSAGE, many, _TRACE + "Span.Link"),
        ("status", 15, _F.TYPE_MESSAGE, one, _TRACE + "Status"),
    ])
    message("ScopeSpans", [
        ("scope", 1, _F.TYPE_MESSAGE, one, ".opentelemetry.proto.common.v1.InstrumentationScope"),
        ("spans", 2, _F.TYPE_MESSAGE, many, f".{_PKG}.Span"),
    ])
    message("ResourceSpans", [
        ("resource", 1, _F.TYPE_MESSAGE, one, ".opentelemetry.proto.resource.v1.Resource"),
        ("scope_spans", 2, _F.TYPE_MESSAGE, many, f".{_PKG}.ScopeSpans"),
    ])
    message("ExportTraceServiceRequest", [("resource_spans", 1, _F.TYPE_MESSAGE, many, f".{_PKG}.ResourceSpans")])
    return f


def _request_class() -> Any:
    # A private pool: nothing is added to protobuf's default pool, which the application's own code shares.
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PKG}.ExportTraceServiceRequest"))


WireRequest: Any = _request_class()
_KeyValue = common_pb2.KeyValue
_AnyValue = common_pb2.AnyValue
_DOUBLE = struct.Struct("<d")


def wire_from_request(req: trace_service_pb2.ExportTraceServiceRequest) -> Any:
    """The wire view of an already-decoded request (OTLP/JSON, tests)."""
    return WireRequest.FromString(req.SerializeToString())


def split_key_value(raw: bytes) -> tuple[str, bytes]:
    """An encoded KeyValue -> its key and its value's encoding (an AnyValue). The encoding every SDK writes (the key,
    then the value, each shorter than 128 bytes; the value shorter than 16 384) is read directly, its value left
    encoded; anything else (fields in another order or repeated, unknown fields, longer keys) is read by protobuf's
    KeyValue, value included, and the value encoded again. Raises UnicodeDecodeError or DecodeError for a key that
    is not UTF-8, DecodeError for bytes that are not a KeyValue."""
    n = len(raw)
    if n > 3 and raw[0] == 0x0A:  # key: field 1, length-delimited
        i = 2 + raw[1]
        if raw[1] < 0x80 and i + 1 < n and raw[i] == 0x12:  # value: field 2, length-delimited
            size = raw[i + 1]
            if size < 0x80:
                if i + 2 + size == n:
                    return raw[2:i].decode(), raw[i + 2:]
            elif i + 2 < n and raw[i + 2] < 0x80 and i + 3 + ((size & 0x7F) | raw[i + 2] << 7) == n:
                return raw[2:i].decode(), raw[i + 3:]
    kv = _KeyValue.FromString(raw)
    return kv.key, kv.value.SerializeToString()


def decode_any_value(raw: bytes) -> AttrValue:
    """An encoded AnyValue (opentelemetry/proto/common/v1/common.proto) -> its JSON-able Python value. The
    scalar encodings are read directly (the common case); arrays, kvlists, bytes and anything unusual go through
    protobuf. Raises UnicodeDecodeError for a string that is not UTF-8, DecodeError for bytes that are not an
    AnyValue."""
    n = len(raw)
    if n > 1:  # every fast path reads at least two bytes; shorter input (hostile or truncated) goes to protobuf
        tag = raw[0]
        if tag == 0x0A and n < 130 and raw[1] == n - 2:  # string_value (field 1, length-delimited), length < 128
            return raw[2:].decode()
        if tag == 0x18:  # int_value (field 3, varint): values below 2**21 here, larger ones (and negatives) below
            if n == 2 and raw[1] < 0x80:
                return raw[1]
            if n == 3 and raw[1] >= 0x80 > raw[2]:
                return (raw[1] & 0x7F) | raw[2] << 7
            if n == 4 and raw[1] >= 0x80 and raw[2] >= 0x80 > raw[3]:
                return (raw[1] & 0x7F) | (raw[2] & 0x7F) << 7 | raw[3] << 14
        elif tag == 0x21 and n == 9:  # double_value (field 4, fixed64)
            d = _DOUBLE.unpack_from(raw, 1)[0]
            # NaN/inf are not JSON: kept as strings so validation can name them.
            return d if math.isfinite(d) else str(d)
        elif tag == 0x10 and n == 2 and raw[1] < 2:  # bool_value (field 2, varint)
            return raw[1] == 1
        elif tag == 0x2A and n < 130 and raw[1] == n - 2:  # array_value (field 5): short strings only, e.g.
            strings = _short_strings(raw, n)  # gen_ai.response.finish_reasons on every call
            if strings is not None:
                return strings
    v = _AnyValue()
    v.ParseFromString(raw)
    return any_value(v)


def _short_strings(raw: bytes, n: int) -> list[str] | None:
    """The values of an encoded ArrayValue (``values`` = field 1, each an AnyValue) when every one is a
    string_value shorter than 126 bytes; None for anything else (protobuf reads those)."""
    out: list[str] = []
    i = 2
    while i < n:
        if i + 3 >= n or raw[i] != 0x0A or raw[i + 2] != 0x0A:
            return None
        size, inner = raw[i + 1], raw[i + 3]
        end = i + 2 + size
        if size >= 0x80 or inner != size - 2 or end > n:
            return None
        out.append(raw[i + 4:end].decode())
        i = end
    return out


def any_value(v: Any) -> AttrValue:
    """An OTLP AnyValue message -> its JSON-able Python value."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return str(v.string_value)
    if which == "int_value":
        return int(v.int_value)
    if which == "double_value":
        d = float(v.double_value)
        return d if math.isfinite(d) else str(d)
    if which == "bool_value":
        return bool(v.bool_value)
    if which == "array_value":
        # Arrays of strings are the common case (gen_ai.response.finish_reasons on every call): inline.
        return [x.string_value if x.WhichOneof("value") == "string_value" else any_value(x)
                for x in v.array_value.values]
    if which == "kvlist_value":
        return json.dumps({kv.key: any_value(kv.value) for kv in v.kvlist_value.values}, default=str)
    if which == "bytes_value":
        return bytes(v.bytes_value).hex()
    return None


__all__ = ["WireRequest", "any_value", "decode_any_value", "split_key_value", "wire_from_request"]

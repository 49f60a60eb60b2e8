"""The receiver's output type: a staged span, the part of an OTLP span that billing and attribution need.

Everything downstream (the processors) sees spans only in this shape, read back from the durable spool.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# OTLP SpanKind values (opentelemetry/proto/trace/v1/trace.proto, Span.SpanKind).
SPAN_KIND_UNSPECIFIED = 0
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5

AttrValue = str | int | float | bool | list[Any] | None


class JSONAttributes(Mapping[str, AttrValue]):
    """A span's kept attributes as the spool stores them (compact JSON), parsed on first read. Spans carry this
    instead of a dict when they are attributed in another process (settle workers): the main process then neither
    builds the dict nor sends it through two pipes; the worker parses the text (bench/README.md, 2026-12-01 15:20).
    Read-only, as every span's attributes."""

    __slots__ = ("text", "_parsed")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed: dict[str, AttrValue] | None = None

    def parsed(self) -> dict[str, AttrValue]:
        if self._parsed is None:
            self._parsed = orjson.loads(self.text)
        return self._parsed

    def __getitem__(self, key: str) -> AttrValue:
        return self.parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parsed())

    def __len__(self) -> int:
        return len(self.parsed())

    def __repr__(self) -> str:
        return f"JSONAttributes({self.text!r})"


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(slots=True)
class StagedSpan:
    """One received span as kept in the spool. Treat it as immutable: it is not ``frozen`` only because a frozen
    dataclass's ``__init__`` sets every field through ``object.__setattr__`` (~0.1 us a field, on every span).

    Ids are lowercase hex (trace 32 chars, span 16 chars). ``attributes`` and ``resource_attributes``
    hold only the keys the receiver keeps (no prompt/completion content). ``seq`` is the spool's
    monotonically increasing ingest sequence; the first copy of a (trace_id, span_id) wins downstream.
    """

    seq: int
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_time_unix_nano: int
    end_time_unix_nano: int
    service_name: str | None
    scope_name: str | None
    scope_version: str | None
    attributes: Mapping[str, AttrValue]  # a dict, or JSONAttributes (see there)
    resource_attributes: dict[str, AttrValue]
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    export_baggage: str | None = None
    status_code: int = 0

"""A small builder of StagedSpan values for processor tests."""

from __future__ import annotations

import itertools
from typing import Any

from receiver import SpanLink, StagedSpan

_seq = itertools.count(1)


def span(
    trace: str,
    sid: str,
    parent: str | None = None,
    *,
    name: str = "op",
    kind: int = 1,
    attrs: dict[str, Any] | None = None,
    resource: dict[str, Any] | None = None,
    links: tuple[tuple[str, str], ...] = (),
    start: int = 1_767_225_600_000_000_000,
    service: str = "svc",
    seq: int | None = None,
    scope: str = "test",
    baggage: str | None = None,
) -> StagedSpan:
    return StagedSpan(
        seq=next(_seq) if seq is None else seq,
        trace_id=trace.ljust(32, "0"),
        span_id=sid.ljust(16, "0"),
        parent_span_id=parent.ljust(16, "0") if parent else None,
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + 1_000_000,
        service_name=service,
        scope_name=scope,
        scope_version=None,
        attributes=dict(attrs or {}),
        resource_attributes={"service.name": service, **(resource or {})},
        links=tuple(SpanLink(t.ljust(32, "0"), s.ljust(16, "0")) for t, s in links),
        export_baggage=baggage,
    )


def chat(
    inp: int | None = 100,
    out: int | None = 20,
    *,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    response_id: str | None = None,
    stream: bool = False,
    op: str = "chat",
    **extra: Any,
) -> dict[str, Any]:
    a: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    if inp is not None:
        a["gen_ai.usage.input_tokens"] = inp
    if out is not None:
        a["gen_ai.usage.output_tokens"] = out
    if response_id:
        a["gen_ai.response.id"] = response_id
    if stream:
        a["gen_ai.request.stream"] = True
    a.update(extra)
    return a

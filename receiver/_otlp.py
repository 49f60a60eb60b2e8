"""OTLP decode and extraction: ExportTraceServiceRequest (protobuf or OTLP/JSON) -> staged span columns.

Keeps what billing and attribution need (ids, parent, kind, name, times, links, GenAI and identity
attributes, resource identity) and drops payload such as prompts and completions.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from receiver._errors import InvalidRequest, RequestTooLarge
from receiver._model import AttrValue, SpanEvent, SpanLink
from receiver._wire import WireRequest, any_value, decode_any_value, split_key_value, wire_from_request

# Attribute families that mark a span as GenAI (semconv gen_ai.*, OpenLLMetry llm.*/traceloop.*,
# OpenInference llm.*/openinference.*/embedding.*, Vercel AI SDK ai.*).
GENAI_PREFIXES = ("gen_ai.", "llm.", "openinference.", "traceloop.", "embedding.", "ai.", "langfuse.")
# Prompt/completion content is never needed to bill and can be megabytes: dropped at the door.
CONTENT_KEYS = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "input.value",
        "output.value",
        "ai.prompt",
        "ai.prompt.messages",
        "ai.response.text",
        "ai.response.toolCalls",
    }
)
CONTENT_PREFIXES = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "llm.input_messages.",
    "llm.output_messages.",
    "llm.prompts.",
    "llm.prompt_template.",
    "llm.tools.",
    "embedding.embeddings.",
    "retrieval.documents.",
    "reranker.",
    "message.",
)
# HTTP client markers: the span closest to the wire wins when one call is reported twice.
WIRE_KEYS = frozenset({"server.address", "http.response.status_code", "http.request.method", "url.path"})
RESOURCE_KEEP = frozenset(
    {"service.name", "service.namespace", "service.version", "deployment.environment", "deployment.environment.name"}
)
MAX_EVENTS_KEPT = 4
_MAX_NS = 2**63 - 1

SpanValidator = Callable[[Mapping[str, AttrValue]], list[str]]


@dataclass(frozen=True)
class AttributeFilter:
    """Which attributes the receiver keeps. ``identity_keys`` are the tenant/user/feature/... keys the
    processors are configured to read; they are kept on every span, GenAI or not."""

    identity_keys: frozenset[str] = frozenset()
    max_value_length: int = 65_536
    decisions: dict[str, tuple[int, bool, str]] = field(default_factory=dict, compare=False, repr=False)
    """Per-key keep decisions already made (filled by ``extract``; safe to share between threads)."""
    known_attributes: dict[bytes, tuple[int, bool, str, AttrValue]] = field(
        default_factory=dict, compare=False, repr=False)
    """Attribute encodings already read, with what was read (filled by ``extract``; safe to share between threads:
    each entry is complete when it is stored, and a lost count only admits an entry more)."""
    value_counts: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """How many encodings of each key ``known_attributes`` holds."""
    names: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The shared copy of each span name seen (filled by ``extract``, bounded; safe to share between threads)."""

    def __reduce__(self) -> tuple[type[AttributeFilter], tuple[frozenset[str], int]]:
        """Pickled (to a spawned decode worker) as its settings, its caches left behind: a compiled build's frozen
        class cannot be restored field by field (docs/adr/0005), and the worker fills its own caches."""
        return AttributeFilter, (self.identity_keys, self.max_value_length)

    def is_genai_key(self, key: str) -> bool:
        return key.startswith(GENAI_PREFIXES)

    def is_content(self, key: str) -> bool:
        return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


@dataclass
class Extracted:
    """Columns of the staged spans of one request (seq and export_baggage are added by the spool)."""

    trace_id: list[str] = field(default_factory=list)
    span_id: list[str] = field(default_factory=list)
    parent_span_id: list[str | None] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    start_ns: list[int] = field(default_factory=list)
    end_ns: list[int] = field(default_factory=list)
    service_name: list[str | None] = field(default_factory=list)
    scope_name: list[str | None] = field(default_factory=list)
    scope_version: list[str | None] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    resource_attributes: list[str] = field(default_factory=list)
    events: list[str | None] = field(default_factory=list)
    links: list[str | None] = field(default_factory=list)
    status_code: list[int] = field(default_factory=list)
    # The same values as Python objects (what the JSON columns above encode), so the spool can publish the
    # committed spans without decoding its own JSON again; read back after a restart, they compare equal. The
    # attributes are JSONAttributes over the JSON column when a decode worker sent no dicts (DecodePool).
    attribute_dicts: list[Mapping[str, AttrValue]] = field(default_factory=list)
    resource_dicts: list[dict[str, AttrValue]] = field(default_factory=list)
    event_tuples: list[tuple[SpanEvent, ...]] = field(default_factory=list)
    link_tuples: list[tuple[SpanLink, ...]] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.span_id)

    def reject(self, message: str, reason: str = "invalid_span") -> None:
        """Count one unusable span under ``reason`` (a bounded set, for /metrics) and keep its message."""
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if len(self.errors) < 20:
            self.errors.append(message)

    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - len(self.errors)
        tail = f" (and {more} more)" if more > 0 else ""
        return f"{self.rejected} span(s) rejected: " + "; ".join(self.errors) + tail


# --- decoding -------------------------------------------------------------------------------------


def _parse(message: Any, body: bytes) -> Any:
    """``body`` parsed as ``message`` (a protobuf class); a body protobuf refuses is an InvalidRequest."""
    try:
        return message.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidRequest(f"request body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}") from e


def decode_wire(body: bytes) -> Any:
    """A protobuf body -> the wire view that ``extract`` reads fastest (receiver._wire)."""
    return _parse(WireRequest, body)


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    return _parse(ExportTraceServiceRequest, body)  # type: ignore[no-any-return]


_ID_FIELDS = (("traceId", 16), ("spanId", 8), ("parentSpanId", 8))


def _hex_to_b64(value: Any) -> Any:
    """OTLP/JSON encodes ids as hex (not base64 as proto3 JSON would); invalid hex becomes a 1-byte id,
    which span validation then rejects alone with a message naming the field."""
    if not isinstance(value, str) or value == "":
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b"\xff"
    return base64.b64encode(raw).decode()


def decode_json(body: bytes) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON (opentelemetry-proto docs/specification.md "JSON Protobuf Encoding")."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        # Deeply nested JSON is malformed for OTLP; uncaught, it became a retryable 503 retried forever.
        raise InvalidRequest("request body is JSON nested too deeply to be an OTLP request") from e
    if not isinstance(doc, dict):
        raise InvalidRequest("OTLP/JSON body must be an object with a 'resourceSpans' array")
    for rs in _as_list(doc.get("resourceSpans") or doc.get("resource_spans")):
        for ss in _as_list(rs.get("scopeSpans") or rs.get("scope_spans")) if isinstance(rs, dict) else ():
            for span in _as_list(ss.get("spans")) if isinstance(ss, dict) else ():
                if not isinstance(span, dict):
                    continue
                for key, _n in _ID_FIELDS:
                    for k in (key, _snake(key)):
                        if k in span:
                            span[k] = _hex_to_b64(span[k])
                for link in _as_list(span.get("links")):
                    if isinstance(link, dict):
                        for k in ("traceId", "spanId", "trace_id", "span_id"):
                            if k in link:
                                link[k] = _hex_to_b64(link[k])
    req = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        raise InvalidRequest(f"request body is not a valid OTLP/JSON ExportTraceServiceRequest: {e}") from e
    return req


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


# --- extraction -----------------------------------------------------------------------------------


_DROP, _ESSENTIAL, _WIRE = 0, 1, 2
_MAX_CACHED_KEYS = 10_000  # attribute keys are sender-chosen: the decision cache must not grow without bound
# The remembered attribute encodings (_remember): ~200 bytes each with their value, so at most ~7 MiB.
_MAX_REMEMBERED = 32_768
_MAX_VALUES_PER_KEY = 1_024
_MAX_REMEMBERED_BYTES = 256
# Span names repeat ("chat gpt-4o"); ids and timestamps make them unbounded only in misbehaving senders.
_MAX_SHARED_NAMES = 4_096


def _classify_key(key: str, filt: AttributeFilter) -> tuple[int, bool, str]:
    """(what to keep, whether the key makes the span a GenAI span, the key's shared copy). A GenAI-prefixed key
    marks the span even when it is content that is not kept (gen_ai.prompt); wire keys are kept only on GenAI
    spans. Kept spans use the shared copy of each key: protobuf hands out a new string per access, and a
    private copy per span was ~90 MB per 240 000 spans held for late spans (tracemalloc)."""
    genai = filt.is_genai_key(key)
    if key in filt.identity_keys or (genai and not filt.is_content(key)):
        return _ESSENTIAL, genai, key
    if key in WIRE_KEYS:
        return _WIRE, genai, key
    return _DROP, genai, key


def _json(value: Any) -> str:
    """Compact JSON of an attribute mapping, as the spool stores it. orjson: ~13x faster than json.dumps, and this
    runs for every span received; json.dumps (same document) for what orjson refuses (ints beyond 64 bits). Keys
    sorted: the attribute map's order is not the sender's and differs between processes (receiver._wire), and the
    same span must give the same text wherever it was decoded."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=str, sort_keys=True)


class _BadAttribute(Exception):
    """An attribute that costs its span: the message for the sender, the reason class for /metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_Read = tuple[int, bool, str, AttrValue]  # (what to keep, marks the span GenAI, shared key, value)


def _read_attribute(raw: bytes, filt: AttributeFilter) -> _Read:
    """One encoded KeyValue read: the key's decision (cached per key: keys repeat on every span) and, only when the
    key is kept, its value. Raises _BadAttribute when the attribute costs its span."""
    try:
        key, value_raw = split_key_value(raw)
    except (UnicodeDecodeError, DecodeError):
        raise _BadAttribute("an attribute is not a valid OTLP KeyValue (keys must be UTF-8)",
                            "invalid_attribute") from None
    cache = filt.decisions
    decision = cache.get(key)
    if decision is None:
        decision = _classify_key(key, filt)
        if len(cache) < _MAX_CACHED_KEYS:
            cache[key] = decision
    keep, marks, key = decision
    if keep == _DROP:
        return _DROP, marks, key, None
    try:
        value = decode_any_value(value_raw)
    except (UnicodeDecodeError, DecodeError):
        raise _BadAttribute(f"attribute {key!r} is not a valid OTLP AnyValue (strings must be UTF-8)",
                            "invalid_attribute") from None
    if type(value) is str and len(value) > filt.max_value_length:
        if keep == _ESSENTIAL and not key.endswith(("invocation_parameters", "metadata")):
            raise _BadAttribute(
                f"attribute {key!r} is {len(value)} characters, over max_attribute_value_length "
                f"({filt.max_value_length}): send a shorter value or raise the limit", "attribute_too_long")
        return _DROP, marks, key, None  # a long non-essential value is dropped, not the span
    return keep, marks, key, value


def _remember(raw: bytes, read: _Read, filt: AttributeFilter) -> None:
    """Keep a read attribute for the next span that carries the same bytes. Bounded: at most
    _MAX_VALUES_PER_KEY encodings of one key (a response id or a token count differs on every span and would only
    push out the ones that repeat) and _MAX_REMEMBERED in all, after which it starts again empty."""
    if len(raw) > _MAX_REMEMBERED_BYTES:
        return
    counts = filt.value_counts
    key = read[2]
    seen = counts.get(key, 0)
    if seen >= _MAX_VALUES_PER_KEY:
        return
    known = filt.known_attributes
    if len(known) >= _MAX_REMEMBERED:
        known.clear()
        counts.clear()
        seen = 0
    counts[key] = seen + 1
    known[raw] = read


def _kept_attributes(
    attrs: Sequence[bytes], filt: AttributeFilter, problems: list[str]
) -> tuple[dict[str, AttrValue], bool, str]:
    """The span's kept attributes, whether it is a GenAI span and the reason class of its first problem, in one
    pass over its attributes (each an encoded KeyValue, see receiver._wire). An encoding seen before is not read
    again: its key, decision and value are remembered (filt.known_attributes), and the values are shared between
    spans, which treat their attributes as read-only (receiver.StagedSpan). ~5 us a span less than reading every
    one (bench/README.md, 2026-12-02 13:15)."""
    out: dict[str, AttrValue] = {}
    wire: list[str] | None = None
    genai = False
    reason = ""
    known = filt.known_attributes
    for raw in attrs:
        read = known.get(raw)
        if read is None:
            try:
                read = _read_attribute(raw, filt)
            except _BadAttribute as e:
                problems.append(str(e))
                reason = reason or e.reason
                continue
            _remember(raw, read, filt)
        keep, marks, key, value = read
        if marks:
            genai = True
        if keep == _DROP:
            continue
        out[key] = value
        if keep == _WIRE:
            if wire is None:
                wire = []
            wire.append(key)
    if wire and not genai:
        for key in wire:
            out.pop(key, None)
    return out, genai, reason


def extract(
    req: Any,
    filt: AttributeFilter,
    validate: SpanValidator | None = None,
    max_spans: int | None = None,
) -> Extracted:
    """Pull staged-span columns out of a request: an ExportTraceServiceRequest or its wire view
    (receiver._wire, what ``decode_wire`` returns). Bad spans are rejected alone (OTLP partial success)."""
    if isinstance(req, ExportTraceServiceRequest):
        req = wire_from_request(req)
    out = Extracted()
    total = 0
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            total += len(ss.spans)
    if max_spans is not None and total > max_spans:
        raise RequestTooLarge(
            f"request carries {total} spans, over max_spans_per_request ({max_spans}): export smaller batches "
            "(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise the limit"
        )
    # The hex of each id seen in this request, shared by the spans that carry it (a trace's spans its trace id, a
    # parent and its children the parent's span id): a span waits in memory until its trace settles, and a private
    # copy of each was ~210 of the ~1 090 bytes it held there (bench/README.md, 2026-12-03 18:20).
    hexes: dict[bytes, str] = {}
    for rs in req.resource_spans:
        res_attrs: dict[str, AttrValue] = {}
        for kv in rs.resource.attributes:
            if kv.key in RESOURCE_KEEP or kv.key in filt.identity_keys or kv.key.startswith(GENAI_PREFIXES):
                res_attrs[kv.key] = any_value(kv.value)
        service = res_attrs.get("service.name")
        service_name = service if isinstance(service, str) else None
        res_json = _json(res_attrs)
        for ss in rs.scope_spans:
            scope_name = ss.scope.name or None
            scope_version = ss.scope.version or None
            for span in ss.spans:
                _extract_span(span, out, filt, validate, service_name, scope_name, scope_version, res_json, res_attrs,
                              hexes)
    return out


def _hex(raw: bytes, hexes: dict[bytes, str]) -> str:
    """``raw.hex()``, the same string object for the same id within one request (see ``extract``). A trace id and a
    span id never collide: their lengths differ."""
    text = hexes.get(raw)
    if text is None:
        text = hexes[raw] = raw.hex()
    return text


def _shared_name(name: str, filt: AttributeFilter) -> str:
    """The shared copy of a span name: protobuf hands out a new string per access (as for keys, _classify_key)."""
    shared = filt.names.get(name)
    if shared is None:
        if len(filt.names) < _MAX_SHARED_NAMES:
            filt.names[name] = name
        return name
    return shared


def _id_problem(field_name: str, raw: bytes, size: int, *, optional: bool = False) -> str | None:
    if optional and not raw:
        return None
    if len(raw) != size:
        return f"{field_name} must be {size} bytes ({size * 2} hex characters), got {len(raw)} bytes"
    if raw == b"\x00" * size:
        return f"{field_name} must not be all zeros"
    return None


def _extract_span(
    span: Any,
    out: Extracted,
    filt: AttributeFilter,
    validate: SpanValidator | None,
    service_name: str | None,
    scope_name: str | None,
    scope_version: str | None,
    res_json: str,
    res_attrs: dict[str, AttrValue],
    hexes: dict[bytes, str],
) -> None:
    tid = bytes(span.trace_id)
    sid = bytes(span.span_id)
    pid = bytes(span.parent_span_id)
    problems: list[str] = []
    reason = ""  # the first problem's class names the rejection in /metrics
    for p in (
        _id_problem("traceId", tid, 16),
        _id_problem("spanId", sid, 8),
        _id_problem("parentSpanId", pid, 8, optional=True),
    ):
        if p:
            problems.append(p)
            reason = reason or "invalid_id"
    if span.start_time_unix_nano > _MAX_NS or span.end_time_unix_nano > _MAX_NS:
        problems.append("start/end time is after the year 2262 (not representable): check the exporter's clock")
        reason = reason or "invalid_time"
    attrs, genai, attr_reason = _kept_attributes(span.attributes, filt, problems)
    reason = reason or attr_reason
    if validate is not None and genai:
        usage = validate(attrs)
        if usage:
            problems.extend(usage)
            reason = reason or "invalid_usage"
    name_for_msg = span.name[:80]
    if problems:
        out.reject(f"span {sid.hex() or '?'} ({name_for_msg!r}): " + "; ".join(problems), reason or "invalid_span")
        return
    events_json: str | None = None
    event_tuple: tuple[SpanEvent, ...] = ()
    if genai and span.events:
        kept_events: list[dict[str, Any]] = []
        for ev in span.events:
            ev_attrs = {
                kv.key: any_value(kv.value)
                for kv in ev.attributes
                if kv.key.startswith(GENAI_PREFIXES) and not filt.is_content(kv.key)
            }
            lname = ev.name.lower()
            if ev_attrs or "stream" in lname or "token" in lname:
                kept_events.append({"name": ev.name, "time_unix_nano": int(ev.time_unix_nano), "attributes": ev_attrs})
        if kept_events:
            kept_events = json.loads(json.dumps(kept_events[-MAX_EVENTS_KEPT:], default=str))  # JSON-exact
            events_json = json.dumps(kept_events, separators=(",", ":"), default=str)
            event_tuple = tuple(SpanEvent(e["name"], e["time_unix_nano"], e["attributes"]) for e in kept_events)
    links_json: str | None = None
    link_tuple: tuple[SpanLink, ...] = ()
    if span.links:
        kept_links = []
        for ln in span.links:
            ltid, lsid = bytes(ln.trace_id), bytes(ln.span_id)
            if len(ltid) != 16 or len(lsid) != 8:
                continue  # an unusable link is ignored, the span is still billable
            link_attrs = {kv.key: any_value(kv.value) for kv in ln.attributes if kv.key in filt.identity_keys}
            kept_links.append({"trace_id": ltid.hex(), "span_id": lsid.hex(), "attributes": link_attrs})
        if kept_links:
            kept_links = json.loads(json.dumps(kept_links, default=str))  # JSON-exact, as read back
            links_json = json.dumps(kept_links, separators=(",", ":"), default=str)
            link_tuple = tuple(SpanLink(x["trace_id"], x["span_id"], x["attributes"]) for x in kept_links)
    out.trace_id.append(_hex(tid, hexes))
    out.span_id.append(_hex(sid, hexes))
    out.parent_span_id.append(_hex(pid, hexes) if pid else None)
    out.name.append(_shared_name(span.name, filt))
    out.kind.append(int(span.kind))
    out.start_ns.append(int(span.start_time_unix_nano))
    out.end_ns.append(int(span.end_time_unix_nano))
    out.service_name.append(service_name)
    out.scope_name.append(scope_name)
    out.scope_version.append(scope_version)
    out.attributes.append(_json(attrs))
    out.resource_attributes.append(res_json)
    out.events.append(events_json)
    out.links.append(links_json)
    out.status_code.append(int(span.status.code))
    out.attribute_dicts.append(attrs)
    out.resource_dicts.append(res_attrs)
    out.event_tuples.append(event_tuple)
    out.link_tuples.append(link_tuple)

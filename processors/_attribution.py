"""Attribution of one trace: which spans are billable LLM calls, their tenant (and where it came from, or why
not), the originating request they roll up to. A pure function of the set of spans (plus linked-trace context).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from processors._dialects import GenAIView, view_of
from processors._record import UsageRecord
from processors.config import IdentityConfig
from receiver import StagedSpan
from receiver._model import SPAN_KIND_CONSUMER, SPAN_KIND_SERVER, AttrValue, SpanLink

# Reason codes for an unattributed call (README "Attribution audit" explains each in plain words).
REASON_INVALID = "invalid_tenant_id"
REASON_CONFLICT = "tenant_conflict"
REASON_LINK = "link_unresolved"  # (3) a job trace whose linked request is unknown or untenanted
REASON_PARENT_MISSING = "parent_not_received"  # (2) the upstream hop that knew the tenant never reached us
REASON_INFRA = "infrastructure_call"  # (6) embeddings/retrieval with no tenant anywhere in the trace
REASON_NOT_PROPAGATED = "tenant_not_propagated"  # (5) tenant present in the trace, not on this call's request
REASON_NONE = "no_tenant_in_trace"  # (1) one shared key, no baggage anywhere

INFRA_OPERATIONS = frozenset({"embeddings", "retrieval", "rerank", "search_memory", "create_memory"})
_ENTRY_KINDS = (SPAN_KIND_SERVER, SPAN_KIND_CONSUMER)


@dataclass(frozen=True, slots=True)
class LinkedContext:
    trace_id: str
    request_id: str
    tenant_id: str | None
    user_id: str | None


class LinkResolver(Protocol):
    def resolve(self, trace_id: str) -> LinkedContext | None: ...


_LinkLookup = Callable[[StagedSpan], tuple[LinkedContext | None, bool]]


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What other traces (jobs linked to this one) inherit from it."""

    trace_id: str
    request_id: str
    tenant_id: str | None
    user_id: str | None
    linked_traces: tuple[str, ...]
    unresolved_links: bool
    span_count: int
    first_seq: int = 0
    """The lowest and highest spool sequence numbers of the trace's spans: where to read them back (0: unknown)."""
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class TraceResult:
    summary: TraceSummary
    records: tuple[UsageRecord, ...]


@dataclass(slots=True)
class _Chain:
    tenant: str | None  # the nearest valid tenant on the span or an ancestor
    invalid: bool  # a rejected tenant candidate somewhere on the chain
    tenants: frozenset[str]  # up to two distinct valid tenants on the chain
    values: tuple[str | None, ...]  # nearest user, environment, feature, workflow


@dataclass(frozen=True, slots=True)
class _Tenant:
    value: str | None  # None with invalid=True: a candidate was present but rejected
    source: str
    invalid: bool = False


def clean_tenant(raw: AttrValue, max_len: int) -> str | None:
    """Tenant ids are untrusted input: bounded length, no control or format characters, not blank."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, list):
        return None
    value = str(raw).strip()
    if not value or len(value) > max_len:
        return None
    if _UNSAFE.search(value):
        return None
    return value


# C0/C1 control characters, line/paragraph separators, zero-width space, BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b\ufeff]")


def _first(attrs: Mapping[str, AttrValue], keys: Iterable[str]) -> AttrValue:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _metadata(attrs: Mapping[str, AttrValue], cfg: IdentityConfig) -> dict[str, AttrValue]:
    for k in cfg.metadata_keys:
        raw = attrs.get(k)
        if isinstance(raw, str) and raw.startswith("{"):
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return {}


def _baggage_value(header: str | None, keys: Iterable[str]) -> str | None:
    """W3C Baggage: comma-separated key=value;properties, percent-encoded values."""
    if not header:
        return None
    from urllib.parse import unquote

    entries = {}
    for member in header.split(","):
        kv = member.split(";")[0]
        if "=" in kv:
            k, v = kv.split("=", 1)
            entries[k.strip()] = unquote(v.strip())
    for k in keys:
        if k in entries:
            return entries[k]
    return None


class _Trace:
    """Indexes over one trace's spans; the first copy of a span id wins (lowest spool seq).

    Parent chains are resolved once, in O(spans): a cycle in the parent links (hostile or buggy input) is broken
    at its smallest span id, which becomes a root, so every walk up a chain terminates and the result does not
    depend on where a walk started. Chain-derived facts (entry span, nearest tenant, ...) are memoised per span
    because re-walking the chain for every span made deep traces quadratic (a 10k-deep chain took seconds).
    """

    def __init__(self, spans: Iterable[StagedSpan], cfg: IdentityConfig) -> None:
        self.cfg = cfg
        by_id: dict[str, StagedSpan] = {}
        for s in spans:
            cur = by_id.get(s.span_id)
            if cur is None or s.seq < cur.seq:
                by_id[s.span_id] = s
        # Deterministic order regardless of arrival: by start time then span id.
        self.spans = sorted(by_id.values(), key=lambda s: (s.start_time_unix_nano, s.span_id))
        self.by_id = by_id
        self.trace_id = self.spans[0].trace_id if self.spans else ""
        self._parent: dict[str, str | None] = {}
        self._missing_parent: set[str] = set()
        for sid, s in by_id.items():
            pid = s.parent_span_id
            if pid is None or pid == sid:
                self._parent[sid] = None
            elif pid in by_id:
                self._parent[sid] = pid
            else:
                self._parent[sid] = None
                self._missing_parent.add(sid)
        self._break_cycles()
        self._own: dict[str, _Tenant | None] = {}
        self._entry: dict[str, tuple[str, bool]] = {}
        self._memo: dict[str | tuple[str, ...], dict[str, Any]] = {}
        self._metadata: dict[str, dict[str, AttrValue]] = {}
        # The chain-inherited identity values, in _Chain.values order.
        self._groups = (cfg.user_keys, cfg.environment_keys, cfg.feature_keys, cfg.workflow_keys)

    def _break_cycles(self) -> None:
        state: dict[str, int] = {}  # 1: on the current walk, 2: done
        for sid in sorted(self.by_id):
            path: list[str] = []
            cur: str | None = sid
            while cur is not None and cur not in state:
                state[cur] = 1
                path.append(cur)
                cur = self._parent[cur]
            if cur is not None and state[cur] == 1:
                cycle = path[path.index(cur):]
                self._parent[min(cycle)] = None
            for p in path:
                state[p] = 2

    def parent(self, s: StagedSpan) -> StagedSpan | None:
        pid = self._parent[s.span_id]
        return None if pid is None else self.by_id[pid]

    def fold(self, s: StagedSpan, name: str | tuple[str, ...], step: Callable[[StagedSpan, Any], Any]) -> Any:
        """``step(p, value of p's parent)`` from the top of s's chain down to s (None above the top), memoised
        under ``name`` so that each span is computed once per trace."""
        memo = self._memo.setdefault(name, {})
        path: list[StagedSpan] = []
        cur: StagedSpan | None = s
        while cur is not None and cur.span_id not in memo:
            path.append(cur)
            cur = self.parent(cur)
        value = memo[cur.span_id] if cur is not None else None
        for p in reversed(path):
            value = step(p, value)
            memo[p.span_id] = value
        return memo[s.span_id]

    def nearest(self, s: StagedSpan, name: str | tuple[str, ...], own: Callable[[StagedSpan], Any]) -> Any:
        """The first non-None ``own(p)`` for p = s, its parent, ... (None if none)."""

        def step(p: StagedSpan, above: Any) -> Any:
            mine = own(p)
            return above if mine is None else mine

        return self.fold(s, name, step)

    def metadata(self, s: StagedSpan) -> dict[str, AttrValue]:
        """The span's metadata JSON object (see IdentityConfig.metadata_keys), parsed once per span."""
        hit = self._metadata.get(s.span_id)
        if hit is None:
            hit = self._metadata[s.span_id] = _metadata(s.attributes, self.cfg)
        return hit

    def own_value(self, s: StagedSpan, keys: tuple[str, ...]) -> str | None:
        raw = _first(s.attributes, keys)
        if raw is None:
            md = self.metadata(s)
            raw = _first(md, keys) if md else None
        if raw is not None and not isinstance(raw, bool | list):
            return str(raw)[: self.cfg.max_tenant_id_length]
        return None

    def chain(self, s: StagedSpan) -> _Chain:
        """Facts about s and its ancestors, computed top-down once per span (one memoised fold for all of them:
        a fold per fact was a third of the attribution CPU)."""
        return self.fold(s, "chain", self._chain_step)  # type: ignore[no-any-return]

    def _chain_step(self, p: StagedSpan, above: _Chain | None) -> _Chain:
        own = self.own_tenant(p)
        value = own.value if own is not None else None
        groups = self._groups
        if above is None:
            return _Chain(
                value, own is not None and own.invalid, frozenset() if value is None else frozenset((value,)),
                tuple(self.own_value(p, keys) for keys in groups),
            )
        seen = above.tenants
        values = tuple(
            up if (mine := self.own_value(p, keys)) is None else mine
            for keys, up in zip(groups, above.values, strict=True)
        )
        return _Chain(
            above.tenant if value is None else value,
            above.invalid or (own is not None and own.invalid),
            # Only "more than one distinct tenant on the chain" matters, so at most two are carried down.
            seen if value is None or len(seen) >= 2 else seen | {value},
            values,
        )

    def own_tenant(self, s: StagedSpan) -> _Tenant | None:
        if s.span_id in self._own:
            return self._own[s.span_id]
        cfg = self.cfg
        found: _Tenant | None = None
        for attrs, source in ((s.attributes, "span"), (self.metadata(s), "metadata"),
                              (s.resource_attributes, "resource")):
            raw = _first(attrs, cfg.tenant_keys + (("tenant",) if source == "metadata" else ()))
            if raw is None:
                continue
            value = clean_tenant(raw, cfg.max_tenant_id_length)
            found = _Tenant(value, source) if value else _Tenant(None, source, invalid=True)
            break
        self._own[s.span_id] = found
        return found

    def entry(self, s: StagedSpan) -> tuple[str, bool]:
        """The originating request's entry span id: the outermost SERVER/CONSUMER span on the chain, else the
        top of the chain; and whether the chain ends at a missing parent."""
        hit = self._entry.get(s.span_id)
        if hit is not None:
            return hit
        path: list[StagedSpan] = []
        cur: StagedSpan | None = s
        while cur is not None and cur.span_id not in self._entry:
            path.append(cur)
            cur = self.parent(cur)
        if cur is not None:
            above: tuple[str, bool] | None = self._entry[cur.span_id]
        else:
            above = None
        for p in reversed(path):
            if above is None:  # p is the top of its chain
                above = (p.span_id, p.span_id in self._missing_parent)
            else:
                entry_id, cut = above
                # The entry above is a SERVER/CONSUMER only if one is on the chain, and then it is the outermost
                # one; otherwise it is the top of the chain, and p replaces it if p is a SERVER/CONSUMER.
                if self.by_id[entry_id].kind not in _ENTRY_KINDS and p.kind in _ENTRY_KINDS:
                    entry_id = p.span_id
                above = (entry_id, cut)
            self._entry[p.span_id] = above
        return self._entry[s.span_id]


class _Links:
    """Span links of one trace: the linked contexts a span inherits, each linked trace resolved once.

    A class, not closures over attribute_trace's locals: compiled (docs/adr/0005), closures that refer to each other
    share an environment object that refers back to them, a reference cycle that kept each settled trace's spans
    alive until the cyclic collector ran: ~10 % of the server's CPU in bursts (bench/README.md, 2026-12-02 22:55).
    Bound methods refer to the instance, never the other way round."""

    def __init__(self, t: _Trace, resolver: LinkResolver) -> None:
        self.t = t
        self.resolver = resolver
        self.resolved: dict[str, LinkedContext | None] = {}

    def foreign(self, p: StagedSpan) -> StagedSpan | None:
        return p if any(ln.trace_id != self.t.trace_id for ln in p.links) else None

    def context(self, s: StagedSpan) -> tuple[LinkedContext | None, bool]:
        """The first tenanted linked context on s or its ancestors; and whether any of them has links.
        Only the spans that carry links are visited (memoised), so deep chains stay linear."""
        t = self.t
        has_links = False
        cur: StagedSpan | None = s
        while cur is not None:
            p = t.nearest(cur, "linked", self.foreign)
            if not isinstance(p, StagedSpan):
                break
            for ln in sorted(p.links, key=_link_order):
                if ln.trace_id == t.trace_id:
                    continue
                has_links = True
                if ln.trace_id not in self.resolved:
                    self.resolved[ln.trace_id] = self.resolver.resolve(ln.trace_id)
                ctx = self.resolved[ln.trace_id]
                if ctx is not None and ctx.tenant_id is not None:
                    return ctx, True
            cur = t.parent(p)
        return None, has_links


def _link_order(ln: SpanLink) -> tuple[str, str]:
    return ln.trace_id, ln.span_id


def attribute_trace(
    spans: Iterable[StagedSpan],
    cfg: IdentityConfig,
    resolver: LinkResolver,
) -> TraceResult:
    t = _Trace(spans, cfg)
    views: dict[str, GenAIView] = {}
    for s in t.spans:
        v = view_of(s)
        if v.is_genai:
            views[s.span_id] = v

    # Per request (entry span): the distinct valid tenants its spans carry themselves.
    request_tenants: dict[str, set[str]] = {}
    request_users: dict[str, set[str]] = {}
    trace_tenants: set[str] = set()
    for s in t.spans:
        e, _ = t.entry(s)
        own = t.own_tenant(s)
        if own is not None and own.value is not None:
            request_tenants.setdefault(e, set()).add(own.value)
            trace_tenants.add(own.value)
        u = _first(s.attributes, cfg.user_keys)
        if isinstance(u, str | int) and not isinstance(u, bool):
            request_users.setdefault(e, set()).add(str(u))

    # Leaf rule: bill the innermost GenAI spans that report usage; a wrapper/agent span's aggregate is used
    # only when none of its descendants reports usage (semconv: invoke_agent also carries gen_ai.usage.*).
    usage_below: set[str] = set()
    call_below: set[str] = set()
    for sid, v in views.items():
        if v.usage_reported or v.role == "inference":
            _mark_ancestors(t, t.by_id[sid], call_below)
        if v.usage_reported:
            _mark_ancestors(t, t.by_id[sid], usage_below)

    links = _Links(t, resolver)

    records: list[UsageRecord] = []
    for s in t.spans:
        gv = views.get(s.span_id)
        if gv is None:
            continue
        if gv.usage_reported:
            if s.span_id in usage_below:
                continue
        elif gv.role != "inference" or s.span_id in call_below:
            continue
        records.append(_record(t, s, gv, cfg, request_tenants, request_users, trace_tenants, links.context))

    # Summary for traces that link to this one (async jobs): its root request and its unique tenant.
    roots = [s for s in t.spans if t.parent(s) is None]
    root = roots[0] if roots else t.spans[0]
    root_entry, _ = t.entry(root)
    summary_tenant = next(iter(trace_tenants)) if len(trace_tenants) == 1 else None
    summary_request = f"{t.trace_id}-{root_entry}"
    summary_user = _only(request_users.get(root_entry))
    root_link, root_has_links = links.context(root)
    if summary_tenant is None and root_link is not None:
        summary_tenant, summary_request = root_link.tenant_id, root_link.request_id
        summary_user = summary_user or root_link.user_id
    linked = sorted({ln.trace_id for s in t.spans for ln in s.links if ln.trace_id != t.trace_id})
    unresolved = any((c := links.resolved.get(x)) is None or c.tenant_id is None for x in linked)
    unresolved = unresolved or (root_has_links and root_link is None)
    seqs = [s.seq for s in t.spans]
    summary = TraceSummary(t.trace_id, summary_request, summary_tenant, summary_user, tuple(linked), unresolved,
                           len(t.spans), min(seqs), max(seqs))
    return TraceResult(summary, tuple(records))


def _only(values: set[str] | None) -> str | None:
    return next(iter(values)) if values and len(values) == 1 else None


def _mark_ancestors(t: _Trace, s: StagedSpan, marked: set[str]) -> None:
    cur = t.parent(s)
    while cur is not None and cur.span_id not in marked:  # terminates: _Trace broke every parent cycle
        marked.add(cur.span_id)
        cur = t.parent(cur)


def _record(
    t: _Trace,
    s: StagedSpan,
    v: GenAIView,
    cfg: IdentityConfig,
    request_tenants: dict[str, set[str]],
    request_users: dict[str, set[str]],
    trace_tenants: set[str],
    link_context: _LinkLookup,
) -> UsageRecord:
    entry_id, cut = t.entry(s)
    request_id = f"{t.trace_id}-{entry_id}"
    tenant: str | None = None
    source: str | None = None

    chain = t.chain(s)
    # 1-3: the span itself (attributes, metadata), its resource, then the nearest ancestor.
    own = t.own_tenant(s)
    if own is not None and own.value is not None:
        tenant, source = own.value, own.source
    else:
        tenant = chain.tenant
        source = "ancestor" if tenant is not None else None
    invalid = chain.invalid
    chain_tenants = chain.tenants
    reason: str | None = None
    # 4: the originating request (a sibling branch of the same request carried it).
    if tenant is None:
        candidates = request_tenants.get(entry_id, set())
        if len(candidates) == 1:
            tenant, source = next(iter(candidates)), "request"
        elif len(candidates) > 1:
            reason = REASON_CONFLICT
    # 5: span links (a job's trace linked to the request that enqueued it).
    ctx, has_links = link_context(s)
    if ctx is not None:
        request_id = ctx.request_id  # roll the job up to the originating user request
        if tenant is None and reason is None:
            tenant, source = ctx.tenant_id, "link"
    # 6: the export request's own baggage header, only when enabled.
    if tenant is None and reason is None and cfg.use_export_baggage:
        raw = _baggage_value(s.export_baggage, cfg.tenant_keys)
        value = clean_tenant(raw, cfg.max_tenant_id_length) if raw is not None else None
        if value is not None:
            tenant, source = value, "export_baggage"
    if tenant is None and reason is None:
        if invalid:
            reason = REASON_INVALID
        elif has_links:
            reason = REASON_LINK
        elif cut:
            reason = REASON_PARENT_MISSING
        elif trace_tenants:
            reason = REASON_NOT_PROPAGATED
        elif v.operation in INFRA_OPERATIONS:
            reason = REASON_INFRA
        else:
            reason = REASON_NONE

    def chain_value(i: int, keys: tuple[str, ...], request_values: dict[str, set[str]] | None = None) -> str | None:
        found = chain.values[i]
        if found is not None:
            return found
        raw = _first(s.resource_attributes, keys)
        if raw is not None and not isinstance(raw, bool | list):
            return str(raw)[: cfg.max_tenant_id_length]
        if request_values is not None:
            return _only(request_values.get(entry_id))
        return None

    user = chain_value(0, cfg.user_keys, request_users)
    if user is None and ctx is not None:
        user = ctx.user_id
    environment = chain_value(1, cfg.environment_keys)
    feature = chain_value(2, cfg.feature_keys)
    workflow = chain_value(3, cfg.workflow_keys) or v.workflow_name
    usage = v.usage_reported
    wire = any(k in s.attributes for k in ("server.address", "http.response.status_code", "url.path"))
    dedup_key = f"{v.provider or '?'}:{v.response_id}" if v.response_id else None
    # Among spans reporting the same call: the one with usage, then the one closest to the wire (the
    # provider SDK's HTTP span: OpenLLMetry over-counts streamed Anthropic output by one), then the deepest.
    rank = (0 if usage else 100) + (0 if wire else 10) + (0 if t.parent(s) is not None else 1)
    is_aggregate = usage and v.role != "inference"
    # Positional, in field order (each line names its field): 33 keyword arguments cost ~1.6 us more a call, as
    # CPython matches each keyword against the parameter names (tests/processors/test_attribution.py pins the order).
    return UsageRecord(
        t.trace_id,  # trace_id
        s.span_id,  # span_id
        request_id,  # request_id
        tenant,  # tenant_id
        source,  # tenant_source
        reason if tenant is None else None,  # unattributed_reason
        len(chain_tenants) > 1 or reason == REASON_CONFLICT,  # tenant_conflict
        user,  # user_id
        feature,  # feature
        environment,  # environment
        workflow,  # workflow_id
        v.conversation_id,  # conversation_id
        v.agent_name,  # agent_name
        s.service_name,  # service_name
        s.name,  # span_name
        v.provider,  # provider
        v.operation,  # operation
        v.request_model,  # request_model
        v.response_model,  # response_model
        v.response_id,  # response_id
        v.streamed,  # streamed
        "aggregate" if is_aggregate else ("reported" if usage else "missing"),  # usage_status
        v.input_tokens,  # input_tokens
        v.output_tokens,  # output_tokens
        v.cache_read_tokens,  # cache_read_tokens
        v.cache_write_tokens,  # cache_write_tokens
        v.reasoning_tokens,  # reasoning_tokens
        s.start_time_unix_nano,  # start_time_unix_nano
        s.end_time_unix_nano,  # end_time_unix_nano
        dedup_key,  # dedup_key
        rank,  # dedup_rank
        v.batch,  # batch
        v.service_tier,  # service_tier
    )

"""Settle compute (attribution + pricing of a batch of traces) in worker processes, so that a second core does
the per-call Python work while the main process receives spans and writes the ledger.
"""

from __future__ import annotations

import logging
import marshal
import multiprocessing as mp
import multiprocessing.connection
import operator
import pickle
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from itertools import chain, repeat
from typing import Any, NoReturn

import orjson
import pyarrow as pa

from processors._attribution import LinkedContext, TraceResult, TraceSummary, attribute_trace
from processors._columns import records_table
from processors._pricing import Pricer, PricingConfig
from processors.config import IdentityConfig
from receiver import FrameRef, JSONAttributes, SpanEvent, SpanLink, StagedSpan, read_spans_at

log = logging.getLogger("tenantledger.processors")

# Across the pipe, spans travel as marshalled columns of builtins (pickling a slotted dataclass goes through
# Python-level __getstate__, ~11 us a span; _encode_batch) and records come back as one Arrow IPC table
# (_encode_results).
_SPAN_FIELDS = tuple(f.name for f in fields(StagedSpan))
_span_tuple = operator.attrgetter(*_SPAN_FIELDS)
_summary_tuple = operator.attrgetter(*(f.name for f in fields(TraceSummary)))
_EVENTS = _SPAN_FIELDS.index("events")
_ATTRIBUTES = _SPAN_FIELDS.index("attributes")
assert _SPAN_FIELDS[_EVENTS + 1] == "links"
# The same with JSONAttributes' text in place of the attributes (one C-level getter: rebuilding the tuple cost more).
_span_tuple_text = operator.attrgetter(*(f if f != "attributes" else "attributes.text" for f in _SPAN_FIELDS))

Batch = tuple[list[str], dict[str, list[StagedSpan]], dict[str, LinkedContext]]
Locate = Callable[[Sequence[int]], list[FrameRef] | None]
"""Where spans are in the spool, by sequence number (receiver.Spool.locate)."""
_seq = operator.attrgetter("seq")
# A span read from a frame costs the worker ~0.3 us per span of the frame (read, decompress) plus ~4 us for the span
# itself; one sent by value costs ~5 us in the main process and ~6 in the worker: by reference stops paying when
# the frames hold ~20x the batch's spans. The limit is set a little below.
_MAX_READ_AMPLIFICATION = 16


class _Contexts:
    """Link resolution for one batch: traces settled earlier in the batch, then the contexts the settler looked
    up for link targets outside it (its cache of settled traces, then the ledger)."""

    def __init__(self, batch: Mapping[str, TraceSummary], outside: Mapping[str, LinkedContext]) -> None:
        self._batch, self._outside = batch, outside

    def resolve(self, trace_id: str) -> LinkedContext | None:
        s = self._batch.get(trace_id)
        if s is not None:
            return LinkedContext(s.trace_id, s.request_id, s.tenant_id, s.user_id)
        return self._outside.get(trace_id)


def settle_traces(
    order: Sequence[str],
    spans: Mapping[str, Sequence[StagedSpan]],
    outside: Mapping[str, LinkedContext],
    identity: IdentityConfig,
    pricer: Pricer,
) -> list[TraceResult]:
    """Attribute and price each trace, link targets first (``order``): a pure function of its arguments."""
    summaries: dict[str, TraceSummary] = {}
    resolver = _Contexts(summaries, outside)
    results: list[TraceResult] = []
    for tid in order:
        r = attribute_trace(spans[tid], identity, resolver)
        for rec in r.records:  # fresh from attribution: ours to fill in
            pricer.price_into(rec)
        summaries[tid] = r.summary
        results.append(r)
    return results


# --- wire format --------------------------------------------------------------------------------------


def _wire_row(s: StagedSpan) -> tuple[Any, ...]:
    if type(s.attributes) is JSONAttributes:  # as its text, parsed by the worker (_decode_batch)
        return _span_tuple_text(s)
    return _span_tuple(s)


def _encode_batch(order: Sequence[str], spans: Mapping[str, Sequence[StagedSpan]],
                  outside: Mapping[str, LinkedContext]) -> tuple[bytes, bytes]:
    """(kind, payload), sent as two pipe messages: prefixing a multi-megabyte payload with its kind byte copied
    it once more (a fresh mmap and its page faults, in the main process).

    Column-wise: one tuple per StagedSpan field across the batch's spans (trace after trace, ``order``'s order, with
    each trace's span count), so that the worker builds the spans with one ``map`` over the columns; and a span's
    events and links, rare, as a sparse list of (index, events, links) of plain tuples. Against one tuple per span
    this was ~0.1-0.5 us a span cheaper to encode and ~0.8 to decode (bench/README.md, 2026-12-02 10:35)."""
    flat = [s for tid in order for s in spans[tid]]
    try:  # the common case, every span's attributes still their text: one C-level getter a span
        rows = list(map(_span_tuple_text, flat))
        all_text = True
    except AttributeError:  # some are dicts (spans read from the shared lake), which have no .text
        rows = list(map(_wire_row, flat))
        all_text = False
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * len(_SPAN_FIELDS)
    extras = [
        (i, tuple((e.name, e.time_unix_nano, e.attributes) for e in s.events),
         tuple((ln.trace_id, ln.span_id, ln.attributes) for ln in s.links))
        for i, s in enumerate(flat) if s.events or s.links
    ] if any(columns[_EVENTS]) or any(columns[_EVENTS + 1]) else []
    columns[_EVENTS] = columns[_EVENTS + 1] = None
    payload = (
        list(order),
        [len(spans[tid]) for tid in order],
        columns,
        all_text,
        extras,
        {tid: (c.trace_id, c.request_id, c.tenant_id, c.user_id) for tid, c in outside.items()},
    )
    # marshal: builtins only, ~3x faster than pickle on the sending (main) side; pickle if a value is not a builtin.
    try:
        return b"M", marshal.dumps(payload)
    except ValueError:
        return b"P", pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def _encode_refs(order: Sequence[str], spans: Mapping[str, Sequence[StagedSpan]],
                 outside: Mapping[str, LinkedContext], locate: Locate) -> tuple[bytes, bytes] | None:
    """A batch by reference: each span as its spool sequence number, and the frames that hold them, from which the
    worker reads the spans itself (``read_spans_at``). The main process then encodes ~10 bytes a span instead of the
    span (~5 us a span of its GIL, bench/README.md 2026-12-03), and the pipe carries that much less. None if a span
    is not in the spool (spans from another source), or if the frames hold more than ``_MAX_READ_AMPLIFICATION``
    times the batch's spans (late spans of old traces, each in a frame of its own): the worker reads and decompresses
    whole frames, so the batch goes by value then."""
    seqs = list(map(_seq, chain.from_iterable(spans[tid] for tid in order)))
    frames = locate(sorted(seqs))
    if frames is None or sum(f[4] for f in frames) > _MAX_READ_AMPLIFICATION * len(seqs):
        return None
    payload = (
        list(order),
        [len(spans[tid]) for tid in order],
        seqs,
        frames,
        {tid: (c.trace_id, c.request_id, c.tenant_id, c.user_id) for tid, c in outside.items()},
    )
    return b"R", marshal.dumps(payload)


def _decode_batch(kind: bytes, data: bytes) -> Batch:
    if kind == b"R":
        return _decode_refs(data)
    order, counts, columns, all_text, extras, raw_ctx = marshal.loads(data) if kind == b"M" else pickle.loads(data)
    n = len(columns[0])
    attrs = columns[_ATTRIBUTES]
    # JSONAttributes' text (_wire_row) is parsed here; a dict (spans read from the shared lake) is used as it is.
    if all_text:
        columns[_ATTRIBUTES] = map(orjson.loads, attrs)
    else:
        columns[_ATTRIBUTES] = [orjson.loads(a) if type(a) is str else a for a in attrs]
    columns[_EVENTS], columns[_EVENTS + 1] = repeat((), n), repeat((), n)  # two: map draws from each once a span
    flat = list(map(StagedSpan, *columns))
    for i, events, links in extras:
        s = flat[i]
        s.events = tuple(SpanEvent(*e) for e in events)
        s.links = tuple(SpanLink(*x) for x in links)
    return _batch(order, counts, flat, raw_ctx)


def _decode_refs(data: bytes) -> Batch:
    order, counts, seqs, frames, raw_ctx = marshal.loads(data)
    by_seq = {s.seq: s for s in read_spans_at(frames, sorted(seqs))}  # attributes parsed: this process reads them
    flat = [by_seq[q] for q in seqs]
    return _batch(order, counts, flat, raw_ctx)


def _batch(order: list[str], counts: list[int], flat: list[StagedSpan], raw_ctx: dict[str, Any]) -> Batch:
    """The decoded batch: ``flat`` cut into its traces (``counts`` spans each, in ``order``)."""
    spans: dict[str, list[StagedSpan]] = {}
    start = 0
    for tid, count in zip(order, counts, strict=True):
        spans[tid] = flat[start:start + count]
        start += count
    return order, spans, {tid: LinkedContext(*c) for tid, c in raw_ctx.items()}


def _encode_results(results: Sequence[TraceResult]) -> tuple[bytes, pa.Buffer]:
    """The summaries (pickled), and the records as an Arrow IPC stream of their table, which the main process reads
    without per-record Python (it was ~15 us a call to unpickle records and build the table there). Two pipe
    messages: the stream goes as the Arrow buffer itself, not copied into a bytes object and then into a pickle
    (each copy of a ~10 MB batch was a fresh mmap and its page faults on both sides)."""
    table = records_table([rec for r in results for rec in r.records])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    summaries = [_summary_tuple(r.summary) for r in results]
    return pickle.dumps(("ok", summaries), protocol=pickle.HIGHEST_PROTOCOL), sink.getvalue()


def _decode_results(summaries: Sequence[tuple[Any, ...]], ipc: bytes) -> tuple[list[TraceResult], pa.Table]:
    table = pa.ipc.open_stream(pa.py_buffer(ipc)).read_all()  # zero-copy: the table's buffers point into ipc
    return [TraceResult(TraceSummary(*s), ()) for s in summaries], table


def _worker_main(conn: Any, identity: IdentityConfig, pricing: PricingConfig, inherited: Any = None) -> None:
    """The worker's loop: one batch in, its results out, until the pipe closes or an empty message arrives.

    Wire: a batch is two messages, its kind (M/P: marshalled/pickled spans, R: their spool sequence numbers and
    frames) and its payload; an empty kind message stops the worker. The answer is a pickled head, ("ok", summaries)
    or ("error", traceback), and after an "ok" head the records' Arrow IPC stream."""
    import gc

    if inherited is not None:
        # A forked worker holds a copy of the parent's end: closed, so that the main process exiting (even by
        # kill -9) ends this loop with EOF instead of leaving an orphan.
        inherited.close()

    pricer = Pricer(pricing)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as in the main process (tenantledger/app.py)
    while True:
        try:
            kind = conn.recv_bytes()
            if not kind:
                return
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        # No collection while a batch is computed: everything it builds stays alive until the batch is done, and is
        # freed by reference counting then (attribution leaves no cycles: tests/processors/test_attribution.py), so
        # a collection mid-batch only walked live objects to find nothing (~3 % of the workers' CPU, and decoding a
        # batch 9.2 -> 5.9 us a span; bench/README.md, 2026-12-02 22:55). Re-enabled between batches: a cycle made
        # anyway is still collected.
        gc.disable()
        try:
            order, spans, outside = _decode_batch(kind, data)
            del data
            head, ipc = _encode_results(settle_traces(order, spans, outside, identity, pricer))
            del order, spans, outside
        except Exception:  # reported to the settler, which retries the batch; the worker lives on
            head, ipc = pickle.dumps(("error", traceback.format_exc(limit=5))), None
        finally:
            gc.enable()
        conn.send_bytes(head)
        if ipc is not None:
            conn.send_bytes(ipc)
            del ipc


class SettleWorker:
    """One worker process. Restarted with the ``spawn`` method: by then the server has threads and an open
    DuckDB database, which a fork would copy mid-state.

    Threading: ``settle``, ``submit``, ``ready``, ``collect`` and ``wait_any`` are called by the settler thread only;
    at most one batch is in flight (``submit`` then ``collect``; the settler writes other batches in between).
    ``close`` may be called from any thread. A worker that dies is restarted on the next batch; the batch it held is
    retried (the spans are in the spool).
    """

    def __init__(self, identity: IdentityConfig, pricing: PricingConfig) -> None:
        self._identity, self._pricing = identity, pricing
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._inflight = False
        self._by_ref = False  # the batch in flight went by reference
        self._by_value_next = False  # after a batch by reference failed: its retry goes by value
        self.restarts = 0

    def _ensure(self, method: str = "spawn") -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        if self._proc is not None:
            self.restarts += 1
            log.warning("settle worker exited (code %s); restarting it", self._proc.exitcode)
            self._conn.close()
        ctx: Any = mp.get_context(method)
        parent, child = ctx.Pipe()
        args = (child, self._identity, self._pricing) + ((parent,) if method == "fork" else ())
        self._proc = ctx.Process(target=_worker_main, args=args, name="tenantledger-settle", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def start(self, *, fork: bool = False) -> None:
        """``fork=True`` only while the process has no other thread and no open DuckDB database (the entry
        point starts the worker first thing): a fork is ~50x cheaper than a spawn, which re-imports everything.
        Restarts always spawn."""
        with self._lock:
            self._ensure("fork" if fork else "spawn")

    def settle(self, order: Sequence[str], spans: Mapping[str, Sequence[StagedSpan]],
               outside: Mapping[str, LinkedContext],
               locate: Locate | None = None) -> tuple[list[TraceResult], pa.Table]:
        """The batch's results (summaries only) and all their records as one table (processors._columns)."""
        self.submit(order, spans, outside, locate)
        return self.collect()

    def submit(self, order: Sequence[str], spans: Mapping[str, Sequence[StagedSpan]],
               outside: Mapping[str, LinkedContext], locate: Locate | None = None) -> None:
        """Send a batch; the worker computes it while the caller does something else until ``collect``. The
        worker is idle when a batch is sent (one in flight at most), so neither side can block the other on a
        full pipe. With ``locate`` (the spans' source is the spool), the spans go by reference: the worker reads
        them from the spool's files; a batch that failed so is retried by value once."""
        with self._lock:
            if self._inflight:
                raise RuntimeError("a batch is already in flight: collect it first")
            self._ensure()
            encoded = None
            if locate is not None and not self._by_value_next:
                encoded = _encode_refs(order, spans, outside, locate)
            self._by_value_next = False
            self._by_ref = encoded is not None
            kind, payload = encoded if encoded is not None else _encode_batch(order, spans, outside)
            try:
                self._conn.send_bytes(kind)
                self._conn.send_bytes(payload)
            except (EOFError, OSError) as e:
                self._died(e)
            self._inflight = True

    def collect(self) -> tuple[list[TraceResult], pa.Table]:
        """The results of the batch in flight (waits for them). Raises RuntimeError if the worker failed on it
        or died."""
        with self._lock:
            if not self._inflight:
                raise RuntimeError("no batch in flight")
            self._inflight = False
            try:
                status, detail = pickle.loads(self._conn.recv_bytes())
                if status != "ok":
                    self._by_value_next = self._by_ref
                    raise RuntimeError(f"settle worker failed: {detail}")
                ipc = self._conn.recv_bytes()
            except (EOFError, OSError) as e:
                self._died(e)
        return _decode_results(detail, ipc)

    def ready(self) -> bool:
        """Whether the batch in flight has its results back (``collect`` would not wait); True also when the worker
        died (``collect`` then raises)."""
        with self._lock:
            return self._inflight and self._conn.poll(0)

    @staticmethod
    def wait_any(workers: Sequence[SettleWorker], timeout: float | None) -> None:
        """Wait up to ``timeout`` s (None: without limit) until one of ``workers``, each with a batch in flight,
        has its results back (or died); ``ready`` says which. Called by the settler thread only, as ``collect``."""
        if workers:
            mp.connection.wait([w._conn for w in workers], timeout)

    def _died(self, e: BaseException) -> NoReturn:
        # Died mid-batch (killed, out of memory): restarted on the next call; the settler retries the batch.
        self._proc.join(5)
        raise RuntimeError(f"settle worker died while settling a batch: {e!r}") from e

    def close(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send_bytes(b"")  # the stop message
            except OSError:
                pass  # already gone
            self._conn.close()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
            self._inflight = False


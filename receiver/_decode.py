"""Decoding and extraction of OTLP/protobuf Export bodies, in worker processes when configured: the per-attribute
Python work of ``extract`` then runs beside the process that commits the spool, not under its GIL.
"""

from __future__ import annotations

import logging
import marshal
import multiprocessing as mp
import pickle
import queue
import traceback
from typing import Any

from receiver._errors import InvalidRequest, ReceiverError, RequestTooLarge, WorkerUnavailable
from receiver._model import JSONAttributes, SpanEvent, SpanLink
from receiver._otlp import AttributeFilter, Extracted, SpanValidator, decode_wire, extract

log = logging.getLogger("tenantledger.receiver")

_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "service_name", "scope_name",
    "scope_version", "attributes", "resource_attributes", "events", "links", "status_code", "resource_dicts",
)
# Errors a worker may report, re-raised as themselves in the receiving process (others are internal trouble).
_KNOWN_ERRORS: dict[str, type[ReceiverError]] = {"InvalidRequest": InvalidRequest, "RequestTooLarge": RequestTooLarge}


def extract_body(body: bytes, filt: AttributeFilter, validate: SpanValidator | None, max_spans: int) -> Extracted:
    """The in-process path, and what a worker runs: protobuf bytes -> staged-span columns."""
    return extract(decode_wire(body), filt, validate, max_spans)


def _encode(ex: Extracted, attribute_dicts: bool) -> tuple[bytes, bytes]:
    """(kind, payload): the payload goes as its own pipe message, so a megabyte of columns is not copied again
    to put a kind byte in front of it (each such copy was a fresh mmap and its page faults). Without
    ``attribute_dicts`` the spans' attributes travel only as their JSON text (see JSONAttributes)."""
    events = [tuple((e.name, e.time_unix_nano, e.attributes) for e in t) if t else () for t in ex.event_tuples]
    links = [tuple((x.trace_id, x.span_id, x.attributes) for x in t) if t else () for t in ex.link_tuples]
    payload = (
        tuple(getattr(ex, c) for c in _COLUMNS), ex.attribute_dicts if attribute_dicts else None, events, links,
        ex.rejected, ex.errors, ex.rejected_by_reason,
    )
    # marshal: builtins only and ~3x faster than pickle; shared objects (a resource's attribute dict, repeated on
    # each of its spans) are sent once. Pickle if some value is not a builtin.
    try:
        return b"M", marshal.dumps(payload)
    except ValueError:
        return b"P", pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(kind: bytes, data: bytes) -> Extracted:
    cols, dicts, events, links, rejected, errors, by_reason = (
        marshal.loads(data) if kind == b"M" else pickle.loads(data)
    )
    ex = Extracted()
    for name, values in zip(_COLUMNS, cols, strict=True):
        setattr(ex, name, values)
    ex.attribute_dicts = dicts if dicts is not None else list(map(JSONAttributes, ex.attributes))
    ex.event_tuples = [tuple(SpanEvent(*e) for e in t) if t else () for t in events]
    ex.link_tuples = [tuple(SpanLink(*x) for x in t) if t else () for t in links]
    ex.rejected, ex.errors, ex.rejected_by_reason = rejected, errors, by_reason
    return ex


def _worker_main(conn: Any, filt: AttributeFilter, validate: SpanValidator | None, max_spans: int,
                 attribute_dicts: bool, inherited: Any = None) -> None:
    """One body in, its columns (or its error) out, until the pipe closes or an empty message arrives.

    Wire: a request is one message, the body itself (never empty: the pool decodes an empty body in-process); the
    answer is two messages, a kind (M/P: marshalled/pickled columns, E: a receiver error, X: internal trouble) and
    its payload."""
    import gc

    if inherited is not None:
        inherited.close()  # a forked worker's copy of the parent's end: see processors._workers
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    while True:
        try:
            body = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not body:
            return
        try:
            kind, out = _encode(extract_body(body, filt, validate, max_spans), attribute_dicts)
        except ReceiverError as e:
            kind, out = b"E", pickle.dumps((type(e).__name__, e.message))
        except Exception:
            kind, out = b"X", pickle.dumps(traceback.format_exc(limit=5))
        del body
        conn.send_bytes(kind)
        conn.send_bytes(out)


class _Worker:
    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc, self.conn = proc, conn


class DecodePool:
    """``workers`` processes decoding protobuf bodies; 0 decodes in the calling thread.

    Threading: ``extract`` may be called from any number of receiver threads; each call holds one worker for
    the time of one request (callers beyond the number of workers wait, GIL released). A worker that dies is
    replaced, and the request it held is refused retryably (nothing was committed, so nothing is lost).
    """

    def __init__(self, filt: AttributeFilter, validate: SpanValidator | None, max_spans: int, workers: int, *,
                 attribute_dicts: bool = True) -> None:
        """``attribute_dicts=False``: spans decoded by a worker carry their attributes as JSONAttributes (for
        processors that read them in other processes), not as dicts."""
        self._args = (filt, validate, max_spans)
        self._dicts = attribute_dicts
        self._n = workers
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self.restarts = 0

    @property
    def workers(self) -> int:
        return self._n

    def _spawn(self, method: str) -> _Worker:
        ctx: Any = mp.get_context(method)
        parent, child = ctx.Pipe()
        extra = (parent,) if method == "fork" else ()
        proc = ctx.Process(target=_worker_main, args=(child, *self._args, self._dicts, *extra),
                           name="tenantledger-decode", daemon=True)
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        self._all.append(w)
        return w

    def start(self, *, fork: bool = False) -> None:
        """``fork=True`` only while the process has no other thread and no open database (see
        processors._workers.SettleWorker.start)."""
        for _ in range(self._n):
            self._idle.put(self._spawn("fork" if fork else "spawn"))

    def extract(self, body: bytes) -> Extracted:
        filt, validate, max_spans = self._args
        if self._n == 0 or not body:  # an empty body (a valid empty request) would read as the stop message
            return extract_body(body, filt, validate, max_spans)
        w = self._idle.get()
        try:
            w.conn.send_bytes(body)
            kind = w.conn.recv_bytes()
            data = w.conn.recv_bytes()
        except (EOFError, OSError) as e:
            self._replace(w)
            raise WorkerUnavailable(f"a decode worker died while decoding this request ({e!r}); retry") from e
        self._idle.put(w)
        if kind in (b"M", b"P"):
            return _decode(kind, data)
        if kind == b"E":
            name, message = pickle.loads(data)
            raise _KNOWN_ERRORS.get(name, InvalidRequest)(message)
        raise RuntimeError(f"decode worker failed: {pickle.loads(data)}")

    def _replace(self, dead: _Worker) -> None:
        self.restarts += 1
        log.warning("decode worker exited (code %s); restarting it", dead.proc.exitcode)
        dead.conn.close()
        dead.proc.join(5)
        self._all.remove(dead)
        self._idle.put(self._spawn("spawn"))  # threads exist by now: never fork here

    def close(self) -> None:
        for w in list(self._all):
            try:
                w.conn.send_bytes(b"")
            except OSError:
                pass
            w.conn.close()
        for w in list(self._all):
            w.proc.join(10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
        self._all.clear()


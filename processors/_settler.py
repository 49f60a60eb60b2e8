"""The settle loop: hold each trace until no span arrived for wait_duration_s, attribute and price it, hand the
settlement to the ledger; re-settle a trace when a late span arrives; resume from the spool after a restart.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from processors._attribution import LinkedContext, TraceResult, TraceSummary
from processors._columns import records_table
from processors._pricing import Pricer
from processors._workers import Locate, SettleWorker, settle_traces
from processors.config import ProcessorsConfig
from receiver import StagedSpan

log = logging.getLogger("tenantledger.processors")


@dataclass(frozen=True)
class Settlement:
    """Everything the ledger must commit atomically: the full, current result of each settled trace (it
    replaces that trace's earlier result) and the spool sequence up to which every span is settled."""

    results: tuple[TraceResult, ...]
    watermark: int
    records: pa.Table | None = None
    """All the results' usage records as one table (processors._columns.SCHEMA); None: built from
    ``results`` on demand. A settle worker sends only this (its results carry no record objects)."""

    replaced: frozenset[str] | None = None
    """Traces of this settlement that were settled before (their earlier rows are replaced); None: unknown,
    any may have been."""

    def table(self) -> pa.Table:
        if self.records is not None:
            return self.records
        return records_table([rec for r in self.results for rec in r.records])


class SpanSource(Protocol):
    def read_after(self, seq: int, limit: int = 100_000) -> list[StagedSpan]: ...
    def read_traces(
        self, trace_ids: Sequence[str], seq_from: int | None = None, seq_to: int | None = None
    ) -> list[StagedSpan]: ...


class SettlementSink(Protocol):
    """Where settlements go (the ledger). Threading: ``write`` is called from one thread at a time, the settler's
    ledger writer; the other methods from the settler's own thread, while a write may be running. They must answer
    from what the writes before the running one committed (the settler never asks about the traces being written)."""

    def write(self, settlement: Settlement) -> None: ...
    def watermark(self) -> int: ...
    def known_traces(
        self, trace_ids: Sequence[str], started_ns: Mapping[str, int] | None = None
    ) -> Mapping[str, tuple[int, int] | None]: ...
    def trace_contexts(self, trace_ids: Sequence[str]) -> dict[str, LinkedContext]: ...
    def dependents(self, trace_ids: Sequence[str]) -> set[str]: ...


# The spans of the most recently settled traces stay in memory as well: a trace split across two export requests
# is re-settled moments later, and reading it back from the spool each tick cost ~4 % of the one-core throughput
# (bench/README.md, 2026-11-30 19:45). ~10 000 spans, ~30 MiB.
HOT_TRACES = 1_000
# Batches sent and not yet written, per worker: collected out of order (_collect_any), a batch done before an older
# one waits for it; this bounds how many results (~10 MB each at max_batch_spans) wait so behind a slow one. The
# default in-memory bound leaves room for them (_in_memory_bound).
MAX_INFLIGHT_PER_WORKER = 2
# processors.max_pending_spans_in_memory unset, and no settle workers.
MIN_IN_MEMORY_SPANS = 32_768
# processors.max_pending_spans_in_memory unset: on top of _in_memory_bound, room for the spans that wait out the settle
# window at the rate they arrive and are settled, up to this many. Those are the pipeline's contents, not a backlog:
# without the room, a one-core server at ~13 000 spans/s held ~20 000-30 000 of them against a bound of 32 768, a
# short stall tipped it into spilling, and while it spilled every arriving span was read back from the spool (~10 us
# a span more), which held it behind (bench/README.md, 2026-12-04 15:15). During a spill this room is now that of the
# spans still arriving, held while they fit (Settler.on_spans), and the base that of the backlog read back.
MAX_WINDOW_SPANS = 65_536
RATE_SMOOTHING_S = 2.0
"""How quickly the rates behind that room follow the load (exponential averages over about this long)."""


def _in_memory_bound(config: ProcessorsConfig, settle_workers: int) -> int:
    """processors.max_pending_spans_in_memory, or the base of its default: room for two batches being read back and
    prepared, plus each worker's batches in flight (spans stay pending until their batch is written)."""
    if config.max_pending_spans_in_memory is not None:
        return config.max_pending_spans_in_memory
    return max(MIN_IN_MEMORY_SPANS, config.max_batch_spans * (2 + MAX_INFLIGHT_PER_WORKER * settle_workers))


@dataclass(slots=True)
class _Settled:
    """What is remembered of a settled trace: where its spans are in the spool, and its summary (link contexts)."""

    min_seq: int
    max_seq: int
    spans: int
    summary: TraceSummary


@dataclass
class _Pending:
    spans: dict[str, StagedSpan] = field(default_factory=dict)
    last_arrival: float = 0.0
    min_seq: int = 0
    read_back: int = 0  # how many of ``spans`` were read back from the spool (Settler._backlog_spans)


@dataclass
class _Job:
    """One batch between preparation and its ledger write."""

    t0: float
    trace_ids: list[str]
    spans_by_trace: dict[str, dict[str, StagedSpan]]
    in_batch: set[str]
    replaced: frozenset[str]
    order: list[str]
    batch: dict[str, list[StagedSpan]]
    contexts: dict[str, LinkedContext]
    results: list[TraceResult] = field(default_factory=list)
    table: pa.Table | None = None
    worker: SettleWorker | None = None  # computing it, until collected
    collected: bool = False  # its results are in (a batch may be collected before older ones: _collect_any)


class _NotWritten(Exception):
    """A write queued behind one that failed, dropped without being made."""


@dataclass
class SettlerStats:
    spans_in: int = 0
    traces_settled: int = 0
    resettled: int = 0
    evicted_early: int = 0
    write_errors: int = 0
    last_settle_lag_s: float = 0.0
    last_write_s: float = 0.0
    spans_spilled: int = 0


class Settler:
    """Threading: ``on_spans`` is called from receiver threads (it only enqueues); everything else runs on the
    settler's own thread, or on the caller's thread via ``run_once``/``flush`` when the thread is not running, except
    ``SettlementSink.write``, which runs on a ledger writer thread (the settler goes on with at most one write in
    progress behind it, and none is left when ``run_once`` returns)."""

    def __init__(
        self,
        config: ProcessorsConfig,
        source: SpanSource,
        sink: SettlementSink,
        pricer: Pricer,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_pressure: Callable[[str | None], None] | None = None,
        workers: Sequence[SettleWorker] = (),
        locate: Locate | None = None,
    ) -> None:
        """``workers``: attribute and price in those processes instead of this one (see processors._workers), one
        batch in flight on each. ``locate``: where the source keeps spans in files (receiver.Spool.locate); the
        workers then read a batch's spans from there, sent only their sequence numbers."""
        self._cfg = config
        self._source = source
        self._sink = sink
        self._pricer = pricer
        self._clock = clock
        self._on_pressure = on_pressure
        self._inbox: deque[list[StagedSpan]] = deque()
        self._inbox_spans = 0
        self._inbox_lock = threading.Lock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._pending_spans = 0
        self._max_seen_seq = 0
        self._resettle: set[str] = set()
        self._cache: OrderedDict[str, _Settled] = OrderedDict()
        self._hot: OrderedDict[str, dict[str, StagedSpan]] = OrderedDict()  # spans of the newest cached traces
        self._unwritten: dict[str, TraceSummary] = {}  # computed, not yet written (pipelined settle)
        # Sent to a worker, oldest first; each computing, or collected before an older one (_collect_any).
        self._inflight: deque[_Job] = deque()
        self._collected: deque[_Job] = deque()  # collected, not written yet (older than every job in flight)
        # Handed to the ledger writer thread, oldest first; finished (_reap) once written. Empty between ticks.
        self._writing: deque[tuple[_Job, Future[float]]] = deque()
        self._writer: ThreadPoolExecutor | None = None
        self._write_failed = threading.Event()
        self._spill_at = self._base_bound = _in_memory_bound(config, len(workers))
        # Unset bound: it follows the rate spans arrive and are settled at (_follow_rate); these measure it.
        # _published counts the spans published to on_spans (held or spilled), _settled those whose write committed.
        self._adaptive = config.max_pending_spans_in_memory is None
        self._published = 0
        self._settled = 0
        self._rates = (0.0, 0.0)  # arriving, settled: spans a second
        # Of the bound, the room for spans arriving during a spill (see on_spans, _read_room): the spans that arrive in
        # the settle window at the rate they arrive now, within the room the bound has above its base.
        self._live_room = 0
        self._rate_at: tuple[float, int, int] | None = None
        # Spilling: the ranges of sequence numbers [first, last] left in the spool only, oldest first (the first's
        # ``first`` moves up as it is read back), and how many spans they hold. While there are any, _live_room of the
        # bound is for spans arriving (on_spans), the rest for spans read back (_backlog_spans of them pending).
        self._spilled: deque[list[int]] = deque()
        self._spilled_spans = 0
        self._backlog_spans = 0
        self._read_found = True  # whether the last read-back found spans (else the loop waits before the next)
        # While spilling: when each spilled batch arrived (its last sequence number, clock time), so that spans read
        # back wait out wait_duration_s from their arrival, not from their read-back (they may have waited longer).
        self._spill_times: deque[tuple[int, float]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # one settle at a time (thread vs flush)
        self._pressure = False
        self._shed = threading.Event()
        self.stats = SettlerStats()
        self._workers = list(workers)
        self._locate = locate

    # --- input --------------------------------------------------------------------------------------

    def on_spans(self, spans: list[StagedSpan]) -> None:
        """Spans just committed to the spool, in sequence order (the spool publishes in commit order)."""
        if not spans:
            return
        n = len(spans)
        with self._inbox_lock:
            self._published += n
            held = self._pending_spans + self._inbox_spans + n
            if self._spilled:
                # A backlog waits in the spool: these may still be held if they fit in the room kept for spans
                # arriving (_live_room: they wait out their window there; the read-back takes the rest), so that
                # only the backlog is read back (~10 us a span more; bench/README.md, 2026-12-04 18:10).
                keep = held <= self._spill_at and held - self._backlog_spans <= self._live_room
            else:
                keep = held <= self._spill_at
            if keep:
                self._inbox.append(spans)
                self._inbox_spans += n
            else:
                # Bounded memory: left in the spool, read back in order (_read_back).
                first, last = spans[0].seq, spans[-1].seq
                if self._spilled and self._spilled[-1][1] == first - 1:
                    self._spilled[-1][1] = last
                else:
                    self._spilled.append([first, last])
                self._spilled_spans += n
                self._spill_times.append((last, self._clock()))
                self.stats.spans_spilled += n
        self._check_pressure()

    @property
    def _spilling(self) -> bool:
        """Whether spans are left in the spool only, to be read back."""
        return bool(self._spilled)

    @property
    def in_memory_bound(self) -> int:
        """How many pending spans may be held in memory now (processors.max_pending_spans_in_memory, or its
        default, which follows the rate spans arrive and settle at: _follow_rate)."""
        return self._spill_at

    def _follow_rate(self, now: float) -> None:
        """processors.max_pending_spans_in_memory unset: the bound is its base plus the spans that wait out the
        settle window (wait_duration_s, then settle_max_delay_s while a batch fills, and a tick each side) at the rate
        spans arrive, or are settled if that is lower (each averaged over ~RATE_SMOOTHING_S), at most MAX_WINDOW_SPANS
        more. The lower of the two: in a burst, spans arriving faster than the settler settles them are a backlog,
        which waits in the spool (one-core bursts, 5 interleaved pairs: 5 % slower with the arrival rate alone;
        bench/README.md, 2026-12-04 15:15)."""
        if not self._adaptive:
            return
        published, settled = self._published, self._settled
        if self._rate_at is None:
            self._rate_at = (now, published, settled)
            return
        since, published_before, settled_before = self._rate_at
        dt = now - since
        if dt <= 0:
            return
        weight = min(1.0, dt / RATE_SMOOTHING_S)
        arriving, settling = self._rates
        arriving += ((published - published_before) / dt - arriving) * weight
        settling += ((settled - settled_before) / dt - settling) * weight
        self._rates = (arriving, settling)
        self._rate_at = (now, published, settled)
        cfg = self._cfg
        window_s = cfg.wait_duration_s + cfg.settle_max_delay_s + 2 * cfg.settle_interval_s
        self._spill_at = self._base_bound + min(MAX_WINDOW_SPANS, int(min(arriving, settling) * window_s))
        self._live_room = min(self._spill_at - self._base_bound, int(arriving * window_s))

    @property
    def pending_spans(self) -> int:
        """Spans committed and not settled yet: in memory, plus those left in the spool."""
        return self._pending_spans + self._inbox_spans + self._spilled_spans

    def _read_back(self) -> None:
        """While spilling: read the spans left in the spool, oldest range first, as far as memory allows (under the
        inbox lock only to take and give back a range, so that no span published meanwhile falls between the two
        paths)."""
        room = self._read_room()
        if room == 0:
            return
        found = False
        while room > 0:
            with self._inbox_lock:
                if not self._spilled:
                    break
                first, last = self._spilled[0]
                times = list(self._spill_times)
            # A range's numbers are consecutive, and every one was committed before it was published.
            spans = self._source.read_after(first - 1, min(room, last - first + 1))
            if not spans:
                break
            found = True
            start = 0
            for batch_last, arrived in times:  # each batch as of its arrival
                end = bisect.bisect_right(spans, batch_last, lo=start, key=_seq)
                if end > start:
                    self._admit(spans[start:end], arrived, read_back=True)
                start = end
            if start < len(spans):
                self._admit(spans[start:], self._clock(), read_back=True)
            upto = spans[-1].seq
            room -= len(spans)
            with self._inbox_lock:
                head = self._spilled[0]
                self._spilled_spans -= upto - head[0] + 1
                if upto >= head[1]:
                    self._spilled.popleft()
                else:
                    head[0] = upto + 1
                while self._spill_times and self._spill_times[0][0] <= upto:
                    self._spill_times.popleft()
        self._read_found = found

    @property
    def pending_traces(self) -> int:
        return len(self._pending)

    def _check_pressure(self) -> None:
        over = self.pending_spans > self._cfg.max_pending_spans
        if over != self._pressure:
            self._pressure = over
            if self._on_pressure is not None:
                self._on_pressure(f"{self.pending_spans} spans waiting to settle" if over else None)

    def shed_cache(self) -> None:
        """Memory pressure: forget the settled-trace cache at the next tick (late spans then re-read the spool)."""
        self._shed.set()

    # --- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Re-read every span after the ledger's watermark from the spool (spans acknowledged but not yet
        settled when the process stopped). Returns how many spans were re-queued."""
        with self._lock:
            seq = self._sink.watermark()
            total = 0
            while True:
                spans = self._source.read_after(seq, 100_000)
                if not spans:
                    break
                self._admit(spans, self._clock())
                seq = spans[-1].seq
                total += len(spans)
                if self._pending_spans > min(self._spill_at, self._cfg.max_pending_spans // 2):
                    self._settle_in_batches(list(self._pending.keys()))
            return total

    def start(self) -> None:
        for w in self._workers:
            w.start()
        self._thread = threading.Thread(target=self._loop, name="settler", daemon=True)
        self._thread.start()

    def stop(self, *, settle: bool = True) -> None:
        """Stop the loop and settle everything still pending (shutdown: 'stop, then read the ledger'). With
        ``settle`` false (the ledger can no longer be written), only stop: every pending span is in the spool,
        after the ledger's watermark, and is settled at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if settle:
                self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
            for w in self._workers:
                w.close()

    def flush(self) -> None:
        with self._lock:
            rounds = 0
            while True:  # spans left in the spool are read back a chunk a round
                self.run_once(force=True)
                rounds += 1
                if self._spilling:
                    continue
                # Dependents re-settled by a flush may themselves have dependents: a few rounds at most.
                if rounds >= 5 or not (self._pending or self._resettle or self._inbox):
                    break

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._work_waiting():
                self._idle(self._cfg.settle_interval_s)
            try:
                self.run_once()
            except Exception:  # never die: the data is in the spool and will be retried next tick
                log.exception("settle tick failed; retrying")
                time.sleep(self._cfg.settle_interval_s)

    def _work_waiting(self) -> bool:
        """Whether the next tick has work at once: spans left in the spool that now fit in memory, after a read-back
        that found some. Between such ticks the loop does not wait (with ``_settle_here``, this took a one-core
        burst's backlog from ~1.5 % idle to none; bench/README.md, 2026-12-01 15:20)."""
        return self._spilling and self._read_found and self._read_room() > 0

    def _read_room(self) -> int:
        """How many spans the next read-back may take: the bound less the room kept for spans arriving meanwhile
        (``_live_room``: none once nothing arrives, as in a burst's tail) less the spans read back and still pending,
        within the bound; 0 until half of that share is free (read in large chunks: a trace whose spans straddle two
        chunks is settled early and again at the next) unless what is left in the spool fits. Half is enough: with one
        ``max_batch_spans`` batch per worker in flight, a base of 2 x that per worker frees exactly half."""
        share = self._spill_at - self._live_room
        room = min(share - self._backlog_spans, self._spill_at - self._pending_spans)
        return room if room >= min(share // 2, self._spilled_spans) and room > 0 else 0

    def _idle(self, timeout: float) -> None:
        """Until the next tick: ``timeout``, or less when a batch in flight has its results back (its worker would
        otherwise sit idle for the rest of the interval) or ``stop`` is called."""
        computing = self._computing()
        if computing:
            SettleWorker.wait_any(computing, timeout)
        else:
            self._wake.wait(timeout)
        self._wake.clear()

    def _computing(self) -> list[SettleWorker]:
        return [j.worker for j in self._inflight if j.worker is not None]

    # --- one tick -----------------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> int:
        """One tick. With settle workers, the tick's last batches are left computing in the workers and written by
        a later tick (so the workers compute while this thread waits, admits and writes); ``force`` (flush,
        stop) writes everything before returning."""
        with self._lock:
            if self._shed.is_set():
                self._shed.clear()
                self._cache.clear()
                self._hot.clear()
            now = self._clock()
            self._follow_rate(now)
            with self._inbox_lock:
                batches = list(self._inbox)
                self._inbox.clear()
                self._inbox_spans = 0
            for spans in batches:
                self._admit(spans, now)
            if self._spilling:
                self._read_back()
            busy = {tid for job in self._inflight for tid in job.trace_ids}
            wait = self._cfg.wait_duration_s
            due = [tid for tid, p in self._pending.items()
                   if (force or now - p.last_arrival >= wait) and tid not in busy]
            overflow = len(self._pending) - len(due) - len(busy) - self._cfg.max_traces
            if not force and batches and overflow <= 0 and not self._resettle and self._defer(due, now):
                n = 0
                if self._workers:  # batches a worker finished are still written now
                    self._collect_ready()
                    self._write_collected()
                    n = self._reap(0)
                self._check_pressure()
                return n
            if overflow > 0:
                # Bounded memory: settle the oldest early, as groupbytrace evicts; a late span re-settles.
                due_set = set(due)
                extra = [tid for tid in self._pending if tid not in due_set and tid not in busy][:overflow]
                self.stats.evicted_early += len(extra)
                due.extend(extra)
            # A trace in flight is settled again once its write committed (next tick).
            due.extend(tid for tid in self._resettle if tid not in self._pending and tid not in busy)
            self._resettle &= busy
            try:
                n = self._settle_in_batches(due, keep_in_flight=not force)
            except BaseException:
                self._requeue(due)
                raise
            self._check_pressure()
            return n

    def _defer(self, due: list[str], now: float) -> bool:
        """Whether to leave ``due`` for a later tick (spans arrived this tick, so more are coming): until it holds
        settle_batch_spans spans or its oldest trace has been due for settle_max_delay_s. A transaction's fixed
        cost (~10 ms) would otherwise be paid every tick: at 9 000 spans/s and a 0.1 s tick, ~10 % of a core."""
        deadline = now - self._cfg.wait_duration_s - self._cfg.settle_max_delay_s  # arrived by then: waited enough
        spans = 0
        for tid in due:
            p = self._pending[tid]
            spans += len(p.spans)
            if spans >= self._cfg.settle_batch_spans or p.last_arrival <= deadline:
                return False
        return bool(due)

    def _requeue(self, trace_ids: Iterable[str]) -> None:
        """After a failure: traces that are not pending (dependents, re-settles) are settled again next tick;
        pending ones stay pending anyway."""
        self._resettle.update(t for t in trace_ids if t not in self._pending)

    def _settle_in_batches(self, due: list[str], *, keep_in_flight: bool = False) -> int:
        """Settle ``due`` (oldest first) in transactions of at most ``max_batch_spans`` spans (a trace is never
        split). A link target settled in an earlier batch is found in the cache; one in a later batch makes the
        linking trace a dependent, settled again once its target is (as across ticks)."""
        limit = self._cfg.max_batch_spans
        batches: list[list[str]] = [[]]
        size = 0
        for tid in dict.fromkeys(due):
            p = self._pending.get(tid)
            cached = self._cache.get(tid)
            k = len(p.spans) if p is not None else (cached.spans if cached is not None else 1)
            if batches[-1] and size + k > limit:
                batches.append([])
                size = 0
            batches[-1].append(tid)
            size += k
        if not batches[-1]:
            batches.pop()
        if not self._workers:
            return self._settle_here(batches)
        return self._settle_pipelined(batches, keep_in_flight)

    def _settle_here(self, batches: list[list[str]]) -> int:
        """In this process: attribute and price each batch, and hand it to the ledger writer thread; the next batch is
        computed while it is written (DuckDB releases the GIL while it writes and syncs: the core is not left idle
        while the settler thread waits for a write). At most one write is left behind, none when this returns; a
        link into the batch being written resolves from its results (``_unwritten``)."""
        n = 0
        try:
            for trace_ids in batches:
                job = self._prepare(trace_ids)
                job.results = settle_traces(job.order, job.batch, job.contexts, self._cfg.identity, self._pricer)
                job.table = records_table([rec for r in job.results for rec in r.records])
                self._computed(job)
                self._hand_off(job)
                n += self._reap(1)
            return n + self._reap(0)
        except BaseException:
            self._drain_writes()
            raise

    def _settle_pipelined(self, batches: list[list[str]], keep_in_flight: bool) -> int:
        """Through the workers, one batch computing on each (ADR 0003). When every worker is busy, the batches of
        whichever worker finishes first are collected (``_collect_any``), the next batch is sent to the worker that
        frees, and only then are the collected ones older than every batch still computing handed to the ledger
        writer thread: the workers compute and the writer writes while this thread collects, prepares and sends
        (DuckDB releases the GIL while it writes). Batches are written in the order they were sent; at most
        ``MAX_INFLIGHT_PER_WORKER`` per worker are sent and not yet written. At most one write is left behind this
        thread as it goes on, and every write has committed when this returns. With ``keep_in_flight`` the last
        batches stay in the workers until a later tick.

        A link from a batch into one collected but not yet written resolves from its results (``_unwritten``); a
        link into one still computing first writes the batches up to it (``_write_linked``). A batch's traces stay
        pending until its write commits: the watermark never passes them, and any failure leaves them to be
        settled again."""
        n = 0
        linked: list[int] = []

        def before_links(targets: set[str]) -> None:
            linked.append(self._write_linked(targets))

        try:
            self._collect_ready()
            for trace_ids in batches:
                self._make_room()  # the collected batches are written after the next is sent
                job = self._prepare(trace_ids, before_links=before_links)
                busy = set(self._computing())
                job.worker = next(w for w in self._workers if w not in busy)
                job.worker.submit(job.order, job.batch, job.contexts, self._locate)
                self._inflight.append(job)
                self._write_collected()
                n += self._reap(1)
            self._write_collected()
            # Batches still computing are left to a later tick even when nothing new was sent: waiting for them here
            # held the read-back of spilled spans until every worker had finished, and the workers then idled
            # while it read and prepared (bench/README.md, 2026-12-04 12:40).
            if not keep_in_flight:
                while self._inflight:
                    self._hand_off(self._collect())
                    n += self._reap(1)
            n += self._reap(0)
        except BaseException:
            self._drain_writes()
            for job in self._collected:
                self._requeue(job.trace_ids)
            self._collected.clear()
            while self._inflight:  # keep every pipe in step; their batches are settled again
                lost = self._inflight.popleft()
                try:
                    if lost.worker is not None:
                        lost.worker.collect()
                except Exception:
                    pass
                self._requeue(lost.trace_ids)
            raise
        return n + sum(linked)

    def _write_collected(self) -> None:
        while self._collected:
            self._hand_off(self._collected.popleft())

    def _collect_ready(self) -> None:
        """Collect the batches whose results are already back (without waiting), freeing their workers."""
        for job in self._inflight:
            if job.worker is not None and job.worker.ready():
                self._collect_job(job)
        self._collect_prefix()

    def _collect_any(self) -> None:
        """Wait until a worker has its batch's results back, whichever was sent first, and collect every batch whose
        results are back. Batches are still written in the order they were sent (``_collected`` takes only the done
        prefix of ``_inflight``): collecting the oldest first left a worker that finished sooner idle, its results
        waiting in the pipe, until the oldest was done (bench/README.md, 2026-12-03 13:10)."""
        SettleWorker.wait_any(self._computing(), None)
        self._collect_ready()

    def _make_room(self) -> None:
        """Until a worker is free for the next batch and fewer than ``MAX_INFLIGHT_PER_WORKER`` batches per worker
        are sent and not yet written: collect whichever batches finish first, or the oldest when that bound is
        reached (the batches collected before it wait for it to be written)."""
        while True:
            self._collect_prefix()
            if len(self._inflight) >= MAX_INFLIGHT_PER_WORKER * len(self._workers):
                self._collect_job(self._inflight[0])  # computing: a collected oldest is in _collected by now
            elif len(self._computing()) >= len(self._workers):
                self._collect_any()
            else:
                return

    def _collect_prefix(self) -> None:
        while self._inflight and self._inflight[0].collected:
            self._collected.append(self._inflight.popleft())

    def _write_linked(self, targets: set[str]) -> int:
        """Before a batch's link targets are resolved: write the batches up to the last one computing a target."""
        last = max((i for i, job in enumerate(self._inflight) if not targets.isdisjoint(job.in_batch)), default=-1)
        if last < 0:
            return 0
        self._write_collected()
        for _ in range(last + 1):
            self._hand_off(self._collect())  # its results resolve the link (_unwritten) while it is written
        return self._reap(1)

    def _collect(self) -> _Job:
        """The oldest batch in flight with its results (waits for them)."""
        job = self._inflight[0]
        if not job.collected:
            self._collect_job(job)
        return self._inflight.popleft()

    def _collect_job(self, job: _Job) -> None:
        """``job``'s results from its worker (waits for them), which is then free for another batch."""
        try:
            assert job.worker is not None
            job.results, job.table = job.worker.collect()
        except BaseException:
            self._inflight.remove(job)
            self._requeue(job.trace_ids)
            raise
        job.worker, job.collected = None, True
        self._computed(job)

    def _computed(self, job: _Job) -> None:
        """A batch's results are in: links into its traces resolve from them (``_unwritten``) until it is written."""
        for r in job.results:
            self._unwritten[r.summary.trace_id] = r.summary

    def _drain_writes(self) -> None:
        """After a failure in a settle: the writes already handed over are waited for (those that committed are
        finished, the rest dropped, their traces settled again) and no computed result is kept for links."""
        try:
            self._reap(0)
        except Exception:
            log.exception("ledger write failed")
        self._unwritten.clear()

    def _admit(self, spans: Iterable[StagedSpan], now: float, *, read_back: bool = False) -> None:
        for s in spans:
            self.stats.spans_in += 1
            if s.seq > self._max_seen_seq:
                self._max_seen_seq = s.seq
            p = self._pending.get(s.trace_id)
            if p is None:
                p = self._pending[s.trace_id] = _Pending(min_seq=s.seq)
            if s.span_id not in p.spans:
                p.spans[s.span_id] = s
                self._pending_spans += 1
                if read_back:
                    p.read_back += 1
                    self._backlog_spans += 1
            elif s.seq < p.spans[s.span_id].seq:
                p.spans[s.span_id] = s
            if now > p.last_arrival:  # spans read back are admitted as of their arrival, which may be earlier
                p.last_arrival = now
            p.min_seq = min(p.min_seq, s.seq)

    def _prepare(self, trace_ids: list[str], before_links: Callable[[set[str]], object] | None = None) -> _Job:
        """Everything a batch needs before attribution: its pending spans merged with what was settled of the same
        traces before (cache, else the spool), and the contexts of link targets outside the batch.
        ``before_links(targets)`` runs before those contexts are looked up."""
        t0 = self._clock()
        trace_ids = list(dict.fromkeys(trace_ids))
        spans_by_trace: dict[str, dict[str, StagedSpan]] = {}
        for tid in trace_ids:
            p = self._pending.get(tid)
            spans_by_trace[tid] = dict(p.spans) if p else {}
        # A trace settled before (late span, restart, or a dependent): merge with what was settled.
        cached = {tid for tid in trace_ids if tid in self._cache}
        missing = [tid for tid in trace_ids if tid not in cached]
        known: Mapping[str, tuple[int, int] | None] = {}
        if missing:
            # When each trace's spans started lets the ledger skip the lookup of new traces (ledger.TRACE_WINDOW).
            started = {tid: min(s.start_time_unix_nano for s in spans_by_trace[tid].values())
                       for tid in missing if spans_by_trace[tid]}
            known = self._sink.known_traces(missing, started)
        settled: list[StagedSpan] = []
        self.stats.resettled += len(cached)
        for tid in cached & self._hot.keys():
            settled.extend(self._hot[tid].values())
        cold = cached - self._hot.keys()
        if cold:
            # Read back from the spool, within the sequence numbers the cached traces' spans had: only the frames
            # of that range are read, so this costs a few milliseconds, not a scan of the spool.
            entries = [self._cache[tid] for tid in cold]
            lo, hi = min(e.min_seq for e in entries), max(e.max_seq for e in entries)
            settled += self._source.read_traces(sorted(cold), lo, hi)
        if known:
            # The same for traces settled before this process started, with the numbers the ledger kept (a
            # ledger file from before they were kept: the whole spool).
            self.stats.resettled += len(known)
            ranges = list(known.values())
            if all(r is not None for r in ranges):
                lo, hi = min(r[0] for r in ranges if r), max(r[1] for r in ranges if r)
                settled += self._source.read_traces(sorted(known), lo, hi)
            else:
                settled += self._source.read_traces(sorted(known))
        for s in settled:  # a span reported twice: the first report wins, as when it was settled
            cur = spans_by_trace[s.trace_id].get(s.span_id)
            if cur is None or s.seq < cur.seq:
                spans_by_trace[s.trace_id][s.span_id] = s
        trace_ids = [tid for tid in trace_ids if spans_by_trace[tid]]

        # Link targets: settle targets first within the batch; otherwise ask the batch computed but not yet
        # written (pipelined settle), the cache, then the ledger (as before a restart).
        in_batch = set(trace_ids)
        targets = {ln.trace_id for tid in trace_ids for s in spans_by_trace[tid].values() for ln in s.links}
        if targets and before_links is not None:
            before_links(targets - in_batch)
        local = {t for t in targets if t not in in_batch and (t in self._cache or t in self._unwritten)}
        outside = sorted(t for t in targets if t not in in_batch and t not in local)
        contexts = self._sink.trace_contexts(outside) if outside else {}
        for t in local:
            summ = self._unwritten[t] if t in self._unwritten else self._cache[t].summary
            contexts[t] = LinkedContext(summ.trace_id, summ.request_id, summ.tenant_id, summ.user_id)
        order = _link_order(trace_ids, spans_by_trace)
        batch = {tid: list(spans_by_trace[tid].values()) for tid in order}
        replaced = frozenset(tid for tid in trace_ids if tid in cached or tid in known)
        return _Job(t0, trace_ids, spans_by_trace, in_batch, replaced, order, batch, contexts)

    def _hand_off(self, job: _Job) -> None:
        """Queue a computed batch's ledger write on the writer thread, behind the writes queued before it. Its
        traces stay pending, and busy, until ``_reap`` finishes it."""
        settlement = Settlement(tuple(job.results), self._watermark(job), job.table, job.replaced)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self._writing.append((job, self._writer.submit(self._write, settlement)))

    def _write(self, settlement: Settlement) -> float:
        """On the writer thread: one ledger transaction; its duration. After a failed write, the writes queued
        behind it are not made: their watermarks count on it."""
        if self._write_failed.is_set():
            raise _NotWritten("an earlier ledger write failed")
        t0 = self._clock()
        try:
            self._sink.write(settlement)
        except BaseException:
            self._write_failed.set()
            raise
        return self._clock() - t0

    def _watermark(self, job: _Job) -> int:
        """The spool sequence number up to which every span is settled once ``job`` and the writes queued before it
        have committed: below every pending span none of them settles (later batches, and spans that arrived for
        their traces after they were prepared: the batch was in a worker or being written), and below the spans
        still left in the spool."""
        done = {tid: j.spans_by_trace[tid] for j, _ in self._writing for tid in j.trace_ids}
        done.update((tid, job.spans_by_trace[tid]) for tid in job.trace_ids)
        low: list[int] = []
        for tid, p in self._pending.items():
            settles = done.get(tid)
            if settles is None:
                low.append(p.min_seq)
            elif not p.spans.keys() <= settles.keys():  # usually all are: the key views compare in C
                low.extend(s.seq for sid, s in p.spans.items() if sid not in settles)
        mark = min(low, default=self._max_seen_seq + 1) - 1
        with self._inbox_lock:
            if self._spilled:  # spans arriving during a spill are held (on_spans): none settles the backlog's
                mark = min(mark, self._spilled[0][0] - 1)
        return mark

    def _reap(self, limit: int) -> int:
        """Finish the queued writes that are done, oldest first, waiting for the oldest while more than ``limit``
        are queued; returns how many traces they settled. A failed write is raised here, after every write queued
        behind it was waited for and dropped (not made: ``_write``); their traces are settled again later, and
        nothing of them changed here."""
        n = 0
        while self._writing and (len(self._writing) > limit or self._writing[0][1].done()):
            job, fut = self._writing.popleft()
            try:
                write_s = fut.result()
            except BaseException as e:
                if not isinstance(e, _NotWritten):
                    self.stats.write_errors += 1
                self._abandon(job)
                while self._writing:
                    later, f = self._writing.popleft()
                    f.exception()  # waits
                    self._abandon(later)
                self._write_failed.clear()
                raise
            n += self._finish(job, write_s)
        return n

    def _abandon(self, job: _Job) -> None:
        for r in job.results:
            self._unwritten.pop(r.summary.trace_id, None)
        self._requeue(job.trace_ids)

    def _finish(self, job: _Job, write_s: float) -> int:
        """After a batch's write committed: drop its spans from the pending ones. Spans that arrived for a trace
        after its batch was prepared stay pending: they re-settle the trace next."""
        trace_ids, spans_by_trace, results = job.trace_ids, job.spans_by_trace, job.results
        for tid in trace_ids:
            p = self._pending.get(tid)
            if p is None:
                continue
            done = spans_by_trace[tid]
            if p.spans.keys() <= done.keys():
                settled = len(p.spans)
                del self._pending[tid]
                self._backlog_spans -= p.read_back
            else:
                rest = {sid: s for sid, s in p.spans.items() if sid not in done}
                settled = len(p.spans) - len(rest)
                p.spans = rest
                p.min_seq = min(s.seq for s in rest.values())
                if p.read_back > len(rest):  # which ones were read back is not kept: at most all that are left
                    self._backlog_spans -= p.read_back - len(rest)
                    p.read_back = len(rest)
            self._pending_spans -= settled
            self._settled += settled
        self.stats.last_write_s = write_s
        self.stats.last_settle_lag_s = self._clock() - job.t0
        self.stats.traces_settled += len(results)
        for r in results:
            self._unwritten.pop(r.summary.trace_id, None)
            self._remember(r.summary.trace_id, spans_by_trace[r.summary.trace_id], r.summary)
        # Traces whose links pointed at these and could not be resolved before: settle them again.
        try:
            self._resettle |= self._sink.dependents(trace_ids) - job.in_batch
        except Exception:
            log.exception("could not look up dependent traces")
        return len(results)

    def _remember(self, tid: str, spans: dict[str, StagedSpan], summary: TraceSummary) -> None:
        if self._cfg.settled_cache_traces == 0:
            return
        # Not the spans themselves: 20 000 cached traces of ~10 spans with their attribute dicts held ~600 MiB
        # (bench/README.md, 2026-11-25); a sequence range and a summary are ~200 bytes.
        seqs = [s.seq for s in spans.values()]
        self._cache[tid] = _Settled(min(seqs), max(seqs), len(seqs), summary)
        self._cache.move_to_end(tid)
        while len(self._cache) > self._cfg.settled_cache_traces:
            self._hot.pop(self._cache.popitem(last=False)[0], None)
        self._hot[tid] = spans
        self._hot.move_to_end(tid)
        while len(self._hot) > min(HOT_TRACES, self._cfg.settled_cache_traces):
            self._hot.popitem(last=False)


def _seq(s: StagedSpan) -> int:
    return s.seq


def _link_order(trace_ids: list[str], spans: dict[str, dict[str, StagedSpan]]) -> list[str]:
    """Targets of links before the traces linking to them (depth-first; cycles broken by trace id order)."""
    ids = set(trace_ids)
    deps = {
        tid: sorted(
            {ln.trace_id for s in spans[tid].values() for ln in s.links if ln.trace_id in ids and ln.trace_id != tid}
        )
        for tid in trace_ids
    }
    out: list[str] = []
    state: dict[str, int] = {}
    for root in sorted(trace_ids):
        stack = [(root, 0)]
        while stack:
            tid, i = stack.pop()
            if i == 0:
                if state.get(tid):
                    continue
                state[tid] = 1
            if i < len(deps[tid]):
                stack.append((tid, i + 1))
                nxt = deps[tid][i]
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[tid] = 2
                out.append(tid)
    return out

"""The durable spool: staged spans appended to segment files of Arrow IPC frames and synced to disk before Export is
acknowledged, then published in commit order to the processors; read back after a restart, and by settle workers
from its files (docs/adr/0004).
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from receiver._errors import StorageUnavailable
from receiver._model import JSONAttributes, SpanEvent, SpanLink, StagedSpan
from receiver._otlp import Extracted

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.int8()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("service_name", pa.string()),
        ("scope_name", pa.string()),
        ("scope_version", pa.string()),
        ("attributes", pa.string()),
        ("resource_attributes", pa.string()),
        ("events", pa.string()),
        ("links", pa.string()),
        ("export_baggage", pa.string()),
        ("status_code", pa.int8()),
    ]
)
"""The spool's columns: what ``read_trace_rows`` returns (attributes, events and links as JSON text)."""
_COLUMNS_SCHEMA = SCHEMA.remove(0)  # all but seq

SEGMENT_BYTES = 64 << 20
"""A new segment file is started once the current one reaches this size."""

# A frame = header + one Arrow IPC stream (schema, the group commit's record batches, end marker). The header's
# length and CRC-32 find a torn or never-synced tail after a crash: everything from the first bad frame on was never
# acknowledged (the ack waits for the sync), so it is cut off at start.
_HEADER = struct.Struct("<4sQIII")  # magic, first seq, span count, stream length, CRC-32 of the stream
_MAGIC = b"TLS1"
_SUFFIX = ".arrows"
_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
# Buffers compressed with LZ4 (frame): 108 bytes a span instead of 768 for 0.6 us a span to write; zstd made 59 bytes
# but took 1.9 us, 2-3 % of what a span costs on one core (bench/README.md, 2026-12-01 21:00). A reader takes either:
# the codec is recorded per buffer (Arrow IPC format, "Compression"), so segments written before still read.
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")

SpanListener = Callable[[list[StagedSpan]], None]

FrameRef = tuple[str, int, int, int, int]
"""Where a frame is, for a reader in another process (``read_spans_at``): segment file path, offset and length of
its IPC stream, its first sequence number and its span count."""


@dataclass(eq=False)
class _Ticket:
    """One request's spans waiting to be committed by whichever appending thread commits next."""

    ex: Extracted
    baggage: str | None
    table: pa.Table
    done: bool = False
    error: OSError | None = None


@dataclass(eq=False, slots=True)
class _Segment:
    path: Path
    first: int
    size: int = 0
    frames: int = 0


@dataclass(frozen=True, slots=True)
class _Frame:
    first: int  # sequence number of its first span; the rest are consecutive
    count: int
    segment: _Segment
    offset: int  # of the IPC stream in the segment file
    length: int

    @property
    def last(self) -> int:
        return self.first + self.count - 1


@dataclass
class SpoolStats:
    segments: int = 0
    bytes: int = 0
    truncated_bytes: int = 0
    """Cut off at start: a tail never acknowledged (torn by a crash, or left by a failed write)."""
    write_errors: int = 0


class Spool:
    """Append-only durable staging in segment files under one directory, with group commit.

    Threading: ``append`` may be called from any number of receiver threads. Each call queues its spans; the
    thread that next holds the commit lock writes everything queued, in queue order, as one frame and one sync: a
    sync costs the same for one request or ten (bench/README.md). Sequence numbers are committed and published in
    order (a reader that has seen seq N has seen all < N). Listeners run on the committing thread, after the sync,
    and must not block. The read methods may be called from any thread.
    """

    def __init__(self, directory: Path | str, *, segment_bytes: int = SEGMENT_BYTES,
                 attribute_text: bool = False) -> None:
        """``attribute_text``: spans read back carry their attributes as JSONAttributes (unparsed), for processors
        that parse them in other processes."""
        self.directory = Path(directory)
        self._attribute_text = attribute_text
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True)
            _sync_dir(self.directory.parent)  # the directory's own entry, before any ack depends on it
        self._segment_bytes = segment_bytes
        self.stats = SpoolStats()
        self._frames: list[_Frame] = []
        self._firsts: list[int] = []  # of _frames, for bisect
        self._segments: list[_Segment] = []
        self._index_lock = threading.Lock()  # _frames, _firsts, _segments: appended by the writer, read by readers
        self._next_seq = 1
        paths = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
        for i, path in enumerate(paths):
            if not path.stem.isdigit():
                continue
            self._open_segment(path, last=i == len(paths) - 1)
        self._fd: int | None = None  # the segment being written; opened at the first append
        self._active: _Segment | None = None
        if self._segments and self._segments[-1].size < segment_bytes:
            self._active = self._segments[-1]
            self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND)
        self._lock = threading.Lock()  # held while committing
        self._queue: list[_Ticket] = []
        self._queue_lock = threading.Lock()
        self._listeners: list[SpanListener] = []

    def _open_segment(self, path: Path, *, last: bool) -> None:
        """Index a segment's frames; cut off its tail from the first frame that is incomplete or does not match its
        checksum. Every frame of the last segment is checked (a crash can interrupt only its write); of an earlier
        segment, its last frame (a failed write closes the segment it was written to)."""
        first = int(path.stem)
        seg = _Segment(path, first)
        size = path.stat().st_size
        good = 0
        frames: list[tuple[_Frame, int]] = []
        with open(path, "rb") as f:
            while good + _HEADER.size <= size:
                f.seek(good)
                magic, seq, count, length, crc = _HEADER.unpack(f.read(_HEADER.size))
                start = good + _HEADER.size
                if magic != _MAGIC or start + length > size or seq < self._next_seq or count == 0:
                    break
                if last and zlib.crc32(f.read(length)) != crc:
                    break
                frames.append((_Frame(seq, count, seg, start, length), crc))
                good = start + length
            if frames and not last:
                frame, crc = frames[-1]
                f.seek(frame.offset)
                if zlib.crc32(f.read(frame.length)) != crc:
                    frames.pop()
                    good = frame.offset - _HEADER.size
        for frame, _ in frames:
            self._add_frame(frame)
            self._next_seq = frame.first + frame.count
        if good < size:
            self.stats.truncated_bytes += size - good
            with open(path, "r+b") as f:
                f.truncate(good)
                _fsync(f.fileno())
        seg.size = good
        if not seg.frames and not last:
            path.unlink()  # created, then nothing written to it
            return
        self._segments.append(seg)
        self.stats.segments = len(self._segments)
        self.stats.bytes += good
        if seg.first > self._next_seq:  # an empty last segment named after the next number
            self._next_seq = seg.first

    def _add_frame(self, frame: _Frame) -> None:
        with self._index_lock:
            self._frames.append(frame)
            self._firsts.append(frame.first)
            frame.segment.frames += 1

    def subscribe(self, listener: SpanListener) -> None:
        self._listeners.append(listener)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def skip_to(self, seq: int) -> None:
        """Number the next span ``seq`` at least."""
        with self._lock:
            self._next_seq = max(self._next_seq, seq)

    def append(self, ex: Extracted, export_baggage: str | None = None) -> int:
        """Commit the spans, then publish them. Returns the number of spans committed.

        Raises StorageUnavailable (retryable) when the write or the sync fails: nothing was kept, nothing is acked.
        """
        n = len(ex)
        if n == 0:
            return 0
        ticket = _Ticket(ex, export_baggage, _columns(ex, export_baggage))  # built before queueing: in parallel
        with self._queue_lock:
            self._queue.append(ticket)
        with self._lock:
            if not ticket.done:  # else a thread that held the lock before us committed it (or failed to)
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit(group)
        if ticket.error is not None:
            raise StorageUnavailable(f"could not write spans to the spool: {ticket.error}") from ticket.error
        return n

    def _commit(self, group: list[_Ticket]) -> None:
        first = self._next_seq
        total = sum(t.table.num_rows for t in group)
        data = pa.concat_tables([t.table for t in group]) if len(group) > 1 else group[0].table
        table = data.add_column(0, "seq", pa.array(range(first, first + total), pa.int64()))
        try:
            self._write(table, first, total)
        except OSError as e:
            self.stats.write_errors += 1
            for t in group:  # nothing of the group was kept: each of its requests is refused, retryably
                t.error, t.done = e, True
            return
        self._next_seq = first + total
        seq = first
        for t in group:
            t.done = True
            if self._listeners:
                spans = _published(t.ex, seq, t.baggage)
                for listener in self._listeners:
                    listener(spans)
            seq += t.table.num_rows

    def _write(self, table: pa.Table, first: int, count: int) -> None:
        """Append one frame and sync it. On failure the segment is cut back to its last good frame; if even that
        fails, the segment is left (its bad tail is cut off at the next start) and the next commit starts a new
        one, past these sequence numbers: a reader never meets them, and the sender retries the spans anyway."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, SCHEMA, options=_WRITE_OPTIONS) as writer:
            writer.write_table(table)
        payload = sink.getvalue()
        header = _HEADER.pack(_MAGIC, first, count, payload.size, zlib.crc32(payload))
        seg = self._active
        if seg is None or self._fd is None or seg.size >= self._segment_bytes:
            seg = self._rotate(first)
        assert self._fd is not None
        fd = self._fd
        try:
            written = os.writev(fd, [header, payload])
            if written != len(header) + payload.size:
                raise OSError(f"short write to {seg.path}: {written} of {len(header) + payload.size} bytes")
            _fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, seg.size)
                _fsync(fd)
            except OSError:
                self._next_seq = first + count  # these numbers may be on disk, cut off at the next start
                self._close_active()
            raise
        self._add_frame(_Frame(first, count, seg, seg.size + len(header), payload.size))
        seg.size += len(header) + payload.size
        with self._index_lock:
            self.stats.bytes += len(header) + payload.size

    def _rotate(self, first: int) -> _Segment:
        """Close the segment being written and start one named after ``first``."""
        self._close_active()
        path = self.directory / f"{first:020d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _sync_dir(self.directory)  # the new file's entry must be durable before any ack depends on the file
        except OSError:
            os.close(fd)
            raise
        seg = _Segment(path, first)
        self._fd, self._active = fd, seg
        with self._index_lock:
            self._segments.append(seg)
            self.stats.segments = len(self._segments)
        return seg

    def _close_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._active = None, None

    def close(self) -> None:
        """Close the files (the spool is unusable afterwards)."""
        with self._lock:
            self._close_active()

    # --- read back (recovery, late spans, the shared ledger) --------------------------------------

    def _frames_between(self, lo: int, hi: int | None = None) -> list[_Frame]:
        """The frames that may hold numbers ``lo..hi`` (to the end when ``hi`` is None), oldest first."""
        with self._index_lock:
            i = max(0, bisect.bisect_right(self._firsts, lo) - 1)
            j = len(self._firsts) if hi is None else bisect.bisect_right(self._firsts, hi)
            return self._frames[i:j]

    def locate(self, seqs: Sequence[int]) -> list[FrameRef] | None:
        """The frames holding these sequence numbers (ascending), oldest first, for ``read_spans_at``; None if one of
        them is in no frame (never committed, or cut off at start). Cost: one bisect a frame, not a span."""
        out: list[FrameRef] = []
        i, n = 0, len(seqs)
        with self._index_lock:
            while i < n:
                k = bisect.bisect_right(self._firsts, seqs[i]) - 1
                if k < 0:
                    return None
                f = self._frames[k]
                last = f.first + f.count - 1
                if seqs[i] > last:
                    return None
                out.append((os.path.abspath(f.segment.path), f.offset, f.length, f.first, f.count))
                i = bisect.bisect_right(seqs, last, lo=i)
        return out

    @staticmethod
    def _load(frame: _Frame, src: pa.NativeFile) -> pa.Table:
        return pa.ipc.open_stream(src.read_at(frame.length, frame.offset)).read_all()

    def read_after(self, seq: int, limit: int = 100_000) -> list[StagedSpan]:
        """At most ``limit`` spans after sequence number ``seq``, in order; empty only when none is left."""
        return table_to_spans(self.read_rows_after(seq, limit), attribute_text=self._attribute_text)

    def read_rows_after(self, seq: int, limit: int = 100_000) -> pa.Table:
        frames = self._frames_between(seq + 1)
        parts: list[pa.Table] = []
        left = limit
        files = _Files(mapped=False)  # every column is used: read (copy) rather than map into this process
        try:
            for frame in frames:
                if left <= 0:
                    break
                if frame.last <= seq:
                    continue
                src = files.of(frame.segment)
                if src is None:
                    continue
                # Numbers within a frame are consecutive, so the part after ``seq`` is a slice.
                t = self._load(frame, src).slice(max(0, seq + 1 - frame.first), left)
                parts.append(t)
                left -= t.num_rows
        finally:
            files.close()
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table()

    def read_traces(
        self, trace_ids: Sequence[str], seq_from: int | None = None, seq_to: int | None = None
    ) -> list[StagedSpan]:
        """Every kept span of these traces, in sequence order; only those numbered ``seq_from..seq_to``
        (inclusive) when given, which reads only the frames of that range instead of every one."""
        return table_to_spans(self.read_trace_rows(trace_ids, seq_from, seq_to), attribute_text=self._attribute_text)

    def read_trace_rows(
        self, trace_ids: Sequence[str], seq_from: int | None = None, seq_to: int | None = None
    ) -> pa.Table:
        """``read_traces`` as a table of the spool's columns (``SCHEMA``)."""
        if not trace_ids:
            return SCHEMA.empty_table()
        lo = seq_from if seq_from is not None and seq_to is not None else None
        hi = seq_to if lo is not None else None
        frames = self._frames_between(lo, hi) if lo is not None else self._frames_between(0)
        want = pa.array(list(dict.fromkeys(trace_ids)), pa.string())
        parts: list[pa.Table] = []
        # Mapped, not read into a copy; the maps are closed at the end: mapped pages count in the RSS that the
        # memory guard watches.
        files = _Files(mapped=True)
        try:
            for frame in frames:
                if lo is not None and hi is not None and (frame.last < lo or frame.first > hi):
                    continue
                src = files.of(frame.segment)
                if src is None:
                    continue
                t = self._load(frame, src)
                mask = pc.is_in(t.column("trace_id"), value_set=want)
                if lo is not None and hi is not None:
                    seqs = t.column("seq")
                    mask = pc.and_(mask, pc.and_(pc.greater_equal(seqs, lo), pc.less_equal(seqs, hi)))
                if pc.any(mask).as_py():
                    parts.append(t.filter(mask))  # a copy: nothing refers to the map afterwards
                del t
        finally:
            files.close()
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table()

    def import_rows(self, rows: pa.Table) -> None:
        """Append rows that already carry their sequence numbers (above ``last_seq``, consecutive): moving the
        spans of an older ledger file's ``staging_spans`` table into the spool."""
        if rows.num_rows == 0:
            return
        rows = rows.select(SCHEMA.names).cast(SCHEMA)
        seqs = rows.column("seq").to_pylist()
        if seqs[0] <= self.last_seq:
            raise ValueError(f"rows start at seq {seqs[0]}, not after the spool's last ({self.last_seq})")
        start = 0
        with self._lock:
            for i in range(1, len(seqs) + 1):  # one frame per run of consecutive numbers
                if i == len(seqs) or seqs[i] != seqs[i - 1] + 1:
                    if seqs[i - 1] < seqs[start]:
                        raise ValueError("rows must be in sequence order")
                    self._write(rows.slice(start, i - start), seqs[start], i - start)
                    self._next_seq = seqs[i - 1] + 1
                    start = i


def read_spans_at(frames: Sequence[FrameRef], seqs: Sequence[int], *, attribute_text: bool = False) -> list[StagedSpan]:
    """The spans numbered ``seqs`` (ascending, no repeats), in that order, read from the spool's files at ``frames``
    (``Spool.locate``): a reader in another process (a settle worker) gets the spans themselves from the files
    instead of through a pipe. Each frame is read and decompressed once. Raises ValueError if a frame does not hold
    what it was said to, OSError if a file cannot be read."""
    parts: list[pa.Table] = []
    files: dict[str, pa.NativeFile] = {}
    i = 0
    try:
        for path, offset, length, first, count in frames:
            j = bisect.bisect_right(seqs, first + count - 1, lo=i)
            if j == i or seqs[i] < first:
                wanted = seqs[i] if i < len(seqs) else "none"
                raise ValueError(f"frame at {path}:{offset} does not hold the next sequence number ({wanted})")
            src = files.get(path)
            if src is None:
                src = files[path] = pa.OSFile(path)
            t = pa.ipc.open_stream(src.read_at(length, offset)).read_all()
            if t.num_rows != count:
                raise ValueError(f"frame at {path}:{offset} holds {t.num_rows} spans, not {count}")
            parts.append(t if j - i == count else t.take(pa.array([q - first for q in seqs[i:j]], pa.int32())))
            i = j
    finally:
        for f in files.values():
            f.close()
    if i != len(seqs):
        raise ValueError(f"sequence numbers from {seqs[i]} on are in none of the frames")
    spans = table_to_spans(pa.concat_tables(parts) if parts else SCHEMA.empty_table(), attribute_text=attribute_text)
    if [s.seq for s in spans] != list(seqs):
        raise ValueError("the frames read do not hold these sequence numbers")
    return spans


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Files:
    """The segment files one read opens, each once, closed together."""

    def __init__(self, *, mapped: bool) -> None:
        self._mapped = mapped
        self._open: dict[int, pa.NativeFile] = {}

    def of(self, seg: _Segment) -> pa.NativeFile | None:
        """The open file; None if it was deleted meanwhile."""
        f = self._open.get(id(seg))
        if f is None:
            try:
                f = pa.memory_map(str(seg.path)) if self._mapped else pa.OSFile(str(seg.path))
            except FileNotFoundError:
                return None
            self._open[id(seg)] = f
        return f

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def _columns(ex: Extracted, export_baggage: str | None) -> pa.Table:
    """The staged columns of one request, without ``seq`` (numbered when committed)."""
    n = len(ex)
    return pa.table(
        [
            pa.array(ex.trace_id, pa.string()),
            pa.array(ex.span_id, pa.string()),
            pa.array(ex.parent_span_id, pa.string()),
            pa.array(ex.name, pa.string()),
            pa.array(ex.kind, pa.int8()),
            pa.array(ex.start_ns, pa.int64()),
            pa.array(ex.end_ns, pa.int64()),
            pa.array(ex.service_name, pa.string()),
            pa.array(ex.scope_name, pa.string()),
            pa.array(ex.scope_version, pa.string()),
            pa.array(ex.attributes, pa.string()),
            pa.array(ex.resource_attributes, pa.string()),
            pa.array(ex.events, pa.string()),
            pa.array(ex.links, pa.string()),
            pa.array([export_baggage] * n, pa.string()),
            pa.array(ex.status_code, pa.int8()),
        ],
        schema=_COLUMNS_SCHEMA,
    )


def _published(ex: Extracted, first: int, export_baggage: str | None) -> list[StagedSpan]:
    """The committed spans as listeners receive them: the same values a read-back would give, built from the
    extracted objects (decoding our own JSON again cost more than extracting it). Positional, through ``map``:
    keyword arguments in a comprehension cost ~1.5 us more a span."""
    n = len(ex)
    return list(map(
        StagedSpan, range(first, first + n), ex.trace_id, ex.span_id, ex.parent_span_id, ex.name, ex.kind,
        ex.start_ns, ex.end_ns, ex.service_name, ex.scope_name, ex.scope_version, ex.attribute_dicts,
        ex.resource_dicts, ex.event_tuples, ex.link_tuples, [export_baggage] * n, ex.status_code,
    ))


def table_to_spans(table: pa.Table, *, attribute_text: bool = False) -> list[StagedSpan]:
    """Spans read back (a table of ``SCHEMA``), column by column: a backlog is read back a span at a time otherwise,
    and row dicts plus a JSON parse of every span's resource cost ~15 us a span (bench/README.md, 2026-12-01).
    ``attribute_text``: attributes as JSONAttributes, not parsed here.

    Equal strings share one object, as in spans received live (receiver._otlp.extract): a trace's id, a parent's
    span id, names, scopes, baggage and attribute values. Read back with a copy of each, a span held ~1 950 bytes
    while it waited to settle instead of ~930, so a backlog read back took twice the memory it took when it
    arrived (bench/README.md, 2026-12-05)."""
    cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    loads = orjson.loads
    resources: dict[str, Any] = {}  # a request's spans share one resource: parsed once, shared (read-only)
    share: Callable[[Any, Any], Any] = {}.setdefault  # a value -> the first equal one read here

    def resource(text: str) -> Any:
        parsed = resources.get(text)
        if parsed is None:
            parsed = resources[text] = loads(text)
        return parsed

    def shared(name: str) -> list[Any]:
        values = cols[name]
        if None in values:
            return [None if v is None else share(v, v) for v in values]
        return list(map(share, values, values))

    span_ids = shared("span_id")  # first: a parent's id is then the object its own span holds
    return list(map(
        StagedSpan, cols["seq"], shared("trace_id"), span_ids, shared("parent_span_id"), shared("name"),
        cols["kind"], cols["start_ns"], cols["end_ns"], shared("service_name"), shared("scope_name"),
        shared("scope_version"),
        map(JSONAttributes, cols["attributes"]) if attribute_text else
        [_shared_attributes(text, share) for text in cols["attributes"]],
        map(resource, cols["resource_attributes"]),
        map(_events, cols["events"]), map(_links, cols["links"]), shared("export_baggage"), cols["status_code"],
    ))


def _shared_attributes(text: str, share: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """A span's attributes read back: its string and integer values shared (``share``), the dict built key by key.
    orjson sizes a 14-key dict's table at 632 bytes, over CPython's 512-byte small-object limit, so a backlog read
    back was carved out of glibc's heap, which kept that size after the backlog was settled (+40 MiB after a 3 s
    stall at 11 000 spans/s); built key by key, the table is 464 bytes and comes from CPython's own arenas, as a
    span's attributes received live do (bench/README.md, 2026-12-05)."""
    out: dict[str, Any] = {}
    for key, value in orjson.loads(text).items():
        # str and int only: 1, 1.0 and True are equal keys, and a value must keep its type.
        out[key] = share(value, value) if type(value) is str or type(value) is int else value
    return out


def _events(text: str | None) -> tuple[SpanEvent, ...]:
    if not text:
        return ()
    return tuple(SpanEvent(e["name"], int(e["time_unix_nano"]), e["attributes"]) for e in orjson.loads(text))


def _links(text: str | None) -> tuple[SpanLink, ...]:
    if not text:
        return ()
    return tuple(SpanLink(x["trace_id"], x["span_id"], x["attributes"]) for x in orjson.loads(text))


def rows_to_spans(rows: Iterable[dict[str, Any]]) -> list[StagedSpan]:
    """Spans from row dicts of the spool's columns (the shared lake's span rows); the spool itself reads back with
    ``table_to_spans``."""
    out: list[StagedSpan] = []
    loads = orjson.loads
    for r in rows:
        out.append(
            StagedSpan(
                seq=r["seq"],
                trace_id=r["trace_id"],
                span_id=r["span_id"],
                parent_span_id=r["parent_span_id"],
                name=r["name"],
                kind=r["kind"],
                start_time_unix_nano=r["start_ns"],
                end_time_unix_nano=r["end_ns"],
                service_name=r["service_name"],
                scope_name=r["scope_name"],
                scope_version=r["scope_version"],
                attributes=loads(r["attributes"]),
                resource_attributes=loads(r["resource_attributes"]),
                events=_events(r["events"]),
                links=_links(r["links"]),
                export_baggage=r["export_baggage"],
                status_code=r["status_code"],
            )
        )
    return out

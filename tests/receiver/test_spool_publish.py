"""The spool publishes exactly what it committed (spans handed to listeners equal the spans read back from its
files), numbers them in order under concurrent appends, refuses a group it could not sync, and after a crash keeps
every synced frame and cuts off a torn one."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from processors._dialects import EXTRA_KEYS
from processors.config import IdentityConfig
from receiver import AttributeFilter, JSONAttributes, Spool, StagedSpan, StorageUnavailable, extract
from receiver._spool import SCHEMA
from tenantledger.app import move_staging_table
from tests.conftest import fixture_names, fixture_to_protobuf, load_fixture


@pytest.mark.parametrize("baggage", [None, "tenant.id=acme"])
def test_published_spans_equal_the_committed_rows(tmp_path: Path, baggage: str | None) -> None:
    spool = Spool(tmp_path / "spool")
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    for name in fixture_names():
        doc = load_fixture(name)
        # The fixtures carry no span links: give one span a link (a job linked to the request that enqueued it).
        span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        span["links"] = [
            {"traceId": "ab" * 16, "spanId": "cd" * 8,
             "attributes": [{"key": "tenant.id", "value": {"stringValue": "t1"}}]},
            {"traceId": "ab", "spanId": "cd" * 8},  # unusable: ignored
        ]
        spool.append(extract(fixture_to_protobuf(doc), filt), baggage)
    read_back = spool.read_after(0, 1_000_000)
    assert len(read_back) > 100
    assert any(s.links for s in read_back) and any(s.events for s in read_back)
    assert published == read_back
    spool.close()
    assert Spool(tmp_path / "spool").read_after(0, 1_000_000) == published  # and from the files, by a new process
    # With settle workers, spans read back keep their attributes as the stored JSON text until a worker parses it.
    text = Spool(tmp_path / "spool", attribute_text=True)
    for spans in (text.read_after(0, 1_000_000), text.read_traces(sorted({s.trace_id for s in published}))):
        assert all(type(s.attributes) is JSONAttributes and s.attributes._parsed is None for s in spans)
        assert sorted(spans, key=lambda s: s.seq) == published


def test_segments_written_with_the_former_codec_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool frames were zstd-compressed before 2026-12-01 and are LZ4 now: a spool left by the older version, with
    both kinds of frames in one segment, reads back whole (Arrow IPC records the codec per buffer)."""
    from receiver import _spool

    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    requests = _requests(filt)
    monkeypatch.setattr(_spool, "_WRITE_OPTIONS", pa.ipc.IpcWriteOptions(compression="zstd"))
    spool = Spool(tmp_path / "spool")
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    half = len(requests) // 2
    for _, ex in requests[:half]:
        spool.append(ex)
    older = len(published)
    monkeypatch.undo()
    for _, ex in requests[half:]:
        spool.append(ex)
    spool.close()
    assert 0 < older < len(published)
    assert Spool(tmp_path / "spool").read_after(0, 1_000_000) == published


def _requests(filt: AttributeFilter) -> list[tuple[str, Any]]:
    return [(name, extract(fixture_to_protobuf(load_fixture(name)), filt)) for name in fixture_names()]


def test_concurrent_appends_are_committed_once_each_in_sequence_order(tmp_path: Path) -> None:
    """Group commit: whichever thread commits takes every queued request; each request is still committed exactly
    once, sequence numbers are contiguous, and listeners see them in order."""
    spool = Spool(tmp_path / "spool", segment_bytes=256 << 10)  # several segments
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS))
    per_thread = 12
    barrier = threading.Barrier(8)

    def work(k: int) -> int:
        barrier.wait()
        return sum(spool.append(reqs[(k + i) % len(reqs)][1], f"tenant.id=t{k}") for i in range(per_thread))

    with ThreadPoolExecutor(8) as pool:
        acked = sum(pool.map(work, range(8)))
    spool.close()
    assert len(list((tmp_path / "spool").iterdir())) > 1
    reopened = Spool(tmp_path / "spool")
    rows = reopened.read_rows_after(0, 10_000_000).select(["seq", "export_baggage"]).to_pylist()
    assert acked == len(rows) == len(published) and acked > 8 * per_thread
    assert [r["seq"] for r in rows] == list(range(1, acked + 1))
    assert [s.seq for s in published] == list(range(1, acked + 1))
    assert reopened.read_after(0, 1_000_000) == published
    for k in range(8):  # every request's spans kept their own baggage
        assert sum(1 for r in rows if r["export_baggage"] == f"tenant.id=t{k}") == sum(
            len(reqs[(k + i) % len(reqs)][1]) for i in range(per_thread))


def test_a_failed_group_commit_refuses_every_request_of_the_group_and_publishes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, segment_bytes=1)  # every commit starts a new segment file
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    shutil.rmtree(directory)
    directory.write_text("not a directory")  # every new segment file now fails to be created
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            spool.append(reqs[k % len(reqs)][1])
        except StorageUnavailable as e:
            errors.append(e)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(16)))
    assert len(errors) == 16 and not published
    assert all("could not write spans to the spool" in str(e) for e in errors)
    assert spool.last_seq == 0
    directory.unlink()  # the disk is back: the next request is committed as the first
    directory.mkdir()
    assert spool.append(reqs[0][1]) == len(reqs[0][1])
    assert [s.seq for s in published] == list(range(1, len(reqs[0][1]) + 1))


def test_a_torn_last_frame_is_cut_off_at_start_and_the_synced_ones_are_kept(tmp_path: Path) -> None:
    """A crash inside a write leaves part of a frame: it was never acknowledged (the ack waits for the sync), so the
    next start cuts it off and numbers the next spans after the last whole frame."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for _, ex in reqs[:3]:
        spool.append(ex)
    synced = os.path.getsize(next(directory.iterdir()))
    kept = list(published)
    spool.append(reqs[3][1])  # this frame is then torn: as if the process died half-way through writing it
    spool.close()
    segment = next(directory.iterdir())
    full = os.path.getsize(segment)
    for cut in (synced + 10, synced + (full - synced) // 2, full - 1):
        os.truncate(segment, cut)
        again = Spool(directory)
        assert again.stats.truncated_bytes == cut - synced
        assert again.last_seq == kept[-1].seq
        assert again.read_after(0, 1_000_000) == kept
        again.close()
        assert os.path.getsize(segment) == synced
        with open(segment, "ab") as f:  # put the torn bytes back for the next cut
            f.write(b"\0" * (full - synced))
    # Zeros where a frame should be (a file extended but never written) are cut off as well.
    again = Spool(directory)
    assert again.last_seq == kept[-1].seq and again.stats.truncated_bytes == full - synced
    assert again.append(reqs[4][1]) == len(reqs[4][1])
    assert again.read_after(kept[-1].seq, 1_000_000)[0].seq == kept[-1].seq + 1


def test_a_corrupt_last_frame_is_found_by_its_checksum(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    spool.append(reqs[0][1])
    synced = spool.last_seq
    spool.append(reqs[1][1])
    spool.close()
    segment = next(directory.iterdir())
    with open(segment, "r+b") as f:  # a bit flipped inside the last frame's data, its length intact
        f.seek(os.path.getsize(segment) - 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    again = Spool(directory)
    assert again.last_seq == synced and again.stats.truncated_bytes > 0


def test_read_after_pages_through_the_spool_in_order_and_skips_a_gap(tmp_path: Path) -> None:
    """Recovery and the spill path page with read_after(last seq read, limit): every span comes back once, in
    order, each page at most ``limit`` long, and a run of missing numbers does not end the paging early."""
    spool = Spool(tmp_path / "spool", segment_bytes=64 << 10)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for i, (_, ex) in enumerate(reqs):
        if i == len(reqs) // 2:
            gap_from = spool.last_seq + 1
            spool.skip_to(gap_from + 41)  # numbers never used (a write that failed after it reached the disk)
        spool.append(ex)
    total = spool.last_seq
    assert total > 100
    seen: list[int] = []
    seq = 0
    while page := spool.read_after(seq, 7):
        assert len(page) <= 7
        seen += [s.seq for s in page]
        seq = page[-1].seq
    assert seen == [n for n in range(1, total + 1) if not gap_from <= n < gap_from + 41]
    assert spool.read_after(total, 7) == []


def _held_bytes(spans: list[StagedSpan]) -> int:
    """What a list of spans holds in memory: every object reachable from them, each counted once."""
    seen: set[int] = set()
    total = 0
    stack: list[Any] = list(spans)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, StagedSpan):
            stack.extend(getattr(obj, f) for f in StagedSpan.__slots__)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (tuple, list)):
            stack.extend(obj)
    return total


def test_a_backlog_read_back_holds_no_more_memory_than_when_it_arrived(tmp_path: Path) -> None:
    """Spans left in the spool under load (processors.max_pending_spans_in_memory) wait in memory once read back,
    as they would have on arrival: equal ids, names and attribute values share one object as they do live, and each
    attribute dict stays within CPython's small-object allocator (512 bytes), whose arenas are given back once
    free; glibc's heap kept a backlog's worth of larger ones (bench/README.md, 2026-12-05)."""
    spool = Spool(tmp_path / "spool")
    published: list[StagedSpan] = []
    spool.subscribe(published.extend)
    filt = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS)
    for _ in range(5):
        for _, ex in _requests(filt):
            spool.append(ex, "tenant.id=acme")
    read_back = spool.read_after(0, 1_000_000)
    assert read_back == published and len(read_back) > 500
    assert _held_bytes(read_back) <= 1.1 * _held_bytes(published)
    assert max(sys.getsizeof(s.attributes) for s in read_back if len(s.attributes) <= 21) <= 512
    by_id = {s.span_id: s.span_id for s in read_back}
    assert all(by_id[s.parent_span_id] is s.parent_span_id for s in read_back if s.parent_span_id in by_id)


def test_read_traces_within_a_sequence_range_returns_only_those_spans(tmp_path: Path) -> None:
    """A late span re-settles its trace from the sequence numbers the trace's spans had (the settler remembers
    them instead of the spans): spans of the trace outside the range are left out, other traces never come."""
    spool = Spool(tmp_path / "spool", segment_bytes=64 << 10)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for _, ex in reqs + reqs:  # every trace twice: once early, once late
        spool.append(ex)
    all_spans = spool.read_after(0, 1_000_000)
    tid = all_spans[0].trace_id
    of_trace = [s.seq for s in all_spans if s.trace_id == tid]
    assert len(of_trace) >= 2
    lo = of_trace[0]
    hi = max(s for s in of_trace if s < spool.last_seq // 2 + 1)  # the first copy only
    got = spool.read_traces([tid], lo, hi)
    assert [s.seq for s in got] == [s for s in of_trace if lo <= s <= hi]
    assert [s.seq for s in spool.read_traces([tid])] == of_trace
    assert spool.read_trace_rows([tid]).schema == SCHEMA


def test_spans_located_by_number_are_read_in_another_process_exactly_as_read_back(tmp_path: Path) -> None:
    """Settle workers read a batch's spans from the spool's files, sent only their numbers and frames (``locate``):
    any subset of numbers, across frames, segments and a gap, comes back as the same spans ``read_after`` gives,
    in order, each frame listed once; a number in no frame (a gap, beyond the end) locates nothing, and a frame
    that does not hold what it was said to is an error, never other spans."""
    from receiver import read_spans_at

    spool = Spool(tmp_path / "spool", segment_bytes=64 << 10)
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for i, (_, ex) in enumerate(reqs + reqs):
        if i == len(reqs):
            gap = spool.last_seq + 1
            spool.skip_to(gap + 5)
        spool.append(ex, "tenant.id=acme")
    everything = {s.seq: s for s in spool.read_after(0, 1_000_000)}
    assert len(spool._segments) > 1 and len(spool._frames) > 4
    for want in (sorted(everything), sorted(everything)[::7], [min(everything), max(everything)]):
        frames = spool.locate(want)
        assert frames is not None
        assert len(frames) == len({f for f in spool._frames if any(f.first <= q <= f.last for q in want)})
        assert all(os.path.isabs(f[0]) for f in frames)
        got = read_spans_at(frames, want)
        assert got == [everything[q] for q in want]
        assert all(isinstance(s.attributes, dict) for s in got)
        text = read_spans_at(frames, want, attribute_text=True)
        assert all(type(s.attributes) is JSONAttributes for s in text) and text == got
    assert spool.locate([gap]) is None and spool.locate([spool.last_seq + 1]) is None and spool.locate([]) == []
    one = [min(everything)]
    path, offset, length, first, count = spool.locate(one)[0]  # type: ignore[index]
    with pytest.raises(ValueError):
        read_spans_at([(path, offset, length, first + 1, count)], one)  # said to start after the number asked
    with pytest.raises(ValueError):
        read_spans_at([(path, offset, length, first, count)], one + [spool.last_seq])  # the last in another frame


def test_spans_of_an_older_ledger_file_move_into_the_spool_with_their_numbers(tmp_path: Path) -> None:
    """Ledger files written before the spool had its own files kept the spans in a staging_spans table: the next
    start moves them (settled or not: a late span may re-settle an old trace), once, and drops the table."""
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    src = Spool(tmp_path / "src")
    for _, ex in reqs:
        src.append(ex, "tenant.id=old")
    rows = src.read_rows_after(0, 1_000_000)
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE staging_spans AS SELECT * FROM rows")
    con.execute("DELETE FROM staging_spans WHERE seq BETWEEN 10 AND 12")  # numbers a failed commit never used
    spool = Spool(tmp_path / "old.duckdb.spool")
    moved = move_staging_table(con, spool, chunk=50)
    assert moved == rows.num_rows - 3
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'staging_spans'").fetchall() == [(0,)]
    expected = [s for s in src.read_after(0, 1_000_000) if not 10 <= s.seq <= 12]
    assert spool.read_after(0, 1_000_000) == expected
    assert spool.last_seq == rows.num_rows
    assert move_staging_table(con, spool) == 0  # nothing left to move
    # Interrupted after some chunks were written: the next start moves only the rest.
    con.execute("CREATE TABLE staging_spans AS SELECT * FROM rows")
    part = Spool(tmp_path / "part")
    part.import_rows(pa.Table.from_pylist(rows.slice(0, 40).to_pylist(), SCHEMA))
    assert move_staging_table(con, part, chunk=25) == rows.num_rows - 40
    assert part.read_after(0, 1_000_000) == src.read_after(0, 1_000_000)


def test_a_bad_last_frame_of_an_earlier_segment_is_dropped(tmp_path: Path) -> None:
    """A write that failed and could not be cut back closes its segment; its frame may be on disk, damaged. The next
    start checks the last frame of every earlier segment, drops a damaged one (it was refused, never acknowledged)
    and keeps everything else readable."""
    directory = tmp_path / "spool"
    spool = Spool(directory, segment_bytes=1)  # one frame per segment
    reqs = _requests(AttributeFilter(IdentityConfig().all_keys()))
    for _, ex in reqs[:3]:
        spool.append(ex)
    spool.close()
    segments = sorted(directory.iterdir())
    assert len(segments) == 3
    with open(segments[1], "r+b") as f:
        f.seek(os.path.getsize(segments[1]) - 50)
        f.write(b"\xff" * 8)
    again = Spool(directory)
    kept = again.read_after(0, 1_000_000)
    assert [s.seq for s in kept] == [s for s in range(1, again.last_seq + 1)
                                     if not len(reqs[0][1]) < s <= len(reqs[0][1]) + len(reqs[1][1])]
    assert again.last_seq == sum(len(ex) for _, ex in reqs[:3])

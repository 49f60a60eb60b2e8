"""Overload and storage trouble: at 10x the sustainable rate the server refuses retryably with a retry delay and
stays under its memory limit, then catches up; with the disk full it refuses retryably, corrupts nothing and
recovers when space returns (live, and after a kill -9)."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from receiver._errors import Overloaded
from receiver._memory import MemoryLimiter, rss_bytes
from tests.reliability._harness import (
    EXPORT,
    LONG,
    RETRYABLE,
    DrainedServer,
    Request,
    export,
    ledger_rows,
    make_requests,
    sample_rss,
    start_server,
)

LOAD_S = 10.0 if LONG else 2.5


# The long run refuses ~4x more requests than the short one, each re-sent sequentially after its advertised delay.
CATCH_UP_S = 400.0 if LONG else 120.0


def _deliver(srv: DrainedServer, pending: list[Request], deadline_s: float = CATCH_UP_S) -> None:
    """Send until acknowledged, honouring the advertised retry delay (what an exporter does)."""
    end = time.time() + deadline_s
    with grpc.insecure_channel(srv.grpc) as ch:
        for r in pending:
            while True:
                out = export(ch, r.body)
                if out.ok:
                    break
                assert out.code in RETRYABLE, out
                assert time.time() < end, "did not catch up"
                time.sleep(out.retry_delay_s or 0.2)


def test_memory_limiter_refuses_above_the_soft_limit() -> None:
    rss = rss_bytes()
    assert rss is not None
    MemoryLimiter(rss / 2**20 * 2, 0.5).check()  # well under: admitted
    with pytest.raises(Overloaded) as err:
        MemoryLimiter(rss / 2**20 / 2, 0.5).check()  # over even after a collection: refused, retryably
    assert err.value.retryable and err.value.retry_after_s == 0.5 and "memory_limit_mib" in err.value.message


def test_ten_times_the_sustainable_rate(tmp_path: Path) -> None:
    requests = make_requests(2000 if LONG else 600, traces_per_request=10, seed=31)
    probe = start_server(tmp_path / "probe" if (tmp_path / "probe").mkdir() is None else tmp_path)
    baseline = probe.rss_mib()
    probe.stop()
    limit = int(baseline + 200)
    srv = start_server(tmp_path, {"receiver": {"max_inflight_requests": 4, "memory_limit_mib": limit,
                                               "retry_after_s": 0.2}})
    rss: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(srv, stop, rss))
    sampler.start()
    # Sustainable rate: what one closed-loop exporter gets acknowledged.
    sent = 0
    t0 = time.time()
    with grpc.insecure_channel(srv.grpc) as ch:
        while time.time() - t0 < 1.5 and sent < len(requests) // 5:
            assert export(ch, requests[sent].body).ok
            sent += 1
    sustainable = sent / (time.time() - t0)
    rate = 10 * sustainable
    # Open loop at 10x: requests are fired on schedule whatever the answers.
    futures: list[tuple[Request, Any]] = []
    with grpc.insecure_channel(srv.grpc) as ch:
        call = ch.unary_unary(EXPORT)
        t1 = time.time()
        i = sent
        while time.time() - t1 < LOAD_S and i < len(requests):
            due = t1 + (i - sent) / rate
            wait = due - time.time()  # one reading of the clock: it moves between two
            if wait > 0:
                time.sleep(wait)
            futures.append((requests[i], call.future(requests[i].body, timeout=60)))
            i += 1
        fired = time.time() - t1  # the offered rate is the open loop's: answers are awaited after it
        outcomes: Counter[str] = Counter()
        details: Counter[str] = Counter()
        refused: list[Request] = []
        no_delay = 0
        from tests.reliability._harness import retry_delay

        for r, f in futures:
            try:
                f.result()
                outcomes["OK"] += 1
            except grpc.RpcError as e:
                outcomes[e.code().name] += 1
                details["memory" if "memory" in (e.details() or "") else "inflight/backlog"] += 1
                no_delay += retry_delay(e) is None
                refused.append(r)
    offered = len(futures) / fired
    _deliver(srv, refused + requests[i:])
    stop.set()
    sampler.join()
    assert srv.stop() == 0
    keys = [(row[0], row[1]) for row in ledger_rows(srv)]
    expected = {c for r in requests for c in r.calls}
    print(f"\noverload: sustainable={sustainable:.0f} req/s offered={offered:.0f} req/s ({offered / sustainable:.1f}x) "
          f"outcomes={dict(outcomes)} refusal_reasons={dict(details)} without_retry_delay={no_delay} "
          f"rss_baseline={baseline:.0f}MiB rss_peak={max(rss):.0f}MiB memory_limit={limit}MiB "
          f"calls={len(keys)} expected={len(expected)} lost={len(expected - set(keys))} "
          f"duplicated={len(keys) - len(set(keys))}")
    # The target is 10x; on 2 shared cores the Python load generator itself reaches 7-9x, so 5x is the floor
    # below which the test would no longer be an overload test.
    assert offered >= 5 * sustainable
    assert set(outcomes) - {"OK"} and set(outcomes) - {"OK"} <= {c.name for c in RETRYABLE}
    assert no_delay == 0
    assert max(rss) < limit
    assert set(keys) == expected and len(keys) == len(set(keys))


def _mount_small_fs(where: Path, mib: int) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_disk_full_refuses_retryably_and_recovers(tmp_path: Path) -> None:
    """A real full filesystem (a small tmpfs) when we may mount one, else a file-size limit (RLIMIT_FSIZE) on the
    server process: both make the ledger's writes fail (ENOSPC / EFBIG) as a full disk does."""
    disk = tmp_path / "disk"
    tmpfs = _mount_small_fs(disk, 48)
    if not tmpfs:
        disk.mkdir(exist_ok=True)
    requests = make_requests(120, seed=41)
    filler = disk / "filler"

    def fill(srv: DrainedServer) -> None:
        if tmpfs:
            # Write until the filesystem says no (the server may be writing at the same time).
            with open(filler, "ab") as f:
                try:
                    while True:
                        f.write(b"\0" * 1024 * 1024)
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        else:
            assert srv.proc is not None
            sizes = [p.stat().st_size for p in disk.iterdir()]
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (max(sizes) + 64 * 1024, resource.RLIM_INFINITY))

    def free(srv: DrainedServer | None) -> None:
        if tmpfs:
            filler.unlink(missing_ok=True)
        elif srv is not None and srv.proc is not None and srv.proc.poll() is None:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    srv: DrainedServer | None = None
    try:
        srv = start_server(tmp_path, ledger=disk / "ledger.duckdb")
        _deliver(srv, requests[:20])
        codes: Counter[str] = Counter()

        def push(batch: list[Request]) -> list[Request]:
            assert srv is not None
            failed = []
            with grpc.insecure_channel(srv.grpc) as ch:
                for r in batch:
                    out = export(ch, r.body)
                    codes[out.code.name] += 1
                    if not out.ok:
                        failed.append(r)
            return failed

        # 1. Full, then space returns while the server keeps running.
        fill(srv)
        failed = push(requests[20:60])
        time.sleep(0.5)  # the settler's ledger writes fail too, and are retried
        free(srv)
        _deliver(srv, failed)
        # 2. Full again, killed while full, restarted when space returned.
        fill(srv)
        failed2 = push(requests[60:100])
        srv.kill()
        free(srv)
        srv = start_server(tmp_path, ledger=disk / "ledger.duckdb")
        _deliver(srv, failed2 + requests[100:])
        assert srv.stop() == 0
        keys = [(row[0], row[1]) for row in ledger_rows(srv)]
        expected = {c for r in requests for c in r.calls}
        print(f"\ndisk full ({'tmpfs ENOSPC' if tmpfs else 'RLIMIT_FSIZE EFBIG'}): outcomes={dict(codes)} "
              f"refused_then_retried={len(failed) + len(failed2)} calls={len(keys)} expected={len(expected)} "
              f"lost={len(expected - set(keys))} duplicated={len(keys) - len(set(keys))}")
        assert codes["UNAVAILABLE"] > 0, "the disk never looked full to the server"
        assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}  # never INVALID_ARGUMENT: nothing dropped
        assert set(keys) == expected and len(keys) == len(set(keys))
    finally:
        if srv is not None and srv.proc is not None and srv.proc.poll() is None:
            srv.kill()
        if tmpfs:
            subprocess.run(["umount", str(disk)], check=False)

"""Retries: an exporter replaying acknowledged requests changes nothing; a request refused retryably (overload)
and retried after the advertised delay lands exactly once."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

from receiver import Spool
from tenantledger.app import spool_path
from tests.reliability._harness import LONG, RETRYABLE, export, ledger_rows, make_requests, start_server, totals

N = 200 if LONG else 40


def test_replaying_every_acked_request_changes_nothing(tmp_path: Path) -> None:
    requests = make_requests(N, seed=21)
    (tmp_path / "once").mkdir()
    once = start_server(tmp_path / "once")
    with grpc.insecure_channel(once.grpc) as ch:
        assert all(export(ch, r.body).ok for r in requests)
    assert once.stop() == 0
    (tmp_path / "replayed").mkdir()
    srv = start_server(tmp_path / "replayed")
    with grpc.insecure_channel(srv.grpc) as ch:
        assert all(export(ch, r.body).ok for r in requests)
        time.sleep(0.5)  # let the first copies settle: the replay now hits settled traces (the late-span path)
        assert all(export(ch, r.body).ok for r in requests)
    assert srv.stop() == 0
    srv = start_server(tmp_path / "replayed", ledger=srv.ledger)  # and again after a restart (ledger path)
    with grpc.insecure_channel(srv.grpc) as ch:
        assert all(export(ch, r.body).ok for r in requests)
    assert srv.stop() == 0
    spool = Spool(spool_path(srv.ledger))  # the server has stopped: read its spool's files
    rows = spool.read_rows_after(0, 10_000_000).select(["trace_id", "span_id"]).to_pydict()
    staged = (len(rows["trace_id"]), len(set(zip(rows["trace_id"], rows["span_id"], strict=True))))
    print(f"\nretries: requests={N} each_sent=3 staged_copies={staged[0]} distinct_spans={staged[1]} "
          f"totals_once={totals(once)} totals_replayed={totals(srv)}")
    assert staged[0] == 3 * staged[1]  # the replays were really received and stored ...
    assert ledger_rows(srv) == ledger_rows(once)  # ... and billed nothing twice


def test_request_refused_retryably_then_retried_lands_once(tmp_path: Path) -> None:
    requests = make_requests(N, seed=22)
    srv = start_server(tmp_path, {"receiver": {"max_inflight_requests": 1, "retry_after_s": 0.1}})
    codes: Counter[str] = Counter()
    delays: list[float | None] = []
    lock = threading.Lock()

    def send(part: list[bytes]) -> None:
        with grpc.insecure_channel(srv.grpc) as ch:
            for body in part:
                while True:
                    out = export(ch, body)
                    with lock:
                        codes[out.code.name] += 1
                        if not out.ok:
                            delays.append(out.retry_delay_s)
                    if out.ok:
                        break
                    assert out.code in RETRYABLE
                    time.sleep(out.retry_delay_s or 0.1)  # honour RetryInfo, as the SDK exporter does

    threads = [threading.Thread(target=send, args=([r.body for r in requests[i::6]],)) for i in range(6)]
    for t in threads:
        t.start()
    # Over HTTP too: the same refusal is 429 with Retry-After.
    http_codes: Counter[int] = Counter()
    retry_after: set[str | None] = set()
    for _ in range(40):
        req = urllib.request.Request(f"{srv.http}/v1/traces", data=requests[0].body,
                                     headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                http_codes[r.status] += 1
        except urllib.error.HTTPError as e:
            http_codes[e.code] += 1
            retry_after.add(e.headers.get("Retry-After"))
    for t in threads:
        t.join()
    assert srv.stop() == 0
    rows = ledger_rows(srv)
    keys = [(r[0], r[1]) for r in rows]
    expected = {c for r in requests for c in r.calls}
    print(f"\nretries: grpc outcomes={dict(codes)} retry_delays={sorted(set(delays))} http={dict(http_codes)} "
          f"http_retry_after={retry_after} calls={len(keys)} expected={len(expected)} "
          f"duplicated={len(keys) - len(set(keys))}")
    assert codes["RESOURCE_EXHAUSTED"] > 0, "the overload path was not exercised"
    assert set(delays) == {0.1}
    assert set(http_codes) <= {200, 429} and (429 not in http_codes or retry_after == {"1"})
    assert set(keys) == expected and len(keys) == len(set(keys))

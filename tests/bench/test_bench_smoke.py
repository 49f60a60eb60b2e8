"""Smoke runs of the benchmarks at a tiny size, so they cannot rot: each completes and prints sane figures
(everything sent was acknowledged and settled; the query figures come from the generated data). No timings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

BENCH = REPO / "bench"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _rate(out: str, label: str) -> float:
    m = re.search(re.escape(label) + r": ([\d,]+) spans/s", out)
    assert m, (label, out)
    return float(m.group(1).replace(",", ""))


def test_baseline_smoke() -> None:
    out = _run("baseline.py", "--requests", "2", "--rounds", "2")
    assert "nproc=" in out
    assert "baseline (1 core): 2048 spans" in out
    assert _rate(out, "2048 spans in 512-span requests") > 0


def test_ingest_smoke() -> None:
    # ingest.py itself fails (exit != 0) unless every span is acknowledged, settled (sum of traces.span_count ==
    # spans sent) and, after SIGTERM, llm_calls holds exactly one priced row per LLM span sent.
    # The baseline phase is skipped here: test_baseline_smoke runs the same code.
    out = _run("ingest.py", "--requests", "2", "--rounds", "1", "--scaling-requests", "2", "--scaling-rounds", "1",
               "--scaling-repeats", "2", "--duration-s", "2",
               "--skip-baseline", "--repeats", "2", "--no-phoenix", "--ceiling-s", "0.3")
    assert _rate(out, "ingest 1 core") > 0
    assert len(re.findall(r"repeat \d: ingest 1 core [\d,]+ spans/s .* cores [\d,]+ spans/s", out)) == 2
    assert re.search(r"ratio 2 cores / 1 core: \d+\.\d\d \(target >= 1.7; per repeat \d+\.\d\d, \d+\.\d\d\)", out)
    if (os.cpu_count() or 1) >= 2:  # the same work on two CPUs at once, against one: both sides did some
        assert re.search(r"machine ceiling, 2 CPUs / 1 CPU .*: (\d+\.\d\d) \(per repeat \d+\.\d\d, \d+\.\d\d\); "
                         r"2 cores / 1 core is \d+\.\d\d of it", out)
        assert all(float(c) > 0 for c in re.findall(r"machine ceiling (\d+\.\d\d)", out))
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert re.search(r"spans/s by spans per trace \(1 core, \d+ spans a run, median of 2\): 1: [\d,]+, 10: [\d,]+, "
                     r"100: [\d,]+, 1000: [\d,]+ \(runs 1: [\d,]+ / [\d,]+; 10: ", out)
    assert re.search(r"RSS over 2 s at 80% load after 1 s of warm-up .* MiB.*spans waiting to settle at each "
                     r"sample: [\d,]+.*; the server's CPU between samples: \d+%.*; DuckDB's cache: [\d ]+ MiB; "
                     r"the ledger's key filters: 64( 64)* MiB", out)
    assert re.search(r"trend [+-]\d+\.\d MiB/min, median of the first third \d+, of the last third \d+ MiB|"
                     r"trend: too few samples", out)
    assert "re-attaches of the ledger file: none during the run" in out  # 5 M calls by default
    assert "Phoenix: not run" in out and "ratio ingest / Phoenix" not in out


def test_phoenix_spans_are_counted_as_phoenix_stores_them(tmp_path: Path) -> None:
    """bench/_phoenix.py times Phoenix until its SQLite `spans` table holds every span sent: the count reads a file
    another process writes (WAL, as Phoenix's), is 0 before the file or the table exists, and a wait that times
    out returns what was stored by then."""
    import sqlite3
    import threading

    from bench._phoenix import Phoenix

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        phx = Phoenix(proc, "127.0.0.1:0", tmp_path / "phoenix.db", tmp_path / "phoenix.log")
        assert phx.stored_spans() == 0  # no file yet
        con = sqlite3.connect(phx.db, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE other (x)")
        con.commit()
        assert phx.stored_spans() == 0  # no spans table yet (Phoenix's migrations create it)
        con.execute("CREATE TABLE spans (span_id TEXT UNIQUE)")
        con.commit()

        def store(first: int, n: int) -> None:
            con.executemany("INSERT INTO spans VALUES (?)", [(f"s{i}",) for i in range(first, first + n)])
            con.commit()

        store(0, 3)
        assert phx.stored_spans() == 3
        t0 = time.monotonic()
        later = threading.Timer(0.5, store, (3, 7))
        later.start()
        stored, elapsed = phx.wait_stored(10, t0, timeout_s=30)
        later.join()
        assert stored == 10 and 0.5 <= elapsed < 30
        stored, elapsed = phx.wait_stored(11, time.monotonic(), timeout_s=0.5)
        assert stored == 10 and elapsed >= 0.5
        con.close()
    finally:
        proc.kill()
        proc.wait()


def test_the_rss_band_apart_from_reattaches_names_the_samples_it_leaves_out() -> None:
    """A re-attach empties DuckDB's cache, so RSS dips until it refills: the bench prints the band with and without
    the minute from the first sample that shows one (by the server's counter), naming the samples left out."""
    import importlib
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        after = importlib.import_module("ingest")._after_reattaches
    finally:
        sys.path.remove(str(BENCH))
    samples = [(30.0, 400.0), (60.0, 600.0), (90.0, 640.0), (120.0, 470.0), (150.0, 650.0), (180.0, 610.0),
               (210.0, 630.0)]
    line = after(samples, [0, 0, 0, 1, 1, 1, 1], 45.0)
    assert line == ("re-attaches of the ledger file: 1 (first seen at 120s); RSS after warm-up apart from the 60 s "
                    "from each (leaving out 120s:470, 150s:650): min 600 max 640 MiB (spread 6.7%)")
    assert after(samples, [0] * 7, 45.0) == "re-attaches of the ledger file: none during the run"
    assert after(samples, [-1] * 7, 45.0) == "re-attaches of the ledger file: none during the run"  # no counter


def test_queries_smoke() -> None:
    out = _run("queries.py", "--calls", "20000", "--tenants", "50")
    assert "generated 20,000 calls" in out
    assert re.search(r"tenant_total: [\d.]+ s .*'calls': [1-9]", out)
    assert re.search(r"top20: [\d.]+ s .*'rows': 20", out)
    for fmt in ("focus_csv", "focus_parquet"):
        assert re.search(fmt + r": [\d.]+ s .*'reconciles': True", out), out


def test_budget_check_smoke() -> None:
    out = _run("budget_check.py", "--calls", "20000", "--tenants", "50", "--checks", "20")
    m = re.search(r"budget_check: calls=20000 tenants=50 generate_s=\S+ p50_ms=([\d.]+) p99_ms=([\d.]+) "
                  r"\(serve: the ledger's daily totals, first read [\d.]+ s\); "
                  r"summed in SQL \(the CLI\): p50_ms=([\d.]+) p99_ms=([\d.]+)", out)
    assert m, out
    assert float(m.group(1)) <= float(m.group(2)) and float(m.group(3)) <= float(m.group(4))


def test_restamp_gives_new_traces_and_calls_at_the_clocks_time() -> None:
    """A restamped request is the same spans with new trace ids, new span ids (parents following), new response
    ids and every start/end moved by the shift (what a long run needs so that its traffic's times advance with the
    clock, and a server that keys spans by span id alone sees new spans)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from bench._load import Workload, build_requests, restamp, stamp_fields

    w = Workload(2, trace_size=10, spans_per_request=64, seed=3)
    body = build_requests(w)[1]
    shift = 3_600_000_000_123
    where = stamp_fields(body, 3)
    before = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
    # Every id and response id of the request, and nothing else: the offsets rewrite exactly what they should.
    assert len(where.ids) == 2 * len(before) + sum(1 for s in before if s.parent_span_id)
    assert len(where.responses) == sum(1 for s in before for x in s.attributes if x.key == "gen_ai.response.id")
    assert restamp(body, where, 3) == body
    after = ExportTraceServiceRequest.FromString(
        restamp(body, where, 0x100001, shift)).resource_spans[0].scope_spans[0].spans
    assert len(after) == len(before) == 64
    for a, b in zip(after, before, strict=True):
        assert a.start_time_unix_nano == b.start_time_unix_nano + shift
        assert a.end_time_unix_nano == b.end_time_unix_nano + shift
        assert a.trace_id != b.trace_id and a.trace_id[4:] == b.trace_id[4:]
        assert a.span_id != b.span_id and a.span_id[4:] == b.span_id[4:]
        assert (a.parent_span_id == b"") == (b.parent_span_id == b"")
        assert [x.value for x in a.attributes if x.key != "gen_ai.response.id"] == \
            [x.value for x in b.attributes if x.key != "gen_ai.response.id"]
    by_id = {s.span_id: s for s in after}
    children = [s for s in after if s.parent_span_id]
    assert children and all(by_id[s.parent_span_id].trace_id == s.trace_id for s in children if s.parent_span_id
                            in by_id)
    assert sum(s.parent_span_id in by_id for s in children) >= len(children) - 9  # a trace cut by the request edge
    ids = [x.value.string_value for x in after[1].attributes if x.key == "gen_ai.response.id"]
    assert ids and ids[0].startswith("resp-00100001-")

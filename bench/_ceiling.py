"""The machine's own ceiling for 2 cores / 1 core: how much more of the server's per-span Python work (extract,
attribute, price; no I/O, no pipes) two processes on two CPUs do than one process on one CPU, measured in the run.

On the KVM guest of bench/README.md two busy vCPUs are each ~10-15 % slower than one busy vCPU (2026-12-03): a
server that used both CPUs perfectly would still not reach 2x. The ingest ratio is read against this figure.

    python bench/_ceiling.py --cpu 0 --windows 0:1,1:2 --requests 8    (one worker; prints its spans and busy
                                                                        seconds in each window, as JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

_HERE = Path(__file__).resolve().parent

Window = tuple[float, float]
"""Seconds from the shared start: when a worker starts working, and when it stops starting new requests."""


def _work(cpu: int, windows: list[Window], requests: int, start_at: float) -> list[tuple[int, float]]:
    """Per window: the spans processed and the seconds it took (until the last request started in the window
    ended). ``start_at`` is a shared start (time.time()), so that two workers' windows line up."""
    sys.path.insert(0, str(_HERE.parent))
    sys.path.insert(0, str(_HERE))
    from _load import Workload, build_requests

    from processors._dialects import EXTRA_KEYS, usage_problems
    from processors._pricing import Pricer, PricingConfig
    from processors._workers import settle_traces
    from processors.config import IdentityConfig
    from receiver import AttributeFilter
    from receiver._decode import extract_body
    from receiver._spool import _published

    os.sched_setaffinity(0, {cpu})
    bodies = build_requests(Workload(requests, trace_size=10, seed=3))
    identity = IdentityConfig()
    filt = AttributeFilter(identity.all_keys() | EXTRA_KEYS, 4096)
    pricer = Pricer(PricingConfig())

    def one(body: bytes) -> int:
        ex = extract_body(body, filt, usage_problems, 100_000)
        traces = defaultdict(list)
        for s in _published(ex, 1, None):
            traces[s.trace_id].append(s)
        settle_traces(list(traces), traces, {}, identity, pricer)
        return len(ex)

    for body in bodies:  # warm (the pricer's and the filter's caches) before the shared start, not in a window
        one(body)
    out: list[tuple[int, float]] = []
    nth = 0
    for begin, end in windows:
        t0 = start_at + begin
        time.sleep(max(0.0, t0 - time.time()))
        t0 = max(t0, time.time())
        done, stop = 0, start_at + end
        while time.time() < stop:  # a request (512 spans, ~40 ms) at a time: the window's end is overrun by < 1
            done += one(bodies[nth % len(bodies)])
            nth += 1
        out.append((done, time.time() - t0))
    return out


def _spawn(cpu: int, windows: list[Window], requests: int, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--cpu", str(cpu),
         "--windows", ",".join(f"{b!r}:{e!r}" for b, e in windows), "--requests", str(requests),
         "--start-at", repr(start_at)],
        stdout=subprocess.PIPE, text=True,
    )


def _result(proc: subprocess.Popen[str]) -> list[tuple[int, float]]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ceiling worker failed (exit {proc.returncode})")
    return [(int(n), float(s)) for n, s in json.loads(out.splitlines()[-1])]


def machine_ceiling(seconds: float, requests: int = 8) -> tuple[float, float, float]:
    """(two CPUs' spans a second / one CPU's, one CPU's spans a second, two CPUs' spans a second). ``seconds`` of
    the work on CPU 0 alone and as many on CPUs 0 and 1 at once, in alternating windows of about a second (alone,
    both, alone, ..., alone): the host's speed drifts by tens of percent within minutes, and alternating in short
    windows lets the drift hit both sides alike (three 5 s phases in a row gave ratios of 1.47-2.19 within one run:
    bench/README.md, 2026-12-03). Imports and request building (~1-2 s) happen before the shared start."""
    pairs = max(1, round(seconds))
    both_s = seconds / pairs
    alone_s = seconds / (pairs + 1)
    windows: list[Window] = []
    t = 0.0
    for _ in range(pairs):
        windows.append((t, t + alone_s))
        t += alone_s
        windows.append((t, t + both_s))
        t += both_s
    windows.append((t, t + alone_s))
    together = windows[1::2]
    start = time.time() + 3.0
    cpu0, cpu1 = _spawn(0, windows, requests, start), _spawn(1, together, requests, start)
    first, second = _result(cpu0), _result(cpu1)
    one = _rate(first[0::2])  # CPU 0 in the windows it worked alone
    two = _rate(first[1::2]) + _rate(second)  # both CPUs in the windows they worked together
    return two / max(1e-9, one), one, two


def _rate(windows: list[tuple[int, float]]) -> float:
    """Spans a second over ``windows`` (spans, seconds) taken together."""
    return sum(n for n, _ in windows) / max(1e-9, sum(s for _, s in windows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--windows", required=True, help="start:end seconds from --start-at, comma-separated")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--start-at", type=float, default=0.0)
    a = p.parse_args()
    windows = [(float(b), float(e)) for b, e in (w.split(":") for w in a.windows.split(","))]
    print(json.dumps(_work(a.cpu, windows, a.requests, a.start_at or time.time())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

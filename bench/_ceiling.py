"""The machine's own ceiling for 2 cores / 1 core: how much more of the server's per-span Python work (extract,
attribute, price; no I/O, no pipes) two processes on two CPUs do than one process on one CPU, measured in the run.

On the KVM guest of bench/README.md two busy vCPUs are each ~10-15 % slower than one busy vCPU (2026-12-03): a
server that used both CPUs perfectly would still not reach 2x. The ingest ratio is read against this figure.

    python bench/_ceiling.py --cpu 0 --seconds 8 --requests 8    (one worker; prints the spans it processed)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _work(cpu: int, seconds: float, requests: int, start_at: float) -> int:
    """Spans processed in ``seconds`` of wall time from ``start_at`` (a shared start, so two run side by side)."""
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
    time.sleep(max(0.0, start_at - time.time()))
    done = 0
    end = time.time() + seconds
    while time.time() < end:
        for body in bodies:
            ex = extract_body(body, filt, usage_problems, 100_000)
            traces = defaultdict(list)
            for s in _published(ex, 1, None):
                traces[s.trace_id].append(s)
            settle_traces(list(traces), traces, {}, identity, pricer)
            done += len(ex)
            if time.time() >= end:
                break
    return done


def _spawn(cpu: int, seconds: float, requests: int, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--cpu", str(cpu), "--seconds", str(seconds),
         "--requests", str(requests), "--start-at", repr(start_at)],
        stdout=subprocess.PIPE, text=True,
    )


def _count(proc: subprocess.Popen[str]) -> int:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ceiling worker failed (exit {proc.returncode})")
    return int(out.split()[-1])


def machine_ceiling(seconds: float, requests: int = 8) -> tuple[float, int, int]:
    """(two CPUs' spans / one CPU's, one CPU's spans, two CPUs' spans): the same work on CPU 0 alone, then on CPUs 0
    and 1 at once, then on CPU 0 alone again (the host's speed drifts: the two alone runs are averaged), each for
    ``seconds``. Imports and request building (~1-2 s) happen before the shared start."""
    lead = 3.0
    first = _count(_spawn(0, seconds, requests, time.time() + lead))
    start = time.time() + lead
    pair = [_spawn(cpu, seconds, requests, start) for cpu in (0, 1)]
    both = sum(_count(p) for p in pair)
    alone = (first + _count(_spawn(0, seconds, requests, time.time() + lead))) // 2
    return both / max(1, alone), alone, both


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--start-at", type=float, default=0.0)
    a = p.parse_args()
    print(_work(a.cpu, a.seconds, a.requests, a.start_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())

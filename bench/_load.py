"""Benchmark load: realistic gen_ai OTLP traces pre-serialized into ExportTraceServiceRequest bytes, and a
load-client process that sends them over gRPC (at full speed or at a fixed rate) and reports latencies.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS_PER_REQUEST = 512
TENANTS = [f"tenant-{i:03d}" for i in range(50)]
# (provider, request model, response model): catalogue models, so every call is priced like production.
MODELS = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
    ("anthropic", "claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
]
FEATURES = ["chat", "summarise", "search", "agent"]


@dataclass(frozen=True)
class Workload:
    requests: int
    trace_size: int = 10
    """Spans per trace: one SERVER root plus trace_size-1 LLM CLIENT children (1 = a lone LLM call)."""
    spans_per_request: int = SPANS_PER_REQUEST
    seed: int = 1

    @property
    def spans(self) -> int:
        return self.requests * self.spans_per_request

    @property
    def traces(self) -> int:
        return -(-self.spans // self.trace_size)

    @property
    def llm_calls(self) -> int:
        """LLM spans among the sent spans (each is one billable call)."""
        full, rest = divmod(self.spans, self.trace_size)
        per = self.trace_size - 1 if self.trace_size > 1 else 1
        tail = (rest - 1 if rest > 1 else 0) if self.trace_size > 1 else rest
        return full * per + tail


def _kv(key: str, value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, bool):
        v = AnyValue(bool_value=value)
    elif isinstance(value, int):
        v = AnyValue(int_value=value)
    elif isinstance(value, float):
        v = AnyValue(double_value=value)
    elif isinstance(value, list):
        v = AnyValue()
        for item in value:
            v.array_value.values.add(string_value=item)
    else:
        v = AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def build_requests(w: Workload) -> list[bytes]:
    """The serialized requests of a workload; ids and response ids are unique per (seed, position)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    rnd = random.Random(w.seed)
    base_ns = time.time_ns() - w.spans * 1_000_000  # the last span starts now; restamp moves them with the clock
    out: list[bytes] = []
    span_no = 0
    trace_no = 0
    root_id = b""
    tenant = user = feature = ""
    seed_tag = _trace_tag(w.seed)
    for _ in range(w.requests):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(
            [
                _kv("service.name", "chat-api"),
                _kv("service.version", "2.14.0"),
                _kv("service.instance.id", "9f1c0e7a-1d2b-4c3e-8f90-0a1b2c3d4e5f"),
                _kv("deployment.environment.name", "production"),
                _kv("telemetry.sdk.language", "python"),
                _kv("telemetry.sdk.name", "opentelemetry"),
                _kv("telemetry.sdk.version", "1.36.0"),
            ]
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai_v2"
        ss.scope.version = "2.1b0"
        for _ in range(w.spans_per_request):
            pos = span_no % w.trace_size
            if pos == 0:
                trace_no += 1
                tenant = rnd.choice(TENANTS)
                user = f"user-{rnd.randrange(1000)}"
                feature = rnd.choice(FEATURES)
            trace_id = seed_tag + trace_no.to_bytes(12, "big")
            span_id = seed_tag + (span_no + 1).to_bytes(4, "big")
            start = base_ns + span_no * 1_000_000
            sp = ss.spans.add()
            sp.trace_id = trace_id
            sp.span_id = span_id
            sp.start_time_unix_nano = start
            sp.end_time_unix_nano = start + 850_000_000
            if pos == 0 and w.trace_size > 1:
                root_id = span_id
                sp.name = "POST /v1/chat"
                sp.kind = Span.SPAN_KIND_SERVER
                sp.attributes.extend(
                    [
                        _kv("http.request.method", "POST"),
                        _kv("http.route", "/v1/chat"),
                        _kv("http.response.status_code", 200),
                        _kv("url.scheme", "https"),
                        _kv("server.address", "api.example.com"),
                        _kv("user_agent.original", "example-mobile/5.2"),
                        _kv("tenant.id", tenant),
                        _kv("user.id", user),
                        _kv("feature", feature),
                    ]
                )
            else:
                provider, req_model, resp_model = rnd.choice(MODELS)
                if w.trace_size > 1:
                    sp.parent_span_id = root_id
                sp.name = f"chat {req_model}"
                sp.kind = Span.SPAN_KIND_CLIENT
                inp = rnd.randrange(50, 4000)
                sp.attributes.extend(
                    [
                        _kv("gen_ai.operation.name", "chat"),
                        _kv("gen_ai.provider.name", provider),
                        _kv("gen_ai.request.model", req_model),
                        _kv("gen_ai.response.model", resp_model),
                        _kv("gen_ai.response.id", f"resp-{w.seed:08x}-{span_no:09d}"),
                        _kv("gen_ai.usage.input_tokens", inp),
                        _kv("gen_ai.usage.output_tokens", rnd.randrange(10, 800)),
                        _kv("gen_ai.usage.cache_read.input_tokens", inp // 4),
                        _kv("gen_ai.request.temperature", 0.2),
                        _kv("gen_ai.request.max_tokens", 1024),
                        _kv("gen_ai.response.finish_reasons", ["stop"]),
                        _kv("server.address", "api.openai.com" if provider == "openai" else "api.anthropic.com"),
                        _kv("server.port", 443),
                        _kv("tenant.id", tenant),
                        _kv("user.id", user),
                    ]
                )
            span_no += 1
        out.append(req.SerializeToString())
    return out


def _trace_tag(seed: int) -> bytes:
    # Trace ids and span ids start with the seed, so restamping a request only has to swap these fixed-width bytes.
    return b"\xb7" + seed.to_bytes(3, "big")


def time_fields(body: bytes) -> np.ndarray:
    """The byte offsets of every span's start and end time in a request, one row of 8 per time (fixed64 fields 7
    and 8 of Span, trace.proto: a tag byte, then 8 little-endian bytes), for ``restamp`` to move them."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest.FromString(body)
    offsets: list[int] = []
    pos = 0
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                for tag, value in ((b"\x39", sp.start_time_unix_nano), (b"\x41", sp.end_time_unix_nano)):
                    at = body.find(tag + value.to_bytes(8, "little"), pos)
                    if at < 0:
                        raise ValueError("span time not found in the request's bytes")
                    offsets.append(at + 1)
                    pos = at + 9
    return np.array(offsets, np.int64)[:, None] + np.arange(8)


@dataclass(frozen=True)
class StampOffsets:
    """Where a built request carries its seed (``stamp_fields``): the byte offsets of the seed's 3 bytes in every
    trace id, span id and parent span id, of the 8 hex digits in every response id, and of every span time."""

    seed: int
    ids: np.ndarray  # (n, 3)
    responses: np.ndarray  # (n, 8)
    times: np.ndarray  # (n, 8)


def _offsets(body: bytes, prefix: bytes, skip: int, width: int) -> np.ndarray:
    starts = [m.start() + skip for m in re.finditer(re.escape(prefix), body)]
    return np.array(starts, np.int64).reshape(-1, 1) + np.arange(width)


def stamp_fields(body: bytes, seed: int) -> StampOffsets:
    """Every place ``restamp`` writes, found once before a run: the seed appears only as the prefix of each trace_id
    field (Span field 1: tag 0x0a, length 16), span_id and parent_span_id field (fields 2 and 4: tags 0x12 and 0x22,
    length 8) and in each response id (``resp-<seed as 8 hex digits>-``)."""
    tag = _trace_tag(seed)
    ids = np.concatenate([_offsets(body, t + tag, len(t) + 1, 3) for t in (b"\x0a\x10", b"\x12\x08", b"\x22\x08")])
    return StampOffsets(seed, ids, _offsets(body, f"resp-{seed:08x}-".encode(), 5, 8), time_fields(body))


def restamp(body: bytes, where: StampOffsets, new_seed: int, shift_ns: int = 0) -> bytes:
    """The same request with fresh trace ids, span ids and response ids (new traces, new calls), without
    re-serializing: the new seed is written at the offsets ``stamp_fields`` found (a server that keys spans by span
    id alone, as Phoenix does, would otherwise store a round's spans only once). With ``shift_ns``, every span's
    start and end also move by it: a long run's traffic then carries the times a live service would (span times
    that never advanced made every ledger lookup by time range cover the whole ledger, and made the dedup filter,
    which answers for recent times, useless after its first rotation).

    Writing at known offsets costs the client ~0.1 us a span, against ~3 for the four ``bytes.replace`` passes over
    the whole request it replaced: in the 2-core runs the client shares a CPU with the server (bench/README.md)."""
    buf = np.frombuffer(bytearray(body), np.uint8)
    buf[where.ids] = np.frombuffer(_trace_tag(new_seed)[1:], np.uint8)
    buf[where.responses] = np.frombuffer(f"{new_seed:08x}".encode(), np.uint8)
    if shift_ns:
        moved = buf[where.times].view("<u8") + np.uint64(shift_ns)  # fancy indexing gathers a contiguous copy
        buf[where.times] = moved.view(np.uint8).reshape(-1, 8)
    return buf.tobytes()


# --- the client process ---------------------------------------------------------------------------------


@dataclass
class ClientResult:
    sent_requests: int = 0
    sent_spans: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    t_start: float = 0.0
    t_end: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    rejected_spans: int = 0

    @property
    def elapsed_s(self) -> float:
        return self.t_end - self.t_start


def _send_all(
    target: str,
    requests: list[bytes],
    spans_per_request: int,
    concurrency: int,
    rate_rps: float | None,
    stamps: list[tuple[int, int]],
    duration_s: float | None,
    offsets: list[StampOffsets] | None = None,
    built_ns: int = 0,
) -> ClientResult:
    """Send ``requests`` once per (old seed, new seed) stamp, at most ``concurrency`` in flight, paced at
    ``rate_rps`` when given, stopping early after ``duration_s``. Retryable refusals are retried after 50 ms."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    res = ClientResult()
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=opts) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        # Bytes in, bytes out: the client must not spend its time serializing (requests are pre-built).
        export = ch.unary_unary(EXPORT_METHOD)
        slots = threading.BoundedSemaphore(concurrency)
        lock = threading.Lock()
        done = threading.Event()
        outstanding = [0]
        all_sent = [False]

        def send(body: bytes, t0: float) -> None:
            fut = export.future(body, timeout=300)

            def on_done(f: Any) -> None:
                try:
                    resp_bytes = f.result()
                except grpc.RpcError as e:
                    if e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                        with lock:
                            res.retries += 1
                        threading.Timer(0.05, send, (body, t0)).start()
                        return
                    with lock:
                        res.errors.append(f"{e.code().name}: {e.details()}")
                else:
                    lat = time.monotonic() - t0
                    resp = ExportTraceServiceResponse.FromString(resp_bytes)
                    with lock:
                        res.latencies_s.append(lat)
                        res.sent_requests += 1
                        res.sent_spans += spans_per_request
                        res.rejected_spans += resp.partial_success.rejected_spans
                slots.release()
                with lock:
                    outstanding[0] -= 1
                    if outstanding[0] == 0 and all_sent[0]:
                        done.set()

            fut.add_done_callback(on_done)

        res.t_start = time.monotonic()
        i = 0
        for old, new in stamps:
            # Each round's spans move to the clock's time (the newest starting now), as a live service's would.
            shift = time.time_ns() - built_ns if old != new else 0
            for j, base in enumerate(requests):
                now = time.monotonic()
                if duration_s is not None and now - res.t_start >= duration_s:
                    break
                if rate_rps is not None:
                    delay = res.t_start + i / rate_rps - now
                    if delay > 0:
                        time.sleep(delay)
                body = base if old == new or offsets is None else restamp(base, offsets[j], new, shift)
                slots.acquire()
                with lock:
                    outstanding[0] += 1
                send(body, time.monotonic())
                i += 1
        with lock:
            all_sent[0] = True
            if outstanding[0] == 0:
                done.set()
        done.wait()
        res.t_end = time.monotonic()
    return res


def _client_main(conn: Any, workloads: list[Workload], cpus: set[int] | None) -> None:
    """Child process: build every workload first (untimed), report ready, then run each send command."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    built_ns: list[int] = []
    built: list[list[bytes]] = []
    for w in workloads:
        built_ns.append(time.time_ns())  # what build_requests takes as now
        built.append(build_requests(w))
    offsets = [[stamp_fields(b, w.seed) for b in bodies] for w, bodies in zip(workloads, built, strict=True)]
    conn.send(("ready", [len(b) for b in built]))
    next_seed = 0x100000  # above every workload's own seed: restamped traces never collide with other runs
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        _, index, target, concurrency, rate_rps, rounds, duration_s = cmd
        w = workloads[index]
        stamps = [(w.seed, w.seed)] if rounds == 0 else [(w.seed, next_seed + r) for r in range(rounds)]
        next_seed += max(rounds, 0)
        conn.send(_send_all(target, built[index], w.spans_per_request, concurrency, rate_rps, stamps, duration_s,
                             offsets[index], built_ns[index]))


class LoadClient:
    """A separate process holding pre-serialized workloads; ``run`` sends one of them and waits for the result."""

    def __init__(self, workloads: list[Workload], cpus: set[int] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_client_main, args=(child, workloads, cpus), daemon=True)
        self._proc.start()
        msg = self._conn.recv()
        assert msg[0] == "ready", msg

    def run(
        self,
        index: int,
        target: str,
        *,
        concurrency: int = 8,
        rate_rps: float | None = None,
        rounds: int = 0,
        duration_s: float | None = None,
    ) -> ClientResult:
        """Send workload ``index``: as built (rounds=0, once per client), or ``rounds`` times with fresh ids."""
        self._conn.send(("run", index, target, concurrency, rate_rps, rounds, duration_s))
        result: ClientResult = self._conn.recv()
        return result

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process, every thread of it, and its live child processes (the
    server's workers), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (proc(5), fields 14 and 15)
    return total


def compiled_modules() -> str:
    """Which of the hot-path modules run compiled (`make compile`, docs/adr/0005): the figures depend on it."""
    import importlib

    names = ("processors._attribution", "processors._dialects", "processors._columns", "receiver._otlp")
    built = [n for n in names if not str(importlib.import_module(n).__file__).endswith(".py")]
    return "all compiled (mypyc)" if len(built) == len(names) else f"compiled: {', '.join(built) or 'none'}"


def machine() -> str:
    import platform

    import duckdb

    return (
        f"nproc={os.cpu_count()} python={platform.python_version()} duckdb={duckdb.__version__} "
        f"({platform.machine()}, {platform.system()}); hot paths {compiled_modules()}"
    )

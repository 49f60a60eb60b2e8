"""Arize Phoenix as the comparison server of bench/ingest.py (optional, not a dependency): start a `phoenix serve`
on loopback ports with its SQLite default, pinned like tenantledger's server, and count the spans it has stored.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Phoenix:
    proc: subprocess.Popen[bytes]
    grpc: str
    db: Path
    log: Path

    def stored_spans(self) -> int:
        """Spans in Phoenix's `spans` table (its SQLite file; read-only, so it never blocks Phoenix's writer)."""
        if not self.db.exists():
            return 0
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            row = con.execute("SELECT count(*) FROM spans").fetchone()
        except sqlite3.OperationalError:  # the table is created by Phoenix's migrations at start-up
            return 0
        finally:
            con.close()
        return int(row[0])

    def wait_stored(self, spans: int, t_start: float, timeout_s: float) -> tuple[int, float]:
        """Poll until ``spans`` are stored or ``timeout_s`` has passed since ``t_start`` (time.monotonic()); returns
        (spans stored, seconds from t_start to the poll that saw them)."""
        while True:
            stored = self.stored_spans()
            now = time.monotonic()
            if stored >= spans or now - t_start > timeout_s or self.proc.poll() is not None:
                return stored, now - t_start
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_phoenix(exe: str, workdir: Path, cpus: set[int], ready_timeout_s: float = 180.0) -> Phoenix:
    """`phoenix serve` with its working directory (SQLite file) under ``workdir``, HTTP and OTLP/gRPC on free loopback
    ports, its telemetry off, every thread pinned to ``cpus``; returns once its HTTP port answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(http_port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }

    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    log = workdir / "phoenix.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)
    phx = Phoenix(proc, f"127.0.0.1:{grpc_port}", workdir / "phoenix.db", log)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"phoenix serve exited with {proc.returncode}: {log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return phx
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            phx.stop()
            raise SystemExit(f"phoenix serve did not answer within {ready_timeout_s:.0f} s: {log.read_text()[-1500:]}")
        time.sleep(0.5)

"""A ledger that DuckDB invalidates (a checkpoint that fails) makes `tenantledger serve` exit non-zero with one line
that says so, instead of refusing every request forever; the restart settles every span it acknowledged.

The failure is DuckDB's own: its `debug_checkpoint_abort` setting makes the next checkpoint fail as a crash inside
one would, which invalidates the database exactly as the checkpoint that could not pin a block did under load
(bench/README.md, 2026-11-30). A launcher sets it before the server locks its configuration."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import yaml

from tests.conftest import _STARTUP
from tests.reliability._harness import export, make_requests, start_server

_LAUNCHER = """
import sys

import tenantledger.app as app

_harden = app.harden


def harden(con):
    con.execute("SET debug_checkpoint_abort = 'before_header'")
    _harden(con)


app.harden = harden
from tenantledger.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_invalidated_ledger_exits_nonzero_and_the_restart_settles_every_acked_span(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.duckdb"
    launcher = tmp_path / "launch.py"
    launcher.write_text(_LAUNCHER)
    config = tmp_path / "config.yaml"
    # A 1 MiB checkpoint threshold: the first automatic checkpoint comes after a few hundred spans.
    config.write_text(yaml.safe_dump({
        "processors": {"wait_duration_s": 0.2, "settle_interval_s": 0.05},
        "ledger": {"checkpoint_threshold_mib": 1},
    }))
    proc = subprocess.Popen(
        [sys.executable, str(launcher), "serve", "--config", str(config), "--ledger", str(ledger),
         "--grpc-endpoint", "127.0.0.1:0", "--http-endpoint", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        grpc_at = ""
        for line in proc.stdout:
            output.append(line)
            m = _STARTUP.search(line)
            if m:
                grpc_at = f"{m.group(1)}:{m.group(2)}"
                break
        assert grpc_at, "server did not start:\n" + "".join(output)
        out = proc.stdout
        pump = threading.Thread(target=lambda: output.extend(iter(out.readline, "")), daemon=True)
        pump.start()

        acked: set[tuple[str, str]] = set()
        refused = 0
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(grpc_at) as ch:
            for req in make_requests(400, traces_per_request=20):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                outcome = export(ch, req.body, timeout=10)
                if outcome.ok:
                    acked |= req.calls
                else:
                    refused += 1
        code = proc.wait(30)
        pump.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(output)
    print(f"\nacked {len(acked)} calls, {refused} requests refused, exit code {code}\n{text[-600:]}")
    assert code == 1, text
    assert "DuckDB invalidated the ledger" in text and "restart `tenantledger serve`" in text, text
    assert acked, "no request was acknowledged before the checkpoint failed"

    srv = start_server(tmp_path, ledger=ledger)  # an ordinary start: DuckDB replays the WAL, the spool is settled
    assert srv.stop() == 0
    settled = {(t, s) for t, s in srv.query("SELECT trace_id, span_id FROM llm_calls")}
    assert acked <= settled, f"{len(acked - settled)} acknowledged calls missing after the restart"

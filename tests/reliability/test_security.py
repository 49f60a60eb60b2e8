"""Security: the SQL endpoint is read-only and cannot reach files (directly and through a running server), TLS on
both transports, and no client- or tenant-controlled text reaches a log line unescaped."""

from __future__ import annotations

import io
import logging
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from ledger import LedgerError, open_read_only, run_query
from tenantledger._logging import SafeFormatter
from tests.reliability._harness import EXPORT, export, make_requests, start_server

SECRET = "tenantledger-secret-canary"


def hostile_queries(secret: Path, out: Path) -> list[str]:
    return [
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_parquet('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"SELECT * FROM glob('{secret.parent}/*')",
        f"SELECT * FROM sniff_csv('{secret}')",
        f"ATTACH '{out}.db' AS x",
        f"COPY (SELECT 1) TO '{out}'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "PRAGMA enable_external_access",
        "EXPLAIN ANALYZE SET enable_external_access = true",
        "EXPLAIN ANALYZE DELETE FROM calls",  # an EXPLAIN statement that would run its DELETE
        "EXPLAIN ANALYZE DROP TABLE calls",
        "EXPLAIN ANALYZE INSERT INTO ledger_meta VALUES ('x', 1)",
        "SELECT 1; DELETE FROM calls",
        "CHECKPOINT",
    ]


@pytest.fixture
def served_ledger(tmp_path: Path) -> Path:
    srv = start_server(tmp_path)
    with grpc.insecure_channel(srv.grpc) as ch:
        for r in make_requests(4, seed=51):
            assert export(ch, r.body).ok
    assert srv.stop() == 0
    (tmp_path / "secret.csv").write_text(f"a\n{SECRET}\n")
    return srv.ledger


def test_sql_cannot_read_files_or_write_directly(served_ledger: Path) -> None:
    tmp = served_ledger.parent
    out = tmp / "out.csv"
    con = open_read_only(served_ledger)
    refused = 0
    try:
        for q in hostile_queries(tmp / "secret.csv", out):
            with pytest.raises(LedgerError) as err:
                run_query(con, q)
            assert SECRET not in err.value.message
            refused += 1
        assert run_query(con, "SELECT count(*) FROM llm_calls").rows == [(20,)]
    finally:
        con.close()
    print(f"\nsecurity: direct sql refused={refused}")
    assert not out.exists() and not Path(f"{out}.db").exists()


def test_sql_cannot_read_files_or_write_through_the_server(served_ledger: Path) -> None:
    tmp = served_ledger.parent
    out = tmp / "out.csv"
    srv = start_server(tmp, ledger=served_ledger)
    refused = 0
    try:
        for q in hostile_queries(tmp / "secret.csv", out):
            r = subprocess.run([sys.executable, "-m", "tenantledger", "sql", "--ledger", str(served_ledger), q],
                               capture_output=True, text=True, timeout=60, cwd=tmp)
            assert r.returncode == 1, (q, r.stdout, r.stderr)
            assert SECRET not in r.stdout + r.stderr
            refused += 1
        r = subprocess.run([sys.executable, "-m", "tenantledger", "sql", "--ledger", str(served_ledger),
                            "SELECT count(*) AS n FROM llm_calls", "--format", "csv"],
                           capture_output=True, text=True, timeout=60, cwd=tmp)
        assert r.returncode == 0 and r.stdout.split() == ["n", "20"], r.stderr
    finally:
        assert srv.stop() == 0
    print(f"\nsecurity: sql through the server refused={refused}")
    assert not out.exists()
    assert srv.query("SELECT count(*) FROM llm_calls") == [(20,)]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_on_grpc_and_http(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    srv = start_server(tmp_path, {"receiver": {"tls": {"cert_file": str(cert), "key_file": str(key)}}})
    body = make_requests(1, seed=52)[0].body
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(srv.grpc, creds) as ch:
        assert export(ch, body).ok
    with grpc.insecure_channel(srv.grpc) as ch:  # plaintext to a TLS port: no export gets through
        with pytest.raises(grpc.RpcError):
            ch.unary_unary(EXPORT)(body, timeout=5)
    ctx = ssl.create_default_context(cafile=str(cert))
    https = srv.http.replace("http://", "https://")
    req = urllib.request.Request(f"{https}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError) as err:  # an untrusted certificate is refused by a verifying client
        urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context())
    assert isinstance(err.value.reason, ssl.SSLError)
    assert srv.stop() == 0
    assert srv.query("SELECT count(*) FROM llm_calls") == [(5,)]


HOSTILE_TENANT = "acme\n2026-01-01 00:00:00 ERROR tenantledger: forged line\x1b[31m\u2028"


def test_log_lines_escape_tenant_controlled_text() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tenantledger.test-escape")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("tenant %s over budget", HOSTILE_TENANT)
        try:
            raise ValueError(HOSTILE_TENANT)
        except ValueError:
            log.exception("settle failed")
    finally:
        log.removeHandler(handler)
    text = buf.getvalue()
    assert "\x1b" not in text and "\u2028" not in text
    lines = text.splitlines()
    # Only the two records start a line; every traceback line is marked as a continuation.
    assert [ln for ln in lines if not ln.startswith("  | ")] == [
        "WARNING tenant acme\\n2026-01-01 00:00:00 ERROR tenantledger: forged line\\x1b[31m\\u2028 over budget",
        "ERROR settle failed",
    ]


def test_server_log_escapes_a_hostile_request_line(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"service": {"log_level": "debug"}})
    host, port = srv.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /x\x1b[2J\x1b]0;pwned\x07 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        s.recv(4096)
    assert srv.stop() == 0
    out = "".join(srv.output)
    assert "pwned" in out  # the request was logged ...
    assert "\x1b" not in out and "\x07" not in out  # ... with its escape sequences neutralised

"""A real PostgreSQL server for the scale-out tests: Debian's binaries, a throw-away data dir, a free loopback port.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (runuser). `.ci/run` installs the
package when it is missing; only where it truly cannot be found do these tests skip, saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Postgres:
    def __init__(self, bindir: Path, root: Path, port: int, as_user: list[str]) -> None:
        self.bindir, self.root, self.port, self._as = bindir, root, port, as_user
        self._n = 0

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bindir / tool), *args], check=True, capture_output=True, text=True)

    def new_database(self) -> str:
        """A fresh database; returns its libpq DSN."""
        self._n += 1
        name = f"lake{self._n}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"host=127.0.0.1 port={self.port} dbname={name} user=postgres"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package `postgresql`; `.ci/run` installs it)")
    root = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    pg = Postgres(bindir, root, port, as_user)
    data = root / "data"
    pg.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    # fsync off: a test cluster that is thrown away; listen on loopback only.
    pg.run("pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    try:
        yield pg
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

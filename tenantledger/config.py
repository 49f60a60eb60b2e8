"""The one typed configuration (YAML): every stage's section, unknown keys rejected, checked before any port opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ledger import SharedLedgerConfig
from processors import ProcessorsConfig
from processors._pricing import PricingConfig
from receiver import ReceiverConfig
from tenantledger.finops._anomalies import AnomaliesConfig
from tenantledger.finops._budgets import BudgetsConfig
from tenantledger.finops._statement import StatementsConfig


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LedgerConfig(_Strict):
    path: Path = Path("tenantledger.duckdb")
    """The embedded DuckDB ledger file; the receiver's spool of acknowledged spans is the directory beside it,
    ``<path>.spool`` (docs/adr/0004)."""
    billing_account_id: str = "tenantledger"
    """FOCUS BillingAccountId of the exported rows (your platform's account)."""
    billing_account_name: str = "LLM platform"
    duckdb_memory_limit_mib: int = Field(default=1024, ge=64)
    """Cap of DuckDB's buffer cache in `export` (larger queries spill to `<ledger>.tmp`), so the process's memory
    stays bounded however large the ledger grows."""
    serve_duckdb_memory_limit_mib: int = Field(default=256, ge=64)
    """The same cap in `serve` (ingest and the query API). Smaller, because DuckDB keeps every block it has written
    or read until its cap forces it out: under sustained ingest its cache grows with the ledger (~130 bytes a call)
    until it reaches the cap, so the cap sets the server's memory, and the time it takes to get there is how long
    the server's memory keeps rising (at 256 MiB and 11 200 spans/s, ~150 s: bench/README.md, 2026-12-01 18:30).
    The rows appended since the last checkpoint stay in it (up to ~4x the checkpoint threshold's WAL), and a
    checkpoint that cannot get memory invalidates the database until a restart (seen at 256 MiB with a 128 MiB
    threshold and DuckDB's default row groups, 2026-11-30 18:00), so the threshold is at most a sixteenth of this
    cap (an eighth, 16 MiB under 128, invalidated it under sustained load, 2026-12-01 17:30). Larger queries spill
    to `<ledger>.tmp`; the ledger file's blocks that fall out of this cache stay in the operating system's page
    cache."""
    checkpoint_threshold_mib: int = Field(default=16, ge=1)
    """WAL size at which DuckDB checkpoints (writes the tables to the ledger file and empties the WAL). The rows
    appended since the last checkpoint stay in DuckDB's cache at up to ~4x their WAL size (`IN_MEMORY_TABLE` in
    `duckdb_memory()`: ≤ 31 MiB at 8, up to 65 MiB at 16), so the threshold is how far the server's memory swings
    with each checkpoint. Each checkpoint recompresses the newest, part-filled row group, so under steady load
    (~4 500-call transactions) a small threshold costs CPU: one core's ledger writes at 9 000 spans/s took 22.0 µs
    a call at 8 MiB, 74 % of it in checkpoints, and 14.0 at 16 MiB (bench/README.md, 2026-12-01 16:50); at 8 MiB
    one core fell behind an 80 % load after ~3 minutes, at 16 it kept up for 10. Larger: a longer WAL replay after
    a crash. Never more than a sixteenth of serve's DuckDB cache."""
    duckdb_threads: int | None = Field(default=None, ge=1)
    """DuckDB's worker threads in `serve`. Unset: the CPUs this process may run on (its affinity mask), less the
    worker processes it runs (receiver.decode_workers, processors.settle_workers), at least one. DuckDB itself
    counts the machine's CPUs, so on one CPU of two it ran two threads that took turns: a 512-span commit (to the
    spool, then a DuckDB table) cost 6.3 ms of CPU with two, 4.4 ms with one; and on two CPUs beside three worker
    processes one thread settled 6 of 8 bursts faster than two (bench/README.md). Queries in `serve` run on these
    threads too."""
    key_filter_mib: int = Field(default=32, ge=1)
    """Memory of each of serve's two in-memory filters, allocated at start: the dedup keys of recent calls (a
    fresh settlement looks for earlier reports of its calls in the ledger only when the filter may hold one) and
    the trace ids settled in the last day (a late span's trace is looked up only then). 4 bytes a key, in four
    generations of which the oldest is emptied when the newest is full: 32 MiB holds 6.3-8.4 M keys, 10-14 minutes
    of calls at 10 000 a second, and a whole hour (the dedup window) below ~1 750 a second. Under more traffic than
    that, two reports of one call are matched when they started within what it holds (/metrics:
    tenantledger_dedup_window_seconds; a warning is logged once), and a settlement of calls older than that is
    looked up in the ledger instead (correct, slower). Fixed, so that the server's memory does not rise as they
    fill (bench/README.md, 2026-12-01 18:30)."""
    reattach_after_calls: int = Field(default=0, ge=0)
    """In `serve`, detach the ledger file and attach it again after this many calls were written to it (0: never,
    the default). While a DuckDB file is attached, DuckDB keeps the metadata of each row group written (column
    segments and their statistics) in the process's heap, ~4 bytes a call with the ledger's row groups, so a server
    that runs for months grows by that (bench/README.md, 2026-12-01 12:40). Re-attaching gives it back, but DuckDB
    1.5 (the pinned release) loads the metadata of a whole table again at the second checkpoint that table has after
    it, so under steady writes the memory comes back within a minute; DuckDB 2.0 keeps it unloaded (bench/README.md,
    2026-12-02), and the pin waits for the lake's extension wheels (docs/adr/0002). Hence off by default: each
    re-attach takes a checkpoint and a fraction of a second between two ledger writes (ingest goes on into the
    spool; queries wait), and DuckDB's cache starts empty after it. A query that holds the ledger for longer than a
    second (an export) puts it off by 30 s."""
    shared: SharedLedgerConfig = SharedLedgerConfig()
    """Publish settled rows to a shared DuckLake that N instances write and any DuckDB reads (docs/scaling.md)."""


class ApiTokenConfig(_Strict):
    token: str | None = None
    """The bearer token (``Authorization: Bearer <token>``); or read it from ``token_file``."""
    token_file: Path | None = None
    tenant: str | None = None
    """None: an operator token (every tenant, export, metrics). A tenant id: that tenant's rows only."""

    @model_validator(mode="after")
    def _one_source(self) -> ApiTokenConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token or token_file")
        if self.token_file is not None and not self.token_file.is_file():
            raise ValueError(f"token_file not found: {self.token_file}")
        return self

    def value(self) -> str:
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        return self.token_file.read_text().strip()


class ApiConfig(_Strict):
    tokens: list[ApiTokenConfig] = []
    """Tokens of the query API (SQL, budget check, FOCUS export, dashboard, /metrics), separate from ingest auth.
    Empty: the API is open to whoever reaches the HTTP endpoint, so keep it on loopback."""


class ServiceConfig(_Strict):
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM/SIGINT: how long in-flight requests may take before the listeners close."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Strict):
    receiver: ReceiverConfig = ReceiverConfig()
    processors: ProcessorsConfig = ProcessorsConfig()
    pricing: PricingConfig = PricingConfig()
    ledger: LedgerConfig = LedgerConfig()
    service: ServiceConfig = ServiceConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    anomalies: AnomaliesConfig = AnomaliesConfig()
    statements: StatementsConfig = StatementsConfig()
    api: ApiConfig = ApiConfig()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML (if given), apply overrides (CLI flags), validate. Raises ConfigError naming the key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must be a YAML mapping of sections (receiver, processors, ...)")
        data = loaded
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"invalid configuration ({source}): " + "; ".join(problems)) from e

"""Configuration of the shared ledger (the `ledger.shared:` section): where N instances publish their settled rows.

Unset (no ``catalog_dsn``) means the embedded single-file DuckDB ledger only, the default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SharedLedgerConfig(BaseModel):
    """A DuckLake (docs/adr/0002): catalog in PostgreSQL, data as Parquet files under ``data_path``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_dsn: str | None = None
    """libpq connection string of the PostgreSQL catalog, e.g. ``host=pg port=5432 dbname=ledger user=tl``.
    Passwords: use the standard ``PGPASSWORD``/``PGPASSFILE`` environment rather than the file."""
    data_path: str | None = None
    """Directory all instances (and readers) share for the Parquet data files; required with catalog_dsn."""
    instance_id: str | None = None
    """This instance's name in the lake; must be unique and stable across restarts. Default: host name plus a
    hash of the local ledger path."""
    publish_interval_s: float = Field(default=5.0, gt=0)
    """How often settled traces are published (one lake commit per interval, so few snapshots and files)."""
    publish_batch_traces: int = Field(default=20_000, gt=0)
    """Most traces per lake commit."""

    @model_validator(mode="after")
    def _data_path_with_catalog(self) -> SharedLedgerConfig:
        if self.catalog_dsn is not None and not self.data_path:
            raise ValueError("ledger.shared.data_path is required with catalog_dsn (the shared Parquet directory)")
        return self

    @property
    def enabled(self) -> bool:
        return self.catalog_dsn is not None

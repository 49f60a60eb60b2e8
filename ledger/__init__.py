"""Stage 3 — the ledger: priced usage records in DuckDB, the contract views, read-only SQL, FOCUS export.

Receives ``processors.Settlement``; optionally publishes to a shared DuckLake (``ledger._lake``).
"""

from ledger._errors import (
    LedgerError,
    LedgerInvalidated,
    LedgerLocked,
    LedgerNotFound,
    QueryError,
    ReadOnlyViolation,
)
from ledger._file import Cursors, LedgerFile
from ledger._lake import (
    LakePublisher,
    check_lake_query,
    connect_lake,
    default_instance_id,
    ensure_schema,
    open_lake_read_only,
    query_lake,
)
from ledger._ledger import Ledger
from ledger._query import QueryResult, QueryService, check_read_only, harden, jsonable, open_read_only, run_query
from ledger._scope import ScopedViews
from ledger._views import VIEWS
from ledger.config import SharedLedgerConfig

__all__ = [
    "VIEWS",
    "Cursors",
    "LakePublisher",
    "Ledger",
    "LedgerError",
    "LedgerFile",
    "LedgerInvalidated",
    "LedgerLocked",
    "LedgerNotFound",
    "QueryError",
    "QueryResult",
    "QueryService",
    "ReadOnlyViolation",
    "ScopedViews",
    "SharedLedgerConfig",
    "check_lake_query",
    "check_read_only",
    "connect_lake",
    "default_instance_id",
    "ensure_schema",
    "harden",
    "jsonable",
    "open_lake_read_only",
    "open_read_only",
    "query_lake",
    "run_query",
]

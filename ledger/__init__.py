"""Stage 3 — the ledger: priced usage records in DuckDB, the contract views, read-only SQL, FOCUS export.

Receives ``processors.Settlement``.
"""

from ledger._errors import LedgerError, LedgerLocked, LedgerNotFound, QueryError, ReadOnlyViolation
from ledger._ledger import Ledger
from ledger._query import QueryResult, QueryService, check_read_only, harden, jsonable, open_read_only, run_query
from ledger._scope import ScopedViews
from ledger._views import VIEWS

__all__ = [
    "VIEWS",
    "Ledger",
    "LedgerError",
    "LedgerLocked",
    "LedgerNotFound",
    "QueryError",
    "QueryResult",
    "QueryService",
    "ReadOnlyViolation",
    "ScopedViews",
    "check_read_only",
    "harden",
    "jsonable",
    "open_read_only",
    "run_query",
]

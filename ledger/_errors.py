"""Domain errors of the ledger; the CLI turns each into one line with the fix."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ReadOnlyViolation(LedgerError):
    pass


class QueryError(LedgerError):
    pass


class LedgerLocked(LedgerError):
    pass


class LedgerNotFound(LedgerError):
    pass


class LedgerInvalidated(LedgerError):
    """DuckDB invalidated the ledger (a checkpoint failed), or the file could not be attached again: every read and
    write fails until the server reopens it."""

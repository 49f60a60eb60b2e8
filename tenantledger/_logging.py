"""Log formatting that keeps client- and tenant-controlled text from forging or corrupting log lines: control
characters (newlines, ANSI escapes, ...) in a message are escaped, and traceback lines are marked as such."""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """Control characters as visible escapes (``\\n``, ``\\x1b``); the rest unchanged."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    """One log record is one line: the message is escaped whatever its arguments held (a tenant id, a request
    path, an exception message). A traceback keeps its lines, each prefixed so none can pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API name)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802
        text = super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join("  | " + escape(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("  | " + escape(line) for line in stack_info.splitlines())


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])

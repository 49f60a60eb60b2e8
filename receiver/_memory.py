"""The receiver's memory limiter, in the spirit of the Collector's memory_limiter processor: while the process's
resident memory is above the soft limit, new exports are refused with a retryable error instead of being taken in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from collections.abc import Callable

from receiver._errors import Overloaded

log = logging.getLogger("tenantledger.receiver")

# Refuse above this share of the limit: the requests already admitted (up to max_inflight_requests) still need
# room to decode and commit, as the Collector keeps spike_limit_mib (default 20%) below limit_mib.
SOFT_SHARE = 0.8
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc); Python's allocator keeps them otherwise."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryLimiter:
    """Threading: ``check`` is called concurrently by the export threads."""

    def __init__(self, limit_mib: float | None, retry_after_s: float) -> None:
        self.relief: list[Callable[[], None]] = []
        """Called (at most once a second) above the soft limit: drop caches that can be rebuilt."""
        self.limit_bytes = int(limit_mib * 1024 * 1024) if limit_mib else None
        self.soft_bytes = int(self.limit_bytes * SOFT_SHARE) if self.limit_bytes else None
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._last_collect = 0.0
        if self.limit_bytes is not None and rss_bytes() is None:
            log.warning("receiver.memory_limit_mib is set but this platform does not expose the process's memory; "
                        "the limit is not enforced")
            self.limit_bytes = self.soft_bytes = None

    def check(self) -> None:
        """Raise Overloaded (retryable) while resident memory is above the soft limit."""
        if self.soft_bytes is None:
            return
        rss = rss_bytes()
        if rss is None or rss <= self.soft_bytes:
            return
        # Above the soft limit: first try to give garbage back (at most once a second, it costs a full GC).
        with self._lock:
            now = time.monotonic()
            collect = now - self._last_collect >= 1.0
            if collect:
                self._last_collect = now
        if collect:
            for shed in self.relief:
                shed()
            gc.collect()
            _malloc_trim()
            rss = rss_bytes()
            if rss is None or rss <= self.soft_bytes:
                return
        raise Overloaded(
            f"memory use {rss // 2**20} MiB is above {SOFT_SHARE:.0%} of receiver.memory_limit_mib "
            f"({self.limit_bytes // 2**20 if self.limit_bytes else 0} MiB); retry later",
            retry_after_s=self._retry_after_s,
        )

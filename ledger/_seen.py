"""Approximate membership of values already in the ledger (settled trace ids, dedup keys): a Bloom filter that
lets a settlement skip the whole-table lookups for values it has certainly never seen.
"""

from __future__ import annotations

from collections.abc import Iterable

_K = 7  # hash functions: ~1 % false positives at 10 bits per value


class SeenFilter:
    """A scalable Bloom filter of strings. ``maybe_seen`` is False only for a value never added: the ledger then
    knows, without a query, that no row carries it; True is checked with SQL. Python's ``hash`` is salted per
    process, which is fine: the filter is rebuilt from the ledger at every start.

    Threading: used by the ledger writer under its lock only.
    """

    def __init__(self, capacity: int = 1 << 20) -> None:
        self._filters: list[tuple[bytearray, int, int]] = []  # (bits, size in bits, capacity)
        self._count = 0  # values added to the newest filter
        self._grow(max(capacity, 1024))

    def _grow(self, capacity: int) -> None:
        size = capacity * 10  # bits
        self._filters.append((bytearray(size // 8 + 1), size, capacity))
        self._count = 0

    def add(self, value: str) -> None:
        bits, size, capacity = self._filters[-1]
        if self._count >= capacity:
            self._grow(capacity * 2)  # the false-positive rate stays bounded as the ledger grows
            bits, size, capacity = self._filters[-1]
        h = hash(value) & 0xFFFF_FFFF_FFFF_FFFF
        h1, h2 = h & 0xFFFF_FFFF, (h >> 32) | 1  # double hashing: position i = h1 + i*h2
        for i in range(_K):
            p = (h1 + i * h2) % size
            bits[p >> 3] |= 1 << (p & 7)
        self._count += 1

    def add_all(self, values: Iterable[str | None]) -> None:
        for v in values:
            if v is not None:
                self.add(v)

    def maybe_seen(self, value: str) -> bool:
        h = hash(value) & 0xFFFF_FFFF_FFFF_FFFF
        h1, h2 = h & 0xFFFF_FFFF, (h >> 32) | 1
        for bits, size, _ in self._filters:
            for i in range(_K):
                p = (h1 + i * h2) % size
                if not bits[p >> 3] & (1 << (p & 7)):
                    break
            else:
                return True
        return False

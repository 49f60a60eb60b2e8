"""Which dedup keys the ledger may already hold: a Bloom filter, so that a fresh settlement looks for earlier reports
of its calls only when one may exist, instead of scanning the ledger's dedup keys on every settle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_MASK32 = 0xFFFF_FFFF


class KeyFilter:
    """A Bloom filter of strings: ``maybe`` never misses a key that was added (no false negatives); it wrongly
    reports an unseen key with probability ~2.5e-5 while at most ``capacity`` keys were added (32 bits and six
    probes a key), so a 900-call settlement finds a false positive about once in 45.

    Keys are hashed with Python's ``hash``, salted per process: the filter lives only in the process that built
    it. Not thread-safe: the ledger calls it under its own lock."""

    BITS_PER_KEY = 32
    PROBES = 6

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1024)
        self._m = self.capacity * self.BITS_PER_KEY
        self._bits = bytearray(self._m // 8)
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def add(self, keys: Iterable[str]) -> None:
        bits, m, n = self._bits, self._m, 0
        for key in keys:
            h = hash(key)
            a, b = h & _MASK32, ((h >> 32) & _MASK32) | 1  # double hashing: probe i is a + i*b (Kirsch-Mitzenmacher)
            for _ in range(self.PROBES):
                p = a % m
                bits[p >> 3] |= 1 << (p & 7)
                a += b
            n += 1
        self.count += n

    def maybe(self, keys: Sequence[str]) -> list[str]:
        """The keys that may have been added (every added one, plus rare false positives)."""
        bits, m = self._bits, self._m
        out: list[str] = []
        for key in keys:
            h = hash(key)
            a, b = h & _MASK32, ((h >> 32) & _MASK32) | 1
            for _ in range(self.PROBES):
                p = a % m
                if not bits[p >> 3] & (1 << (p & 7)):
                    break
                a += b
            else:
                out.append(key)
        return out

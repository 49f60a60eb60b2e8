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


class TimedFilter:
    """Keys with a time (ns since the epoch), in generations of KeyFilter: answers "may this key have been added?"
    for every key whose time is at or after ``covers_from_ns``.

    When the newest generation is full, a new one starts with room for as many keys as all live ones hold (so
    generations double, and their false-positive rates add up to a few times KeyFilter's). A generation whose
    newest key is older than ``keep_ns`` before the newest key added is dropped, and ``covers_from_ns`` moves past
    it. So is the oldest generation while the filter holds more than ``max_keys`` (traffic whose times do not
    advance, such as a replay, ages nothing out): memory stays bounded (4-8 bytes a key), and the settlements it no
    longer covers are looked up exactly. Built once from the ledger at start; never re-read from it after: rebuilding
    a full filter from the ledger re-read the window's keys (~3 s of settle-thread CPU per million keys, a stall
    that the 4-minute sustained benchmark showed as a backlog), and a rebuild only covered settlements after the
    newest key it read.

    Not thread-safe: the ledger calls it under its own lock."""

    def __init__(self, keys: Sequence[str], newest_ns: int, *, covers_from_ns: int, keep_ns: int,
                 min_capacity: int, max_keys: int = 1 << 25) -> None:
        self.covers_from_ns = covers_from_ns
        self._keep_ns = keep_ns
        self._max_keys = max_keys
        self._min_capacity = min_capacity
        first = _Generation(KeyFilter(max(min_capacity, 2 * len(keys))), newest_ns)
        first.keys.add(keys)
        self._generations = [first]
        self._newest_ns = newest_ns

    @property
    def generations(self) -> int:
        return len(self._generations)

    @property
    def count(self) -> int:
        return sum(g.keys.count for g in self._generations)

    def add(self, keys: Sequence[str], newest_ns: int) -> None:
        """Add ``keys``, the newest of which has time ``newest_ns``."""
        current = self._generations[-1]
        if current.keys.full:
            current = _Generation(KeyFilter(max(self._min_capacity, self.count)), newest_ns)
            self._generations.append(current)
        current.keys.add(keys)
        current.newest_ns = max(current.newest_ns, newest_ns)
        self._newest_ns = max(self._newest_ns, newest_ns)
        horizon = self._newest_ns - self._keep_ns
        while len(self._generations) > 1 and (self._generations[0].newest_ns < horizon
                                               or self.count > self._max_keys):
            dropped = self._generations.pop(0)
            self.covers_from_ns = max(self.covers_from_ns, dropped.newest_ns + 1)

    def maybe(self, keys: Sequence[str]) -> list[str]:
        """The keys that may have been added (every added one still covered, plus rare false positives)."""
        if len(self._generations) == 1:
            return self._generations[0].keys.maybe(keys)
        hits: set[str] = set()
        for g in self._generations:
            hits.update(g.keys.maybe(keys))
        return [k for k in keys if k in hits]


class _Generation:
    __slots__ = ("keys", "newest_ns")

    def __init__(self, keys: KeyFilter, newest_ns: int) -> None:
        self.keys, self.newest_ns = keys, newest_ns

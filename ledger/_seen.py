"""Which dedup keys the ledger may already hold: a Bloom filter, so that a fresh settlement looks for earlier reports
of its calls only when one may exist, instead of scanning the ledger's dedup keys on every settle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_MASK32 = np.uint64(0xFFFF_FFFF)


class KeyFilter:
    """A Bloom filter of strings: ``maybe`` never misses a key that was added (no false negatives); it wrongly
    reports an unseen key with probability ~3.4e-7 while at most ``capacity`` keys were added (32 bits and 16
    probes a key), so a 9 000-call settlement finds a false positive about once in 330. That holds for the sizes the
    ledger builds (a million keys or more); a filter of 1 024 keys measured ~1e-5 (double hashing: keys whose two
    hashes agree modulo the size share every probe).

    Each false positive costs a look at the ledger's dedup keys of the last hour, which grows with the traffic: with
    6 probes (~2.5e-5) that look was 0.9 µs a span after 1.5 M spans and 4.2 µs after 3.6 M, the one cost of a
    ledger write that grew (bench/README.md, 2026-12-01). The probes are computed for all keys at once with numpy;
    in Python, 6 probes cost ~2 µs a key.

    Keys are hashed with Python's ``hash``, salted per process: the filter lives only in the process that built
    it. Not thread-safe: the ledger calls it under its own lock."""

    BITS_PER_KEY = 32
    PROBES = 16

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1024)
        self._m = np.uint64(self.capacity * self.BITS_PER_KEY)
        # Written through at once (np.zeros would leave the pages to be faulted in as probes land on them): the
        # filter's memory is resident from the start, not creeping up as it fills.
        self._bits = np.empty(self.capacity * self.BITS_PER_KEY // 8, np.uint8)
        self._bits.fill(0)
        self._steps = np.arange(self.PROBES, dtype=np.uint64)
        self.count = 0

    def clear(self) -> None:
        """Forget every key, keeping the memory."""
        self._bits.fill(0)
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes)

    def _positions(self, h: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Bit positions of the hashes ``h`` for the probes ``steps``, one row per key: double hashing, probe i at
        a + i*b (Kirsch-Mitzenmacher)."""
        a, b = h & _MASK32, ((h >> np.uint64(32)) & _MASK32) | np.uint64(1)
        p: np.ndarray = (a[:, None] + b[:, None] * steps) % self._m  # < 2**36: no overflow
        return p

    def _test(self, p: np.ndarray) -> np.ndarray:
        hit: np.ndarray = ((self._bits[p >> np.uint64(3)] >> (p & np.uint64(7)).astype(np.uint8)) & 1).all(axis=1)
        return hit

    def add(self, keys: Iterable[str]) -> None:
        keys = keys if isinstance(keys, Sequence) else list(keys)
        if not keys:
            return
        p = self._positions(hashes(keys), self._steps).ravel()
        idx = (p >> np.uint64(3)).astype(np.intp)
        val = np.left_shift(np.uint8(1), (p & np.uint64(7)).astype(np.uint8))
        # Set the bits by fancy indexing, again until every one is set: of several writes to the same byte only the
        # last one lands, so a byte probed twice needs a second round (one or two rounds; 4x faster than .at).
        bits = self._bits
        while True:
            cur = bits[idx]
            missing = (cur & val) != val
            if not missing.any():
                break
            bits[idx[missing]] = cur[missing] | val[missing]
        self.count += len(keys)

    def hits(self, h: np.ndarray) -> np.ndarray:
        """Which of the hashes (``hashes(keys)``) may have been added, as a boolean mask. The first four probes sift
        out most unseen keys (a settlement's keys are nearly all new), the other twelve are looked at only for the
        keys left: ~3x cheaper than all sixteen for every key."""
        hit = self._test(self._positions(h, self._steps[:4]))
        rest = np.flatnonzero(hit)
        if rest.size:
            hit[rest] = self._test(self._positions(h[rest], self._steps[4:]))
        return hit

    def maybe(self, keys: Sequence[str]) -> list[str]:
        """The keys that may have been added (every added one, plus rare false positives)."""
        if not keys:
            return []
        return [keys[i] for i in np.flatnonzero(self.hits(hashes(keys))).tolist()]


def hashes(keys: Sequence[str]) -> np.ndarray:
    """The keys' hashes as unsigned 64-bit integers (Python's ``hash``: computed once per string object)."""
    return np.fromiter(map(hash, keys), np.int64, len(keys)).view(np.uint64)


class TimedFilter:
    """Keys with a time (ns since the epoch), in a ring of ``generations`` KeyFilters of equal size allocated at
    start: answers "may this key have been added?" for every key whose time is at or after ``covers_from_ns``.

    Memory is fixed by ``capacity`` (4 bytes a key) from the start, whatever the traffic: under sustained load the
    earlier design (generations doubling as they filled, up to 2^25 keys) kept the server's memory rising for the
    whole window (bench/README.md, 2026-12-01 18:30). When the current generation is full, the oldest one is
    emptied and takes the new keys; a generation whose newest key is older than ``keep_ns`` before the newest key
    added is emptied too. Either way ``covers_from_ns`` moves past the emptied generation's newest key, and the
    settlements it no longer covers are looked up exactly. The false-positive rates of the live generations add
    up (a few times KeyFilter's). Built once from the ledger at start (its newest keys, up to the capacity less one
    generation); never re-read from it after: rebuilding a full filter from the ledger re-read the window's keys
    (~3 s of settle-thread CPU per million keys, a stall that the 4-minute sustained benchmark showed as a backlog).

    Not thread-safe: the ledger calls it under its own lock."""

    def __init__(self, *, covers_from_ns: int, keep_ns: int, capacity: int, generations: int = 4) -> None:
        """An empty filter; the keys known at start are added oldest first, at most ``room`` of them (whoever
        reads them moves ``covers_from_ns`` past the newest one it leaves out)."""
        self.covers_from_ns = covers_from_ns
        self._keep_ns = keep_ns
        generations = max(2, generations)
        self._ring = [_Generation(KeyFilter(max(1024, capacity // generations)), covers_from_ns)
                      for _ in range(generations)]
        self._current = 0
        self._newest_ns = covers_from_ns

    @property
    def newest_ns(self) -> int:
        """The time of the newest key added (``covers_from_ns`` while none was)."""
        return self._newest_ns

    @property
    def generation_keys(self) -> int:
        """Keys one generation holds."""
        return self._ring[0].keys.capacity

    @property
    def room(self) -> int:
        """How many keys the filter holds at most while still taking more without forgetting any: all generations
        but one (the keys to load at start)."""
        return (len(self._ring) - 1) * self.generation_keys

    @property
    def generations(self) -> int:
        """Generations holding keys."""
        return sum(1 for g in self._ring if g.keys.count)

    @property
    def count(self) -> int:
        return sum(g.keys.count for g in self._ring)

    @property
    def nbytes(self) -> int:
        """Memory held by the generations' bits: fixed at start (``capacity`` keys, 4 bytes a key)."""
        return sum(g.keys.nbytes for g in self._ring)

    def add(self, keys: Sequence[str], newest_ns: int, oldest_ns: int | None = None) -> None:
        """Add ``keys``, the newest of which has time ``newest_ns`` and the oldest ``oldest_ns`` (the same if
        None)."""
        self._add_to_current(keys, newest_ns, newest_ns if oldest_ns is None else oldest_ns)
        horizon = self._newest_ns - self._keep_ns
        for g in self._ring:
            if g.keys.count and g.newest_ns < horizon and g is not self._ring[self._current]:
                self._empty(g)

    def _add_to_current(self, keys: Sequence[str], newest_ns: int, oldest_ns: int) -> None:
        current = self._ring[self._current]
        if current.keys.count and current.keys.count + len(keys) > current.keys.capacity:
            self._current = (self._current + 1) % len(self._ring)
            current = self._ring[self._current]
            if current.keys.count:
                self._empty(current)
        if keys and not current.keys.count:
            current.oldest_ns = oldest_ns
        current.keys.add(keys)
        current.newest_ns = max(current.newest_ns, newest_ns)
        current.oldest_ns = min(current.oldest_ns, oldest_ns)
        self._newest_ns = max(self._newest_ns, newest_ns)

    def _empty(self, g: _Generation) -> None:
        self.covers_from_ns = max(self.covers_from_ns, g.newest_ns + 1)
        g.keys.clear()
        g.newest_ns = self.covers_from_ns - 1  # its next keys set it; none of them is answered for below this

    def maybe(self, keys: Sequence[str]) -> list[str]:
        """The keys that may have been added (every added one still covered, plus rare false positives)."""
        if not keys:
            return []
        live = [g for g in self._ring if g.keys.count]
        if not live:
            return []
        h = hashes(keys)
        hit = live[0].keys.hits(h)
        for g in live[1:]:
            hit |= g.keys.hits(h)
        return [keys[i] for i in np.flatnonzero(hit).tolist()]

    def added_since_ns(self, keys: Sequence[str]) -> int | None:
        """A time at or before the time each of ``keys`` was last added with, if each may have been: the oldest
        time of the generations that may hold it (a false positive in a newer generation cannot raise the bound
        above that of the generation really holding the key). None if some key is in no generation, or none were
        given: what it was added with is not known."""
        live = [g for g in self._ring if g.keys.count]
        if not keys or not live:
            return None
        h = hashes(keys)
        unknown = np.iinfo(np.int64).max
        since = np.full(len(keys), unknown, np.int64)
        for g in live:
            hit = g.keys.hits(h)
            since[hit] = np.minimum(since[hit], g.oldest_ns)
        if (since == unknown).any():
            return None
        return int(since.min())


class _Generation:
    __slots__ = ("keys", "newest_ns", "oldest_ns")

    def __init__(self, keys: KeyFilter, newest_ns: int) -> None:
        self.keys, self.newest_ns = keys, newest_ns
        self.oldest_ns = newest_ns  # of the keys it holds (set by the first add after it was emptied)

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
        self._bits = np.zeros(self.capacity * self.BITS_PER_KEY // 8, np.uint8)
        self._steps = np.arange(self.PROBES, dtype=np.uint64)
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

    @property
    def nbytes(self) -> int:
        """Memory held by the generations' bits (up to ``max_keys`` keys' worth, 4-8 bytes a key)."""
        return sum(g.keys.nbytes for g in self._generations)

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
        if not keys:
            return []
        h = hashes(keys)
        hit = self._generations[0].keys.hits(h)
        for g in self._generations[1:]:
            hit |= g.keys.hits(h)
        return [keys[i] for i in np.flatnonzero(hit).tolist()]


class _Generation:
    __slots__ = ("keys", "newest_ns")

    def __init__(self, keys: KeyFilter, newest_ns: int) -> None:
        self.keys, self.newest_ns = keys, newest_ns

"""The ledger's filter of dedup keys: it may say a key was seen when it was not (rarely), never the reverse."""

from __future__ import annotations

from ledger._seen import KeyFilter, TimedFilter


def test_every_added_key_is_reported_and_unseen_keys_rarely_are() -> None:
    f = KeyFilter(100_000)
    added = [f"openai:chatcmpl-{i:09d}" for i in range(100_000)]
    f.add(added)
    assert f.maybe(added) == added
    unseen = [f"anthropic:msg_{i:09d}" for i in range(1_000_000)]
    # Designed for ~3.4e-7 at capacity: 0.34 expected in a million (6 probes, as before, gave ~25).
    assert len(f.maybe(unseen)) <= 5
    assert not f.full and f.count == 100_000


def test_full_once_past_capacity() -> None:
    f = KeyFilter(1024)
    f.add(str(i) for i in range(1024))
    assert not f.full
    f.add(["one more"])
    assert f.full and f.nbytes == 1024 * 32 // 8


HOUR = 3_600 * 10**9


def timed(keep_hours: int = 2, capacity: int = 4096) -> TimedFilter:
    """Four generations of 1 024 keys."""
    return TimedFilter(covers_from_ns=0, keep_ns=keep_hours * HOUR, capacity=capacity)


def test_memory_is_fixed_at_start_and_a_full_generation_passes_to_the_next() -> None:
    f = timed()
    assert f.nbytes == 4 * 1024 * 4 and f.generations == 0 and f.room == 3 * 1024
    keys = [f"k{i}" for i in range(3000)]
    for i in range(0, 3000, 100):
        f.add(keys[i:i + 100], HOUR)  # times do not advance (a replayed backlog): nothing expires
    assert f.maybe(keys) == keys
    assert f.generations == 3 and f.count == 3000 and f.covers_from_ns == 0
    assert f.nbytes == 4 * 1024 * 4  # as at start, however many keys came
    # Generations this small (32 768 bits) stay above the 3.4e-7 design rate: with double hashing, two keys whose two
    # hashes agree modulo m share all 16 probes (~n/m^2 a key). Measured over six hash seeds: 0-4 in 200 000 for one
    # full generation, ~1e-5; three of them, 50 000 unseen keys: ~1.5 expected (hash() is salted per run).
    assert len(f.maybe([f"unseen{i}" for i in range(50_000)])) <= 10


def test_when_every_generation_is_full_the_oldest_is_emptied_and_the_filter_covers_from_after_it() -> None:
    f = timed()
    batches = [[f"g{g}-{i}" for i in range(1000)] for g in range(5)]
    for g, batch in enumerate(batches):
        f.add(batch, (g + 1) * 60 * 10**9)  # a minute apart, within keep: only room forces the oldest out
    # Five batches of 1 000 in four generations of 1 024: the fifth went into the first generation, emptied.
    assert f.generations == 4 and f.count == 4000
    assert f.covers_from_ns == 60 * 10**9 + 1  # the first batch's time: no longer answered for (looked up exactly)
    for batch in batches[1:]:
        assert f.maybe(batch) == batch
    assert len(f.maybe(batches[0])) <= 5  # gone, but for false positives
    assert f.nbytes == 4 * 1024 * 4


def test_a_generation_older_than_keep_is_emptied_and_the_filter_covers_from_after_it() -> None:
    f = timed(keep_hours=2)
    old = [f"old{i}" for i in range(1000)]
    f.add(old, HOUR)
    f.add([f"mid{i}" for i in range(100)], 2 * HOUR)  # 1 100 > 1 024: opens the second generation
    assert f.generations == 2 and f.covers_from_ns == 0
    f.add(["new"], 3 * HOUR)  # the first generation's newest key (1 h) is not older than 3 h - 2 h yet
    assert f.generations == 2 and f.maybe(old[:3]) == old[:3]
    f.add(["newer"], 3 * HOUR + 1)
    assert f.generations == 1 and f.covers_from_ns == HOUR + 1  # keys from 1 h on are no longer answered for
    assert f.maybe(["mid0", "new", "newer"]) == ["mid0", "new", "newer"]
    assert len(f.maybe(old)) <= 1  # gone (but for a false positive)


def test_added_since_bounds_each_keys_time_from_below_or_says_it_does_not_know() -> None:
    """What a re-settle bounds its statements by (settled_at): at or before the time each key was added with, never
    after it; None for a key no generation holds (emptied, or never added)."""
    f = timed()
    f.add([f"a{i}" for i in range(1000)], 10, 5)  # generation 1: times 5-10
    f.add([f"b{i}" for i in range(1000)], 20)  # generation 2: time 20
    assert f.added_since_ns(["b1", "b2"]) == 20
    assert f.added_since_ns(["b1", "a7"]) == 5
    assert f.added_since_ns(["b1", "never"]) is None
    assert f.added_since_ns([]) is None
    f.add([f"c{i}" for i in range(1000)], 30)
    f.add([f"d{i}" for i in range(1000)], 40)
    f.add([f"e{i}" for i in range(1000)], 50)  # the fifth generation's keys empty the first
    assert f.added_since_ns(["a7"]) is None and f.added_since_ns(["e1", "c3"]) == 30

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


def timed(keep_hours: int = 2, capacity: int = 1024) -> TimedFilter:
    return TimedFilter([], 0, covers_from_ns=0, keep_ns=keep_hours * HOUR, min_capacity=capacity)


def test_a_full_generation_is_followed_by_one_as_large_as_all_and_every_key_is_still_found() -> None:
    f = timed()
    keys = [f"k{i}" for i in range(5000)]
    for i in range(0, 5000, 100):
        f.add(keys[i:i + 100], HOUR)  # times do not advance (a replayed backlog): nothing expires
    assert f.maybe(keys) == keys
    assert f.generations == 4  # room for 1 024, then as many as all before: 1 100, 2 300, 4 700 (doubling)
    assert f.count == 5000 and f.covers_from_ns == 0
    # Generations this small (32 768 bits) stay above the 3.4e-7 design rate: with double hashing, two keys whose two
    # hashes agree modulo m share all 16 probes (~n/m^2 a key). Measured over six hash seeds: 0-4 in 200 000 for one
    # full generation, ~1e-5; four of them, 50 000 unseen keys: ~2 expected (hash() is salted per run).
    assert len(f.maybe([f"unseen{i}" for i in range(50_000)])) <= 10


def test_a_generation_older_than_keep_is_dropped_and_the_filter_covers_from_after_it() -> None:
    f = timed(keep_hours=2)
    old = [f"old{i}" for i in range(1100)]  # fills the first generation at t = 1 h
    f.add(old, HOUR)
    f.add(["mid"], 2 * HOUR)  # opens the second generation
    assert f.generations == 2 and f.covers_from_ns == 0
    f.add(["new"], 3 * HOUR)  # the first generation's newest key (1 h) is not older than 3 h - 2 h yet
    assert f.generations == 2 and f.maybe(old[:3]) == old[:3]
    f.add(["newer"], 3 * HOUR + 1)
    assert f.generations == 1 and f.covers_from_ns == HOUR + 1  # keys from 1 h on are no longer answered for
    assert f.maybe(["mid", "new", "newer"]) == ["mid", "new", "newer"]
    assert len(f.maybe(old)) <= 1  # gone (but for a false positive)


def test_beyond_max_keys_the_oldest_generation_is_dropped_even_when_times_do_not_advance() -> None:
    f = TimedFilter([], 0, covers_from_ns=0, keep_ns=2 * HOUR, min_capacity=1024, max_keys=3000)
    first = [f"a{i}" for i in range(1100)]
    f.add(first, HOUR)  # fills the first generation
    f.add([f"b{i}" for i in range(1100)], HOUR)  # second generation: 2 200 keys in all
    assert f.generations == 2 and f.covers_from_ns == 0
    f.add([f"c{i}" for i in range(1000)], HOUR)  # into the second; 3 200 > 3 000: the oldest goes, though not older
    assert f.generations == 1 and f.count == 2100
    assert f.covers_from_ns == HOUR + 1  # keys of that time are no longer answered for: looked up exactly
    # Gone, but for false positives of the generation left (overfull: 2 100 keys in room for 1 100, ~1 expected).
    assert len(f.maybe(first)) <= 15

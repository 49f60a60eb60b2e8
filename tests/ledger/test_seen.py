"""The ledger's filter of dedup keys: it may say a key was seen when it was not (rarely), never the reverse."""

from __future__ import annotations

from ledger._seen import KeyFilter


def test_every_added_key_is_reported_and_unseen_keys_rarely_are() -> None:
    f = KeyFilter(100_000)
    added = [f"openai:chatcmpl-{i:09d}" for i in range(100_000)]
    f.add(added)
    assert f.maybe(added) == added
    unseen = [f"anthropic:msg_{i:09d}" for i in range(200_000)]
    assert len(f.maybe(unseen)) <= 20  # designed for ~2.5e-5 at capacity: 5 expected in 200 000
    assert not f.full and f.count == 100_000


def test_full_once_past_capacity() -> None:
    f = KeyFilter(1024)
    f.add(str(i) for i in range(1024))
    assert not f.full
    f.add(["one more"])
    assert f.full and f.nbytes == 1024 * 32 // 8

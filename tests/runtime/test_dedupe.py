"""The dedupe memory: a key is taken once until its own expiry, may be taken
again after it, and its memory is given back once its second has passed."""

from __future__ import annotations

from services.runtime.dedupe import ExpiringMap


class Clock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_is_taken_once_until_it_expires_and_can_be_taken_again_after():
    clock = Clock()
    keys = ExpiringMap(clock)
    assert keys.add("k", 1_000.5) is True
    assert keys.add("k", 1_002.0) is False  # still remembered: nothing changes
    clock.now = 1_000.5
    assert "k" in keys  # remembered up to and including its expiry time
    clock.now = 1_000.51
    assert "k" not in keys  # expired at its own time, before its second is over
    assert keys.add("k", 1_003.0) is True
    clock.now = 1_002.9
    assert "k" in keys  # the old expiry's bucket does not drop the key taken again


def test_values_are_kept_and_expire_with_their_key():
    clock = Clock()
    keys = ExpiringMap(clock)
    keys.add("bid-1", 1_010.0, ("campaign", 42))
    keys.add("plain", 1_010.0)
    assert keys.get("bid-1") == ("campaign", 42)
    assert keys.get("plain", "absent") is None  # present, without a value
    assert keys.get("nope", "absent") == "absent"
    clock.now = 1_010.2
    assert keys.get("bid-1", "gone") == "gone"


def test_memory_is_given_back_once_the_second_of_expiry_has_passed():
    clock = Clock()
    keys = ExpiringMap(clock)
    for i in range(1_000):
        keys.add(f"k{i}", 1_000.0 + (i % 10) / 10)  # all within second 1000
    keys.add("later", 1_100.0)
    assert len(keys) == 1_001
    clock.now = 1_001.0
    keys.add("trigger", 1_200.0)  # any add prunes what is due
    assert len(keys._entries) == 2  # noqa: SLF001 - the memory itself is what is tested
    assert len(keys) == 2

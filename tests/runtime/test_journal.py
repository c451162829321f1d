"""A role's journal: the first verdict per impression key, bounded, oldest dropped first."""

from __future__ import annotations

from services.runtime.journal import Journal


def records(journal: Journal) -> list[tuple[str, str]]:
    return [(r.impression_key, r.outcome) for page in journal.pages(size=2) for r in page.records]


def test_the_first_verdict_for_a_key_is_the_one_kept():
    journal = Journal(clock=lambda: 1.0)
    journal.record("a:1", "rendered")
    journal.record("a:1", "duplicate")
    assert records(journal) == [("a:1", "rendered")]


def test_past_capacity_the_oldest_keys_are_dropped_and_the_journal_says_so():
    journal = Journal(capacity=3, clock=lambda: 1.0)
    for i in range(10):
        journal.record(f"k{i}", "rendered")
    assert [key for key, _ in records(journal)] == ["k7", "k8", "k9"]
    assert all(page.truncated for page in journal.pages())


def test_a_journal_under_capacity_is_not_truncated():
    journal = Journal(capacity=3, clock=lambda: 1.0)
    journal.record("k0", "rendered")
    assert [page.truncated for page in journal.pages()] == [False]


def test_a_key_seen_again_after_it_was_dropped_is_recorded_anew():
    journal = Journal(capacity=2, clock=lambda: 1.0)
    for key in ("k0", "k1", "k2", "k0"):
        journal.record(key, "rendered")
    # k1 was the oldest when k0 came back; pages list the keys in key order.
    assert [key for key, _ in records(journal)] == ["k0", "k2"]

"""The invalid-traffic filter's per-viewer rate: more renders than a person
produces in any 60 s are invalid, and a viewer idle for a minute is forgotten."""

from __future__ import annotations

from services.adserver.ivt import InvalidTrafficFilter, IvtSettings

HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
START_MS = 1_700_000_000_000


def render(ivt: InvalidTrafficFilter, viewer: str, now_ms: int) -> str | None:
    return ivt.classify(HUMAN, "203.0.113.9", viewer, returned_at_ms=now_ms - 1_000, now_ms=now_ms)


def test_renders_over_the_rate_in_any_minute_are_invalid_and_older_ones_do_not_count():
    ivt = InvalidTrafficFilter(IvtSettings(max_impressions_per_user_per_minute=2))
    assert [render(ivt, "u1", START_MS + t) for t in (0, 10_000, 20_000)] == [None, None, "user_rate_exceeded"]
    # A minute after the first render it has left the window; the other two are still in it.
    assert render(ivt, "u1", START_MS + 60_000) == "user_rate_exceeded"
    assert render(ivt, "u1", START_MS + 140_000) is None


def test_viewers_idle_for_a_minute_are_forgotten_at_the_next_sweep_and_the_others_kept():
    ivt = InvalidTrafficFilter(IvtSettings(max_impressions_per_user_per_minute=1))
    render(ivt, "regular", START_MS)
    for i in range(9_996):
        render(ivt, f"once-{i}", START_MS + 1 + i)
    render(ivt, "regular", START_MS + 30_000)  # seen again: no longer idle since its first render
    render(ivt, "regular-too", START_MS + 30_001)
    assert len(ivt._recent) == 9_998
    assert render(ivt, "late", START_MS + 71_000) is None  # the 10,000th render: a sweep
    assert sorted(ivt._recent) == sorted(hash(v) for v in ("late", "regular", "regular-too"))
    # The regular viewer's render at 30 s is still within its minute: another is over the rate.
    assert render(ivt, "regular", START_MS + 71_500) == "user_rate_exceeded"

"""The load test's ground truth: what each opportunity's client actually did
and why, keyed by impression key (or by request id when no ad came back).

From it follow the count each stage should show if every service counts by
its rule, and the cause of every gap between adjacent stages. The report
sets these beside the services' own counts; the load test never edits a
count.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

# Why an impression fell out between two stages, by the gap it opens.
GAP_CAUSES = {
    ("won", "returned"): ("deadline_expired",),
    ("returned", "rendered"): ("abandoned", "ad_blocked", "prefetched", "late_pixel", "invalid_known_bot_agent",
                               "invalid_datacenter_ip", "invalid_human_like_bot", "render_failed"),
    ("rendered", "measurable"): ("unmeasurable",),
    ("measurable", "viewable"): ("scrolled_past", "below_fold"),
}
CAUSE_TEXT = {
    "deadline_expired": "the page's deadline passed while the auction was still running: the DSP won, the ad never arrived",
    "abandoned": "the user left before the ad began to render",
    "ad_blocked": "an ad blocker stopped the creative",
    "prefetched": "prefetched for a slot that was never shown",
    "late_pixel": "the render beacon arrived after the token expired",
    "invalid_known_bot_agent": "invalid traffic: a known bot or crawler user agent",
    "invalid_datacenter_ip": "invalid traffic: a data-center IP",
    "invalid_human_like_bot": "invalid traffic: a bot with a human agent and IP (rendered within ms, at bot frequency)",
    "render_failed": "the render beacon was rejected",
    "unmeasurable": "the verification tag could not read the ad's geometry",
    "scrolled_past": "in view, but scrolled away before the MRC duration",
    "below_fold": "never at least half in view",
}
BOT_CAUSE = {"bot_known_agent": "invalid_known_bot_agent", "bot_datacenter": "invalid_datacenter_ip",
             "bot_human_like": "invalid_human_like_bot"}


@dataclasses.dataclass(slots=True)
class Record:
    """One opportunity as its client lived it."""

    key: str
    user_kind: str
    # returned, deadline_expired, no_fill_<reason>, or error_<code>.
    request: str = ""
    # The cause that kept a returned ad from counting as rendered, or "rendered"
    # when a valid client fired a valid beacon in time; "" before the ad returns.
    render: str = ""
    # What the ad server answered the first beacon (COUNTED, INVALID, ...).
    render_answer: str = ""
    duplicates_sent: int = 0
    # unmeasurable, engaged, scrolled_past or below_fold; "" when no tag report.
    tag: str = ""
    # What the verifier answered the tag report (viewable, not_viewable, ...);
    # "" when the report was not acknowledged.
    tag_answer: str = ""
    clicked: bool = False
    converted: bool = False
    pod_break: str = ""


class Truth:
    def __init__(self):
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}

    def add(self, record: Record) -> None:
        with self._lock:
            self._records[record.key] = record

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records.values())

    def expected_stages(self) -> dict[str, int]:
        """What each service should count if it follows its rule. An
        expired request is one the exchange answered "the page's wait ran
        out", which it answers only for an auction it ran and placed: a win."""
        records = self.records()
        returned = sum(r.request == "returned" for r in records)
        expired = sum(r.request == "deadline_expired" for r in records)
        return {
            "won": returned + expired,
            "returned": returned,
            "rendered": sum(r.render == "rendered" for r in records),
            "measurable": sum(r.tag in ("engaged", "scrolled_past", "below_fold") for r in records),
            "viewable": sum(r.tag == "engaged" for r in records),
        }

    def causes(self) -> dict[str, dict[str, int]]:
        """Per gap ("won->returned"), how many impressions each cause removed."""
        records = self.records()
        per = Counter()
        for r in records:
            if r.request == "deadline_expired":
                per["deadline_expired"] += 1
            if r.request == "returned" and r.render != "rendered":
                per[r.render or "render_failed"] += 1
            if r.render == "rendered" and r.tag in ("unmeasurable", "scrolled_past", "below_fold"):
                per[r.tag] += 1
        return {f"{a}->{b}": {c: per[c] for c in causes if per[c]} for (a, b), causes in GAP_CAUSES.items()}

    def other(self) -> dict[str, int]:
        """What the client did that opens no gap: no-fills, retried beacons
        (duplicates the ad server must not count), clicks and conversions."""
        records = self.records()
        found = Counter()
        for r in records:
            if r.request.startswith(("no_fill", "error")):
                found[r.request] += 1
            found["duplicate_beacons"] += r.duplicates_sent
            found["clicks"] += r.clicked
            found["conversions"] += r.converted
        found["opportunities"] = len(records)
        return dict(found)

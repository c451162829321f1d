"""Everything the ad server counts, in one place: rendered impressions
(begin-to-render, at most once per impression key), invalid traffic by
reason, frequency-capped, duplicate and late events, rejected tokens, clicks,
conversions, video quartiles, and the notices it sent to DSPs. Each first
verdict per impression key also goes to the journal for reconciliation."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from adchain.v1 import token_pb2
from services.adserver.ivt import REASONS as IVT_REASONS
from services.runtime.counting import Tally
from services.runtime.journal import Journal
from services.runtime.metrics import ImpressionMetrics, labelled_counters
from services.runtime.tokens import TOKEN_REJECT_REASONS

EVENTS = ("impression", "click", "conversion", "video")
NOTICE_OUTCOMES = ("sent", "retried", "failed")
EVENT_NOTICE_KINDS = ("click", "conversion")
VIDEO_EVENTS = ("start", "first_quartile", "midpoint", "third_quartile", "complete")


class AdServerLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float]):
        self.tally = Tally("adserver", instance, clock)
        self.tally.declare(("rendered", "invalid", "capped", "duplicates", "late", "rejected_tokens", "clicks",
                            "conversions", "billing_notices"))
        self.journal = Journal(clock=clock)
        self._impressions = ImpressionMetrics("adserver", registry)
        self._invalid = labelled_counters("adchain_adserver_invalid_impressions", "Renders filtered as invalid "
                                          "traffic, by reason; never billed.", {"reason": IVT_REASONS}, registry)
        self._capped = Counter("adchain_adserver_frequency_capped_impressions",
                               "Renders over a campaign's frequency cap; never billed.", registry=registry)
        self._duplicates = labelled_counters("adchain_adserver_duplicates",
                                             "Events for an impression already counted, by event.",
                                             {"event": EVENTS}, registry)
        self._late = labelled_counters("adchain_adserver_late_events",
                                       "Events after their token expired, by event; never billed.",
                                       {"event": EVENTS}, registry)
        self._rejected = labelled_counters("adchain_adserver_rejected_tokens",
                                           "Events with a token that failed verification, by reason.",
                                           {"reason": TOKEN_REJECT_REASONS}, registry)
        self._clicks = Counter("adchain_adserver_clicks", "Clicks counted.", registry=registry)
        self._conversions = Counter("adchain_adserver_conversions", "Post-click conversions counted.",
                                    registry=registry)
        self._video = labelled_counters("adchain_adserver_video_events", "VAST playback events counted, by event.",
                                        {"event": VIDEO_EVENTS}, registry)
        self._billing = labelled_counters("adchain_adserver_billing_notices", "Billing notices to DSPs, by outcome.",
                                          {"outcome": NOTICE_OUTCOMES}, registry)
        self._event_notices = labelled_counters(
            "adchain_adserver_event_notices", "Click and conversion notices to DSPs, by kind and outcome.",
            {"kind": EVENT_NOTICE_KINDS, "outcome": NOTICE_OUTCOMES}, registry)

    def record_rendered(self, token: token_pb2.ImpressionToken) -> None:
        self.tally.add("rendered", reason=token.seat, campaign=token.campaign_id)
        # Billable value at the ad server's count: CPM micros summed; spend is /1000.
        self.tally.add("billable_cpm_micros", token.price_micros, reason=token.seat, campaign=token.campaign_id)
        if token.duration_s:
            self.tally.add("ad_seconds", token.duration_s, campaign=token.campaign_id)
        self.journal.record(token.impression_key, "rendered", campaign_id=token.campaign_id, seat=token.seat)
        self._impressions.record("rendered")

    def record_invalid(self, token: token_pb2.ImpressionToken, reason: str) -> None:
        self.tally.add("invalid", reason=reason, campaign=token.campaign_id)
        self.journal.record(token.impression_key, "invalid", reason=reason, campaign_id=token.campaign_id,
                            seat=token.seat)
        self._invalid[reason].inc()

    def record_capped(self, token: token_pb2.ImpressionToken) -> None:
        self.tally.add("capped", campaign=token.campaign_id)
        self.journal.record(token.impression_key, "capped", campaign_id=token.campaign_id, seat=token.seat)
        self._capped.inc()

    def record_duplicate(self, event: str) -> None:
        self.tally.add("duplicates", reason=event)
        self._duplicates[event].inc()

    def record_late(self, event: str, token: token_pb2.ImpressionToken) -> None:
        self.tally.add("late", reason=event)
        if event == "impression":
            self.journal.record(token.impression_key, "late", campaign_id=token.campaign_id, seat=token.seat)
        self._late[event].inc()

    def record_rejected_token(self, reason: str) -> None:
        self.tally.add("rejected_tokens", reason=reason)
        self._rejected[reason].inc()

    def record_click(self, campaign_id: str) -> None:
        self.tally.add("clicks", campaign=campaign_id)
        self._clicks.inc()

    def record_conversion(self, campaign_id: str, value_micros: int) -> None:
        self.tally.add("conversions", campaign=campaign_id)
        if value_micros:
            self.tally.add("conversion_value_micros", value_micros, campaign=campaign_id)
        self._conversions.inc()

    def record_video_event(self, event: str, campaign_id: str) -> None:
        self.tally.add("video_events", reason=event, campaign=campaign_id)
        self._video[event].inc()

    def record_notice(self, kind: str, outcome: str) -> None:
        if kind == "billing":
            self.tally.add("billing_notices", reason=outcome)
            self._billing[outcome].inc()
        else:
            self.tally.add("event_notices", reason=f"{kind}:{outcome}")
            self._event_notices[(kind, outcome)].inc()

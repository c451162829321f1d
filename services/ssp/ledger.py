"""Everything the exchange counts: ad requests, no-fills by reason, bids and
timeouts per DSP, notices, and returned impressions (counted only once the
ad reached the caller)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.runtime.counting import Tally
from services.runtime.journal import Journal
from services.runtime.metrics import LATENCY_BUCKETS_S, PRICE_BUCKETS_MICROS, ImpressionMetrics, labelled_counters

NO_FILL_REASONS = ("no_bids", "below_floor", "timeout")
NOTICE_KINDS = ("win", "loss")
NOTICE_OUTCOMES = ("sent", "failed")


class SspLedger:
    def __init__(self, instance: str, dsp_names: Sequence[str], registry: CollectorRegistry, clock: Callable[[], float]):
        self.tally = Tally("ssp", instance, clock)
        self.tally.declare(("ad_requests", "auctions_won", "returned", "not_returned", "no_fill"))
        self.journal = Journal(clock=clock)
        self._impressions = ImpressionMetrics("ssp", registry)
        self._ad_requests = Counter("adchain_ssp_ad_requests", "Ad requests received from publishers.", registry=registry)
        self._no_fill = labelled_counters("adchain_ssp_no_fills", "Ad requests answered without an ad, by reason.",
                                          {"reason": NO_FILL_REASONS}, registry)
        self._not_returned = Counter(
            "adchain_ssp_ads_not_returned",
            "Auctions won whose ad never reached the caller (deadline passed or caller gone).", registry=registry)
        self._bid_outcomes = labelled_counters(
            "adchain_ssp_bid_responses", "Bid requests sent to DSPs, by DSP and outcome.",
            {"dsp": tuple(dsp_names), "outcome": ("bid", "no_bid", "timeout", "error")}, registry)
        self._notices = labelled_counters("adchain_ssp_notices", "Win and loss notices, by kind and outcome.",
                                          {"kind": NOTICE_KINDS, "outcome": NOTICE_OUTCOMES}, registry)
        self._clearing_price = Histogram("adchain_ssp_clearing_cpm_micros",
                                         "Auctions cleared, by clearing CPM in micros.",
                                         buckets=PRICE_BUCKETS_MICROS, registry=registry)
        self._pod_slots = Counter("adchain_ssp_pod_slots", "Ad break slots offered.", registry=registry)
        self._pod_slots_filled = Counter("adchain_ssp_pod_slots_filled", "Ad break slots filled.", registry=registry)
        self._ad_seconds = Counter("adchain_ssp_pod_ad_seconds", "Seconds of ads placed in ad breaks.",
                                   registry=registry)
        self._content_seconds = Counter(
            "adchain_ssp_pod_content_seconds",
            "Seconds of content the ad breaks belong to; ad load is ad seconds per content hour.", registry=registry)
        self.auction_seconds = Histogram("adchain_ssp_auction_duration_seconds",
                                         "Time from ad request to cleared auction.", buckets=LATENCY_BUCKETS_S,
                                         registry=registry)

    def record_ad_request(self) -> None:
        self.tally.add("ad_requests")
        self._ad_requests.inc()

    def record_bid_outcome(self, dsp: str, outcome: str) -> None:
        self.tally.add("bid_responses", reason=f"{dsp}:{outcome}")
        self._bid_outcomes[(dsp, outcome)].inc()

    def record_no_fill(self, reason: str) -> None:
        self.tally.add("no_fill", reason=reason)
        self._no_fill[reason].inc()

    def record_auction_won(self, seat: str, campaign_id: str, clearing_price_micros: int) -> None:
        self.tally.add("auctions_won", reason=seat, campaign=campaign_id)
        self._clearing_price.observe(clearing_price_micros)

    def record_returned(self, impression_key: str, seat: str, campaign_id: str) -> None:
        self.tally.add("returned", reason=seat, campaign=campaign_id)
        self.journal.record(impression_key, "returned", campaign_id=campaign_id, seat=seat)
        self._impressions.record("returned")

    def record_not_returned(self, impression_key: str, seat: str, campaign_id: str) -> None:
        self.tally.add("not_returned", reason=seat, campaign=campaign_id)
        self.journal.record(impression_key, "not_returned", campaign_id=campaign_id, seat=seat)
        self._not_returned.inc()

    def record_pod(self, slots: int, filled: int, ad_seconds: int, content_seconds: int) -> None:
        self.tally.add("pods")
        self.tally.add("pod_slots", slots)
        self.tally.add("pod_slots_filled", filled)
        self.tally.add("pod_ad_seconds", ad_seconds)
        self.tally.add("pod_content_seconds", content_seconds)
        self._pod_slots.inc(slots)
        self._pod_slots_filled.inc(filled)
        self._ad_seconds.inc(ad_seconds)
        self._content_seconds.inc(content_seconds)

    def record_notice(self, kind: str, outcome: str) -> None:
        self.tally.add(f"{kind}_notices", reason=outcome)
        self._notices[(kind, outcome)].inc()

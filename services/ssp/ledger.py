"""Everything the exchange counts: ad requests, no-fills by reason, bids and
timeouts per DSP, notices, and returned impressions (counted only once the
ad reached the caller)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.runtime.counting import Tally
from services.runtime.journal import DurableJournal, Journal
from services.runtime.store import LedgerStore
from services.runtime.metrics import LATENCY_BUCKETS_S, PRICE_BUCKETS_MICROS, ImpressionMetrics, labelled_counters

NO_FILL_REASONS = ("no_bids", "below_floor", "timeout")
NOTICE_KINDS = ("win", "loss")
NOTICE_OUTCOMES = ("sent", "failed")
BID_OUTCOMES = ("bid", "no_bid", "timeout", "error")


class SspLedger:
    def __init__(self, instance: str, dsp_names: Sequence[str], registry: CollectorRegistry, clock: Callable[[], float],
                 store: LedgerStore | None = None):
        self.store = store
        self.tally = Tally("ssp", instance, clock, store)
        self.tally.declare(("ad_requests", "auctions_won", "returned", "not_returned", "no_fill"))
        self.journal = Journal(clock=clock) if store is None else DurableJournal(store, clock)
        self._impressions = ImpressionMetrics("ssp", registry)
        self._ad_requests = Counter("adchain_ssp_ad_requests", "Ad requests received from publishers.", registry=registry)
        self._no_fill = labelled_counters("adchain_ssp_no_fills", "Ad requests answered without an ad, by reason.",
                                          {"reason": NO_FILL_REASONS}, registry)
        self._not_returned = Counter(
            "adchain_ssp_ads_not_returned",
            "Auctions won whose ad never reached the caller (deadline passed or caller gone).", registry=registry)
        self._bid_outcomes = labelled_counters(
            "adchain_ssp_bid_responses", "Bid requests sent to DSPs, by DSP and outcome.",
            {"dsp": tuple(dsp_names), "outcome": BID_OUTCOMES}, registry)
        # The tally's reason per (dsp, outcome), made once rather than per bid request.
        self._bid_outcome_reasons = {key: f"{key[0]}:{key[1]}" for key in self._bid_outcomes}
        self._bid_streams_opened = labelled_counters(
            "adchain_ssp_bid_streams_opened", "BidStreams opened to each DSP (the first, then one per break).",
            {"dsp": tuple(dsp_names)}, registry)
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

    def record_ad_requests(self, n: int) -> None:
        self.tally.add("ad_requests", n)
        self._ad_requests.inc(n)

    def record_bid_outcome(self, dsp: str, outcome: str) -> None:
        self.tally.add("bid_responses", reason=self._bid_outcome_reasons[(dsp, outcome)])
        self._bid_outcomes[(dsp, outcome)].inc()

    def record_bid_stream_opened(self, dsp: str) -> None:
        self._bid_streams_opened[dsp].inc()

    def record_no_fill(self, reason: str) -> None:
        self.tally.add("no_fill", reason=reason)
        self._no_fill[reason].inc()

    def record_auction_won(self, seat: str, campaign_id: str, clearing_price_micros: int) -> None:
        self.tally.add("auctions_won", reason=seat, campaign=campaign_id)
        self._clearing_price.observe(clearing_price_micros)

    def record_deliveries(self, returned: Sequence[tuple[str, str, str]],
                          not_returned: Sequence[tuple[str, str, str]], *, metrics: bool = True) -> None:
        """The verdicts of one response's ads, each (impression key, seat,
        campaign id): counted per seat and campaign, journaled per key.
        `metrics=False` leaves the metrics to the delivery verdict (see
        `record_presumed`)."""
        for outcome, ads in (("returned", returned), ("not_returned", not_returned)):
            by_campaign: dict[tuple[str, str], int] = {}
            for impression_key, seat, campaign_id in ads:
                by_campaign[(seat, campaign_id)] = by_campaign.get((seat, campaign_id), 0) + 1
            if ads and self.store is not None:
                self.journal.record_many([(key, outcome, "", campaign_id, seat) for key, seat, campaign_id in ads])
            elif ads:
                for impression_key, seat, campaign_id in ads:
                    self.journal.record(impression_key, outcome, campaign_id=campaign_id, seat=seat)
            for (seat, campaign_id), n in by_campaign.items():
                self.tally.add(outcome, n, reason=seat, campaign=campaign_id)
        if metrics:
            self.count_deliveries(len(returned), len(not_returned))

    def count_deliveries(self, returned: int, not_returned: int) -> None:
        if returned:
            self._impressions.record("returned", returned)
        if not_returned:
            self._not_returned.inc(not_returned)

    def record_presumed(self, returned: Sequence[tuple[str, str, str]]) -> None:
        """With a ledger, ads about to be returned are written as returned
        before the response leaves, in the transaction that acknowledges it:
        a crash right after the caller got its ad cannot lose the count.
        Those the caller turns out not to have received are moved to
        not_returned (`record_undelivered`)."""
        self.record_deliveries(returned, (), metrics=False)

    def record_undelivered(self, presumed: Sequence[tuple[str, str, str]]) -> None:
        """Presumed-returned ads whose response never reached the caller."""
        by_campaign: dict[tuple[str, str], int] = {}
        for _key, seat, campaign_id in presumed:
            by_campaign[(seat, campaign_id)] = by_campaign.get((seat, campaign_id), 0) + 1
        for (seat, campaign_id), n in by_campaign.items():
            self.tally.add("returned", -n, reason=seat, campaign=campaign_id)
            self.tally.add("not_returned", n, reason=seat, campaign=campaign_id)
        self.store.executemany("UPDATE journal SET outcome = 'not_returned' WHERE key = ?",
                               [(key,) for key, _seat, _campaign in presumed])
        self.count_deliveries(0, len(presumed))

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

    def record_notice(self, kind: str, outcome: str, n: int = 1) -> None:
        self.tally.add(f"{kind}_notices", n, reason=outcome)
        self._notices[(kind, outcome)].inc(n)

"""Everything the ad server counts, in one place: rendered impressions
(begin-to-render, at most once per impression key), invalid traffic by
reason, frequency-capped, duplicate and late events, rejected tokens, clicks,
conversions, video quartiles, and the notices it sent to DSPs. Each first
verdict per impression key also goes to the journal for reconciliation.

Events are entered per call (`with ledger.batch() as entries`) and posted
together when the call ends, so a batch RPC of many events costs one tally
add per count and one inc(n) per metric child, not one per event."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter

from adchain.v1 import token_pb2
from services.adserver.ivt import REASONS as IVT_REASONS
from services.runtime.counting import Tally
from services.runtime.journal import DurableJournal, Journal
from services.runtime.store import LedgerStore
from services.runtime.metrics import ImpressionMetrics, labelled_counters
from services.runtime.tokens import TOKEN_REJECT_REASONS

EVENTS = ("impression", "click", "conversion", "video")
NOTICE_OUTCOMES = ("sent", "retried", "failed")
EVENT_NOTICE_KINDS = ("click", "conversion")
VIDEO_EVENTS = ("start", "first_quartile", "midpoint", "third_quartile", "complete")


class AdServerLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float],
                 store: LedgerStore | None = None):
        self.store = store
        self.tally = Tally("adserver", instance, clock, store)
        self.tally.declare(("rendered", "invalid", "capped", "duplicates", "late", "rejected_tokens", "clicks",
                            "conversions", "billing_notices"))
        self.journal = Journal(clock=clock) if store is None else DurableJournal(store, clock)
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

    def batch(self) -> AdServerEntries:
        """The entries of one call, posted to the tally, journal and metrics when it ends."""
        return AdServerEntries(self)

    def record_notice(self, kind: str, outcome: str, n: int = 1) -> None:
        if kind == "billing":
            self.tally.add("billing_notices", n, reason=outcome)
            child = self._billing[outcome]
        else:
            self.tally.add("event_notices", n, reason=f"{kind}:{outcome}")
            child = self._event_notices[(kind, outcome)]
        if self.store is None:
            child.inc(n)
        else:
            self.store.on_commit(lambda: child.inc(n))

    def _post(self, entries: AdServerEntries) -> None:
        for (name, reason, campaign), n in entries.counts.items():
            self.tally.add(name, n, reason=reason, campaign=campaign)
        rendered = 0
        for (seat, campaign), (n, price_micros, ad_seconds) in entries.rendered.items():
            self.tally.add("rendered", n, reason=seat, campaign=campaign)
            # Billable value at the ad server's count: CPM micros summed; spend is /1000.
            self.tally.add("billable_cpm_micros", price_micros, reason=seat, campaign=campaign)
            if ad_seconds:
                self.tally.add("ad_seconds", ad_seconds, campaign=campaign)
            rendered += n
        for impression_key, outcome, reason, campaign_id, seat in entries.verdicts:
            self.journal.record(impression_key, outcome, reason=reason, campaign_id=campaign_id, seat=seat)
        if self.store is None:
            self._count_metrics(rendered, entries.metrics)
        else:  # metrics move with the ledger: only what is committed
            self.store.on_commit(lambda: self._count_metrics(rendered, entries.metrics))

    def _count_metrics(self, rendered: int, metrics: dict) -> None:
        if rendered:
            self._impressions.record("rendered", rendered)
        for child, n in metrics.items():
            child.inc(n)


class AdServerEntries:
    """What one call counts, one event or a batch of them. Posted when the
    `with` block ends, on an error too (a rejected token is tallied before
    the call fails); the RPC is answered after the post, never before."""

    def __init__(self, ledger: AdServerLedger):
        self._ledger = ledger
        # With a ledger, a render's verdict is its journal row, written as its key is taken.
        self._journal_verdicts = ledger.store is None
        self.counts: dict[tuple[str, str, str], int] = {}  # (name, reason, campaign) -> n
        self.verdicts: list[tuple[str, str, str, str, str]] = []  # journal records, in event order
        # (seat, campaign) -> [impressions at the chain's rendered stage, their
        # price micros, their ad seconds]: one entry per rendered impression.
        self.rendered: dict[tuple[str, str], list[int]] = {}
        self.metrics: dict[object, int] = {}  # metric child -> n
        # (seat, kind, request): the notices these counts owe the DSPs, sent after the post.
        self.notices: list[tuple[str, str, Message]] = []

    def __enter__(self) -> AdServerEntries:
        return self

    def __exit__(self, *_exc) -> None:
        self._ledger._post(self)

    def record_rendered(self, token: token_pb2.ImpressionToken) -> None:
        seat, campaign_id = token.seat, token.campaign_id
        rendered = self.rendered.get((seat, campaign_id))
        if rendered is None:
            rendered = self.rendered[(seat, campaign_id)] = [0, 0, 0]
        rendered[0] += 1
        rendered[1] += token.price_micros
        rendered[2] += token.duration_s
        if self._journal_verdicts:
            self.verdicts.append((token.impression_key, "rendered", "", campaign_id, seat))

    def record_invalid(self, token: token_pb2.ImpressionToken, reason: str) -> None:
        self._count("invalid", reason=reason, campaign=token.campaign_id)
        if self._journal_verdicts:
            self.verdicts.append((token.impression_key, "invalid", reason, token.campaign_id, token.seat))
        self._inc(self._ledger._invalid[reason])

    def record_capped(self, token: token_pb2.ImpressionToken) -> None:
        self._count("capped", campaign=token.campaign_id)
        if self._journal_verdicts:
            self.verdicts.append((token.impression_key, "capped", "", token.campaign_id, token.seat))
        self._inc(self._ledger._capped)

    def record_duplicate(self, event: str) -> None:
        self._count("duplicates", reason=event)
        self._inc(self._ledger._duplicates[event])

    def record_late(self, event: str, token: token_pb2.ImpressionToken) -> None:
        self._count("late", reason=event)
        if event == "impression":
            self.verdicts.append((token.impression_key, "late", "", token.campaign_id, token.seat))
        self._inc(self._ledger._late[event])

    def record_rejected_token(self, reason: str) -> None:
        self._count("rejected_tokens", reason=reason)
        self._inc(self._ledger._rejected[reason])

    def record_click(self, campaign_id: str) -> None:
        self._count("clicks", campaign=campaign_id)
        self._inc(self._ledger._clicks)

    def record_conversion(self, campaign_id: str, value_micros: int) -> None:
        self._count("conversions", campaign=campaign_id)
        if value_micros:
            self._count("conversion_value_micros", value_micros, campaign=campaign_id)
        self._inc(self._ledger._conversions)

    def record_video_event(self, event: str, campaign_id: str) -> None:
        self._count("video_events", reason=event, campaign=campaign_id)
        self._inc(self._ledger._video[event])

    def _count(self, name: str, n: int = 1, reason: str = "", campaign: str = "") -> None:
        key = (name, reason, campaign)
        self.counts[key] = self.counts.get(key, 0) + n

    def _inc(self, child: object) -> None:
        self.metrics[child] = self.metrics.get(child, 0) + 1

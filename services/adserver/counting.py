"""The ad server's counting rules, callable without a server.

An impression counts (and is billed) only with a valid token, before it
expires, once per impression key, when it is not invalid traffic, and within
the campaign's frequency cap. Clicks, conversions and video events count only
for an impression that counted, once each per impression.

Beacons come one per call or many per call from an edge collector
(RecordImpressions); each is judged the same way, in order. A call's counts
are posted together, and only then do its billing and event notices go out.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

from google.protobuf.message import Message

from adchain.v1 import ad_server_pb2, bidder_pb2, token_pb2
from services.adserver.ivt import InvalidTrafficFilter
from services.adserver.ledger import AdServerEntries, AdServerLedger
from services.adserver.settings import FrequencyCap
from services.runtime.batch import answer_each
from services.runtime.dedupe import DurableKeys, ExpiringMap
from services.runtime.journal import DurableJournal
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.tokens import TokenCodec, TokenError

COUNTED = ad_server_pb2.EVENT_OUTCOME_COUNTED
DUPLICATE = ad_server_pb2.EVENT_OUTCOME_DUPLICATE
LATE = ad_server_pb2.EVENT_OUTCOME_LATE
INVALID = ad_server_pb2.EVENT_OUTCOME_INVALID
CAPPED = ad_server_pb2.EVENT_OUTCOME_CAPPED
NO_IMPRESSION = ad_server_pb2.EVENT_OUTCOME_NO_IMPRESSION

VIDEO_EVENT_NAMES = {
    ad_server_pb2.VIDEO_EVENT_START: "start",
    ad_server_pb2.VIDEO_EVENT_FIRST_QUARTILE: "first_quartile",
    ad_server_pb2.VIDEO_EVENT_MIDPOINT: "midpoint",
    ad_server_pb2.VIDEO_EVENT_THIRD_QUARTILE: "third_quartile",
    ad_server_pb2.VIDEO_EVENT_COMPLETE: "complete",
}
# Post-click conversions are attributed for this long after the click.
CONVERSION_WINDOW_S = 30 * 86_400

# Takes [(seat, kind, request)]: the notices one call's counts owe the DSPs.
Notify = Callable[[list[tuple[str, str, Message]]], None]


class FrequencyCaps:
    """Counted impressions per (viewer, campaign) in each cap's window."""

    def __init__(self, caps: Sequence[FrequencyCap]):
        self._caps = {c.campaign: c for c in caps}
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], collections.deque[float]] = {}

    def allows(self, viewer: str, campaign_id: str, now_s: float) -> bool:
        """True (and the impression is remembered) when under the cap."""
        cap = self._caps.get(campaign_id)
        if cap is None or not viewer:
            return True
        with self._lock:
            times = self._seen.setdefault((viewer, campaign_id), collections.deque())
            while times and times[0] <= now_s - cap.window_s:
                times.popleft()
            if len(times) >= cap.impressions:
                return False
            times.append(now_s)
            return True

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def restore(self, viewer: str, campaign_id: str, at_s: float) -> None:
        """A counted impression from before a restart (oldest first), back in its window."""
        if campaign_id in self._caps and viewer:
            with self._lock:
                self._seen.setdefault((viewer, campaign_id), collections.deque()).append(at_s)

    def longest_window_s(self) -> float:
        return max((c.window_s for c in self._caps.values()), default=0.0)


class _MemoryImpressions:
    """Impression keys taken, in memory (a role without a ledger): key -> verdict."""

    journaled = False  # the verdict goes to the journal when the call's counts post

    def __init__(self, clock: Callable[[], float]):
        self._keys = ExpiringMap(clock)

    def take(self, token: token_pb2.ImpressionToken, verdict: str, viewer: str) -> bool:
        return self._keys.add(token.impression_key, token.expires_at_ms / 1000.0 + CONVERSION_WINDOW_S, verdict)

    def counted(self, impression_key: str) -> bool:
        return self._keys.get(impression_key) == "counted"


class _LedgerImpressions:
    """Impression keys taken, as the ledger's journal rows: the first
    verdict per key is the key taken, so a repeat is refused by the store."""

    journaled = True  # the verdict is the journal row, written as the key is taken

    def __init__(self, journal: DurableJournal):
        self._journal = journal

    def take(self, token: token_pb2.ImpressionToken, verdict: str, viewer: str) -> bool:
        outcome, reason = VERDICT_OUTCOMES.get(verdict, ("invalid", verdict))
        return self._journal.record(token.impression_key, outcome, reason=reason, campaign_id=token.campaign_id,
                                    seat=token.seat, viewer=viewer)

    def counted(self, impression_key: str) -> bool:
        return self._journal.outcome(impression_key) == "rendered"


# A verdict -> the journal's (outcome, reason); any other verdict is an invalid-traffic reason.
VERDICT_OUTCOMES = {"counted": ("rendered", ""), "capped": ("capped", "")}


def viewer_of(user_key: str, ip: str) -> str:
    """Who a render is from, as the journal keeps it to rebuild the windows
    after a restart: the user key (what frequency caps count), else "@" and
    the address (what the invalid-traffic rate counts without a user)."""
    return user_key or (f"@{ip}" if ip else "")


class ImpressionCounter:
    def __init__(self, tokens: TokenCodec, ledger: AdServerLedger, known_seats: frozenset[str],
                 ivt: InvalidTrafficFilter, caps: FrequencyCaps, notify: Notify, clock: Callable[[], float]):
        self._tokens = tokens
        self._ledger = ledger
        self._seats = known_seats
        self._ivt = ivt
        self._caps = caps
        self._notify = notify
        self._clock = clock
        store = ledger.store
        if store is None:
            self._impressions = _MemoryImpressions(clock)
            self._clicks, self._conversions, self._video = ExpiringMap(clock), ExpiringMap(clock), ExpiringMap(clock)
        else:
            self._impressions = _LedgerImpressions(ledger.journal)
            self._clicks, self._conversions, self._video = (
                DurableKeys(store, space, clock) for space in ("click", "conversion", "video"))
            self.restore_windows()

    def restore_windows(self) -> None:
        """Rebuild the invalid-traffic and frequency-cap windows from the
        renders the ledger holds (at start, and after a failed write)."""
        since_ms = int((self._clock() - max(60.0, self._caps.longest_window_s())) * 1000)
        ivt_since_ms = int(self._clock() * 1000) - 60_000
        rows = self._ledger.store.query(
            "SELECT viewer, campaign, at_ms, outcome FROM journal WHERE at_ms >= ? AND viewer != '' "
            "AND outcome != 'late' ORDER BY at_ms", (since_ms,))
        self._ivt.reset()
        self._caps.reset()
        for viewer, campaign_id, at_ms, outcome in rows:
            if at_ms >= ivt_since_ms:
                self._ivt.restore(viewer.removeprefix("@"), at_ms)
            if outcome == "rendered" and not viewer.startswith("@"):
                self._caps.restore(viewer, campaign_id, at_ms / 1000.0)

    def record_impression(self, request: ad_server_pb2.RecordImpressionRequest
                          ) -> ad_server_pb2.RecordImpressionResponse:
        with self._ledger.batch() as entries:
            fields = self._impression(request, entries)
        self._send(entries)
        return ad_server_pb2.RecordImpressionResponse(**fields)

    def record_impressions(self, requests: Sequence[ad_server_pb2.RecordImpressionRequest],
                           add_result: Callable[..., ad_server_pb2.RecordImpressionResult]) -> None:
        """Each beacon judged in order exactly as record_impression judges it,
        a refused one with its own status, its result made by
        `add_result(status=..., response=...)` (a response's `results.add`);
        counted together, then notified."""
        with self._ledger.batch() as entries:
            answer_each(requests, lambda request: self._impression(request, entries), add_result)
        self._send(entries)

    def _impression(self, request: ad_server_pb2.RecordImpressionRequest, entries: AdServerEntries) -> dict:
        """The RecordImpressionResponse fields as a dict: a batch sets them
        straight into its result, no message to build and copy."""
        token = self._verified(request.token, entries)
        now = self._clock()
        expires_at_ms = token.expires_at_ms
        if now * 1000 > expires_at_ms:
            entries.record_late("impression", token)
            return dict(outcome=LATE)
        verdict = self._judge(token, request.user_agent, request.ip, now)
        # Every first render of a key takes the key, whatever its verdict: a
        # repeated pixel is a duplicate, never a second chance.
        if not self._impressions.take(token, verdict, viewer_of(token.user_key, request.ip)):
            entries.record_duplicate("impression")
            return dict(outcome=DUPLICATE)
        if verdict == "counted":
            entries.record_rendered(token)
            entries.notices.append((token.seat, "billing", billing_notice(token)))
            return dict(outcome=COUNTED)
        if verdict == "capped":
            entries.record_capped(token)
            return dict(outcome=CAPPED)
        entries.record_invalid(token, verdict)
        return dict(outcome=INVALID, reason=verdict)

    def _judge(self, token: token_pb2.ImpressionToken, user_agent: str, ip: str, now: float) -> str:
        reason = self._ivt.classify(user_agent, ip, token.user_key, token.issued_at_ms, int(now * 1000))
        if reason is not None:
            return reason
        if not self._caps.allows(token.user_key, token.campaign_id, now):
            return "capped"
        return "counted"

    def record_click(self, request: ad_server_pb2.RecordClickRequest) -> int:
        with self._ledger.batch() as entries:
            outcome = self._click(request, entries)
        self._send(entries)
        return outcome

    def _click(self, request: ad_server_pb2.RecordClickRequest, entries: AdServerEntries) -> int:
        token = self._verified(request.token, entries)
        if not self._impressions.counted(token.impression_key):
            return NO_IMPRESSION
        if not self._clicks.add(token.impression_key, self._clock() + CONVERSION_WINDOW_S):
            entries.record_duplicate("click")
            return DUPLICATE
        entries.record_click(token.campaign_id)
        entries.notices.append((token.seat, "click", event_notice(token, bidder_pb2.EVENT_KIND_CLICK)))
        return COUNTED

    def record_conversion(self, request: ad_server_pb2.RecordConversionRequest) -> int:
        with self._ledger.batch() as entries:
            outcome = self._conversion(request, entries)
        self._send(entries)
        return outcome

    def _conversion(self, request: ad_server_pb2.RecordConversionRequest, entries: AdServerEntries) -> int:
        token = self._verified(request.token, entries)
        if request.value_micros < 0:
            raise InvalidArgument("value_micros", "must not be negative")
        # Post-click: a conversion is attributed only to a counted click.
        if token.impression_key not in self._clicks:
            return NO_IMPRESSION
        if not self._conversions.add(token.impression_key, self._clock() + CONVERSION_WINDOW_S):
            entries.record_duplicate("conversion")
            return DUPLICATE
        entries.record_conversion(token.campaign_id, request.value_micros)
        entries.notices.append((token.seat, "conversion", event_notice(token, bidder_pb2.EVENT_KIND_CONVERSION)))
        return COUNTED

    def record_video_event(self, request: ad_server_pb2.RecordVideoEventRequest) -> int:
        name = VIDEO_EVENT_NAMES.get(request.event)
        if name is None:
            raise InvalidArgument("event", "must be a VAST quartile event")
        with self._ledger.batch() as entries:
            return self._video_event(request.token, name, entries)

    def _video_event(self, text: str, name: str, entries: AdServerEntries) -> int:
        token = self._verified(text, entries)
        if token.mtype != 2:
            raise InvalidArgument("token", "is not for a video ad")
        if not self._impressions.counted(token.impression_key):
            return NO_IMPRESSION
        if self._clock() * 1000 > token.expires_at_ms:
            entries.record_late("video", token)
            return LATE
        if not self._video.add(f"{token.impression_key}/{name}", token.expires_at_ms / 1000.0):
            entries.record_duplicate("video")
            return DUPLICATE
        entries.record_video_event(name, token.campaign_id)
        return COUNTED

    def _verified(self, text: str, entries: AdServerEntries) -> token_pb2.ImpressionToken:
        try:
            token = self._tokens.verify(text)
        except TokenError as error:
            entries.record_rejected_token(error.reason)
            raise
        if token.seat not in self._seats:
            raise NotFound("token", f"names DSP {token.seat!r}, which this ad server does not bill")
        return token

    def _send(self, entries: AdServerEntries) -> None:
        # After the post: a DSP is told only of what the ad server has counted.
        if entries.notices:
            self._notify(entries.notices)


def _macros(token: token_pb2.ImpressionToken) -> dict:
    # The AuctionMacros fields as a dict: set straight into the notice, no message to copy.
    return dict(
        auction_id=token.auction_id, bid_id=token.bid_id, imp_id=token.imp_id, seat_id=token.seat,
        ad_id=token.ad_id, price_micros=token.price_micros, currency=token.currency, imp_ts_ms=token.issued_at_ms,
    )


def billing_notice(token: token_pb2.ImpressionToken) -> bidder_pb2.NotifyBillingRequest:
    return bidder_pb2.NotifyBillingRequest(
        macros=_macros(token), bid_id=token.bid_id, campaign_id=token.campaign_id,
        impression_key=token.impression_key,
    )


def event_notice(token: token_pb2.ImpressionToken, kind: int) -> bidder_pb2.NotifyEventRequest:
    return bidder_pb2.NotifyEventRequest(
        kind=kind, macros=_macros(token), bid_id=token.bid_id, campaign_id=token.campaign_id,
        impression_key=token.impression_key,
    )

"""The ad server's counting rules, callable without a server.

An impression counts (and is billed) only with a valid token, before it
expires, once per impression key, when it is not invalid traffic, and within
the campaign's frequency cap. Clicks, conversions and video events count only
for an impression that counted, once each per impression.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

from adchain.v1 import ad_server_pb2, bidder_pb2, token_pb2
from services.adserver.ivt import InvalidTrafficFilter
from services.adserver.ledger import AdServerLedger
from services.adserver.settings import FrequencyCap
from services.runtime.dedupe import ExpiringMap
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

Notify = Callable[[str, str, object], None]  # (seat, kind, request)


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
        self._impressions = ExpiringMap(clock)  # key -> "counted" or why not
        self._clicks = ExpiringMap(clock)
        self._conversions = ExpiringMap(clock)
        self._video = ExpiringMap(clock)

    def record_impression(self, request: ad_server_pb2.RecordImpressionRequest) -> tuple[int, str]:
        token = self._verified(request.token)
        now = self._clock()
        if now * 1000 > token.expires_at_ms:
            self._ledger.record_late("impression", token)
            return LATE, ""
        verdict = self._judge(token, request.user_agent, request.ip, now)
        # Every first render of a key takes the key, whatever its verdict: a
        # repeated pixel is a duplicate, never a second chance.
        if not self._impressions.add(token.impression_key, token.expires_at_ms / 1000.0 + CONVERSION_WINDOW_S,
                                     verdict):
            self._ledger.record_duplicate("impression")
            return DUPLICATE, ""
        if verdict == "counted":
            self._ledger.record_rendered(token)
            self._notify(token.seat, "billing", billing_notice(token))
            return COUNTED, ""
        if verdict == "capped":
            self._ledger.record_capped(token)
            return CAPPED, ""
        self._ledger.record_invalid(token, verdict)
        return INVALID, verdict

    def _judge(self, token: token_pb2.ImpressionToken, user_agent: str, ip: str, now: float) -> str:
        reason = self._ivt.classify(user_agent, ip, token.user_key, token.issued_at_ms, int(now * 1000))
        if reason is not None:
            return reason
        if not self._caps.allows(token.user_key, token.campaign_id, now):
            return "capped"
        return "counted"

    def record_click(self, request: ad_server_pb2.RecordClickRequest) -> int:
        token = self._verified(request.token)
        if self._impressions.get(token.impression_key) != "counted":
            return NO_IMPRESSION
        if not self._clicks.add(token.impression_key, self._clock() + CONVERSION_WINDOW_S):
            self._ledger.record_duplicate("click")
            return DUPLICATE
        self._ledger.record_click(token.campaign_id)
        self._notify(token.seat, "click", event_notice(token, bidder_pb2.EVENT_KIND_CLICK))
        return COUNTED

    def record_conversion(self, request: ad_server_pb2.RecordConversionRequest) -> int:
        token = self._verified(request.token)
        if request.value_micros < 0:
            raise InvalidArgument("value_micros", "must not be negative")
        # Post-click: a conversion is attributed only to a counted click.
        if token.impression_key not in self._clicks:
            return NO_IMPRESSION
        if not self._conversions.add(token.impression_key, self._clock() + CONVERSION_WINDOW_S):
            self._ledger.record_duplicate("conversion")
            return DUPLICATE
        self._ledger.record_conversion(token.campaign_id, request.value_micros)
        self._notify(token.seat, "conversion", event_notice(token, bidder_pb2.EVENT_KIND_CONVERSION))
        return COUNTED

    def record_video_event(self, request: ad_server_pb2.RecordVideoEventRequest) -> int:
        name = VIDEO_EVENT_NAMES.get(request.event)
        if name is None:
            raise InvalidArgument("event", "must be a VAST quartile event")
        token = self._verified(request.token)
        if token.mtype != 2:
            raise InvalidArgument("token", "is not for a video ad")
        if self._impressions.get(token.impression_key) != "counted":
            return NO_IMPRESSION
        if self._clock() * 1000 > token.expires_at_ms:
            self._ledger.record_late("video", token)
            return LATE
        if not self._video.add(f"{token.impression_key}/{name}", token.expires_at_ms / 1000.0):
            self._ledger.record_duplicate("video")
            return DUPLICATE
        self._ledger.record_video_event(name, token.campaign_id)
        return COUNTED

    def _verified(self, text: str) -> token_pb2.ImpressionToken:
        try:
            token = self._tokens.verify(text)
        except TokenError as error:
            self._ledger.record_rejected_token(error.reason)
            raise
        if token.seat not in self._seats:
            raise NotFound("token", f"names DSP {token.seat!r}, which this ad server does not bill")
        return token


def _macros(token: token_pb2.ImpressionToken) -> bidder_pb2.AuctionMacros:
    return bidder_pb2.AuctionMacros(
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

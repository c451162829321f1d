"""The ad server's counting rules, callable without a server: verify the
token, reject what must not count, count each impression once, and hand the
counted impression to billing."""

from __future__ import annotations

from collections.abc import Callable

from adchain.v1 import ad_server_pb2, bidder_pb2, token_pb2
from services.adserver.ledger import AdServerLedger
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import NotFound
from services.runtime.tokens import TokenCodec, TokenError

COUNTED = ad_server_pb2.EVENT_OUTCOME_COUNTED
DUPLICATE = ad_server_pb2.EVENT_OUTCOME_DUPLICATE
LATE = ad_server_pb2.EVENT_OUTCOME_LATE


class ImpressionCounter:
    def __init__(self, tokens: TokenCodec, ledger: AdServerLedger, known_seats: frozenset[str],
                 bill: Callable[[str, bidder_pb2.NotifyBillingRequest], None], clock: Callable[[], float]):
        self._tokens = tokens
        self._ledger = ledger
        self._seats = known_seats
        self._bill = bill
        self._clock = clock
        self._rendered = ExpiringMap(clock)
        self._clicked = ExpiringMap(clock)

    def record_impression(self, request: ad_server_pb2.RecordImpressionRequest) -> int:
        token = self._verified(request.token)
        if self._clock() * 1000 > token.expires_at_ms:
            self._ledger.record_late("impression")
            return LATE
        if not self._rendered.add(token.impression_key, token.expires_at_ms / 1000.0):
            self._ledger.record_duplicate("impression")
            return DUPLICATE
        self._ledger.record_rendered(token.seat, token.campaign_id, token.price_micros)
        self._bill(token.seat, billing_notice(token))
        return COUNTED

    def record_click(self, request: ad_server_pb2.RecordClickRequest) -> int:
        token = self._verified(request.token)
        if self._clock() * 1000 > token.expires_at_ms:
            self._ledger.record_late("click")
            return LATE
        if not self._clicked.add(token.impression_key, token.expires_at_ms / 1000.0):
            self._ledger.record_duplicate("click")
            return DUPLICATE
        self._ledger.record_click(token.campaign_id)
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


def billing_notice(token: token_pb2.ImpressionToken) -> bidder_pb2.NotifyBillingRequest:
    macros = bidder_pb2.AuctionMacros(
        auction_id=token.auction_id, bid_id=token.bid_id, imp_id=token.imp_id, seat_id=token.seat,
        ad_id=token.ad_id, price_micros=token.price_micros, currency=token.currency,
        imp_ts_ms=token.issued_at_ms,
    )
    return bidder_pb2.NotifyBillingRequest(
        macros=macros, bid_id=token.bid_id, campaign_id=token.campaign_id, impression_key=token.impression_key,
    )

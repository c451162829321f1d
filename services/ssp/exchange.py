"""The auction, top-down: validate the opportunity, build the OpenRTB bid
request, call every DSP in parallel under tmax, clear, notify winner and
losers, and return the ad with its signed impression token."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, exchange_pb2, openrtb_pb2, token_pb2
from pricing_core.money import price_to_micros
from services.runtime.errors import InvalidArgument
from services.runtime.tokens import TokenCodec
from services.ssp import auction, macros
from services.ssp.ledger import SspLedger
from services.ssp.settings import ExchangeSettings

log = logging.getLogger(__name__)

FORMATS = ("banner", "video", "audio", "native")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A valid bid from one DSP, its price converted to micros at the edge."""

    dsp: str
    seat: str
    bid: openrtb_pb2.Bid
    price_micros: int


@dataclasses.dataclass(frozen=True)
class Result:
    """What the servicer returns and counts: the ad, or why there is none."""

    response: exchange_pb2.RequestAdResponse
    winner: Candidate | None


class Exchange:
    def __init__(self, settings: ExchangeSettings, bidders: Mapping[str, bidder_pb2_grpc.BidderServiceStub],
                 tokens: TokenCodec, ledger: SspLedger, clock: Callable[[], float] = time.time):
        self._settings = settings
        self._bidders = dict(bidders)
        self._tokens = tokens
        self._ledger = ledger
        self._clock = clock

    def request_ad(self, request: exchange_pb2.RequestAdRequest) -> Result:
        validate(request)
        self._ledger.record_ad_request()
        started = time.perf_counter()
        bid_request = self._bid_request(request)
        candidates, timed_out = self._collect_bids(bid_request)
        imp = bid_request.imp[0]
        floor = price_to_micros(imp.bidfloor)
        outcome = auction.clear([c.price_micros for c in candidates], floor, bid_request.at,
                                self._settings.increment_micros)
        self._ledger.auction_seconds.observe(time.perf_counter() - started)
        self._notify(bid_request, candidates, outcome)
        if outcome.winner is None:
            reason = ("below_floor" if candidates else "timeout" if timed_out == len(self._bidders) else "no_bids")
            self._ledger.record_no_fill(reason)
            return Result(exchange_pb2.RequestAdResponse(
                request_id=request.request_id,
                no_fill_reason=_NO_FILL[reason],
            ), None)
        winner = candidates[outcome.winner]
        self._ledger.record_auction_won(winner.seat, winner.bid.cid, outcome.clearing_price_micros)
        ad = self._ad(bid_request, winner, outcome)
        return Result(exchange_pb2.RequestAdResponse(request_id=request.request_id, ad=ad), winner)

    def _bid_request(self, request: exchange_pb2.RequestAdRequest) -> openrtb_pb2.BidRequest:
        # The auction gets the time the caller asked for (or the default), as
        # a real exchange does; a caller that gives up sooner does not get the
        # ad, and the exchange does not count it as returned.
        tmax = request.tmax_ms or self._settings.tmax_ms
        imp = openrtb_pb2.Imp()
        imp.CopyFrom(request.imp)
        imp.id = imp.id or "1"
        if not imp.HasField("bidfloorcur"):
            imp.bidfloorcur = self._settings.currency
        if not imp.HasField("exp"):
            imp.exp = self._settings.token_ttl_s
        bid_request = openrtb_pb2.BidRequest(
            id=uuid.uuid4().hex,
            imp=[imp],
            tmax=tmax,
            at=request.at or self._settings.auction_type,
            cur=[self._settings.currency],
            source=openrtb_pb2.Source(tid=uuid.uuid4().hex),
        )
        for name in ("site", "app", "device", "user", "regs"):
            if request.HasField(name):
                getattr(bid_request, name).CopyFrom(getattr(request, name))
        return bid_request

    def _collect_bids(self, bid_request: openrtb_pb2.BidRequest) -> tuple[list[Candidate], int]:
        """Ask every DSP at once; whatever has not answered by tmax is out."""
        timeout_s = bid_request.tmax / 1000.0
        calls = {name: stub.Bid.future(bid_request, timeout=timeout_s) for name, stub in self._bidders.items()}
        candidates, timed_out = [], 0
        for name, call in calls.items():
            try:
                response = call.result()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    timed_out += 1
                    self._ledger.record_bid_outcome(name, "timeout")
                else:
                    log.warning("bid request to %s failed: %s", name, error.code().name)
                    self._ledger.record_bid_outcome(name, "error")
                continue
            valid = list(self._valid_bids(name, bid_request, response))
            self._ledger.record_bid_outcome(name, "bid" if valid else "no_bid")
            candidates.extend(valid)
        return candidates, timed_out

    def _valid_bids(self, dsp: str, bid_request: openrtb_pb2.BidRequest, response: openrtb_pb2.BidResponse):
        if response.id != bid_request.id:
            return
        imp_id = bid_request.imp[0].id
        for seatbid in response.seatbid:
            for bid in seatbid.bid:
                if bid.impid != imp_id or not bid.HasField("price") or not bid.id:
                    continue
                try:
                    price = price_to_micros(bid.price)
                except ValueError:
                    continue
                if price > 0:
                    yield Candidate(dsp=dsp, seat=seatbid.seat or dsp, bid=bid, price_micros=price)

    def _notify(self, bid_request: openrtb_pb2.BidRequest, candidates: list[Candidate],
                outcome: auction.Outcome) -> None:
        """OpenRTB 2.6 §4.3: the winner's nurl and every loser's lurl, with
        macros substituted. Sent without waiting; outcomes are counted."""
        timeout_s = self._settings.notice_timeout_ms / 1000.0
        for i, candidate in enumerate(candidates):
            won = i == outcome.winner
            notice = self._macros(bid_request, candidate, outcome, i)
            stub = self._bidders[candidate.dsp]
            if won:
                url = macros.substitute(candidate.bid.nurl, macros.values(notice))
                call = stub.NotifyWin.future(bidder_pb2.NotifyWinRequest(
                    macros=notice, bid_id=candidate.bid.id, campaign_id=candidate.bid.cid, notice_url=url),
                    timeout=timeout_s)
            else:
                url = macros.substitute(candidate.bid.lurl, macros.values(notice))
                call = stub.NotifyLoss.future(bidder_pb2.NotifyLossRequest(
                    macros=notice, bid_id=candidate.bid.id, campaign_id=candidate.bid.cid, notice_url=url),
                    timeout=timeout_s)
            kind = "win" if won else "loss"
            call.add_done_callback(lambda f, kind=kind: self._ledger.record_notice(
                kind, "failed" if f.exception() is not None else "sent"))

    def _macros(self, bid_request, candidate: Candidate, outcome: auction.Outcome, i: int) -> bidder_pb2.AuctionMacros:
        notice = bidder_pb2.AuctionMacros(
            auction_id=bid_request.id,
            bid_id=candidate.bid.id,
            imp_id=candidate.bid.impid,
            seat_id=candidate.seat,
            ad_id=candidate.bid.adid,
            currency=self._settings.currency,
            loss=outcome.loss_codes[i],
        )
        if i == outcome.winner:
            notice.price_micros = outcome.clearing_price_micros
        if outcome.min_to_win_micros[i] is not None:
            notice.min_to_win_micros = outcome.min_to_win_micros[i]
        return notice

    def _ad(self, bid_request: openrtb_pb2.BidRequest, winner: Candidate, outcome: auction.Outcome) -> exchange_pb2.Ad:
        bid, imp = winner.bid, bid_request.imp[0]
        now_ms = int(self._clock() * 1000)
        ttl_s = bid.exp if bid.HasField("exp") and bid.exp > 0 else imp.exp
        impression_key = f"{bid_request.id}:{imp.id}"
        mtype = bid.mtype if bid.HasField("mtype") else _MTYPE[_format(imp)]
        w = bid.w or imp.banner.w or imp.video.w
        h = bid.h or imp.banner.h or imp.video.h
        token = token_pb2.ImpressionToken(
            impression_key=impression_key, auction_id=bid_request.id, imp_id=imp.id, bid_id=bid.id,
            seat=winner.seat, campaign_id=bid.cid, creative_id=bid.crid, ad_id=bid.adid,
            price_micros=outcome.clearing_price_micros, currency=self._settings.currency, mtype=mtype, w=w, h=h,
            issued_at_ms=now_ms, expires_at_ms=now_ms + ttl_s * 1000,
        )
        notice = self._macros(bid_request, winner, outcome, outcome.winner)
        return exchange_pb2.Ad(
            token=self._tokens.sign(token),
            impression_key=impression_key,
            auction_id=bid_request.id,
            adm=macros.substitute(bid.adm, macros.values(notice)),
            price_micros=outcome.clearing_price_micros,
            currency=self._settings.currency,
            seat=winner.seat,
            campaign_id=bid.cid,
            creative_id=bid.crid,
            adomain=list(bid.adomain),
            w=w,
            h=h,
            mtype=mtype,
            expires_at_ms=token.expires_at_ms,
        )


def validate(request: exchange_pb2.RequestAdRequest) -> None:
    """Reject an opportunity the exchange cannot auction, naming the field."""
    if not request.HasField("imp"):
        raise InvalidArgument("imp", "is required: the placement to fill")
    offered = [f for f in FORMATS if request.imp.HasField(f)]
    if len(offered) != 1:
        raise InvalidArgument("imp", "must offer exactly one of banner, video, audio, native")
    if request.imp.bidfloor < 0:
        raise InvalidArgument("imp.bidfloor", f"must not be negative, got {request.imp.bidfloor}")
    if request.imp.bidfloorcur not in ("", "USD"):
        raise InvalidArgument("imp.bidfloorcur", "only USD is supported")
    if request.HasField("site") == request.HasField("app"):
        raise InvalidArgument("site", "exactly one of site or app is required (OpenRTB 2.6 §3.2.1)")
    if request.tmax_ms < 0:
        raise InvalidArgument("tmax_ms", "must not be negative")
    if request.at not in (0, 1, 2):
        raise InvalidArgument("at", "must be 1 (first price) or 2 (second price plus)")


def _format(imp: openrtb_pb2.Imp) -> str:
    return next(f for f in FORMATS if imp.HasField(f))


_MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}
_NO_FILL = {
    "no_bids": exchange_pb2.NO_FILL_REASON_NO_BIDS,
    "below_floor": exchange_pb2.NO_FILL_REASON_BELOW_FLOOR,
    "timeout": exchange_pb2.NO_FILL_REASON_TIMEOUT,
}

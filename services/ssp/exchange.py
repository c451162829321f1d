"""The auction, top-down: validate the opportunity, build the OpenRTB bid
request, call every DSP in parallel under tmax, clear each Imp (an ad pod's
slots in play order, with competitive separation), notify winners and
losers, and return the ads with their signed impression tokens."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

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
MAX_POD_SLOTS = 20
# OpenRTB 3.0 loss reason: the bid's advertiser already has an ad in this pod.
LOSS_ADVERTISER_EXCLUSIONS = 205


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A valid bid from one DSP, its price converted to micros at the edge."""

    dsp: str
    seat: str
    bid: openrtb_pb2.Bid
    # BidResponse.bidid: what ${AUCTION_BID_ID} stands for (OpenRTB 2.6 §4.4).
    response_bidid: str
    price_micros: int


@dataclasses.dataclass(frozen=True)
class Placed:
    """A cleared Imp: the winner and the ad that goes back to the caller."""

    winner: Candidate
    ad: exchange_pb2.Ad


class Exchange:
    def __init__(self, settings: ExchangeSettings, bidders: Mapping[str, bidder_pb2_grpc.BidderServiceStub],
                 tokens: TokenCodec, ledger: SspLedger, clock: Callable[[], float] = time.time):
        self._settings = settings
        self._bidders = dict(bidders)
        self._tokens = tokens
        self._ledger = ledger
        self._clock = clock
        self._notices_in_flight = 0
        self._notices_done = threading.Condition()

    def drain(self, timeout_s: float) -> int:
        """Wait for win and loss notices still in flight; returns how many
        did not finish in time."""
        deadline = time.monotonic() + timeout_s
        with self._notices_done:
            while self._notices_in_flight and time.monotonic() < deadline:
                self._notices_done.wait(deadline - time.monotonic())
            return self._notices_in_flight

    def request_ad(self, request: exchange_pb2.RequestAdRequest) -> tuple[exchange_pb2.RequestAdResponse, list[Placed]]:
        validate(request)
        self._ledger.record_ad_request()
        started = time.perf_counter()
        bid_request = self._bid_request(request, [request.imp], request.tmax_ms, request.at)
        candidates, timed_out = self._collect_bids(bid_request)
        placed, outcome = self._clear_imp(bid_request, bid_request.imp[0], candidates, excluded_domains=set())
        self._ledger.auction_seconds.observe(time.perf_counter() - started)
        response = exchange_pb2.RequestAdResponse(request_id=request.request_id)
        if placed is None:
            reason = "below_floor" if candidates else "timeout" if timed_out == len(self._bidders) else "no_bids"
            self._ledger.record_no_fill(reason)
            response.no_fill_reason = _NO_FILL[reason]
            return response, []
        response.ad.CopyFrom(placed.ad)
        return response, [placed]

    def request_ad_pod(self, request: exchange_pb2.RequestAdPodRequest
                       ) -> tuple[exchange_pb2.RequestAdPodResponse, list[Placed]]:
        """An ad break: every slot in one bid request; slots cleared in play
        order, and a bid whose advertiser already has an ad in the break is
        excluded (competitive separation)."""
        validate_pod(request)
        self._ledger.record_ad_request()
        started = time.perf_counter()
        bid_request = self._bid_request(request, request.imp, request.tmax_ms, request.at)
        candidates, _timed_out = self._collect_bids(bid_request)
        placed_ads: list[Placed] = []
        used_domains: set[str] = set()
        for imp in bid_request.imp:
            mine = [c for c in candidates if c.bid.impid == imp.id]
            placed, _outcome = self._clear_imp(bid_request, imp, mine, used_domains)
            if placed is not None:
                placed_ads.append(placed)
                used_domains.update(placed.winner.bid.adomain)
        self._ledger.auction_seconds.observe(time.perf_counter() - started)
        ad_seconds = sum(p.winner.bid.dur for p in placed_ads)
        self._ledger.record_pod(len(bid_request.imp), len(placed_ads), ad_seconds, request.content_seconds)
        return exchange_pb2.RequestAdPodResponse(
            request_id=request.request_id,
            ads=[p.ad for p in placed_ads],
            unfilled_slots=len(bid_request.imp) - len(placed_ads),
        ), placed_ads

    def _bid_request(self, request, imps: Sequence[openrtb_pb2.Imp], tmax_ms: int, at: int) -> openrtb_pb2.BidRequest:
        # The auction gets the time the caller asked for (or the default), as
        # a real exchange does; a caller that gives up sooner does not get the
        # ad, and the exchange does not count it as returned.
        bid_request = openrtb_pb2.BidRequest(
            id=uuid.uuid4().hex,
            tmax=tmax_ms or self._settings.tmax_ms,
            at=at or self._settings.auction_type,
            cur=[self._settings.currency],
            source=openrtb_pb2.Source(tid=uuid.uuid4().hex),
        )
        for i, given in enumerate(imps):
            imp = bid_request.imp.add()
            imp.CopyFrom(given)
            imp.id = imp.id or str(i + 1)
            if not imp.HasField("bidfloorcur"):
                imp.bidfloorcur = self._settings.currency
            if not imp.HasField("exp"):
                imp.exp = self._settings.token_ttl_s
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
        imp_ids = {imp.id for imp in bid_request.imp}
        for seatbid in response.seatbid:
            for bid in seatbid.bid:
                if bid.impid not in imp_ids or not bid.HasField("price") or not bid.id:
                    continue
                try:
                    price = price_to_micros(bid.price)
                except ValueError:
                    continue
                if price > 0:
                    yield Candidate(dsp=dsp, seat=seatbid.seat or dsp, bid=bid, response_bidid=response.bidid,
                                    price_micros=price)

    def _clear_imp(self, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, candidates: list[Candidate],
                   excluded_domains: set[str]) -> tuple[Placed | None, auction.Outcome | None]:
        """Clear one Imp among its eligible bids and send every notice."""
        excluded = [c for c in candidates if excluded_domains.intersection(c.bid.adomain)]
        eligible = [c for c in candidates if not excluded_domains.intersection(c.bid.adomain)]
        for candidate in excluded:
            self._send_loss(bid_request, candidate, LOSS_ADVERTISER_EXCLUSIONS, None)
        outcome = auction.clear([c.price_micros for c in eligible], price_to_micros(imp.bidfloor), bid_request.at,
                                self._settings.increment_micros)
        for i, candidate in enumerate(eligible):
            if i != outcome.winner:
                self._send_loss(bid_request, candidate, outcome.loss_codes[i], outcome.min_to_win_micros[i])
        if outcome.winner is None:
            return None, outcome
        winner = eligible[outcome.winner]
        notice = self._macros(bid_request, imp, winner, auction.LOSS_WON, outcome.min_to_win_micros[outcome.winner])
        notice.price_micros = outcome.clearing_price_micros
        notice.mbr_millionths = outcome.clearing_price_micros * 1_000_000 // winner.price_micros
        self._send(winner, "win", notice)
        self._ledger.record_auction_won(winner.seat, winner.bid.cid, outcome.clearing_price_micros)
        return Placed(winner, self._ad(bid_request, imp, winner, notice)), outcome

    def _send_loss(self, bid_request, candidate: Candidate, loss_code: int, min_to_win: int | None) -> None:
        imp = next(i for i in bid_request.imp if i.id == candidate.bid.impid)
        self._send(candidate, "loss", self._macros(bid_request, imp, candidate, loss_code, min_to_win))

    def _send(self, candidate: Candidate, kind: str, notice: bidder_pb2.AuctionMacros) -> None:
        """OpenRTB 2.6 §4.3: the winner's nurl, every loser's lurl, with the
        macros substituted; sent without waiting, outcomes counted."""
        stub = self._bidders[candidate.dsp]
        timeout_s = self._settings.notice_timeout_ms / 1000.0
        if kind == "win":
            url = macros.substitute(candidate.bid.nurl, macros.values(notice))
            call = stub.NotifyWin.future(bidder_pb2.NotifyWinRequest(
                macros=notice, bid_id=candidate.bid.id, campaign_id=candidate.bid.cid, notice_url=url),
                timeout=timeout_s)
        else:
            url = macros.substitute(candidate.bid.lurl, macros.values(notice))
            call = stub.NotifyLoss.future(bidder_pb2.NotifyLossRequest(
                macros=notice, bid_id=candidate.bid.id, campaign_id=candidate.bid.cid, notice_url=url),
                timeout=timeout_s)
        with self._notices_done:
            self._notices_in_flight += 1
        call.add_done_callback(lambda f: self._notice_done(kind, f))

    def _notice_done(self, kind: str, call: grpc.Future) -> None:
        self._ledger.record_notice(kind, "failed" if call.exception() is not None else "sent")
        with self._notices_done:
            self._notices_in_flight -= 1
            self._notices_done.notify_all()

    def _macros(self, bid_request, imp: openrtb_pb2.Imp, candidate: Candidate, loss_code: int,
                min_to_win: int | None) -> bidder_pb2.AuctionMacros:
        notice = bidder_pb2.AuctionMacros(
            auction_id=bid_request.id,
            bid_id=candidate.response_bidid,
            imp_id=candidate.bid.impid,
            seat_id=candidate.seat,
            ad_id=candidate.bid.adid,
            currency=self._settings.currency,
            loss=loss_code,
        )
        if min_to_win is not None:
            notice.min_to_win_micros = min_to_win
        if imp.HasField("qty") and imp.qty.HasField("multiplier"):
            notice.multiplier_millionths = round(imp.qty.multiplier * 1_000_000)
        return notice

    def _ad(self, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, winner: Candidate,
            notice: bidder_pb2.AuctionMacros) -> exchange_pb2.Ad:
        bid = winner.bid
        now_ms = int(self._clock() * 1000)
        ttl_s = bid.exp if bid.HasField("exp") and bid.exp > 0 else imp.exp
        impression_key = f"{bid_request.id}:{imp.id}"
        mtype = bid.mtype if bid.HasField("mtype") else _MTYPE[_format(imp)]
        w = bid.w or imp.banner.w or imp.video.w
        h = bid.h or imp.banner.h or imp.video.h
        user = bid_request.user
        token = token_pb2.ImpressionToken(
            impression_key=impression_key, auction_id=bid_request.id, imp_id=imp.id, bid_id=bid.id,
            seat=winner.seat, campaign_id=bid.cid, creative_id=bid.crid, ad_id=bid.adid,
            price_micros=notice.price_micros, currency=self._settings.currency, mtype=mtype, w=w, h=h,
            issued_at_ms=now_ms, expires_at_ms=now_ms + ttl_s * 1000,
            user_key=user.buyeruid or user.id or bid_request.device.ifa or bid_request.device.ip,
            adomain=list(bid.adomain), duration_s=bid.dur,
        )
        return exchange_pb2.Ad(
            token=self._tokens.sign(token),
            impression_key=impression_key,
            auction_id=bid_request.id,
            adm=macros.substitute(bid.adm, macros.values(notice)),
            price_micros=notice.price_micros,
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
    _validate_imp(request.imp, "imp")
    _validate_common(request)


def validate_pod(request: exchange_pb2.RequestAdPodRequest) -> None:
    if not request.imp:
        raise InvalidArgument("imp", "an ad break needs at least one slot")
    if len(request.imp) > MAX_POD_SLOTS:
        raise InvalidArgument("imp", f"at most {MAX_POD_SLOTS} slots per ad break")
    ids = set()
    for i, imp in enumerate(request.imp):
        where = f"imp[{i}]"
        _validate_imp(imp, where)
        if not (imp.HasField("video") or imp.HasField("audio")):
            raise InvalidArgument(where, "an ad break slot must offer video or audio")
        if not imp.id:
            raise InvalidArgument(f"{where}.id", "is required in an ad break, to tell the slots apart")
        if imp.id in ids:
            raise InvalidArgument(f"{where}.id", f"duplicate slot id {imp.id!r}")
        ids.add(imp.id)
    if request.content_seconds < 0:
        raise InvalidArgument("content_seconds", "must not be negative")
    _validate_common(request)


def _validate_imp(imp: openrtb_pb2.Imp, where: str) -> None:
    offered = [f for f in FORMATS if imp.HasField(f)]
    if len(offered) != 1:
        raise InvalidArgument(where, "must offer exactly one of banner, video, audio, native")
    if imp.bidfloor < 0:
        raise InvalidArgument(f"{where}.bidfloor", f"must not be negative, got {imp.bidfloor}")
    if imp.bidfloorcur not in ("", "USD"):
        raise InvalidArgument(f"{where}.bidfloorcur", "only USD is supported")


def _validate_common(request) -> None:
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

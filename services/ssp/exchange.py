"""The auction, top-down: validate the opportunity, build the OpenRTB bid
request, ask every DSP at once under tmax, clear each Imp (an ad pod's slots
in play order, with competitive separation), notify winners and losers, and
return the ads with their signed impression tokens. A RequestAds batch runs
every item's auction at once, each exactly as a RequestAd would run it."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from google.rpc import code_pb2

from adchain.v1 import batch_pb2, bidder_pb2, exchange_pb2, openrtb_pb2, token_pb2
from pricing_core.money import cached_price_to_micros
from services.runtime import batch
from services.runtime.errors import InvalidArgument, RequestError
from services.runtime.tokens import TokenCodec
from services.ssp import auction, macros
from services.ssp.bidstream import ANSWERED, TIMEOUT, Answer, BidRound
from services.ssp.ledger import SspLedger
from services.ssp.notices import LOSS, WIN, NoticeBatches
from services.ssp.settings import ExchangeSettings

log = logging.getLogger(__name__)

FORMATS = ("banner", "video", "audio", "native")
MAX_POD_SLOTS = 20
# OpenRTB 3.0 loss reason: the bid's advertiser already has an ad in this pod.
LOSS_ADVERTISER_EXCLUSIONS = 205


class Bidders(Protocol):
    """The fan-out to every DSP (services/ssp/bidstream.py)."""

    def ask(self, bid_requests: Sequence[openrtb_pb2.BidRequest]) -> BidRound: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A valid bid from one DSP, its price converted to micros at the edge."""

    dsp: str
    seat: str
    bid: openrtb_pb2.Bid
    # BidResponse.bidid: what ${AUCTION_BID_ID} stands for (OpenRTB 2.6 §4.4).
    response_bidid: str
    price_micros: int


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """A cleared Imp: the winner and the ad that goes back to the caller."""

    winner: Candidate
    ad: exchange_pb2.Ad


@dataclasses.dataclass(frozen=True, slots=True)
class _Read:
    """An auction with its DSPs' answers read: its valid bids, and whether
    every DSP missed tmax."""

    auction: "_Auction"
    candidates: list[Candidate]
    all_timed_out: bool


@dataclasses.dataclass(slots=True)
class _Auction:
    """One opportunity between its bid request and its clearing."""

    request: exchange_pb2.RequestAdRequest | exchange_pb2.RequestAdPodRequest
    bid_request: openrtb_pb2.BidRequest
    started: float


class Exchange:
    def __init__(self, settings: ExchangeSettings, bidders: Bidders, notices: NoticeBatches, tokens: TokenCodec,
                 ledger: SspLedger, clock: Callable[[], float] = time.time):
        self._settings = settings
        self._bidders = bidders
        self._notices = notices
        self._tokens = tokens
        self._ledger = ledger
        self._clock = clock
        self._random_ids = _RandomIds()

    async def request_ad(self, request: exchange_pb2.RequestAdRequest, received_at: float
                         ) -> tuple[exchange_pb2.RequestAdResponse, list[Placed], list[Placed]]:
        """One auction: (response, the ads it carries, the ads whose page
        stopped waiting). `received_at` (time.monotonic()) is when the
        request arrived; the page's caller_deadline_ms counts from it."""
        validate(request)
        self._ledger.record_ad_requests(1)
        opened = self._open(request, [request.imp], request.tmax_ms, request.at)
        answers = await _only_answers(self._bidders.ask([opened.bid_request]))
        read = self._read(opened, answers)
        response = exchange_pb2.RequestAdResponse()
        placed = self._settle(read, self._clear_single([read])[0], response)
        if page_gone(placed, request.caller_deadline_ms, waited_ms_since(received_at)):
            return response, [], placed
        return response, placed, []

    async def request_ads(self, items: Sequence[exchange_pb2.RequestAdRequest], received_at: float
                    ) -> tuple[exchange_pb2.RequestAdsResponse, list[Placed], list[Placed]]:
        """Every item's auction at once: each validated, counted and cleared
        as request_ad would, under its own tmax. results[i] answers items[i];
        a refused item gets its own status and changes no count. Returns the
        response, the ads it carries, and the ads whose pages stopped waiting
        (`received_at`, time.monotonic(), is when the batch arrived)."""
        response = exchange_pb2.RequestAdsResponse()
        results = [response.results.add() for _ in items]
        indices, auctions = [], []
        for i, item in enumerate(items):
            try:
                validate(item)
            except RequestError as error:
                results[i].status.CopyFrom(batch.refused(error, f"items[{i}]"))
                continue
            indices.append(i)
            auctions.append(self._open(item, [item.imp], item.tmax_ms, item.at))
        self._ledger.record_ad_requests(len(auctions))
        won: dict[int, list[Placed]] = {}
        if auctions:
            # Every item's bid requests leave at once; each item clears as soon
            # as its answers are in, with those whose answers came in together.
            bid_round = self._bidders.ask([a.bid_request for a in auctions])
            try:
                async for ready in bid_round.completed():
                    self._settle_items([(indices[j], auctions[j], answers) for j, answers in ready], results, won)
            finally:
                bid_round.close()
        # Each item's ad reaches its page only with the whole response, which
        # leaves now: a page whose wait is over by now never gets its ad (a
        # no-fill is answered as it is: there is nothing to withhold).
        waited_ms = waited_ms_since(received_at)
        carried, gave_up = [], []
        for i, placed in won.items():
            deadline_ms = items[i].caller_deadline_ms
            if page_gone(placed, deadline_ms, waited_ms):
                results[i].ClearField("response")
                results[i].status.CopyFrom(_page_gone_status(i, deadline_ms, waited_ms))
                gave_up.extend(placed)
            else:
                carried.extend(placed)
        return response, carried, gave_up

    async def request_ad_pod(self, request: exchange_pb2.RequestAdPodRequest
                       ) -> tuple[exchange_pb2.RequestAdPodResponse, list[Placed]]:
        """An ad break: every slot in one bid request; slots cleared in play
        order, and a bid whose advertiser already has an ad in the break is
        excluded (competitive separation)."""
        validate_pod(request)
        self._ledger.record_ad_requests(1)
        opened = self._open(request, request.imp, request.tmax_ms, request.at)
        bid_request = opened.bid_request
        answers = await _only_answers(self._bidders.ask([bid_request]))
        candidates, _timed_out = self._read_answers(bid_request, answers)
        response = exchange_pb2.RequestAdPodResponse(request_id=request.request_id)
        placed_ads: list[Placed] = []
        used_domains: set[str] = set()
        for imp in bid_request.imp:
            mine = [c for c in candidates if c.bid.impid == imp.id]
            placed = self._clear_imp(bid_request, imp, mine, used_domains, response.ads.add)
            if placed is not None:
                placed_ads.append(placed)
                used_domains.update(placed.winner.bid.adomain)
        self._ledger.auction_seconds.observe(time.perf_counter() - opened.started)
        ad_seconds = sum(p.winner.bid.dur for p in placed_ads)
        self._ledger.record_pod(len(bid_request.imp), len(placed_ads), ad_seconds, request.content_seconds)
        response.unfilled_slots = len(bid_request.imp) - len(placed_ads)
        return response, placed_ads

    def _open(self, request, imps: Sequence[openrtb_pb2.Imp], tmax_ms: int, at: int) -> _Auction:
        # The auction gets the time the caller asked for (or the default), as
        # a real exchange does; a caller that gives up sooner does not get the
        # ad, and the exchange does not count it as returned.
        started = time.perf_counter()
        ids = self._random_ids.take()
        bid_request = openrtb_pb2.BidRequest(
            # The auction id starts with the time in milliseconds, then 80
            # random bits: unique, and sorted by time, so every ledger keyed by
            # impression key inserts at the right edge of its index.
            id=f"{int(self._clock() * 1000) & 0xFFFFFFFFFFFF:012x}{ids[12:32]}",
            imp=imps,
            tmax=tmax_ms or self._settings.tmax_ms,
            at=at or self._settings.auction_type,
            cur=(self._settings.currency,),
            # OpenRTB 2.6 §3.2.2: the transaction id every party to this
            # opportunity shares; the exchange is where it starts.
            source=openrtb_pb2.Source(tid=ids[32:]),
        )
        for i, imp in enumerate(bid_request.imp):
            if not imp.id:
                imp.id = str(i + 1)
            if not imp.HasField("bidfloorcur"):
                imp.bidfloorcur = self._settings.currency
            if not imp.HasField("exp"):
                imp.exp = self._settings.token_ttl_s
        for name in ("site", "app", "device", "user", "regs"):
            if request.HasField(name):
                getattr(bid_request, name).CopyFrom(getattr(request, name))
        return _Auction(request, bid_request, started)

    def _settle_items(self, ready: Sequence[tuple[int, _Auction, dict[str, Answer]]],
                      results: Sequence[exchange_pb2.RequestAdResult], won: dict[int, list[Placed]]) -> None:
        """Clear batch items whose answers are all in, in one clearing call,
        each into results[i]; one item's failure never fails the others."""
        read: list[tuple[int, _Read]] = []
        for i, opened, answers in ready:
            try:
                read.append((i, self._read(opened, answers)))
            except Exception:
                _fail(results[i], i)
        outcomes = self._clear_single([r for _, r in read])
        for (i, item), outcome in zip(read, outcomes):
            result = results[i]
            try:
                won[i] = self._settle(item, outcome, result.response)
            except Exception:
                _fail(result, i)
                continue
            result.status.CopyFrom(batch.OK)

    def _read(self, opened: _Auction, answers: dict[str, Answer]) -> _Read:
        candidates, timed_out = self._read_answers(opened.bid_request, answers)
        return _Read(opened, candidates, all_timed_out=timed_out == len(answers))

    def _clear_single(self, read: Sequence[_Read]) -> list[auction.Outcome]:
        """Single-Imp auctions cleared in one kernel call."""
        return auction.clear_many([[c.price_micros for c in r.candidates] for r in read],
                                  [cached_price_to_micros(r.auction.bid_request.imp[0].bidfloor) for r in read],
                                  [r.auction.bid_request.at for r in read], self._settings.increment_micros)

    def _settle(self, read: _Read, outcome: auction.Outcome, response: exchange_pb2.RequestAdResponse) -> list[Placed]:
        """A single-Imp auction's outcome into `response`: the ad, or why none."""
        opened = read.auction
        bid_request = opened.bid_request
        response.request_id = opened.request.request_id
        # The ad is written where the caller reads it: no copy of it.
        placed = self._award(bid_request, bid_request.imp[0], read.candidates, outcome, lambda: response.ad)
        self._ledger.auction_seconds.observe(time.perf_counter() - opened.started)
        if placed is None:
            reason = "below_floor" if read.candidates else "timeout" if read.all_timed_out else "no_bids"
            self._ledger.record_no_fill(reason)
            response.no_fill_reason = _NO_FILL[reason]
            return []
        return [placed]

    def _read_answers(self, bid_request: openrtb_pb2.BidRequest, answers: dict[str, Answer]
                      ) -> tuple[list[Candidate], int]:
        """Each DSP's outcome counted; its valid bids as candidates. A DSP
        that missed tmax is out of the auction (a timeout)."""
        candidates, timed_out = [], 0
        for name, answer in answers.items():
            if answer.outcome != ANSWERED:
                timed_out += answer.outcome == TIMEOUT
                self._ledger.record_bid_outcome(name, answer.outcome)
                continue
            valid = list(self._valid_bids(name, bid_request, answer.response))
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
                    price = cached_price_to_micros(bid.price)
                except ValueError:
                    continue
                if price > 0:
                    yield Candidate(dsp=dsp, seat=seatbid.seat or dsp, bid=bid, response_bidid=response.bidid,
                                    price_micros=price)

    def _clear_imp(self, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, candidates: list[Candidate],
                   excluded_domains: set[str], new_ad: Callable[[], exchange_pb2.Ad]) -> Placed | None:
        """Clear one Imp of an ad break among its eligible bids (competitive
        separation first) and send every notice; the winner's ad is written
        into `new_ad()`."""
        eligible = []
        for candidate in candidates:
            if excluded_domains.intersection(candidate.bid.adomain):
                self._send_loss(bid_request, imp, candidate, LOSS_ADVERTISER_EXCLUSIONS, None)
            else:
                eligible.append(candidate)
        outcome = auction.clear([c.price_micros for c in eligible], cached_price_to_micros(imp.bidfloor), bid_request.at,
                                self._settings.increment_micros)
        return self._award(bid_request, imp, eligible, outcome, new_ad)

    def _award(self, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, eligible: list[Candidate],
               outcome: auction.Outcome, new_ad: Callable[[], exchange_pb2.Ad]) -> Placed | None:
        """One Imp's clearing outcome among `eligible`: every loser's notice,
        the winner's notice, and its ad written into `new_ad()`."""
        for i, candidate in enumerate(eligible):
            if i != outcome.winner:
                self._send_loss(bid_request, imp, candidate, outcome.loss_codes[i], outcome.min_to_win_micros[i])
        if outcome.winner is None:
            return None
        winner = eligible[outcome.winner]
        win = bidder_pb2.NotifyWinRequest(bid_id=winner.bid.id, campaign_id=winner.bid.cid)
        notice = self._macros(win.macros, bid_request, imp, winner, auction.LOSS_WON,
                              outcome.min_to_win_micros[outcome.winner])
        notice.price_micros = outcome.clearing_price_micros
        notice.mbr_millionths = outcome.clearing_price_micros * 1_000_000 // winner.price_micros
        # OpenRTB 2.6 §4.3: the winner's nurl, its macros substituted (§4.4).
        win.notice_url = macros.expand(winner.bid.nurl, notice)
        self._notices.send(winner.dsp, WIN, win)
        self._ledger.record_auction_won(winner.seat, winner.bid.cid, outcome.clearing_price_micros)
        return Placed(winner, self._ad(new_ad(), bid_request, imp, winner, notice))

    def _send_loss(self, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, candidate: Candidate,
                   loss_code: int, min_to_win: int | None) -> None:
        """OpenRTB 2.6 §4.3: every loser's lurl, with its loss code and the
        price it needed to win."""
        loss = bidder_pb2.NotifyLossRequest(bid_id=candidate.bid.id, campaign_id=candidate.bid.cid)
        notice = self._macros(loss.macros, bid_request, imp, candidate, loss_code, min_to_win)
        loss.notice_url = macros.expand(candidate.bid.lurl, notice)
        self._notices.send(candidate.dsp, LOSS, loss)

    def _macros(self, notice: bidder_pb2.AuctionMacros, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp,
                candidate: Candidate, loss_code: int, min_to_win: int | None) -> bidder_pb2.AuctionMacros:
        """Fill a notice's §4.4 macro values in place."""
        notice.auction_id = bid_request.id
        notice.bid_id = candidate.response_bidid
        notice.imp_id = candidate.bid.impid
        notice.seat_id = candidate.seat
        notice.ad_id = candidate.bid.adid
        notice.currency = self._settings.currency
        notice.loss = loss_code
        if min_to_win is not None:
            notice.min_to_win_micros = min_to_win
        if imp.HasField("qty") and imp.qty.HasField("multiplier"):
            notice.multiplier_millionths = round(imp.qty.multiplier * 1_000_000)
        return notice

    def _ad(self, ad: exchange_pb2.Ad, bid_request: openrtb_pb2.BidRequest, imp: openrtb_pb2.Imp, winner: Candidate,
            notice: bidder_pb2.AuctionMacros) -> exchange_pb2.Ad:
        """Fill `ad` with the winner's creative and its signed impression token."""
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
            adomain=bid.adomain, duration_s=bid.dur,
        )
        ad.token = self._tokens.sign(token)
        ad.impression_key = impression_key
        ad.auction_id = bid_request.id
        ad.adm = macros.expand(bid.adm, notice)
        ad.price_micros = notice.price_micros
        ad.currency = self._settings.currency
        ad.seat = winner.seat
        ad.campaign_id = bid.cid
        ad.creative_id = bid.crid
        ad.adomain.extend(bid.adomain)
        ad.w = w
        ad.h = h
        ad.mtype = mtype
        ad.expires_at_ms = token.expires_at_ms
        return ad


class _RandomIds:
    """Two 128-bit random ids per auction (its id and its transaction id),
    as uuid4 carries, hex-encoded: the auction id is the impression key's
    prefix and must never repeat. The system's random source is read 4 KiB
    at a time, one read per 128 auctions rather than one per auction."""

    _CHUNK = 4096

    def __init__(self):
        self._hex = ""
        self._at = 0

    def take(self) -> str:
        """64 hex digits: the first 32 one id, the last 32 the other."""
        if self._at >= len(self._hex):
            self._hex, self._at = os.urandom(self._CHUNK).hex(), 0
        at, self._at = self._at, self._at + 64
        return self._hex[at:at + 64]


async def _only_answers(bid_round: BidRound) -> dict[str, Answer]:
    """The answers to a round of one bid request."""
    try:
        async for ready in bid_round.completed():
            return ready[0][1]
    finally:
        bid_round.close()
    raise AssertionError("a round of one request completes once")


def validate(request: exchange_pb2.RequestAdRequest) -> None:
    """Reject an opportunity the exchange cannot auction, naming the field."""
    if not request.HasField("imp"):
        raise InvalidArgument("imp", "is required: the placement to fill")
    _validate_imp(request.imp, "imp")
    _validate_common(request)
    if request.caller_deadline_ms < 0:
        raise InvalidArgument("caller_deadline_ms", "must not be negative")


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
    # NaN compares false with everything, so it is refused by name, as infinity is.
    if not 0 <= imp.bidfloor < math.inf:
        raise InvalidArgument(f"{where}.bidfloor", f"must be a finite, non-negative CPM, got {imp.bidfloor}")
    if imp.bidfloorcur not in ("", "USD"):
        raise InvalidArgument(f"{where}.bidfloorcur", "only USD is supported")


def _validate_common(request) -> None:
    if request.HasField("site") == request.HasField("app"):
        raise InvalidArgument("site", "exactly one of site or app is required (OpenRTB 2.6 §3.2.1)")
    if request.tmax_ms < 0:
        raise InvalidArgument("tmax_ms", "must not be negative")
    if request.at not in (0, 1, 2):
        raise InvalidArgument("at", "must be 1 (first price) or 2 (second price plus)")


def _fail(result: exchange_pb2.RequestAdResult, index: int) -> None:
    log.exception("items[%d] failed", index)
    result.ClearField("response")
    result.status.CopyFrom(batch.failed(f"items[{index}]"))


def waited_ms_since(received_at: float) -> float:
    return (time.monotonic() - received_at) * 1000.0


def page_gone(placed: Sequence[Placed], deadline_ms: int, waited_ms: float) -> bool:
    """Whether an auction's ads are withheld: its page's own wait
    (caller_deadline_ms, 0 for none) is over. A no-fill withholds nothing."""
    return bool(placed) and 0 < deadline_ms < waited_ms


def page_gone_message(deadline_ms: int, waited_ms: float) -> str:
    return f"the page waited {deadline_ms} ms; the answer was ready after {waited_ms:.0f} ms"


def _page_gone_status(index: int, deadline_ms: int, waited_ms: float) -> batch_pb2.ItemStatus:
    """The status of an item whose page stopped waiting before the batch was
    answered: its auction ran and is counted; what it found is not returned."""
    return batch_pb2.ItemStatus(code=code_pb2.DEADLINE_EXCEEDED, field=f"items[{index}].caller_deadline_ms",
                                message=page_gone_message(deadline_ms, waited_ms))


def _format(imp: openrtb_pb2.Imp) -> str:
    return next(f for f in FORMATS if imp.HasField(f))


_MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}
_NO_FILL = {
    "no_bids": exchange_pb2.NO_FILL_REASON_NO_BIDS,
    "below_floor": exchange_pb2.NO_FILL_REASON_BELOW_FLOOR,
    "timeout": exchange_pb2.NO_FILL_REASON_TIMEOUT,
}

"""The DSP's gRPC servicer: validate, convert, call the bidder or the ledger,
convert back. Pricing happens in pricing_core, counting in the ledger.

Bid requests arrive one per call (Bid) or many on one stream (BidStream);
win, loss, billing and event notices one per call or in batches whose items
each get their own verdict (services/runtime/batch.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, openrtb_pb2
from pricing_core.engine import PricingEngine
from pricing_core.money import micros_to_price
from services.dsp.bidding import MTYPES, Bidder, Decision, read_request
from services.dsp.ledger import DspLedger, LedgerBatch
from services.dsp.settings import DspConfig
from services.dsp.stream import DueStream
from services.runtime.batch import OK, answer_each, failed, refused
from services.runtime.dedupe import DurableKeys, ExpiringMap
from services.runtime.errors import InvalidArgument, NotFound, RequestError
from services.runtime.server import RoleContext, Servicer
from services.runtime.store import LedgerStore

log = logging.getLogger(__name__)

EVENT_KINDS = {
    bidder_pb2.EVENT_KIND_VIEWABLE: "viewable",
    bidder_pb2.EVENT_KIND_CLICK: "click",
    bidder_pb2.EVENT_KIND_CONVERSION: "conversion",
}


class BidderServicer(bidder_pb2_grpc.BidderServiceServicer):
    def __init__(self, config: DspConfig, bidder: Bidder, ledger: DspLedger, clock: Callable[[], float],
                 rng: random.Random | None = None, monotonic: Callable[[], float] = time.monotonic,
                 store: LedgerStore | None = None):
        self._settings = config.dsp
        self._rng = rng or random.Random(config.dsp.response_delay_seed)
        self._bidder = bidder
        self._ledger = ledger
        self._clock = clock
        self._monotonic = monotonic
        self._responder = _Responder(config, clock, store)

    async def Bid(self, request: openrtb_pb2.BidRequest, context) -> openrtb_pb2.BidResponse:
        bid_context, placements = read_request(request)  # raises before anything is counted
        self._ledger.record_bid_requests()
        delay_ms = self._settings.draw_response_delay_ms(self._rng)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000.0)
        response = openrtb_pb2.BidResponse()
        bids: list[tuple[str, int]] = []
        no_bids: list[int] = []
        self._responder.fill(response, request.id, self._bidder.decide(bid_context, placements), bids, no_bids)
        self._ledger.record_answers(bids, no_bids)
        return response

    async def BidStream(self, request_iterator, context):
        stream = DueStream(_numbered_items(request_iterator), self._answer_stream, clock=self._monotonic)
        async for results in stream.answers():
            yield bidder_pb2.BidStreamResponse(results=results)

    def _answer_stream(self, items: Sequence[tuple[int, openrtb_pb2.BidRequest]]
                       ) -> list[tuple[float, bidder_pb2.BidStreamResult]]:
        """Requests that arrived together on a stream (each with its place in
        the message that carried it): each read as unary Bid reads it, the
        valid ones decided in one evaluate call, each answer with its delay."""
        answers: list[tuple[float, bidder_pb2.BidStreamResult]] = [None] * len(items)  # type: ignore[list-item]
        read = []
        for i, (position, request) in enumerate(items):
            try:
                read.append((i, request, read_request(request)))
            except RequestError as error:  # refused as unary Bid refuses it: counted as nothing
                answers[i] = (0.0, bidder_pb2.BidStreamResult(request_id=request.id,
                                                              status=refused(error, f"items[{position}]")))
            except Exception:
                log.exception("BidStream request %r failed", request.id)
                answers[i] = (0.0, bidder_pb2.BidStreamResult(request_id=request.id,
                                                              status=failed(f"items[{position}]")))
        if not read:
            return answers
        self._ledger.record_bid_requests(len(read))
        draw = self._settings.draw_response_delay_ms
        rng = self._rng
        try:
            decided = self._bidder.decide_many([bid_read for _i, _request, bid_read in read])
        except Exception:  # one failure answers its group INTERNAL; the stream goes on
            log.exception("BidStream: deciding %d requests failed", len(read))
            for i, request, _read in read:
                answers[i] = (0.0, bidder_pb2.BidStreamResult(request_id=request.id,
                                                              status=failed(f"items[{items[i][0]}]")))
            return answers
        bids: list[tuple[str, int]] = []
        no_bids: list[int] = []
        fill = self._responder.fill
        for (i, request, _read), decisions in zip(read, decided):
            answer = bidder_pb2.BidStreamResult(request_id=request.id, status=OK)
            fill(answer.response, request.id, decisions, bids, no_bids)
            answers[i] = (draw(rng) / 1000.0, answer)
        self._ledger.record_answers(bids, no_bids)
        return answers

    def NotifyWin(self, request: bidder_pb2.NotifyWinRequest, context) -> bidder_pb2.NotifyWinResponse:
        with self._ledger.batch() as batch:
            return self._win(request, batch)

    def NotifyWins(self, request: bidder_pb2.NotifyWinsRequest, context) -> bidder_pb2.NotifyWinsResponse:
        response = bidder_pb2.NotifyWinsResponse()
        with self._ledger.batch() as batch:
            answer_each(request.items, lambda item: self._win(item, batch), response.results.add)
        return response

    def NotifyBilling(self, request: bidder_pb2.NotifyBillingRequest, context) -> bidder_pb2.NotifyBillingResponse:
        with self._ledger.batch() as batch:
            return self._billing(request, batch)

    def NotifyBillings(self, request: bidder_pb2.NotifyBillingsRequest,
                       context) -> bidder_pb2.NotifyBillingsResponse:
        # Every counted billing of the batch accrues in one pricing_core call.
        response = bidder_pb2.NotifyBillingsResponse()
        with self._ledger.batch() as batch:
            answer_each(request.items, lambda item: self._billing(item, batch), response.results.add)
        return response

    def NotifyEvent(self, request: bidder_pb2.NotifyEventRequest, context) -> bidder_pb2.NotifyEventResponse:
        with self._ledger.batch() as batch:
            return self._event(request, batch)

    def NotifyEvents(self, request: bidder_pb2.NotifyEventsRequest, context) -> bidder_pb2.NotifyEventsResponse:
        response = bidder_pb2.NotifyEventsResponse()
        with self._ledger.batch() as batch:
            answer_each(request.items, lambda item: self._event(item, batch), response.results.add)
        return response

    def NotifyLoss(self, request: bidder_pb2.NotifyLossRequest, context) -> bidder_pb2.NotifyLossResponse:
        with self._ledger.batch() as batch:
            return self._loss(request, batch)

    def NotifyLosses(self, request: bidder_pb2.NotifyLossesRequest, context) -> bidder_pb2.NotifyLossesResponse:
        response = bidder_pb2.NotifyLossesResponse()
        with self._ledger.batch() as batch:
            answer_each(request.items, lambda item: self._loss(item, batch), response.results.add)
        return response

    def GetCounts(self, request, context) -> bidder_pb2.BidderServiceGetCountsResponse:
        return bidder_pb2.BidderServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield bidder_pb2.BidderServiceListImpressionsResponse(page=page)

    # One notice each, unary or an item of a batch: validate, then count in `batch`.
    def _win(self, request: bidder_pb2.NotifyWinRequest, batch: LedgerBatch) -> bidder_pb2.NotifyWinResponse:
        campaign_id, _user = self._responder.own_bid(request.bid_id, request.campaign_id)
        macros = request.macros
        impression_key = f"{macros.auction_id}:{macros.imp_id}"
        return bidder_pb2.NotifyWinResponse(counted=batch.record_win(request.bid_id, impression_key, campaign_id))

    def _billing(self, request: bidder_pb2.NotifyBillingRequest,
                 batch: LedgerBatch) -> bidder_pb2.NotifyBillingResponse:
        if not request.impression_key:
            raise InvalidArgument("impression_key", "is required: billing is idempotent per impression")
        macros = request.macros
        if not macros.HasField("price_micros"):
            raise InvalidArgument("macros.price_micros", "the clearing price is required to bill")
        price_micros = macros.price_micros
        if price_micros < 0:
            raise InvalidArgument("macros.price_micros", "must not be negative")
        # Billing may arrive after the bid is forgotten; the campaign is on the notice.
        index = self._bidder.campaign_index(request.campaign_id)
        if index is None:
            raise NotFound("campaign_id", f"no campaign {request.campaign_id!r} at this DSP")
        user_hash = self._responder.bid_user(request.bid_id)
        counted = batch.record_billing(request.impression_key, request.campaign_id, index, price_micros, user_hash)
        return bidder_pb2.NotifyBillingResponse(counted=counted)

    def _event(self, request: bidder_pb2.NotifyEventRequest, batch: LedgerBatch) -> bidder_pb2.NotifyEventResponse:
        kind = EVENT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "must be viewable, click or conversion")
        if not request.impression_key:
            raise InvalidArgument("impression_key", "is required: events are idempotent per impression")
        index = self._bidder.campaign_index(request.campaign_id)
        if index is None:
            raise NotFound("campaign_id", f"no campaign {request.campaign_id!r} at this DSP")
        counted = batch.record_event(kind, request.impression_key, request.campaign_id, index)
        return bidder_pb2.NotifyEventResponse(counted=counted)

    def _loss(self, request: bidder_pb2.NotifyLossRequest, batch: LedgerBatch) -> bidder_pb2.NotifyLossResponse:
        campaign_id, _user = self._responder.own_bid(request.bid_id, request.campaign_id)
        batch.record_loss(request.bid_id, campaign_id, request.macros.loss)
        return bidder_pb2.NotifyLossResponse()


class _Responder:
    """Decisions -> the OpenRTB 2.6 BidResponse, and the bids it made, remembered
    so notices are checked against our own bids."""

    def __init__(self, config: DspConfig, clock: Callable[[], float], store: LedgerStore | None = None):
        settings = config.dsp
        self._seat = settings.seat
        self._currency = settings.currency
        self._bid_ttl_s = settings.bid_ttl_s
        self._clock = clock
        # bid id -> (campaign id, user key hash), so notices are checked against
        # our own bids and billing can update the frequency cap; with a ledger,
        # written before the bid leaves, so a restart still owns its bids.
        self.bids = ExpiringMap(clock) if store is None else DurableKeys(store, "bid", clock, pair=True)
        # Ids unique within this process (a counter) and across its restarts (a
        # prefix per start: its time, then random bits), without a uuid per bid.
        # They sort by when they were made, so the ledger's inserts stay at the
        # right edge of its index.
        self._id_prefix = f"{int(time.time() * 1000):012x}{os.urandom(3).hex()}"
        self._ids = itertools.count()
        # What a bid says about its campaign is the same on every bid: built once,
        # per campaign and offered format, and copied into each bid.
        nurl, burl, lurl = (_notice_url(self._seat, kind) for kind in ("win", "billing", "loss"))
        self._bid_templates = [{fmt: openrtb_pb2.Bid(
            adm=c.adm, adomain=[c.advertiser_domain], cid=c.id, crid=c.creative_id or f"{c.id}-creative",
            mtype=MTYPES[fmt], dur=c.duration_s if fmt in ("video", "audio") else 0, nurl=nurl, burl=burl, lurl=lurl,
        ) for fmt in MTYPES} for c in config.campaigns]

    def fill(self, response: openrtb_pb2.BidResponse, request_id: str, decisions: Sequence[Decision],
             bids: list[tuple[str, int]], no_bids: list[int]) -> None:
        """`response` answers the request: a bid per Imp that has one, or a
        no-bid with the first Imp's reason (OpenRTB 2.6 §7.1); what it said is
        appended to `bids` (campaign id, bid micros) and `no_bids` (nbr)."""
        response.id = request_id
        seatbid = None
        nbr = 0
        for decision in decisions:
            campaign = decision.campaign
            if campaign is None:
                nbr = nbr or decision.nbr
                continue
            if seatbid is None:
                seatbid = response.seatbid.add()
                expires_at_s = self._clock() + self._bid_ttl_s
            bid = seatbid.bid.add()
            bid.CopyFrom(self._bid_templates[decision.campaign_index][decision.placement.format])
            bid.id = bid_id = f"{self._id_prefix}{next(self._ids):010x}"
            bid.impid = decision.placement.imp_id
            bid.price = micros_to_price(decision.bid_micros)
            bid.w, bid.h = decision.size
            self.bids.add(bid_id, expires_at_s, (campaign.id, decision.user_key_hash))
            bids.append((campaign.id, decision.bid_micros))
        if seatbid is None:
            response.nbr = nbr
            no_bids.append(nbr)
            return
        seatbid.seat = self._seat
        response.bidid = f"{self._id_prefix}{next(self._ids):010x}"
        response.cur = self._currency

    def own_bid(self, bid_id: str, campaign_id: str) -> tuple[str, int]:
        """The campaign and user of a bid a win or loss notice names."""
        if not bid_id:
            raise InvalidArgument("bid_id", "is required")
        known = self.bids.get(bid_id)
        if known is None:
            raise NotFound("bid_id", f"no outstanding bid {bid_id!r} at this DSP")
        if campaign_id and campaign_id != known[0]:
            raise InvalidArgument("campaign_id", f"bid {bid_id!r} was made for campaign {known[0]!r}")
        return known

    def bid_user(self, bid_id: str) -> int | None:
        """The user key hash of a bid still remembered, for the frequency cap."""
        return self.bids.get(bid_id, (None, None))[1]


async def _numbered_items(messages):
    """Each BidStream message's bid requests, with their place in it."""
    async for message in messages:
        yield list(enumerate(message.items))


def _notice_url(seat: str, kind: str) -> str:
    # The notice's address as the exchange would fetch it; the exchange
    # substitutes the macros (OpenRTB 2.6 §4.4) and delivers it over gRPC.
    return (f"grpc://{seat}/notice/{kind}?auction=${{AUCTION_ID}}&bid=${{AUCTION_BID_ID}}&imp=${{AUCTION_IMP_ID}}"
            f"&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}&loss=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}")


class DspApp:
    def __init__(self, config: DspConfig, context: RoleContext):
        engine = PricingEngine([c.spec() for c in config.campaigns], clock=context.clock)
        # Kernels compile (or load from Numba's cache) now, never on a first request.
        log.info("%s: pricing kernels ready in %.2fs", context.instance, engine.warm())
        self.ledger = DspLedger(context.instance, engine, config.campaigns, context.registry, context.clock,
                                config.dsp.max_campaign_labels, config.dsp.bid_ttl_s, context.store)
        if context.store is not None:
            started = time.perf_counter()
            replayed = self.ledger.replay_accruals()
            log.info("%s: %d accruals replayed from the ledger in %.2fs", context.instance, replayed,
                     time.perf_counter() - started)
        bidder = Bidder(config.campaigns, config.dsp, engine)
        servicer = BidderServicer(config, bidder, self.ledger, context.clock, store=context.store)
        batch_methods = ("BidStream", "NotifyWins", "NotifyLosses", "NotifyBillings", "NotifyEvents")
        self.servicers = [Servicer(
            bidder_pb2_grpc.add_BidderServiceServicer_to_server, servicer, "adchain.v1.BidderService",
            ("Bid", "NotifyWin", "NotifyBilling", "NotifyEvent", "NotifyLoss", "GetCounts", "ListImpressions",
             *batch_methods),
            batch_methods,
        )]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass

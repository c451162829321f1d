"""The DSP's gRPC servicer: validate, convert, call the bidder or the ledger,
convert back. Pricing happens in pricing_core, counting in the ledger."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, openrtb_pb2
from pricing_core.engine import PricingEngine
from pricing_core.money import micros_to_price
from services.dsp.bidding import MTYPES, Bidder, read_request
from services.dsp.ledger import DspLedger
from services.dsp.settings import DspConfig
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.server import RoleContext, Servicer

log = logging.getLogger(__name__)

EVENT_KINDS = {
    bidder_pb2.EVENT_KIND_VIEWABLE: "viewable",
    bidder_pb2.EVENT_KIND_CLICK: "click",
    bidder_pb2.EVENT_KIND_CONVERSION: "conversion",
}


class BidderServicer(bidder_pb2_grpc.BidderServiceServicer):
    def __init__(self, config: DspConfig, bidder: Bidder, ledger: DspLedger, clock: Callable[[], float],
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self._settings = config.dsp
        self._rng = rng or random.Random(config.dsp.response_delay_seed)
        self._bidder = bidder
        self._ledger = ledger
        self._clock = clock
        self._sleep = sleep
        # bid id -> (campaign id, user key hash), so notices are checked against
        # our own bids and billing can update the frequency cap.
        self._bids = ExpiringMap(clock)

    def Bid(self, request: openrtb_pb2.BidRequest, context) -> openrtb_pb2.BidResponse:
        bid_context, placements = read_request(request)  # raises before anything is counted
        self._ledger.record_bid_request()
        delay_ms = self._settings.draw_response_delay_ms(self._rng)
        if delay_ms:
            self._sleep(delay_ms / 1000.0)
        bids, nbr = [], 0
        for decision in self._bidder.decide(bid_context, placements):
            if decision.campaign is None:
                nbr = nbr or decision.nbr
                continue
            campaign = decision.campaign
            bid_id = uuid.uuid4().hex
            self._bids.add(bid_id, self._clock() + self._settings.bid_ttl_s, (campaign.id, decision.user_key_hash))
            w, h = decision.size
            bids.append(openrtb_pb2.Bid(
                id=bid_id,
                impid=decision.placement.imp_id,
                price=micros_to_price(decision.bid_micros),
                adm=campaign.adm,
                adomain=[campaign.advertiser_domain],
                cid=campaign.id,
                crid=campaign.creative_id or f"{campaign.id}-creative",
                w=w,
                h=h,
                mtype=MTYPES[decision.placement.format],
                dur=campaign.duration_s if decision.placement.format in ("video", "audio") else 0,
                nurl=_notice_url(self._settings.seat, "win"),
                burl=_notice_url(self._settings.seat, "billing"),
                lurl=_notice_url(self._settings.seat, "loss"),
            ))
            self._ledger.record_bid(campaign.id, decision.bid_micros)
        if not bids:
            self._ledger.record_no_bid(nbr)
            return openrtb_pb2.BidResponse(id=request.id, nbr=nbr)
        return openrtb_pb2.BidResponse(
            id=request.id,
            bidid=uuid.uuid4().hex,
            cur=self._settings.currency,
            seatbid=[openrtb_pb2.SeatBid(seat=self._settings.seat, bid=bids)],
        )

    def NotifyWin(self, request: bidder_pb2.NotifyWinRequest, context) -> bidder_pb2.NotifyWinResponse:
        campaign_id, _user = self._own_bid(request.bid_id, request.campaign_id)
        impression_key = f"{request.macros.auction_id}:{request.macros.imp_id}"
        return bidder_pb2.NotifyWinResponse(counted=self._ledger.record_win(request.bid_id, impression_key,
                                                                            campaign_id))

    def NotifyBilling(self, request: bidder_pb2.NotifyBillingRequest, context) -> bidder_pb2.NotifyBillingResponse:
        if not request.impression_key:
            raise InvalidArgument("impression_key", "is required: billing is idempotent per impression")
        if not request.macros.HasField("price_micros"):
            raise InvalidArgument("macros.price_micros", "the clearing price is required to bill")
        if request.macros.price_micros < 0:
            raise InvalidArgument("macros.price_micros", "must not be negative")
        # Billing may arrive after the bid is forgotten; the campaign is on the notice.
        index = self._bidder.campaign_index(request.campaign_id)
        if index is None:
            raise NotFound("campaign_id", f"no campaign {request.campaign_id!r} at this DSP")
        _campaign, user_hash = self._bids.get(request.bid_id, (None, None))
        counted = self._ledger.record_billing(request.impression_key, request.campaign_id, index,
                                              request.macros.price_micros, user_hash)
        return bidder_pb2.NotifyBillingResponse(counted=counted)

    def NotifyEvent(self, request: bidder_pb2.NotifyEventRequest, context) -> bidder_pb2.NotifyEventResponse:
        kind = EVENT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "must be viewable, click or conversion")
        if not request.impression_key:
            raise InvalidArgument("impression_key", "is required: events are idempotent per impression")
        index = self._bidder.campaign_index(request.campaign_id)
        if index is None:
            raise NotFound("campaign_id", f"no campaign {request.campaign_id!r} at this DSP")
        counted = self._ledger.record_event(kind, request.impression_key, request.campaign_id, index)
        return bidder_pb2.NotifyEventResponse(counted=counted)

    def NotifyLoss(self, request: bidder_pb2.NotifyLossRequest, context) -> bidder_pb2.NotifyLossResponse:
        campaign_id, _user = self._own_bid(request.bid_id, request.campaign_id)
        self._ledger.record_loss(campaign_id, request.macros.loss)
        return bidder_pb2.NotifyLossResponse()

    def GetCounts(self, request, context) -> bidder_pb2.BidderServiceGetCountsResponse:
        return bidder_pb2.BidderServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield bidder_pb2.BidderServiceListImpressionsResponse(page=page)

    def _own_bid(self, bid_id: str, campaign_id: str) -> tuple[str, int]:
        if not bid_id:
            raise InvalidArgument("bid_id", "is required")
        known = self._bids.get(bid_id)
        if known is None:
            raise NotFound("bid_id", f"no outstanding bid {bid_id!r} at this DSP")
        if campaign_id and campaign_id != known[0]:
            raise InvalidArgument("campaign_id", f"bid {bid_id!r} was made for campaign {known[0]!r}")
        return known


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
                                config.dsp.max_campaign_labels)
        bidder = Bidder(config.campaigns, config.dsp, engine)
        servicer = BidderServicer(config, bidder, self.ledger, context.clock)
        self.servicers = [Servicer(
            bidder_pb2_grpc.add_BidderServiceServicer_to_server, servicer, "adchain.v1.BidderService",
            ("Bid", "NotifyWin", "NotifyBilling", "NotifyEvent", "NotifyLoss", "GetCounts", "ListImpressions"),
        )]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass

"""The DSP's gRPC servicer: validate, convert, call the bidder or the ledger,
convert back. Counting happens in the ledger, pricing in the bidder."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, openrtb_pb2
from pricing_core.money import micros_to_price
from services.dsp.bidding import MTYPES, Bidder, placements
from services.dsp.ledger import DspLedger
from services.dsp.settings import DspConfig, parse_size
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.server import RoleContext, Servicer


class BidderServicer(bidder_pb2_grpc.BidderServiceServicer):
    def __init__(self, config: DspConfig, ledger: DspLedger, clock: Callable[[], float],
                 sleep: Callable[[float], None] = time.sleep):
        self._settings = config.dsp
        self._ledger = ledger
        self._bidder = Bidder(config.campaigns, ledger.remaining_budget_micros)
        self._clock = clock
        self._sleep = sleep
        # bid id -> campaign id, so notices can be checked against our own bids.
        self._bids = ExpiringMap(clock)

    def Bid(self, request: openrtb_pb2.BidRequest, context) -> openrtb_pb2.BidResponse:
        found = placements(request)  # raises before anything is counted
        self._ledger.record_bid_request()
        if self._settings.response_delay_ms:
            self._sleep(self._settings.response_delay_ms / 1000.0)
        bids, nbr = [], 0
        for placement in found:
            decision = self._bidder.decide(placement)
            if decision.campaign is None:
                nbr = nbr or decision.nbr
                continue
            campaign = decision.campaign
            targeted = {parse_size(s) for s in campaign.sizes}
            w, h = next((s for s in placement.sizes if not targeted or s in targeted), (0, 0))
            bid_id = uuid.uuid4().hex
            self._bids.add(bid_id, self._clock() + self._settings.bid_ttl_s, campaign.id)
            bids.append(openrtb_pb2.Bid(
                id=bid_id,
                impid=placement.imp_id,
                price=micros_to_price(decision.bid_micros),
                adm=campaign.adm,
                adomain=[campaign.advertiser_domain],
                cid=campaign.id,
                crid=campaign.creative_id or f"{campaign.id}-creative",
                w=w,
                h=h,
                mtype=MTYPES[placement.format],
                nurl=_notice_url(self._settings.seat, "win"),
                burl=_notice_url(self._settings.seat, "billing"),
                lurl=_notice_url(self._settings.seat, "loss"),
            ))
            self._ledger.record_bid(campaign.id)
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
        campaign_id = self._own_bid(request.bid_id, request.campaign_id)
        return bidder_pb2.NotifyWinResponse(counted=self._ledger.record_win(request.bid_id, campaign_id))

    def NotifyBilling(self, request: bidder_pb2.NotifyBillingRequest, context) -> bidder_pb2.NotifyBillingResponse:
        if not request.impression_key:
            raise InvalidArgument("impression_key", "is required: billing is idempotent per impression")
        if not request.macros.HasField("price_micros"):
            raise InvalidArgument("macros.price_micros", "the clearing price is required to bill")
        if request.macros.price_micros < 0:
            raise InvalidArgument("macros.price_micros", "must not be negative")
        # Billing may arrive after the bid is forgotten; the campaign is on the notice.
        if self._bidder.campaign(request.campaign_id) is None:
            raise NotFound("campaign_id", f"no campaign {request.campaign_id!r} at this DSP")
        counted = self._ledger.record_billing(request.impression_key, request.campaign_id, request.macros.price_micros)
        return bidder_pb2.NotifyBillingResponse(counted=counted)

    def NotifyLoss(self, request: bidder_pb2.NotifyLossRequest, context) -> bidder_pb2.NotifyLossResponse:
        campaign_id = self._own_bid(request.bid_id, request.campaign_id)
        self._ledger.record_loss(campaign_id, request.macros.loss)
        return bidder_pb2.NotifyLossResponse()

    def GetCounts(self, request, context) -> bidder_pb2.BidderServiceGetCountsResponse:
        return bidder_pb2.BidderServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def _own_bid(self, bid_id: str, campaign_id: str) -> str:
        if not bid_id:
            raise InvalidArgument("bid_id", "is required")
        known = self._bids.get(bid_id)
        if known is None:
            raise NotFound("bid_id", f"no outstanding bid {bid_id!r} at this DSP")
        if campaign_id and campaign_id != known:
            raise InvalidArgument("campaign_id", f"bid {bid_id!r} was made for campaign {known!r}")
        return known


def _notice_url(seat: str, kind: str) -> str:
    # The notice's address as the exchange would fetch it; the exchange
    # substitutes the macros (OpenRTB 2.6 §4.4) and delivers it over gRPC.
    return (f"grpc://{seat}/notice/{kind}?auction=${{AUCTION_ID}}&bid=${{AUCTION_BID_ID}}&imp=${{AUCTION_IMP_ID}}"
            f"&price=${{AUCTION_PRICE}}&cur=${{AUCTION_CURRENCY}}&loss=${{AUCTION_LOSS}}&mtw=${{AUCTION_MIN_TO_WIN}}")


class DspApp:
    def __init__(self, config: DspConfig, context: RoleContext):
        self.ledger = DspLedger(context.instance, config.campaigns, context.registry, context.clock)
        servicer = BidderServicer(config, self.ledger, context.clock)
        self.servicers = [Servicer(
            bidder_pb2_grpc.add_BidderServiceServicer_to_server, servicer, "adchain.v1.BidderService",
            ("Bid", "NotifyWin", "NotifyBilling", "NotifyLoss", "GetCounts"),
        )]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass

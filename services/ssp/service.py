"""The exchange's gRPC servicer: run the auction, return the ad, and count it
as returned only once the return to the caller succeeded."""

from __future__ import annotations

import grpc

from adchain.v1 import bidder_pb2_grpc, exchange_pb2, exchange_pb2_grpc
from services.runtime.delivery import on_delivered
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TokenCodec
from services.ssp import auction
from services.ssp.exchange import Exchange
from services.ssp.ledger import SspLedger
from services.ssp.settings import SspConfig


class ExchangeServicer(exchange_pb2_grpc.ExchangeServiceServicer):
    def __init__(self, exchange: Exchange, ledger: SspLedger):
        self._exchange = exchange
        self._ledger = ledger

    def RequestAd(self, request: exchange_pb2.RequestAdRequest, context: grpc.ServicerContext):
        result = self._exchange.request_ad(request)
        winner = result.winner
        if winner is not None:
            # The SSP counts on ad return: only an ad the caller received.
            on_delivered(
                context,
                delivered=lambda: self._ledger.record_returned(winner.seat, winner.bid.cid),
                lost=lambda: self._ledger.record_not_returned(winner.seat, winner.bid.cid),
            )
        return result.response

    def GetCounts(self, request, context) -> exchange_pb2.ExchangeServiceGetCountsResponse:
        return exchange_pb2.ExchangeServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())


class SspApp:
    def __init__(self, config: SspConfig, context: RoleContext):
        auction.warm()  # the clearing kernel compiles at start, never on a first request
        self.ledger = SspLedger(context.instance, [d.name for d in config.dsps], context.registry, context.clock)
        self._channels = {d.name: grpc.insecure_channel(d.address) for d in config.dsps}
        stubs = {name: bidder_pb2_grpc.BidderServiceStub(ch) for name, ch in self._channels.items()}
        exchange = Exchange(config.exchange, stubs, TokenCodec(config.tokens), self.ledger, context.clock)
        self.servicers = [Servicer(
            exchange_pb2_grpc.add_ExchangeServiceServicer_to_server, ExchangeServicer(exchange, self.ledger),
            "adchain.v1.ExchangeService", ("RequestAd", "GetCounts"),
        )]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        for channel in self._channels.values():
            channel.close()

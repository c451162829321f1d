"""The ad server's gRPC servicer and role wiring."""

from __future__ import annotations

import grpc

from adchain.v1 import ad_server_pb2, ad_server_pb2_grpc, bidder_pb2_grpc
from services.adserver.billing import BillingNotifier
from services.adserver.counting import ImpressionCounter
from services.adserver.ledger import AdServerLedger
from services.adserver.settings import AdServerConfig
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TokenCodec


class AdServerServicer(ad_server_pb2_grpc.AdServerServiceServicer):
    def __init__(self, counter: ImpressionCounter, ledger: AdServerLedger):
        self._counter = counter
        self._ledger = ledger

    def RecordImpression(self, request, context) -> ad_server_pb2.RecordImpressionResponse:
        return ad_server_pb2.RecordImpressionResponse(outcome=self._counter.record_impression(request))

    def RecordClick(self, request, context) -> ad_server_pb2.RecordClickResponse:
        return ad_server_pb2.RecordClickResponse(outcome=self._counter.record_click(request))

    def GetCounts(self, request, context) -> ad_server_pb2.AdServerServiceGetCountsResponse:
        return ad_server_pb2.AdServerServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())


class AdServerApp:
    def __init__(self, config: AdServerConfig, context: RoleContext):
        self.ledger = AdServerLedger(context.instance, context.registry, context.clock)
        self._channels = {d.name: grpc.insecure_channel(d.address) for d in config.dsps}
        stubs = {name: bidder_pb2_grpc.BidderServiceStub(ch) for name, ch in self._channels.items()}
        self.billing = BillingNotifier(stubs, config.billing, self.ledger.record_billing)
        counter = ImpressionCounter(TokenCodec(config.tokens), self.ledger, frozenset(stubs), self.billing.submit,
                                    context.clock)
        self.servicers = [Servicer(
            ad_server_pb2_grpc.add_AdServerServiceServicer_to_server, AdServerServicer(counter, self.ledger),
            "adchain.v1.AdServerService", ("RecordImpression", "RecordClick", "GetCounts"),
        )]

    def start(self) -> None:
        self.billing.start()

    def close(self, timeout_s: float) -> None:
        self.billing.close(timeout_s)
        for channel in self._channels.values():
            channel.close()

"""The ad server's gRPC servicer and role wiring."""

from __future__ import annotations

from prometheus_client import Gauge

from adchain.v1 import ad_server_pb2, ad_server_pb2_grpc
from services.adserver.counting import FrequencyCaps, ImpressionCounter
from services.adserver.ivt import InvalidTrafficFilter
from services.adserver.ledger import AdServerLedger
from services.adserver.settings import AdServerConfig
from services.runtime.notices import NoticeSender
from services.runtime.peers import BidderPeers
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TokenCodec


class AdServerServicer(ad_server_pb2_grpc.AdServerServiceServicer):
    def __init__(self, counter: ImpressionCounter, ledger: AdServerLedger):
        self._counter = counter
        self._ledger = ledger

    def RecordImpression(self, request, context) -> ad_server_pb2.RecordImpressionResponse:
        return self._counter.record_impression(request)

    def RecordImpressions(self, request, context) -> ad_server_pb2.RecordImpressionsResponse:
        response = ad_server_pb2.RecordImpressionsResponse()
        # Results are added in place: building a list and handing it to the
        # constructor copies every result again.
        self._counter.record_impressions(request.items, response.results.add)
        return response

    def RecordClick(self, request, context) -> ad_server_pb2.RecordClickResponse:
        return ad_server_pb2.RecordClickResponse(outcome=self._counter.record_click(request))

    def RecordConversion(self, request, context) -> ad_server_pb2.RecordConversionResponse:
        return ad_server_pb2.RecordConversionResponse(outcome=self._counter.record_conversion(request))

    def RecordVideoEvent(self, request, context) -> ad_server_pb2.RecordVideoEventResponse:
        return ad_server_pb2.RecordVideoEventResponse(outcome=self._counter.record_video_event(request))

    def GetCounts(self, request, context) -> ad_server_pb2.AdServerServiceGetCountsResponse:
        return ad_server_pb2.AdServerServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield ad_server_pb2.AdServerServiceListImpressionsResponse(page=page)


class AdServerApp:
    def __init__(self, config: AdServerConfig, context: RoleContext):
        self.ledger = AdServerLedger(context.instance, context.registry, context.clock, context.store)
        self._dsps = BidderPeers(config.dsps)
        stubs = self._dsps.aio_stubs
        self.notices = NoticeSender(stubs, config.billing, self.ledger.record_notice, store=context.store)
        self.ledger.tally.notices_owed = self.notices.pending
        Gauge("adchain_adserver_notices_owed", "Notices owed to DSPs and not yet settled (delivered, or failed for "
              "good): in the outbox, batching, in flight or waiting to retry.",
              registry=context.registry).set_function(self.notices.pending)
        self._counter = counter = ImpressionCounter(
            TokenCodec(config.tokens), self.ledger, frozenset(stubs), InvalidTrafficFilter(config.ivt),
            FrequencyCaps(config.frequency_caps), self.notices.submit_many, context.clock,
        )
        self.servicers = [Servicer(
            ad_server_pb2_grpc.add_AdServerServiceServicer_to_server, AdServerServicer(counter, self.ledger),
            "adchain.v1.AdServerService",
            ("RecordImpression", "RecordImpressions", "RecordClick", "RecordConversion", "RecordVideoEvent",
             "GetCounts", "ListImpressions"),
            batch_methods=("RecordImpressions",),
        )]

    def start(self) -> None:
        self.notices.resume()

    def reload(self) -> None:
        """After the ledger failed a write and takes writes again: memory as the ledger holds it."""
        self.ledger.tally.reload()
        self._counter.restore_windows()

    async def close(self, timeout_s: float) -> None:
        # Notices still batching or waiting to retry get one last try, and
        # their answers, before the channels close.
        await self.notices.close(timeout_s)
        await self._dsps.aclose()

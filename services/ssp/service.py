"""The exchange's gRPC servicer: run the auction, return the ads, and count
each as returned only once the return to the caller succeeded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import grpc
from prometheus_client import Gauge

from adchain.v1 import exchange_pb2, exchange_pb2_grpc
from services.runtime.delivery import on_delivered
from services.runtime.errors import DeadlineExceeded
from services.runtime.peers import BidderPeers
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TokenCodec
from services.ssp import auction
from services.ssp.bidstream import BidStreams
from services.ssp.exchange import Exchange, Placed, page_gone_message, waited_ms_since
from services.ssp.ledger import SspLedger
from services.ssp.notices import NoticeBatches
from services.ssp.settings import SspConfig

log = logging.getLogger(__name__)


class ExchangeServicer(exchange_pb2_grpc.ExchangeServiceServicer):
    def __init__(self, exchange: Exchange, ledger: SspLedger):
        self._exchange = exchange
        self._ledger = ledger

    async def RequestAd(self, request, context: grpc.aio.ServicerContext) -> exchange_pb2.RequestAdResponse:
        received_at = time.monotonic()
        response, placed, gave_up = await self._auction(self._exchange.request_ad(request, received_at))
        self._count_on_return(context, placed, gave_up)
        if gave_up:
            raise DeadlineExceeded("caller_deadline_ms",
                                   page_gone_message(request.caller_deadline_ms, waited_ms_since(received_at)))
        return response

    async def RequestAds(self, request, context: grpc.aio.ServicerContext) -> exchange_pb2.RequestAdsResponse:
        response, placed, gave_up = await self._auction(
            self._exchange.request_ads(request.items, received_at=time.monotonic()))
        self._count_on_return(context, placed, gave_up)
        return response

    async def RequestAdPod(self, request, context: grpc.aio.ServicerContext) -> exchange_pb2.RequestAdPodResponse:
        response, placed = await self._auction(self._exchange.request_ad_pod(request))
        self._count_on_return(context, placed)
        return response

    async def _auction(self, auction):
        """Run an auction to its end even when its caller goes away (the
        call is cancelled under us): every bid it took is cleared and
        notified, and the ads it placed are counted as not returned."""
        task = asyncio.ensure_future(auction)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._never_returned)
            raise

    def _never_returned(self, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        placed = [p for ads in task.result()[1:] for p in ads]
        self._ledger.record_deliveries([], [(p.ad.impression_key, p.winner.seat, p.winner.bid.cid) for p in placed])

    def GetCounts(self, request, context) -> exchange_pb2.ExchangeServiceGetCountsResponse:
        return exchange_pb2.ExchangeServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield exchange_pb2.ExchangeServiceListImpressionsResponse(page=page)

    def _count_on_return(self, context: grpc.ServicerContext, placed: Sequence[Placed],
                         gave_up: Sequence[Placed] = ()) -> None:
        """The SSP counts on ad return: only ads the caller received. Ads of a
        batch whose pages stopped waiting (`gave_up`) are never returned."""
        if not placed and not gave_up:
            return
        returned = [(p.ad.impression_key, p.winner.seat, p.winner.bid.cid) for p in placed]
        not_returned = [(p.ad.impression_key, p.winner.seat, p.winner.bid.cid) for p in gave_up]
        ledger = self._ledger
        if ledger.store is None:
            on_delivered(context, delivered=lambda: ledger.record_deliveries(returned, not_returned),
                         lost=lambda: ledger.record_deliveries([], returned + not_returned))
            return
        ledger.record_presumed(returned)
        if not_returned:
            ledger.record_deliveries((), not_returned)

        def lost() -> None:
            if returned:
                ledger.record_undelivered(returned)

        on_delivered(context, delivered=lambda: ledger.count_deliveries(len(returned), 0), lost=lost)


class SspApp:
    def __init__(self, config: SspConfig, context: RoleContext):
        auction.warm()  # the clearing kernel compiles at start, never on a first request
        self.ledger = SspLedger(context.instance, [d.name for d in config.dsps], context.registry, context.clock,
                                context.store)
        self._dsps = BidderPeers(config.dsps)
        self._bids = BidStreams(self._dsps.aio_stubs, opened=self.ledger.record_bid_stream_opened)
        self._notices = NoticeBatches(self._dsps.aio_stubs, config.exchange, self.ledger.record_notice,
                                      store=context.store)
        self.ledger.tally.notices_owed = self._notices.pending
        Gauge("adchain_ssp_notices_owed", "Notices owed to DSPs and not yet settled (delivered, or failed for "
              "good): in the outbox, batching, in flight or waiting to retry.",
              registry=context.registry).set_function(self._notices.pending)
        self.exchange = exchange = Exchange(config.exchange, self._bids, self._notices, TokenCodec(config.tokens),
                                            self.ledger, context.clock)
        self.servicers = [Servicer(
            exchange_pb2_grpc.add_ExchangeServiceServicer_to_server, ExchangeServicer(exchange, self.ledger),
            "adchain.v1.ExchangeService", ("RequestAd", "RequestAds", "RequestAdPod", "GetCounts", "ListImpressions"),
        )]

    def start(self) -> None:
        self._notices.resume()

    def reload(self) -> None:
        """After the ledger failed a write and takes writes again: counts as the ledger holds them."""
        self.ledger.tally.reload()

    async def close(self, timeout_s: float) -> None:
        # Win and loss notices still batching go out now, and get their
        # answers, before the channels close.
        left = await self._notices.drain(timeout_s)
        if left:
            log.warning("%d win/loss notices unanswered at shutdown, counted as failed", left)
        await self._bids.close()
        await self._dsps.aclose()

"""Win and loss notices from the exchange to its DSPs (OpenRTB 2.6 §4.3: the
winner's nurl, every loser's lurl), batched per DSP into NotifyWins and
NotifyLosses calls.

A notice joins its DSP's batch, which goes out at `notice_batch_max_items`
notices or `notice_batch_max_delay_ms` after its oldest, whichever comes
first, as a grpc.aio call on the exchange's event loop: the auction never
waits for a notice. Each notice is counted sent or failed by its own result
in the batch; a batch call that fails fails every notice in it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.runtime.batching import Calls, PeerBatcher
from services.runtime.notices import fail_unsettled
from services.ssp.settings import ExchangeSettings

log = logging.getLogger(__name__)

WIN = "win"
LOSS = "loss"


class NoticeBatches:
    """`send` is a plain call from the loop (the auction); `drain` awaits the
    answers at shutdown."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: ExchangeSettings,
                 record: Callable[[str, str, int], None]):
        """`stubs` are grpc.aio stubs on the exchange's loop. `record(kind,
        outcome, n)` counts n notices: kind win or loss, outcome sent or
        failed."""
        self._stubs = dict(stubs)
        self._timeout_s = settings.notice_timeout_ms / 1000.0
        self._record = record
        self._batcher: PeerBatcher[tuple[str, object]] = PeerBatcher(
            self._flush, max_items=settings.notice_batch_max_items,
            max_delay_ms=settings.notice_batch_max_delay_ms)
        self._calls = Calls()
        # Notices sent to the batcher and not yet counted, by kind.
        self._in_flight: collections.Counter[str] = collections.Counter()

    def send(self, dsp: str, kind: str, notice: bidder_pb2.NotifyWinRequest | bidder_pb2.NotifyLossRequest) -> None:
        self._in_flight[kind] += 1
        self._batcher.add(dsp, (kind, notice))

    async def drain(self, timeout_s: float) -> int:
        """Send every batch still collecting and wait up to `timeout_s` for
        the answers to all notices; those still unanswered then are counted
        as failed. Returns how many that was."""
        self._batcher.drain()
        await self._calls.wait(timeout_s)
        return fail_unsettled(self._in_flight, self._record)

    def _flush(self, dsp: str, items: list[tuple[str, object]]) -> None:
        stub = self._stubs[dsp]
        wins = [notice for kind, notice in items if kind == WIN]
        losses = [notice for kind, notice in items if kind == LOSS]
        if wins:
            batch = bidder_pb2.NotifyWinsRequest(items=wins)
            self._calls.start(self._call(dsp, stub.NotifyWins, batch, WIN, len(wins)))
        if losses:
            batch = bidder_pb2.NotifyLossesRequest(items=losses)
            self._calls.start(self._call(dsp, stub.NotifyLosses, batch, LOSS, len(losses)))

    async def _call(self, dsp: str, method, batch, kind: str, sent: int) -> None:
        delivered = 0
        try:
            response = await method(batch, timeout=self._timeout_s)
        except grpc.RpcError as error:
            log.warning("%d %s notices to %s failed: %s", sent, kind, dsp, error.code().name)
        except Exception:  # the channel is gone: these notices never leave
            log.exception("%d %s notices to %s could not be sent", sent, kind, dsp)
        else:
            # results[i] answers items[i]; an item without a result did not land.
            delivered = sum(1 for result in response.results[:sent] if not result.status.code)
        self._counted(kind, sent, delivered)

    def _counted(self, kind: str, sent: int, delivered: int) -> None:
        if delivered:
            self._record(kind, "sent", delivered)
        if sent > delivered:
            self._record(kind, "failed", sent - delivered)
        self._in_flight[kind] -= sent

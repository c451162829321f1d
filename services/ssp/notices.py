"""Win and loss notices from the exchange to its DSPs (OpenRTB 2.6 §4.3: the
winner's nurl, every loser's lurl), batched per DSP into NotifyWins and
NotifyLosses calls.

A notice joins its DSP's batch, which goes out at `notice_batch_max_items`
notices or `notice_batch_max_delay_ms` after its oldest, whichever comes
first, on the batcher's own thread: the auction never waits for a notice.
Each notice is counted sent or failed by its own result in the batch; a
batch call that fails fails every notice in it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.runtime.batching import PeerBatcher
from services.ssp.settings import ExchangeSettings

log = logging.getLogger(__name__)

WIN = "win"
LOSS = "loss"


class NoticeBatches:
    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: ExchangeSettings,
                 record: Callable[[str, str, int], None]):
        """`record(kind, outcome, n)` counts n notices: kind win or loss,
        outcome sent or failed."""
        self._stubs = dict(stubs)
        self._timeout_s = settings.notice_timeout_ms / 1000.0
        self._record = record
        self._batcher: PeerBatcher[tuple[str, object]] = PeerBatcher(
            self._flush, max_items=settings.notice_batch_max_items,
            max_delay_ms=settings.notice_batch_max_delay_ms, name="ssp-notices")
        self._in_flight = 0
        self._done = threading.Condition()

    def start(self) -> None:
        self._batcher.start()

    def send(self, dsp: str, kind: str, notice: bidder_pb2.NotifyWinRequest | bidder_pb2.NotifyLossRequest) -> None:
        with self._done:
            self._in_flight += 1
        self._batcher.add(dsp, (kind, notice))

    def drain(self, timeout_s: float) -> int:
        """Send every batch still collecting and wait for the answers to all
        notices; returns how many did not finish in time."""
        deadline = time.monotonic() + timeout_s
        self._batcher.close(timeout_s)
        with self._done:
            while self._in_flight and time.monotonic() < deadline:
                self._done.wait(deadline - time.monotonic())
            return self._in_flight

    def _flush(self, dsp: str, items: list[tuple[str, object]]) -> None:
        stub = self._stubs[dsp]
        wins = [notice for kind, notice in items if kind == WIN]
        losses = [notice for kind, notice in items if kind == LOSS]
        if wins:
            self._call(dsp, stub.NotifyWins, bidder_pb2.NotifyWinsRequest(items=wins), WIN, len(wins))
        if losses:
            self._call(dsp, stub.NotifyLosses, bidder_pb2.NotifyLossesRequest(items=losses), LOSS, len(losses))

    def _call(self, dsp: str, method, batch, kind: str, sent: int) -> None:
        try:
            call = method.future(batch, timeout=self._timeout_s)
        except Exception:  # the channel is gone: these notices never leave
            log.exception("%d %s notices to %s could not be sent", sent, kind, dsp)
            self._counted(kind, sent, 0)
            return
        call.add_done_callback(functools.partial(self._answered, dsp, kind, sent))

    def _answered(self, dsp: str, kind: str, sent: int, call: grpc.Future) -> None:
        delivered = 0
        error = call.exception()
        if error is None:
            # results[i] answers items[i]; an item without a result did not land.
            delivered = sum(1 for result in call.result().results[:sent] if not result.status.code)
        else:
            log.warning("%d %s notices to %s failed: %s", sent, kind, dsp, error.code().name)
        self._counted(kind, sent, delivered)

    def _counted(self, kind: str, sent: int, delivered: int) -> None:
        if delivered:
            self._record(kind, "sent", delivered)
        if sent > delivered:
            self._record(kind, "failed", sent - delivered)
        with self._done:
            self._in_flight -= sent
            self._done.notify_all()

"""Win and loss notices from the exchange to its DSPs (OpenRTB 2.6 §4.3: the
winner's nurl, every loser's lurl), batched per DSP into NotifyWins and
NotifyLosses calls.

A notice joins its DSP's batch, which goes out at `notice_batch_max_items`
notices or `notice_batch_max_delay_ms` after its oldest, whichever comes
first, as a grpc.aio call on the exchange's event loop: the auction never
waits for a notice. Each notice is counted sent or failed by its own result
in the batch; a batch call that fails fails every notice in it.

With a ledger, every notice goes through its outbox (services/runtime/notices.py):
written with the auction's counts, handed to its batch once they are
committed, deleted when its answer is counted; a notice still owed when the
exchange stops or dies is sent when it starts again (the DSP counts each bid's
win and loss once).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.runtime.batching import Calls, PeerBatcher
from services.runtime.notices import PERMANENT_CODES, Outbox, fail_unsettled
from services.runtime.store import LedgerStore, LedgerUnavailable
from services.ssp.settings import ExchangeSettings

log = logging.getLogger(__name__)

WIN = "win"
LOSS = "loss"


class NoticeBatches:
    """`send` is a plain call from the loop (the auction); `drain` awaits the
    answers at shutdown."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: ExchangeSettings,
                 record: Callable[[str, str, int], None], store: LedgerStore | None = None):
        """`stubs` are grpc.aio stubs on the exchange's loop. `record(kind,
        outcome, n)` counts n notices: kind win or loss, outcome sent or
        failed. With `store`, notices go through its outbox."""
        self._store = store
        self._outbox = Outbox(store) if store is not None else None
        self._stubs = dict(stubs)
        self._timeout_s = settings.notice_timeout_ms / 1000.0
        self._retry_interval_s = settings.notice_retry_interval_s
        self._retry_for_s = settings.notice_retry_for_s
        # outbox id -> when the notice was first handed over (its retry window runs from then)
        self._first_try: dict[int, float] = {}
        self._record = record
        self._batcher: PeerBatcher[tuple[str, object, int]] = PeerBatcher(
            self._flush, max_items=settings.notice_batch_max_items,
            max_delay_ms=settings.notice_batch_max_delay_ms)
        self._calls = Calls()
        self._closing = False
        # Notices sent to the batcher and not yet counted, by kind.
        self._in_flight: collections.Counter[str] = collections.Counter()

    def send(self, dsp: str, kind: str, notice: bidder_pb2.NotifyWinRequest | bidder_pb2.NotifyLossRequest) -> None:
        if self._outbox is None:
            self._in_flight[kind] += 1
            self._batcher.add(dsp, (kind, notice, 0))
            return
        (outbox_id,) = self._outbox.add_many([(dsp, kind, notice)])
        self._store.on_commit(lambda: self._hand_over(dsp, kind, notice, outbox_id))

    def _hand_over(self, dsp: str, kind: str, notice, outbox_id: int) -> None:
        self._in_flight[kind] += 1
        self._first_try.setdefault(outbox_id, time.monotonic())
        self._batcher.add(dsp, (kind, notice, outbox_id))

    def resume(self) -> int:
        """Send every notice the outbox still owes (at start). Returns how many."""
        if self._outbox is None:
            return 0
        rows = self._outbox.unsettled()
        for outbox_id, dsp, kind, payload in rows:
            if dsp not in self._stubs:
                log.error("a %s notice owed to %s, a DSP this exchange no longer knows: dropped", kind, dsp)
                self._outbox.settle([outbox_id])
                continue
            notice_type = bidder_pb2.NotifyWinRequest if kind == WIN else bidder_pb2.NotifyLossRequest
            self._hand_over(dsp, kind, notice_type.FromString(payload), outbox_id)
        if rows:
            log.info("%d win/loss notices owed since before this start: sending them", len(rows))
        return len(rows)

    async def drain(self, timeout_s: float) -> int:
        """Send every batch still collecting and wait up to `timeout_s` for
        the answers to all notices; those still unanswered then are counted
        as failed (without a ledger; with one they stay owed, for the next
        start). Returns how many that was."""
        self._closing = True
        self._batcher.drain()
        await self._calls.wait(timeout_s)
        if self._outbox is not None:
            return 0
        return fail_unsettled(self._in_flight, self._record)

    def _flush(self, dsp: str, items: list[tuple[str, object, int]]) -> None:
        stub = self._stubs[dsp]
        for kind, method, batch_type in ((WIN, stub.NotifyWins, bidder_pb2.NotifyWinsRequest),
                                         (LOSS, stub.NotifyLosses, bidder_pb2.NotifyLossesRequest)):
            of_kind = [(notice, outbox_id) for item_kind, notice, outbox_id in items if item_kind == kind]
            if of_kind:
                batch = batch_type(items=[notice for notice, _id in of_kind])
                ids = [outbox_id for _notice, outbox_id in of_kind if outbox_id]
                self._calls.start(self._call(dsp, method, batch, kind, len(of_kind), ids))

    async def _call(self, dsp: str, method, batch, kind: str, sent: int, outbox_ids: list[int] = ()) -> None:
        delivered = 0
        try:
            response = await method(batch, timeout=self._timeout_s)
        except grpc.RpcError as error:
            log.warning("%d %s notices to %s failed: %s", sent, kind, dsp, error.code().name)
            if outbox_ids and error.code() not in PERMANENT_CODES and self._retry(dsp, kind, batch, outbox_ids):
                return
        except Exception:  # the channel is gone: these notices never leave
            log.exception("%d %s notices to %s could not be sent", sent, kind, dsp)
        else:
            # results[i] answers items[i]; an item without a result did not land.
            delivered = sum(1 for result in response.results[:sent] if not result.status.code)
        if outbox_ids:
            try:
                self._outbox.settle(outbox_ids)
            except LedgerUnavailable:
                return  # still owed: sent again when the exchange next starts
            for outbox_id in outbox_ids:
                self._first_try.pop(outbox_id, None)
        self._counted(kind, sent, delivered)

    def _retry(self, dsp: str, kind: str, batch, outbox_ids: list[int]) -> bool:
        """Send a failed batch again after the retry interval while its
        oldest notice's window lasts; False when it is over (counted failed)."""
        if self._closing or time.monotonic() + self._retry_interval_s > min(
                self._first_try.get(i, 0.0) for i in outbox_ids) + self._retry_for_s:
            return False
        # Still in flight (owed) while they wait: they rejoin the batch when the timer fires.
        items = [(kind, notice, i) for notice, i in zip(batch.items, outbox_ids)]
        asyncio.get_running_loop().call_later(self._retry_interval_s, self._batcher.add_many, dsp, items)
        return True

    def pending(self) -> int:
        """Notices handed to the batches and not yet counted sent or failed."""
        return self._in_flight.total()

    def _counted(self, kind: str, sent: int, delivered: int) -> None:
        if delivered:
            self._record(kind, "sent", delivered)
        if sent > delivered:
            self._record(kind, "failed", sent - delivered)
        self._in_flight[kind] -= sent

"""Notices from a counting role to the DSP that won: the billing notice
(OpenRTB 2.6 §4.3 burl) once the ad server counts the impression, and event
notices (viewable, click, conversion) that vCPM and CPC campaigns pay on.

Notices go per DSP seat in batches (NotifyBillings, NotifyEvents), flushed at
`batch_max_items` or after `batch_max_delay_ms`, and each item has its own
verdict: OK is sent; a notice the DSP refused (INVALID_ARGUMENT, NOT_FOUND)
is failed, since retrying cannot help. When the whole call fails (the DSP is
down, the deadline passed), every notice in it is retried every
`retry_interval_s` and counted as failed when its `retry_for_s` window
closes. A DSP that does not serve the batch RPCs (UNIMPLEMENTED) gets one
NotifyBilling or NotifyEvent per notice for a while, so a chain can upgrade
one role at a time.

The DSP's receivers are idempotent per impression key (and event kind), so a
retry after a lost acknowledgement never bills twice.

With a ledger, notices go through its outbox: written in the same
transaction as the counts that owe them, handed to the batches only once
that transaction is committed, and deleted when they settle (sent, or
failed for good). Notices still unsettled when the role stops or dies stay
in the outbox and are sent again when it starts (`resume`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.runtime.batching import Calls, PeerBatcher
from services.runtime.config import RetrySettings
from services.runtime.store import LedgerStore, LedgerUnavailable

log = logging.getLogger(__name__)

# The DSP understood and refused the notice: retrying cannot help.
PERMANENT_CODES = frozenset((grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND))
PERMANENT_ITEM_CODES = frozenset((code_pb2.INVALID_ARGUMENT, code_pb2.NOT_FOUND))
BATCH_REQUESTS = {"NotifyBillings": bidder_pb2.NotifyBillingsRequest, "NotifyEvents": bidder_pb2.NotifyEventsRequest}
# How long a DSP that answered UNIMPLEMENTED to a batch RPC gets unary notices
# before the batch RPC is tried again.
UNARY_FALLBACK_S = 300.0

# (seat, kind, request), as a counting role hands them over.
Notice = tuple[str, str, Message]
Record = Callable[[str, str, int], None]


def fail_unsettled(unsettled: collections.Counter[str], record: Record) -> int:
    """At shutdown, once the calls still unanswered were cancelled: count the
    notices in `unsettled` (by kind) as failed, since they never landed, and
    empty it. Returns how many there were."""
    for kind, n in unsettled.items():
        if n:
            record(kind, "failed", n)
    left = unsettled.total()
    unsettled.clear()
    return left


class _Pending:
    """One notice on its way: what it is, when it was first handed over (its
    retry window runs from then) and its row in the outbox (0: none)."""

    __slots__ = ("kind", "request", "first_try_s", "outbox_id")

    def __init__(self, kind: str, request: Message, first_try_s: float, outbox_id: int = 0):
        self.kind = kind
        self.request = request
        self.first_try_s = first_try_s
        self.outbox_id = outbox_id


class _Outcomes:
    """Outcomes of one answered call by (kind, outcome), recorded once each,
    and the outbox rows of the notices it settled."""

    def __init__(self):
        self._counts: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.settled_ids: list[int] = []

    def add(self, pending: _Pending, outcome: str) -> None:
        self._counts[(pending.kind, outcome)] += 1
        if outcome != "retried" and pending.outbox_id:
            self.settled_ids.append(pending.outbox_id)

    def items(self):
        return self._counts.items()


class Outbox:
    """Notices owed to peers, in the ledger until they settle."""

    def __init__(self, store: LedgerStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock
        self._next_id = (store.query_one("SELECT max(id) FROM outbox")[0] or 0) + 1

    def add_many(self, notices: list[Notice]) -> list[int]:
        """Write `notices` in the open transaction; their row ids."""
        first = self._next_id
        self._next_id += len(notices)
        at_ms = int(self._clock() * 1000)
        self._store.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", [
            (first + i, seat, kind, notice.SerializeToString(), at_ms) for i, (seat, kind, notice) in enumerate(notices)])
        return list(range(first, first + len(notices)))

    def settle(self, ids: list[int]) -> None:
        self._store.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def unsettled(self) -> list[tuple[int, str, str, bytes]]:
        """(id, peer, kind, payload) of every notice still owed, oldest first."""
        return self._store.query("SELECT id, peer, kind, payload FROM outbox ORDER BY id")


class NoticeSender:
    """Delivers notices to DSPs by seat: `submit(seat, kind, request)`, where
    kind "billing" goes to NotifyBillings and any other kind to NotifyEvents.

    Runs on the role's event loop: `submit`, `submit_many` and `pending` are
    plain calls from the loop, the calls are grpc.aio calls in tasks, and a
    retry waits on a loop timer."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: RetrySettings,
                 record: Record, clock: Callable[[], float] = time.monotonic, store: LedgerStore | None = None):
        """`stubs` are grpc.aio stubs on the role's loop. `record(kind,
        outcome, n)` is called with outcome "sent", "retried" or "failed" and
        how many notices had it. With `store`, notices go through its outbox."""
        self._store = store
        self._outbox = Outbox(store) if store is not None else None
        self._stubs = dict(stubs)
        self._settings = settings
        self._record = record
        self._clock = clock
        self._timeout_s = settings.timeout_ms / 1000.0
        self._batcher: PeerBatcher[_Pending] = PeerBatcher(
            self._flush, max_items=settings.batch_max_items, max_delay_ms=settings.batch_max_delay_ms)
        self._calls = Calls()
        # Notices submitted and not yet sent or failed, by kind.
        self._unsettled: collections.Counter[str] = collections.Counter()
        # Notices waiting out their retry interval: key -> (timer, seat, notices).
        self._retries: dict[int, tuple[asyncio.TimerHandle, str, list[_Pending]]] = {}
        self._retry_keys = itertools.count()
        # (seat, batch RPC name) -> until when that DSP gets unary notices instead.
        self._unary_until: dict[tuple[str, str], float] = {}
        self._closing = False

    def submit(self, seat: str, kind: str, notice: Message) -> None:
        self.submit_many(((seat, kind, notice),))

    def submit_many(self, notices: Iterable[Notice]) -> None:
        """Several notices at once (one RPC's counts), one hand-over per seat;
        with an outbox, written now and handed over once committed."""
        if self._outbox is None:
            self._hand_over([(seat, kind, notice, 0) for seat, kind, notice in notices])
            return
        notices = list(notices)
        if not notices:
            return
        ids = self._outbox.add_many(notices)
        rows = [(seat, kind, notice, outbox_id) for (seat, kind, notice), outbox_id in zip(notices, ids)]
        self._store.on_commit(lambda: self._hand_over(rows))

    def resume(self) -> int:
        """Hand over every notice the outbox still owes (at start, and after
        the ledger recovered from a failed write); their retry windows start
        now. Returns how many."""
        if self._outbox is None:
            return 0
        rows = []
        for outbox_id, seat, kind, payload in self._outbox.unsettled():
            notice_type = bidder_pb2.NotifyBillingRequest if kind == "billing" else bidder_pb2.NotifyEventRequest
            rows.append((seat, kind, notice_type.FromString(payload), outbox_id))
        if rows:
            log.info("%d notices owed since before this start: sending them", len(rows))
            self._hand_over(rows)
        return len(rows)

    def _hand_over(self, rows: list[tuple[str, str, Message, int]]) -> None:
        now = self._clock()
        by_seat: dict[str, list[_Pending]] = {}
        for seat, kind, notice, outbox_id in rows:
            items = by_seat.get(seat)
            if items is None:
                items = by_seat[seat] = []
            items.append(_Pending(kind, notice, now, outbox_id))
            self._unsettled[kind] += 1
        for seat, items in by_seat.items():
            self._batcher.add_many(seat, items)

    def pending(self) -> int:
        """Notices submitted and not yet sent or counted as failed."""
        return self._unsettled.total()

    async def close(self, timeout_s: float) -> None:
        """Give every pending notice one last try now, wait for the answers up
        to `timeout_s`, and count what is left as failed."""
        self._closing = True  # from now on a failed call is failed, not retried
        retries, self._retries = self._retries, {}
        for timer, seat, items in retries.values():
            timer.cancel()
            self._batcher.add_many(seat, items)
        self._batcher.drain()
        await self._calls.wait(timeout_s)
        if self._outbox is not None:
            left = self._unsettled.total()
            if left:
                log.warning("%d notices unanswered at shutdown stay in the outbox for the next start", left)
            return
        left = fail_unsettled(self._unsettled, self._record)
        if left:
            log.warning("%d notices unanswered at shutdown, counted as failed", left)

    def _flush(self, seat: str, items: list[_Pending]) -> None:
        """Start one seat's calls, one per RPC."""
        stub = self._stubs.get(seat)
        if stub is None:
            log.error("%d notices for %s, a DSP this role has no address for", len(items), seat)
            outcomes = _Outcomes()
            for pending in items:
                outcomes.add(pending, "failed")
            self._settle(outcomes)
            return
        billing = [p for p in items if p.kind == "billing"]
        events = [p for p in items if p.kind != "billing"]
        for rpc, batch in (("NotifyBillings", billing), ("NotifyEvents", events)):
            if batch:
                self._calls.start(self._send(seat, stub, rpc, batch))

    async def _send(self, seat: str, stub: bidder_pb2_grpc.BidderServiceStub, rpc: str,
                    items: list[_Pending]) -> None:
        if self._unary_until.get((seat, rpc), 0.0) > self._clock():
            await asyncio.gather(*(self._send_one(seat, stub, pending) for pending in items))
            return
        outcomes = _Outcomes()
        retry: list[_Pending] = []
        request = BATCH_REQUESTS[rpc](items=[p.request for p in items])
        try:
            response = await getattr(stub, rpc)(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("%s does not serve %s; sending its notices one call each for %.0f s", seat, rpc,
                            UNARY_FALLBACK_S)
                self._unary_until[(seat, rpc)] = self._clock() + UNARY_FALLBACK_S
                await self._send(seat, stub, rpc, items)
                return
            if error.code() in PERMANENT_CODES:
                log.error("%d notices refused by %s (%s): %s", len(items), seat, rpc, error.details())
                for pending in items:
                    outcomes.add(pending, "failed")
            else:
                retry = items
        except Exception:  # a call that could not start (a closed channel) is a failed call
            log.exception("%s to %s failed", rpc, seat)
            retry = items
        else:
            results = response.results
            for i, pending in enumerate(items):
                status = results[i].status if i < len(results) else None
                if status is not None and status.code == code_pb2.OK:
                    outcomes.add(pending, "sent")
                elif status is not None and status.code in PERMANENT_ITEM_CODES:
                    log.error("%s notice for %s refused by %s: %s: %s", pending.kind, pending.request.impression_key,
                              seat, status.field, status.message)
                    outcomes.add(pending, "failed")
                else:  # an item the DSP failed to judge (INTERNAL), or one it did not answer
                    retry.append(pending)
        self._reschedule(seat, retry, outcomes)
        self._settle(outcomes)

    async def _send_one(self, seat: str, stub: bidder_pb2_grpc.BidderServiceStub, pending: _Pending) -> None:
        method = stub.NotifyBilling if pending.kind == "billing" else stub.NotifyEvent
        outcomes = _Outcomes()
        try:
            await method(pending.request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            if error.code() in PERMANENT_CODES:
                log.error("%s notice for %s refused by %s: %s", pending.kind, pending.request.impression_key, seat,
                          error.details())
                outcomes.add(pending, "failed")
            else:
                self._reschedule(seat, [pending], outcomes)
        except Exception:  # as for a batch: a call that could not start is a failed call
            log.exception("%s notice to %s failed", pending.kind, seat)
            self._reschedule(seat, [pending], outcomes)
        else:
            outcomes.add(pending, "sent")
        self._settle(outcomes)

    def _reschedule(self, seat: str, items: list[_Pending], outcomes: _Outcomes) -> None:
        """Put notices whose call failed back on the retry schedule while their
        window lasts (they rejoin the seat's batch when the timer fires); the
        others are failed."""
        retry_at = self._clock() + self._settings.retry_interval_s
        again: list[_Pending] = []
        for pending in items:
            if not self._closing and retry_at <= pending.first_try_s + self._settings.retry_for_s:
                again.append(pending)
                outcomes.add(pending, "retried")
            else:
                outcomes.add(pending, "failed")
        if again:
            key = next(self._retry_keys)
            timer = asyncio.get_running_loop().call_later(self._settings.retry_interval_s, self._retry, key)
            self._retries[key] = (timer, seat, again)

    def _retry(self, key: int) -> None:
        _timer, seat, items = self._retries.pop(key)
        self._batcher.add_many(seat, items)

    def _settle(self, outcomes: _Outcomes) -> None:
        """Record one call's outcomes; its sent and failed notices are settled
        (and leave the outbox, in the transaction that counts them)."""
        if outcomes.settled_ids and self._outbox is not None:
            try:
                self._outbox.settle(outcomes.settled_ids)
            except LedgerUnavailable:
                # Not recorded: they stay owed and are sent again (the DSP
                # takes each once) when the ledger takes writes again.
                return
        for (kind, outcome), n in outcomes.items():
            if outcome != "retried":
                self._unsettled[kind] -= n
            self._record(kind, outcome, n)

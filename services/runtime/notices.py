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
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.runtime.batching import PeerBatcher
from services.runtime.config import RetrySettings

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


class _Pending:
    """One notice on its way: what it is and when it was first handed over
    (its retry window runs from then)."""

    __slots__ = ("kind", "request", "first_try_s")

    def __init__(self, kind: str, request: Message, first_try_s: float):
        self.kind = kind
        self.request = request
        self.first_try_s = first_try_s


class _Outcomes:
    """Outcomes of one answered call by (kind, outcome), recorded once each."""

    def __init__(self):
        self._counts: dict[tuple[str, str], int] = collections.defaultdict(int)

    def add(self, kind: str, outcome: str) -> None:
        self._counts[(kind, outcome)] += 1

    def record(self, record: Record) -> None:
        for (kind, outcome), n in self._counts.items():
            record(kind, outcome, n)


class NoticeSender:
    """Delivers notices to DSPs by seat: `submit(seat, kind, request)`, where
    kind "billing" goes to NotifyBillings and any other kind to NotifyEvents."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: RetrySettings,
                 record: Record, clock: Callable[[], float] = time.monotonic):
        """`record(kind, outcome, n)` is called with outcome "sent", "retried"
        or "failed" and how many notices had it."""
        self._stubs = dict(stubs)
        self._settings = settings
        self._record = record
        self._clock = clock
        self._timeout_s = settings.timeout_ms / 1000.0
        self._batcher: PeerBatcher[_Pending] = PeerBatcher(
            self._flush, max_items=settings.batch_max_items, max_delay_ms=settings.batch_max_delay_ms,
            name="dsp-notices", clock=clock)
        self._cond = threading.Condition(threading.Lock())
        # Notices submitted and not yet sent or failed.
        self._unsettled = 0
        # Notices in the batcher, not yet handed to a call, by kind.
        self._queued: dict[str, int] = collections.defaultdict(int)
        # (retry at, seq, seat, pending): notices waiting out their retry interval.
        self._retries: list[tuple[float, int, str, _Pending]] = []
        self._seq = itertools.count()
        # (seat, batch RPC name) -> until when that DSP gets unary notices instead.
        self._unary_until: dict[tuple[str, str], float] = {}
        self._closing = False
        self._closed = False
        self._retrier = threading.Thread(target=self._run_retries, name="dsp-notice-retries", daemon=True)

    def start(self) -> None:
        self._batcher.start()
        self._retrier.start()

    def submit(self, seat: str, kind: str, notice: Message) -> None:
        self.submit_many(((seat, kind, notice),))

    def submit_many(self, notices: Iterable[Notice]) -> None:
        """Several notices at once (one RPC's counts), one hand-over per seat."""
        now = self._clock()
        by_seat: dict[str, list[_Pending]] = {}
        for seat, kind, notice in notices:
            items = by_seat.get(seat)
            if items is None:
                items = by_seat[seat] = []
            items.append(_Pending(kind, notice, now))
        self._queue(by_seat, submitted=True)

    def pending(self) -> int:
        """Notices submitted and not yet sent or counted as failed."""
        with self._cond:
            return self._unsettled

    def close(self, timeout_s: float) -> None:
        """Give every pending notice one last try now, wait for the answers up
        to `timeout_s`, and count what is left as failed."""
        deadline = self._clock() + timeout_s
        with self._cond:
            self._closing = True  # from now on a failed call is failed, not retried
            self._cond.notify_all()
        if self._retrier.is_alive():
            self._retrier.join(timeout_s)
        with self._cond:
            due, self._retries = self._retries, []
        self._queue(_by_seat((seat, pending) for _at, _seq, seat, pending in due))
        self._batcher.close(max(0.0, deadline - self._clock()))
        with self._cond:
            while self._unsettled and self._clock() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - self._clock()))
            # What the batcher never handed to a call is failed now; a late
            # flush of it finds the sender closed and sends nothing.
            self._closed = True
            never_sent = dict(self._queued)
            self._queued.clear()
            self._unsettled -= sum(never_sent.values())
            in_flight = self._unsettled
        for kind, n in never_sent.items():
            if n:
                self._record(kind, "failed", n)
        if any(never_sent.values()) or in_flight:
            log.warning("%d notices undelivered at shutdown (counted as failed), %d still in flight",
                        sum(never_sent.values()), in_flight)

    def _queue(self, by_seat: Mapping[str, list[_Pending]], submitted: bool = False) -> None:
        """Into the batcher, to go out with the seat's next batch."""
        with self._cond:
            for items in by_seat.values():
                if submitted:
                    self._unsettled += len(items)
                for pending in items:
                    self._queued[pending.kind] += 1
        for seat, items in by_seat.items():
            self._batcher.add_many(seat, items)

    def _flush(self, seat: str, items: list[_Pending]) -> None:
        """On the batcher's thread: start one seat's calls, one per RPC."""
        with self._cond:
            if self._closed:  # counted as failed by close
                return
            for pending in items:
                self._queued[pending.kind] -= 1
        if seat not in self._stubs:
            log.error("%d notices for %s, a DSP this role has no address for", len(items), seat)
            outcomes = _Outcomes()
            for pending in items:
                outcomes.add(pending.kind, "failed")
            self._settle(len(items))
            outcomes.record(self._record)
            return
        billing = [p for p in items if p.kind == "billing"]
        events = [p for p in items if p.kind != "billing"]
        for rpc, batch in (("NotifyBillings", billing), ("NotifyEvents", events)):
            if batch:
                self._start(seat, rpc, batch)

    def _start(self, seat: str, rpc: str, items: list[_Pending]) -> None:
        try:
            self._call(seat, rpc, items)
        except Exception:  # a call that could not start (a closed channel) is a failed call
            log.exception("starting %s to %s failed", rpc, seat)
            outcomes = _Outcomes()
            self._settle(self._reschedule(seat, items, outcomes))
            outcomes.record(self._record)

    def _call(self, seat: str, rpc: str, items: list[_Pending]) -> None:
        stub = self._stubs[seat]
        if self._unary_until.get((seat, rpc), 0.0) > self._clock():
            for pending in items:
                self._call_unary(seat, stub, pending)
            return
        request = BATCH_REQUESTS[rpc](items=[p.request for p in items])
        call = getattr(stub, rpc).future(request, timeout=self._timeout_s)
        call.add_done_callback(lambda answered: self._answered(answered, seat, rpc, items))

    def _answered(self, call: grpc.Future, seat: str, rpc: str, items: list[_Pending]) -> None:
        error = call.exception()
        outcomes = _Outcomes()
        retry: list[_Pending] = []
        settled = 0
        if error is None:
            results = call.result().results
            for i, pending in enumerate(items):
                status = results[i].status if i < len(results) else None
                if status is not None and status.code == code_pb2.OK:
                    outcomes.add(pending.kind, "sent")
                    settled += 1
                elif status is not None and status.code in PERMANENT_ITEM_CODES:
                    log.error("%s notice for %s refused by %s: %s: %s", pending.kind, pending.request.impression_key,
                              seat, status.field, status.message)
                    outcomes.add(pending.kind, "failed")
                    settled += 1
                else:  # an item the DSP failed to judge (INTERNAL), or one it did not answer
                    retry.append(pending)
        elif error.code() == grpc.StatusCode.UNIMPLEMENTED:
            log.warning("%s does not serve %s; sending its notices one call each for %.0f s", seat, rpc,
                        UNARY_FALLBACK_S)
            self._unary_until[(seat, rpc)] = self._clock() + UNARY_FALLBACK_S
            self._start(seat, rpc, items)
            return
        elif error.code() in PERMANENT_CODES:
            log.error("%d notices refused by %s (%s): %s", len(items), seat, rpc, error.details())
            for pending in items:
                outcomes.add(pending.kind, "failed")
            settled = len(items)
        else:
            retry = items
        settled += self._reschedule(seat, retry, outcomes)
        self._settle(settled)
        outcomes.record(self._record)

    def _call_unary(self, seat: str, stub: bidder_pb2_grpc.BidderServiceStub, pending: _Pending) -> None:
        method = stub.NotifyBilling if pending.kind == "billing" else stub.NotifyEvent
        call = method.future(pending.request, timeout=self._timeout_s)
        call.add_done_callback(lambda answered: self._answered_unary(answered, seat, pending))

    def _answered_unary(self, call: grpc.Future, seat: str, pending: _Pending) -> None:
        error = call.exception()
        outcomes = _Outcomes()
        settled = 1
        if error is None:
            outcomes.add(pending.kind, "sent")
        elif error.code() in PERMANENT_CODES:
            log.error("%s notice for %s refused by %s: %s", pending.kind, pending.request.impression_key, seat,
                      error.details())
            outcomes.add(pending.kind, "failed")
        else:
            settled = self._reschedule(seat, [pending], outcomes)
        self._settle(settled)
        outcomes.record(self._record)

    def _reschedule(self, seat: str, items: list[_Pending], outcomes: _Outcomes) -> int:
        """Put notices whose call failed back on the retry schedule while their
        window lasts; the others are failed. Returns how many were failed."""
        if not items:
            return 0
        now = self._clock()
        retry_at = now + self._settings.retry_interval_s
        failed = 0
        with self._cond:
            for pending in items:
                if not self._closing and retry_at <= pending.first_try_s + self._settings.retry_for_s:
                    heapq.heappush(self._retries, (retry_at, next(self._seq), seat, pending))
                    outcomes.add(pending.kind, "retried")
                else:
                    outcomes.add(pending.kind, "failed")
                    failed += 1
            self._cond.notify_all()
        return failed

    def _settle(self, n: int) -> None:
        with self._cond:
            self._unsettled -= n
            self._cond.notify_all()

    def _run_retries(self) -> None:
        """Hands notices back to the batcher as their retries fall due."""
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = self._clock()
                    if self._retries and self._retries[0][0] <= now:
                        break
                    self._cond.wait(timeout=(self._retries[0][0] - now) if self._retries else 0.5)
                due = []
                while self._retries and self._retries[0][0] <= now:
                    _at, _seq, seat, pending = heapq.heappop(self._retries)
                    due.append((seat, pending))
            self._queue(_by_seat(due))


def _by_seat(notices: Iterable[tuple[str, _Pending]]) -> dict[str, list[_Pending]]:
    by_seat: dict[str, list[_Pending]] = {}
    for seat, pending in notices:
        by_seat.setdefault(seat, []).append(pending)
    return by_seat

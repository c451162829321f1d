"""Billing notices from the ad server to the DSP that won (OpenRTB 2.6 §4.3
burl): sent once the impression is counted, retried while the DSP cannot take
them, and counted as failed when the retry window closes.

The DSP's receiver is idempotent per impression key, so a retry after a lost
acknowledgement never bills twice.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc
from services.adserver.settings import BillingSettings

log = logging.getLogger(__name__)


class BillingNotifier:
    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: BillingSettings,
                 record: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        """`record(outcome)` is called with "sent", "retried" or "failed"."""
        self._stubs = dict(stubs)
        self._settings = settings
        self._record = record
        self._clock = clock
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, str, bidder_pb2.NotifyBillingRequest, float]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="billing-notices", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def submit(self, seat: str, notice: bidder_pb2.NotifyBillingRequest) -> None:
        now = self._clock()
        self._schedule(now, seat, notice, first_try=now)

    def pending(self) -> int:
        with self._cond:
            return len(self._due) + self._in_flight

    def close(self, timeout_s: float) -> None:
        """Give every pending notice one last try now, wait for the answers up
        to `timeout_s`, and count what is left as failed."""
        deadline = self._clock() + timeout_s
        with self._cond:
            self._closing = True
            self._due = [(self._clock(), seq, seat, notice, first) for (_t, seq, seat, notice, first) in self._due]
            heapq.heapify(self._due)
            self._cond.notify_all()
            while (self._due or self._in_flight) and self._clock() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - self._clock()))
            left = len(self._due) + self._in_flight
            self._due.clear()
        for _ in range(left):
            self._record("failed")
        if left:
            log.warning("billing: %d notices still undelivered at shutdown, counted as failed", left)

    def _schedule(self, at: float, seat: str, notice, first_try: float) -> None:
        with self._cond:
            heapq.heappush(self._due, (at, next(self._seq), seat, notice, first_try))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._due and self._due[0][0] <= now:
                        _at, _seq, seat, notice, first_try = heapq.heappop(self._due)
                        self._in_flight += 1
                        break
                    if self._closing and not self._due:
                        return
                    self._cond.wait(timeout=(self._due[0][0] - now) if self._due else 0.5)
            self._send(seat, notice, first_try)

    def _send(self, seat: str, notice, first_try: float) -> None:
        call = self._stubs[seat].NotifyBilling.future(notice, timeout=self._settings.timeout_ms / 1000.0)
        call.add_done_callback(lambda f: self._answered(f, seat, notice, first_try))

    def _answered(self, call: grpc.Future, seat: str, notice, first_try: float) -> None:
        error = call.exception()
        retry_at = None
        if error is None:
            self._record("sent")
        elif _permanent(error):
            log.error("billing notice for %s rejected by %s: %s", notice.impression_key, seat, error.details())
            self._record("failed")
        else:
            now = self._clock()
            if not self._closing and now + self._settings.retry_interval_s <= first_try + self._settings.retry_for_s:
                retry_at = now + self._settings.retry_interval_s
                self._record("retried")
            else:
                self._record("failed")
        with self._cond:
            self._in_flight -= 1
            if retry_at is not None:
                heapq.heappush(self._due, (retry_at, next(self._seq), seat, notice, first_try))
            self._cond.notify_all()


def _permanent(error: grpc.RpcError) -> bool:
    # The DSP understood and refused the notice: retrying cannot help.
    return error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

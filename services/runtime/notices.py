"""Notices from a counting role to the DSP that won: the billing notice
(OpenRTB 2.6 §4.3 burl) once the ad server counts the impression, and event
notices (viewable, click, conversion) that vCPM and CPC campaigns pay on.
Each is retried while the DSP cannot take it and counted as failed when its
retry window closes.

The DSP's receivers are idempotent per impression key (and event kind), so a
retry after a lost acknowledgement never bills twice.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping

import grpc

from google.protobuf.message import Message

from adchain.v1 import bidder_pb2_grpc
from services.runtime.config import RetrySettings

log = logging.getLogger(__name__)


class NoticeSender:
    """Delivers notices to DSPs by seat: `submit(seat, kind, request)`, where
    kind "billing" goes to NotifyBilling and any other kind to NotifyEvent."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub], settings: RetrySettings,
                 record: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic):
        """`record(kind, outcome)` is called with outcome "sent", "retried" or
        "failed"."""
        self._stubs = dict(stubs)
        self._settings = settings
        self._record = record
        self._clock = clock
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, str, str, Message, float]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="dsp-notices", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def submit(self, seat: str, kind: str, notice: Message) -> None:
        now = self._clock()
        with self._cond:
            heapq.heappush(self._due, (now, next(self._seq), seat, kind, notice, now))
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._due) + self._in_flight

    def close(self, timeout_s: float) -> None:
        """Give every pending notice one last try now, wait for the answers up
        to `timeout_s`, and count what is left as failed."""
        deadline = self._clock() + timeout_s
        with self._cond:
            self._closing = True
            self._due = [(self._clock(), *rest) for (_t, *rest) in self._due]
            heapq.heapify(self._due)
            self._cond.notify_all()
            while (self._due or self._in_flight) and self._clock() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - self._clock()))
            left = [kind for (_t, _s, _seat, kind, _n, _f) in self._due]
            in_flight = self._in_flight
            self._due.clear()
        for kind in left:
            self._record(kind, "failed")
        if left or in_flight:
            log.warning("%d notices undelivered at shutdown (counted as failed), %d still in flight",
                        len(left), in_flight)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._due and self._due[0][0] <= now:
                        _at, _seq, seat, kind, notice, first_try = heapq.heappop(self._due)
                        self._in_flight += 1
                        break
                    if self._closing and not self._due:
                        return
                    self._cond.wait(timeout=(self._due[0][0] - now) if self._due else 0.5)
            self._send(seat, kind, notice, first_try)

    def _send(self, seat: str, kind: str, notice: Message, first_try: float) -> None:
        stub = self._stubs[seat]
        method = stub.NotifyBilling if kind == "billing" else stub.NotifyEvent
        call = method.future(notice, timeout=self._settings.timeout_ms / 1000.0)
        call.add_done_callback(lambda f: self._answered(f, seat, kind, notice, first_try))

    def _answered(self, call: grpc.Future, seat: str, kind: str, notice: Message, first_try: float) -> None:
        error = call.exception()
        retry_at = None
        if error is None:
            self._record(kind, "sent")
        elif _permanent(error):
            log.error("%s notice for %s rejected by %s: %s", kind, notice.impression_key, seat, error.details())
            self._record(kind, "failed")
        else:
            now = self._clock()
            if not self._closing and now + self._settings.retry_interval_s <= first_try + self._settings.retry_for_s:
                retry_at = now + self._settings.retry_interval_s
                self._record(kind, "retried")
            else:
                self._record(kind, "failed")
        with self._cond:
            self._in_flight -= 1
            if retry_at is not None:
                heapq.heappush(self._due, (retry_at, next(self._seq), seat, kind, notice, first_try))
            self._cond.notify_all()


def _permanent(error: grpc.RpcError) -> bool:
    # The DSP understood and refused the notice: retrying cannot help.
    return error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)

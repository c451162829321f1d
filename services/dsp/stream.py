"""BidStream's timing: the exchange keeps one stream open per DSP and sends
bid requests on it; each answer leaves when it is due, not in request order.

One reader thread per stream takes requests off the wire into an inbox. The
stream's own handler thread decides everything in the inbox together (one
`decide` call, so requests that arrived together share one pricing_core
evaluate) and holds each answer in a heap until its due time, the DSP's
modelled response delay after the request arrived, then yields it. A slow
answer never holds up a quick one, and no thread sleeps per request.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

# decide(requests) -> (delay_s, answer) per request, in order.
Decide = Callable[[Sequence[Request]], Sequence[tuple[float, Answer]]]


class DueStream(Generic[Request, Answer]):
    """The answers to one stream of requests, each released `delay_s` after its
    request arrived. Ends once the caller has stopped sending and every answer
    has left, or at once when `close` is called (the call ended: cancelled by
    the caller, past its deadline, or the server stopping)."""

    def __init__(self, requests: Iterable[Request], decide: Decide, *,
                 clock: Callable[[], float] = time.monotonic, name: str = "bid-stream"):
        self._requests = requests
        self._decide = decide
        self._clock = clock
        self._cond = threading.Condition()
        self._inbox: list[tuple[float, Request]] = []  # (arrived at, request)
        # (due at, arrival order, answer): the order breaks ties and keeps answers uncompared.
        self._due: list[tuple[float, int, Answer]] = []
        self._order = itertools.count()
        self._reading = True
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)

    def close(self) -> None:
        """Stop now: answers not yet released are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def answers(self) -> Iterator[Answer]:
        """The answers, each as it comes due (the call's response iterator)."""
        self._reader.start()
        try:
            while True:
                arrived = self._wait()
                if arrived is None:
                    return
                if arrived:
                    self._hold(arrived)
                # Everything due leaves before the next decision, so a flood of
                # requests never starves the answers already made.
                while (answer := self._pop_due()) is not None:
                    yield answer
        finally:
            self.close()

    def _wait(self) -> list[tuple[float, Request]] | None:
        """Once there is work: the requests that arrived since the last call (none when
        only an answer came due); None when the stream is over."""
        with self._cond:
            while not self._closed:
                if self._inbox:
                    arrived, self._inbox = self._inbox, []
                    return arrived
                now = self._clock()
                if self._due and self._due[0][0] <= now:
                    return []
                if not self._reading and not self._due:
                    return None
                self._cond.wait(self._due[0][0] - now if self._due else None)
            return None

    def _pop_due(self) -> Answer | None:
        with self._cond:
            if not self._closed and self._due and self._due[0][0] <= self._clock():
                return heapq.heappop(self._due)[2]
            return None

    def _hold(self, arrived: list[tuple[float, Request]]) -> None:
        answers = self._decide([request for _at, request in arrived])
        with self._cond:
            for (arrived_at, _request), (delay_s, answer) in zip(arrived, answers):
                heapq.heappush(self._due, (arrived_at + delay_s, next(self._order), answer))

    def _read(self) -> None:
        try:
            for request in self._requests:
                with self._cond:
                    if self._closed:
                        return
                    self._inbox.append((self._clock(), request))
                    self._cond.notify_all()
        except Exception:
            # The call ended under the reader (cancelled, deadline, server stop): nothing
            # more will arrive; `close` follows from the call's own termination callback.
            pass
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

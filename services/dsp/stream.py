"""BidStream's timing: the exchange keeps one stream open per DSP and sends
bid requests on it, many per message; each answer leaves when it is due, not
in request order.

A reader task takes each message's requests off the wire into an inbox. The
stream's own coroutine decides everything in the inbox together (one
`decide` call, so requests that arrived together share one pricing_core
evaluate) and holds each answer in a heap until its due time, the DSP's
modelled response delay after the request arrived, then sends every answer
due by then in one message. A slow answer never holds up a quick one, and
nothing sleeps per request: one timer stands for the earliest due answer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

# decide(requests) -> (delay_s, answer) per request, in order.
Decide = Callable[[Sequence[Request]], Sequence[tuple[float, Answer]]]


class DueStream(Generic[Request, Answer]):
    """The answers to one stream of request messages (each a sequence of
    requests), each answer released `delay_s` after its request arrived, those
    due together in one list. Ends once the caller has stopped sending and
    every answer has left; when the call ends first (cancelled, past its
    deadline, the server stopping) the answers still held are dropped with it."""

    def __init__(self, messages: AsyncIterable[Sequence[Request]], decide: Decide, *,
                 clock: Callable[[], float] = time.monotonic):
        self._messages = messages
        self._decide = decide
        self._clock = clock
        self._inbox: list[tuple[float, Request]] = []  # (arrived at, request)
        # (due at, arrival order, answer): the order breaks ties and keeps answers uncompared.
        self._due: list[tuple[float, int, Answer]] = []
        self._order = itertools.count()
        self._reading = True
        self._closed = False
        self._wake: asyncio.Future | None = None

    async def answers(self) -> AsyncIterator[list[Answer]]:
        """The answers, those due together in one list, each as it comes due."""
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            while not self._closed:
                if self._inbox:
                    self._hold()
                due = self._pop_due()
                if due:
                    # Everything due leaves before the next decision, so a
                    # flood of requests never starves the answers already made.
                    yield due
                    continue
                if not self._reading and not self._due and not self._inbox:
                    return
                await self._sleep(self._due[0][0] - self._clock() if self._due else None)
        finally:
            self._closed = True
            reader.cancel()

    async def _sleep(self, delay_s: float | None) -> None:
        """Until the first held answer is due or new requests arrive."""
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(max(delay_s, 0.0), _settle, wake) if delay_s is not None else None
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _poke(self) -> None:
        if self._wake is not None:
            _settle(self._wake)

    def _pop_due(self) -> list[Answer]:
        due = self._due
        if not due:
            return []
        now = self._clock()
        released = []
        while due and due[0][0] <= now:
            released.append(heapq.heappop(due)[2])
        return released

    def _hold(self) -> None:
        arrived, self._inbox = self._inbox, []
        answers = self._decide([request for _at, request in arrived])
        for (arrived_at, _request), (delay_s, answer) in zip(arrived, answers):
            heapq.heappush(self._due, (arrived_at + delay_s, next(self._order), answer))

    async def _read(self) -> None:
        try:
            async for message in self._messages:
                if self._closed:
                    return
                now = self._clock()
                self._inbox.extend((now, request) for request in message)
                self._poke()
        except Exception:
            # The call ended under the reader (cancelled, deadline, server stop):
            # nothing more will arrive.
            pass
        finally:
            self._reading = False
            self._poke()


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)

"""The exchange's fan-out to its DSPs: the bid requests of an ad call (one
for a RequestAd or an ad break, one per item of a RequestAds) go to every DSP
at once, each DSP over one long-lived BidStream, in one stream message per
call (or fewer: messages queued behind a write leave joined), and each
request waits for its answers under its own tmax.

One stream per DSP, opened on first use and reopened after it breaks, carries
many requests at once; answers come back as the DSP finishes them (those that
became due together in one message), matched to their request by
BidRequest.id (the exchange's auction id, unique per request). OpenRTB 2.6
§3.2.1 tmax is the time the exchange waits for bids: a DSP whose answer has
not arrived `tmax` after its request was sent is out of that auction (a
timeout), and an answer that arrives later is dropped.

Everything here runs on the exchange's event loop: no locks, no threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

import grpc

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, openrtb_pb2

log = logging.getLogger(__name__)

# How an asked DSP ended up for one bid request (the exchange's bid outcomes
# add "bid" / "no_bid" once it reads the answer).
ANSWERED = "answered"
TIMEOUT = "timeout"
ERROR = "error"


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    outcome: str
    response: openrtb_pb2.BidResponse | None = None


_TIMED_OUT = Answer(TIMEOUT)
_FAILED = Answer(ERROR)


class BidRound:
    """Bid requests sent to every DSP at once; request i is complete when
    every DSP answered it or its tmax passed since it was sent."""

    def __init__(self, bid_requests: Sequence[openrtb_pb2.BidRequest], dsps: Sequence[str],
                 forget: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic):
        self._requests = bid_requests
        self._dsps = tuple(dsps)
        self._forget = forget
        self._clock = clock
        self._answers: list[dict[str, Answer]] = [{} for _ in bid_requests]
        self._done = [False] * len(bid_requests)
        self._ready: list[int] = []
        # When each request's tmax ends; one timer per distinct tmax of the
        # requests sent together (a batch's items mostly share one).
        self._deadline = [float("inf")] * len(bid_requests)
        self._timers: list[asyncio.TimerHandle] = []
        self._open = len(bid_requests)
        self._wake: asyncio.Future | None = None

    def sent(self, indices: Iterable[int]) -> None:
        """Requests `indices` leave now: their tmax runs from here."""
        now = self._clock()
        by_tmax: dict[int, list[int]] = {}
        for index in indices:
            tmax_ms = self._requests[index].tmax
            self._deadline[index] = now + tmax_ms / 1000.0
            by_tmax.setdefault(tmax_ms, []).append(index)
        loop = asyncio.get_running_loop()
        self._timers.extend(loop.call_later(tmax_ms / 1000.0, self._expire, expiring)
                            for tmax_ms, expiring in by_tmax.items())

    def answer(self, index: int, dsp: str, answer: Answer) -> None:
        """A DSP's answer to request `index` (from the stream's reader): kept
        if it came within tmax, whether or not the auction has looked yet."""
        if self._done[index] or dsp in self._answers[index] or self._clock() > self._deadline[index]:
            return
        answers = self._answers[index]
        answers[dsp] = answer
        if len(answers) == len(self._dsps):
            self._complete(index)

    async def completed(self) -> AsyncIterator[list[tuple[int, dict[str, Answer]]]]:
        """(request index, answers by DSP) for every request, in the order
        they complete, those that completed together in one list (so they
        clear together); a DSP that missed tmax answers TIMEOUT."""
        while True:
            if not self._ready:
                if not self._open:
                    return
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
            ready, self._ready = self._ready, []
            yield [(index, self._answers[index]) for index in ready]

    def close(self) -> None:
        """The auction stopped waiting (its caller went away): no timer is left behind."""
        for timer in self._timers:
            timer.cancel()

    def _expire(self, indices: list[int]) -> None:
        for index in indices:
            if self._done[index]:
                continue
            missing = [d for d in self._dsps if d not in self._answers[index]]
            self._answers[index].update((d, _TIMED_OUT) for d in missing)
            self._complete(index)
            for dsp in missing:
                self._forget(dsp, self._requests[index].id)

    def _complete(self, index: int) -> None:
        self._done[index] = True
        self._open -= 1
        self._ready.append(index)
        if not self._open:
            self.close()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class _Stream:
    """One open BidStream call: its outgoing messages, the requests it
    carries, and the task reading its answers.

    Messages queued while the previous one was being written leave together
    as one (up to COALESCE_ITEMS requests): under many concurrent single ad
    requests that is one stream message per DSP per write, not one per
    request, and a batch's message, already large, leaves as it is."""

    def __init__(self, stub: bidder_pb2_grpc.BidderServiceStub):
        self._outbox: deque[bidder_pb2.BidStreamRequest | None] = deque()
        self._wake: asyncio.Future | None = None
        # request id -> (round, index in the round) awaiting an answer here
        self.pending: dict[str, tuple[BidRound, int]] = {}
        self.call = stub.BidStream(self._messages())
        self.reader: asyncio.Task | None = None

    def put(self, message: bidder_pb2.BidStreamRequest | None) -> None:
        self._outbox.append(message)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def end(self) -> None:
        """No more requests: the DSP answers what it has and ends the call."""
        self.put(None)

    async def _messages(self) -> AsyncIterator[bidder_pb2.BidStreamRequest]:
        outbox = self._outbox
        while True:
            while not outbox:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
            message = outbox.popleft()
            if message is None:
                return
            if _joins(message, outbox):
                joined = bidder_pb2.BidStreamRequest()
                joined.items.extend(message.items)
                while _joins(joined, outbox):
                    joined.items.extend(outbox.popleft().items)
                message = joined
            yield message


# The most bid requests queued messages are joined into; a batch's own
# message (RequestAds sends all its items in one) is never split or copied.
COALESCE_ITEMS = 256


def _joins(message: bidder_pb2.BidStreamRequest, outbox: deque) -> bool:
    """Whether the next queued message can join `message` in one write."""
    return bool(outbox) and outbox[0] is not None and len(message.items) + len(outbox[0].items) <= COALESCE_ITEMS


class BidStream:
    """Bid requests to one DSP over one BidStream, opened lazily and reopened
    after it breaks; requests in flight when it breaks are errors."""

    def __init__(self, dsp: str, stub: bidder_pb2_grpc.BidderServiceStub,
                 opened: Callable[[str], None] = lambda dsp: None):
        self.dsp = dsp
        self._stub = stub
        self._opened = opened
        self._stream: _Stream | None = None
        self._closed = False

    def send(self, message: bidder_pb2.BidStreamRequest, bid_round: BidRound, indices: Sequence[int]) -> None:
        """Send `message` (whose items are the round's requests `indices`)."""
        stream = self._stream
        if stream is None and not self._closed:
            stream = self._stream = self._open()
        if stream is None:
            for index in indices:
                bid_round.answer(index, self.dsp, _FAILED)
            return
        for item, index in zip(message.items, indices):
            stream.pending[item.id] = (bid_round, index)
        stream.put(message)

    def forget(self, request_id: str) -> None:
        """Stop waiting for an answer to `request_id` (its tmax passed)."""
        if self._stream is not None:
            self._stream.pending.pop(request_id, None)

    async def close(self, timeout_s: float = 1.0) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.end()
            try:
                await asyncio.wait_for(asyncio.shield(stream.reader), timeout_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            stream.call.cancel()

    def _open(self) -> _Stream:
        stream = _Stream(self._stub)
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream), name=f"bids-{self.dsp}")
        self._opened(self.dsp)
        return stream

    async def _read(self, stream: _Stream) -> None:
        """Hand every answer to the round waiting for it, until the stream ends."""
        pending = stream.pending
        try:
            async for message in stream.call:
                for result in message.results:
                    waiting = pending.pop(result.request_id, None)
                    if waiting is None:
                        continue  # tmax passed: the auction went on without it
                    bid_round, index = waiting
                    if result.status.code:
                        log.warning("bid request to %s refused: %s %s", self.dsp, result.status.field,
                                    result.status.message)
                        bid_round.answer(index, self.dsp, _FAILED)
                    else:
                        bid_round.answer(index, self.dsp, Answer(ANSWERED, result.response))
        except grpc.RpcError as error:
            if not self._closed:
                log.warning("bid stream to %s broke: %s", self.dsp, error.code().name)
        except asyncio.CancelledError:
            pass
        except Exception:  # an answer that would not decode: the stream is no longer trusted
            log.exception("bid stream to %s failed", self.dsp)
        finally:
            if self._stream is stream:
                self._stream = None
            broken, stream.pending = stream.pending, {}
            stream.end()
            stream.call.cancel()  # a no-op once the call ended; else stop the DSP answering into the void
            for bid_round, index in broken.values():
                bid_round.answer(index, self.dsp, _FAILED)


class BidStreams:
    """One BidStream per DSP; `ask` sends bid requests to all of them at once."""

    def __init__(self, stubs: Mapping[str, bidder_pb2_grpc.BidderServiceStub],
                 opened: Callable[[str], None] = lambda dsp: None, clock: Callable[[], float] = time.monotonic):
        self._streams = {name: BidStream(name, stub, opened) for name, stub in stubs.items()}
        self._clock = clock

    def ask(self, bid_requests: Sequence[openrtb_pb2.BidRequest]) -> BidRound:
        """Send `bid_requests` to every DSP (one stream message per DSP);
        iterate the round's `completed()` for the answers."""
        bid_round = BidRound(bid_requests, tuple(self._streams), self._forget, self._clock)
        # One message for every DSP: gRPC serializes it per stream, nothing mutates it.
        message = bidder_pb2.BidStreamRequest(items=bid_requests)
        indices = range(len(bid_requests))
        bid_round.sent(indices)
        for stream in self._streams.values():
            stream.send(message, bid_round, indices)
        return bid_round

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()

    def _forget(self, dsp: str, request_id: str) -> None:
        self._streams[dsp].forget(request_id)

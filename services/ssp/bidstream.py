"""The exchange's fan-out to its DSPs: every bid request of an ad call (one
for a RequestAd or an ad break, one per item of a RequestAds) goes to every
DSP at once, each DSP over one long-lived BidStream, and each request waits
for its answers under its own tmax.

One stream per DSP, opened on first use and reopened after it breaks, carries
many requests at once; answers come back as the DSP finishes them, matched to
their request by BidRequest.id (the exchange's auction id, unique per
request). OpenRTB 2.6 §3.2.1 tmax is the time the exchange waits for bids:
a DSP whose answer has not arrived `tmax` after its request was sent is out
of that auction (a timeout), and an answer that arrives later is dropped.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

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
        self._cond = threading.Condition()
        self._answers: list[dict[str, Answer]] = [{} for _ in bid_requests]
        self._done = [False] * len(bid_requests)
        self._ready: list[int] = []
        # When each request's tmax ends, and the same as a heap of (deadline,
        # request index) for the wait.
        self._deadline = [float("inf")] * len(bid_requests)
        self._deadlines: list[tuple[float, int]] = []
        self._open = len(bid_requests)

    def sent(self, index: int) -> None:
        """Request `index` leaves now: its tmax runs from here."""
        deadline = self._clock() + self._requests[index].tmax / 1000.0
        with self._cond:
            self._deadline[index] = deadline
            heapq.heappush(self._deadlines, (deadline, index))

    def answer(self, index: int, dsp: str, answer: Answer) -> None:
        """A DSP's answer to request `index` (from the stream's reader): kept
        if it came within tmax, whether or not the auction has looked yet."""
        now = self._clock()
        with self._cond:
            if self._done[index] or dsp in self._answers[index] or now > self._deadline[index]:
                return
            answers = self._answers[index]
            answers[dsp] = answer
            if len(answers) == len(self._dsps):
                self._complete(index)

    def completed(self) -> Iterator[tuple[int, dict[str, Answer]]]:
        """(request index, answers by DSP) for every request, in the order
        they complete; a DSP that missed tmax answers TIMEOUT."""
        while True:
            expired: list[tuple[int, list[str]]] = []
            with self._cond:
                while not self._ready and self._open:
                    now = self._clock()
                    while self._deadlines and (self._deadlines[0][0] <= now or self._done[self._deadlines[0][1]]):
                        _deadline, index = heapq.heappop(self._deadlines)
                        if not self._done[index]:
                            missing = [d for d in self._dsps if d not in self._answers[index]]
                            self._answers[index].update((d, _TIMED_OUT) for d in missing)
                            self._complete(index)
                            expired.append((index, missing))
                    if self._ready:
                        break
                    self._cond.wait(self._deadlines[0][0] - now if self._deadlines else None)
                ready, self._ready = self._ready, []
            for index, missing in expired:
                for dsp in missing:
                    self._forget(dsp, self._requests[index].id)
            for index in ready:
                yield index, self._answers[index]
            if not ready and not self._open:
                return

    def _complete(self, index: int) -> None:
        self._done[index] = True
        self._open -= 1
        self._ready.append(index)
        self._cond.notify()


class _Stream:
    """One open BidStream call: its request queue, the requests it carries
    and the thread reading its answers."""

    _END = object()

    def __init__(self, stub: bidder_pb2_grpc.BidderServiceStub):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        # request id -> (round, index in the round) awaiting an answer here
        self.pending: dict[str, tuple[BidRound, int]] = {}
        self.call = stub.BidStream(iter(self.requests.get, self._END))
        self.reader: threading.Thread | None = None

    def end(self) -> None:
        """No more requests: the DSP answers what it has and ends the call."""
        self.requests.put(self._END)


class BidStream:
    """Bid requests to one DSP over one BidStream, opened lazily and reopened
    after it breaks; requests in flight when it breaks are errors."""

    def __init__(self, dsp: str, stub: bidder_pb2_grpc.BidderServiceStub,
                 opened: Callable[[str], None] = lambda dsp: None):
        self.dsp = dsp
        self._stub = stub
        self._opened = opened
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._closed = False

    def send(self, item: bidder_pb2.BidStreamRequest, bid_round: BidRound, index: int) -> None:
        with self._lock:
            stream = self._stream
            if stream is None and not self._closed:
                stream = self._stream = self._open()
            if stream is not None:
                stream.pending[item.request.id] = (bid_round, index)
        if stream is None:
            bid_round.answer(index, self.dsp, _FAILED)
            return
        stream.requests.put(item)

    def forget(self, request_id: str) -> None:
        """Stop waiting for an answer to `request_id` (its tmax passed)."""
        with self._lock:
            if self._stream is not None:
                self._stream.pending.pop(request_id, None)

    def close(self, timeout_s: float = 1.0) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.end()
            stream.reader.join(timeout_s)
            stream.call.cancel()

    def _open(self) -> _Stream:
        stream = _Stream(self._stub)
        stream.reader = threading.Thread(target=self._read, args=(stream,), name=f"bids-{self.dsp}", daemon=True)
        stream.reader.start()
        self._opened(self.dsp)
        return stream

    def _read(self, stream: _Stream) -> None:
        """Hand every answer to the round waiting for it, until the stream ends."""
        try:
            for item in stream.call:
                with self._lock:
                    waiting = stream.pending.pop(item.request_id, None)
                if waiting is None:
                    continue  # tmax passed: the auction went on without it
                bid_round, index = waiting
                if item.status.code:
                    log.warning("bid request to %s refused: %s %s", self.dsp, item.status.field, item.status.message)
                    bid_round.answer(index, self.dsp, _FAILED)
                else:
                    bid_round.answer(index, self.dsp, Answer(ANSWERED, item.response))
        except grpc.RpcError as error:
            if not self._closed:
                log.warning("bid stream to %s broke: %s", self.dsp, error.code().name)
        except Exception:  # an answer that would not decode: the stream is no longer trusted
            log.exception("bid stream to %s failed", self.dsp)
        finally:
            with self._lock:
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
        bid_round = BidRound(bid_requests, tuple(self._streams), self._forget, self._clock)
        for index, bid_request in enumerate(bid_requests):
            # One message for every DSP: gRPC serializes it per stream, nothing mutates it.
            item = bidder_pb2.BidStreamRequest(request=bid_request)
            bid_round.sent(index)
            for stream in self._streams.values():
                stream.send(item, bid_round, index)
        return bid_round

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()

    def _forget(self, dsp: str, request_id: str) -> None:
        self._streams[dsp].forget(request_id)

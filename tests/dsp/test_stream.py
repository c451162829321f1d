"""BidStream's timing, without gRPC: each answer leaves when its own delay is
up, requests that arrive together are decided together, and the stream ends
when the caller stops sending or the call ends."""

from __future__ import annotations

import queue
import threading
import time

from services.dsp.stream import DueStream
from tests.conftest import wait_for

_END = object()


class Requests:
    """A request iterator the test feeds, as gRPC's is fed from the wire."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()

    def send(self, *items) -> None:
        for item in items:
            self._queue.put(item)

    def finish(self) -> None:
        self._queue.put(_END)

    def __iter__(self):
        while (item := self._queue.get()) is not _END:
            yield item


def delayed_by(delays_s: dict):
    """decide(): each request answered with itself, after delays_s[request]."""
    return lambda requests: [(delays_s[r], r) for r in requests]


def test_answers_leave_in_due_order_not_arrival_order():
    requests = Requests()
    requests.send("slow", "instant", "quick")
    requests.finish()
    stream = DueStream(requests, delayed_by({"slow": 0.15, "instant": 0.0, "quick": 0.05}))
    assert list(stream.answers()) == ["instant", "quick", "slow"]


def test_each_answer_waits_its_own_delay_from_arrival():
    requests = Requests()
    delays_s = {"a": 0.12, "b": 0.0, "c": 0.06}
    stream = DueStream(requests, delayed_by(delays_s))
    sent_at = time.monotonic()
    requests.send("a", "b", "c")
    requests.finish()
    for answer in stream.answers():
        waited_s = time.monotonic() - sent_at
        assert waited_s >= delays_s[answer] - 0.002
        assert waited_s < delays_s[answer] + 0.1  # released when due, not held for the slowest


def test_requests_that_arrive_while_deciding_are_decided_together():
    requests = Requests()
    batches = []

    def decide(batch):
        batches.append(list(batch))
        if len(batches) == 1:
            requests.send(1, 2, 3, 4)
            requests.finish()
            # The rest arrive while the first is decided.
            assert wait_for(lambda: len(stream._inbox) == 4, timeout_s=5.0, interval_s=0.001)
        return [(0.0, r) for r in batch]

    stream = DueStream(requests, decide)
    requests.send(0)
    assert sorted(stream.answers()) == [0, 1, 2, 3, 4]
    assert batches == [[0], [1, 2, 3, 4]]


def test_the_stream_ends_once_the_caller_stops_sending_and_every_answer_left():
    requests = Requests()
    requests.send("a")
    requests.finish()
    stream = DueStream(requests, delayed_by({"a": 0.05}))
    started = time.monotonic()
    assert list(stream.answers()) == ["a"]
    assert time.monotonic() - started < 1.0


def test_close_ends_the_stream_at_once_and_drops_what_is_held():
    requests = Requests()
    stream = DueStream(requests, delayed_by({"now": 0.0, "later": 30.0}))
    answers = stream.answers()
    requests.send("now", "later")
    assert next(answers) == "now"
    threading.Timer(0.05, stream.close).start()
    started = time.monotonic()
    assert list(answers) == []
    assert time.monotonic() - started < 1.0
    requests.finish()  # lets the reader go


def test_a_request_iterator_that_fails_ends_reading_and_held_answers_still_leave():
    def broken():
        yield "a"
        raise RuntimeError("the call was cancelled")

    stream = DueStream(broken(), delayed_by({"a": 0.02}))
    assert list(stream.answers()) == ["a"]


def test_one_reader_thread_however_many_requests_are_in_flight():
    requests = Requests()
    names = [f"r{i}" for i in range(200)]
    stream = DueStream(requests, delayed_by(dict.fromkeys(names, 0.1)), name="count-me")
    answers = stream.answers()
    requests.send(*names)
    first = next(answers)
    readers = [t for t in threading.enumerate() if t.name.startswith("count-me")]
    requests.finish()
    assert sorted([first, *answers]) == sorted(names)
    assert len(readers) == 1

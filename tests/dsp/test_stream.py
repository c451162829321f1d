"""BidStream's timing, without gRPC: each answer leaves when its own delay is
up, answers due together leave together, requests that arrive together are
decided together, and the stream ends when the caller stops sending or the
call ends."""

from __future__ import annotations

import asyncio
import time

from services.dsp.stream import DueStream

_END = object()


class Messages:
    """A stream of request messages the test feeds, as gRPC's is fed from the wire."""

    def __init__(self):
        self._queue: asyncio.Queue = asyncio.Queue()

    def send(self, *requests) -> None:
        """The requests in one message."""
        self._queue.put_nowait(list(requests))

    def finish(self) -> None:
        self._queue.put_nowait(_END)

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._queue.get()
        if message is _END:
            raise StopAsyncIteration
        return message


def delayed_by(delays_s: dict):
    """decide(): each request answered with itself, after delays_s[request]."""
    return lambda requests: [(delays_s[r], r) for r in requests]


async def collect(stream: DueStream) -> list[list]:
    return [due async for due in stream.answers()]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_answers_leave_in_due_order_not_arrival_order():
    async def scenario():
        messages = Messages()
        messages.send("slow", "instant", "quick")
        messages.finish()
        due = await collect(DueStream(messages, delayed_by({"slow": 0.15, "instant": 0.0, "quick": 0.05})))
        return [answer for group in due for answer in group]

    assert run(scenario()) == ["instant", "quick", "slow"]


def test_each_answer_waits_its_own_delay_from_arrival():
    delays_s = {"a": 0.12, "b": 0.0, "c": 0.06}

    async def scenario():
        messages = Messages()
        stream = DueStream(messages, delayed_by(delays_s))
        sent_at = time.monotonic()
        messages.send("a", "b", "c")
        messages.finish()
        return [(answer, time.monotonic() - sent_at) async for due in stream.answers() for answer in due]

    for answer, waited_s in run(scenario()):
        assert waited_s >= delays_s[answer] - 0.002
        assert waited_s < delays_s[answer] + 0.1  # released when due, not held for the slowest


def test_answers_due_together_leave_in_one_message():
    async def scenario():
        messages = Messages()
        messages.send(*(f"r{i}" for i in range(50)))
        messages.finish()
        return await collect(DueStream(messages, lambda requests: [(0.03, r) for r in requests]))

    due = run(scenario())
    assert due == [[f"r{i}" for i in range(50)]]


def test_requests_that_arrive_together_are_decided_together():
    batches = []

    async def scenario():
        messages = Messages()

        def decide(batch):
            batches.append(list(batch))
            return [(0.0, r) for r in batch]

        stream = DueStream(messages, decide)
        messages.send(0)
        messages.send(1, 2)  # two messages already waiting when the stream looks
        messages.send(3)
        messages.finish()
        return await collect(stream)

    answers = run(scenario())
    assert sorted(a for due in answers for a in due) == [0, 1, 2, 3]
    assert sorted(r for batch in batches for r in batch) == [0, 1, 2, 3]
    assert len(batches) < 4  # not one decision per request


def test_the_stream_ends_once_the_caller_stops_sending_and_every_answer_left():
    async def scenario():
        messages = Messages()
        messages.send("a")
        messages.finish()
        started = time.monotonic()
        due = await collect(DueStream(messages, delayed_by({"a": 0.05})))
        return due, time.monotonic() - started

    due, elapsed_s = run(scenario())
    assert due == [["a"]]
    assert elapsed_s < 1.0


def test_a_request_stream_that_fails_ends_reading_and_held_answers_still_leave():
    async def broken():
        yield ["a"]
        raise RuntimeError("the call was cancelled")

    assert run(collect(DueStream(broken(), delayed_by({"a": 0.02})))) == [["a"]]


def test_no_task_per_request_however_many_are_in_flight():
    names = [f"r{i}" for i in range(200)]

    async def scenario():
        messages = Messages()
        stream = DueStream(messages, delayed_by(dict.fromkeys(names, 0.1)))
        answers = stream.answers()
        before = len(asyncio.all_tasks())
        messages.send(*names)
        first = await answers.__anext__()
        in_flight = len(asyncio.all_tasks()) - before
        messages.finish()
        rest = [a async for due in answers for a in due]
        return [*first, *rest], in_flight

    answered, in_flight = run(scenario())
    assert sorted(answered) == sorted(names)
    assert in_flight <= 1  # the one reader

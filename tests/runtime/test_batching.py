"""Per-peer batching of server-to-server hops on the event loop: flushed at a
size or after a delay, never by a thread of its own."""

from __future__ import annotations

import asyncio
import threading
import time

from services.runtime.batching import Calls, PeerBatcher


class Recorder:
    def __init__(self):
        self.batches: list[tuple[str, list]] = []
        self.threads: set[int] = set()

    def __call__(self, peer, items):
        self.batches.append((peer, list(items)))
        self.threads.add(threading.get_ident())


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_a_full_batch_is_flushed_without_waiting_for_the_delay():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=3, max_delay_ms=10_000)
        for i in range(3):
            batcher.add("dsp-1", i)
        return list(sink.batches), batcher.pending()

    assert run(scenario()) == ([("dsp-1", [0, 1, 2])], 0)  # handed over within the add that filled it


def test_a_partial_batch_is_flushed_after_the_delay():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=100, max_delay_ms=30)
        began = time.monotonic()
        batcher.add("dsp-1", "a")
        assert sink.batches == []
        while not sink.batches:
            await asyncio.sleep(0.005)
        return time.monotonic() - began

    assert 0.025 <= run(scenario()) < 2.0
    assert sink.batches == [("dsp-1", ["a"])]
    assert sink.threads == {threading.get_ident()}  # on the loop's thread: no batcher thread


def test_the_delay_runs_from_the_oldest_item_of_the_batch():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=100, max_delay_ms=200)
        batcher.add("dsp-1", "a")
        await asyncio.sleep(0.1)
        batcher.add("dsp-1", "b")  # joins the batch; does not push its delay back
        await asyncio.sleep(0.15)
        return list(sink.batches)

    assert run(scenario()) == [("dsp-1", ["a", "b"])]


def test_items_past_a_full_batch_wait_for_the_next_one():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=4, max_delay_ms=30)
        batcher.add_many("dsp-1", range(10))
        full, waiting = list(sink.batches), batcher.pending()
        while batcher.pending():
            await asyncio.sleep(0.005)
        return full, waiting

    full, waiting = run(scenario())
    assert full == [("dsp-1", [0, 1, 2, 3]), ("dsp-1", [4, 5, 6, 7])]
    assert waiting == 2
    assert sink.batches[2:] == [("dsp-1", [8, 9])]  # after the delay


def test_each_peer_gets_only_its_own_items():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=100, max_delay_ms=10_000)
        batcher.add("dsp-1", 1)
        batcher.add("dsp-2", 2)
        batcher.add("dsp-1", 3)
        batcher.drain()

    run(scenario())
    assert sorted(sink.batches) == [("dsp-1", [1, 3]), ("dsp-2", [2])]


def test_drain_hands_every_pending_item_over_in_batches_of_at_most_max_items():
    sink = Recorder()

    async def scenario():
        batcher = PeerBatcher(sink, max_items=4, max_delay_ms=10_000)
        batcher.add_many("dsp-1", range(3))
        batcher.add_many("dsp-1", range(3, 10))
        batcher.drain()
        return batcher.pending()

    assert run(scenario()) == 0
    assert [len(items) for _peer, items in sink.batches] == [4, 4, 2]
    assert [i for _peer, items in sink.batches for i in items] == list(range(10))


def test_a_failing_flush_does_not_stop_other_peers_nor_the_caller():
    delivered = []

    def flush(peer, items):
        if peer == "broken":
            raise RuntimeError("peer down")
        delivered.append((peer, items))

    async def scenario():
        batcher = PeerBatcher(flush, max_items=1, max_delay_ms=10_000)
        batcher.add("broken", 1)  # flushed within the add: the error stays in the batcher
        batcher.add("dsp-1", 2)

    run(scenario())
    assert delivered == [("dsp-1", [2])]


def test_calls_still_unanswered_when_the_wait_ends_are_cancelled():
    answered, cancelled = [], []

    async def call(name: str, delay_s: float):
        try:
            await asyncio.sleep(delay_s)
            answered.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def scenario():
        calls = Calls()
        calls.start(call("quick", 0.01))
        calls.start(call("slow", 60.0))
        began = time.monotonic()
        await calls.wait(0.2)
        return time.monotonic() - began

    assert run(scenario()) < 2.0
    assert (answered, cancelled) == (["quick"], ["slow"])

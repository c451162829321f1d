"""Per-peer batching of server-to-server hops: flushed at a size or after a delay."""

from __future__ import annotations

import threading
import time

from services.runtime.batching import PeerBatcher


class Recorder:
    def __init__(self):
        self.batches: list[tuple[str, list]] = []
        self.flushed = threading.Event()

    def __call__(self, peer, items):
        self.batches.append((peer, list(items)))
        self.flushed.set()


def test_a_full_batch_is_flushed_without_waiting_for_the_delay():
    sink = Recorder()
    batcher = PeerBatcher(sink, max_items=3, max_delay_ms=10_000)
    batcher.start()
    try:
        for i in range(3):
            batcher.add("dsp-1", i)
        assert sink.flushed.wait(2.0)
        assert sink.batches == [("dsp-1", [0, 1, 2])]
    finally:
        batcher.close()


def test_a_partial_batch_is_flushed_after_the_delay():
    sink = Recorder()
    batcher = PeerBatcher(sink, max_items=100, max_delay_ms=30)
    batcher.start()
    try:
        began = time.monotonic()
        batcher.add("dsp-1", "a")
        assert sink.flushed.wait(2.0)
        assert time.monotonic() - began >= 0.025
        assert sink.batches == [("dsp-1", ["a"])]
    finally:
        batcher.close()


def test_each_peer_gets_only_its_own_items():
    sink = Recorder()
    batcher = PeerBatcher(sink, max_items=100, max_delay_ms=10_000)
    batcher.start()
    batcher.add("dsp-1", 1)
    batcher.add("dsp-2", 2)
    batcher.add("dsp-1", 3)
    batcher.close()
    assert sorted(sink.batches) == [("dsp-1", [1, 3]), ("dsp-2", [2])]


def test_close_hands_every_pending_item_over_in_batches_of_at_most_max_items():
    sink = Recorder()
    batcher = PeerBatcher(sink, max_items=4, max_delay_ms=10_000)
    batcher.add_many("dsp-1", range(10))  # never started: close flushes on the caller's thread
    batcher.close()
    assert [len(items) for _peer, items in sink.batches] == [4, 4, 2]
    assert batcher.pending() == 0


def test_a_failing_flush_does_not_stop_other_peers():
    delivered = []

    def flush(peer, items):
        if peer == "broken":
            raise RuntimeError("peer down")
        delivered.append((peer, items))

    batcher = PeerBatcher(flush, max_items=10, max_delay_ms=10_000)
    batcher.add("broken", 1)
    batcher.add("dsp-1", 2)
    batcher.close()
    assert delivered == [("dsp-1", [2])]

"""Batching server-to-server hops per peer: win and loss notices from the
exchange, billing and event notices from the ad server and the verifier.

Items for one peer collect until the batch reaches `max_items` or its oldest
item has waited `max_delay_ms`, whichever comes first, and are then handed to
`flush(peer, items)` on the batcher's own thread, so an RPC handler that adds
an item never waits for the hop. `flush` should start the call and return (a
future with a callback), not block on the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class PeerBatcher(Generic[Item]):
    def __init__(self, flush: Callable[[str, list[Item]], None], *, max_items: int = 256,
                 max_delay_ms: float = 20.0, name: str = "batcher", clock: Callable[[], float] = time.monotonic):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")
        self._flush = flush
        self._max_items = max_items
        self._max_delay_s = max_delay_ms / 1000.0
        self._clock = clock
        self._cond = threading.Condition()
        # peer -> (time its oldest item arrived, items)
        self._pending: dict[str, tuple[float, list[Item]]] = {}
        self._closing = False
        self._flushing = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, peer: str, item: Item) -> None:
        self.add_many(peer, (item,))

    def add_many(self, peer: str, items) -> None:
        with self._cond:
            batch = self._pending.get(peer)
            new = batch is None
            if new:
                batch = self._pending[peer] = (self._clock(), [])
            batch[1].extend(items)
            # Wake the flusher only when it has a new deadline to keep or a full batch.
            if new or len(batch[1]) >= self._max_items:
                self._cond.notify_all()

    def pending(self) -> int:
        """Items added and not yet handed to `flush`."""
        with self._cond:
            return sum(len(items) for _at, items in self._pending.values()) + self._flushing

    def close(self, timeout_s: float = 5.0) -> None:
        """Hand every pending item to `flush` now and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        else:  # never started: flush on the caller's thread
            self._drain(force=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    wait = self._next_wait()
                    if wait is not None and wait <= 0:
                        break
                    if self._closing:
                        break
                    self._cond.wait(timeout=wait if wait is not None else 0.5)
                closing = self._closing
            self._drain(force=closing)
            if closing:
                with self._cond:
                    if not self._pending:
                        return

    def _next_wait(self) -> float | None:
        """Seconds until the first batch is due (<= 0: one is due now)."""
        if not self._pending:
            return None
        now = self._clock()
        wait = min(started + self._max_delay_s - now for started, _items in self._pending.values())
        if any(len(items) >= self._max_items for _started, items in self._pending.values()):
            return 0.0
        return wait

    def _drain(self, force: bool) -> None:
        now = self._clock()
        with self._cond:
            due = [(peer, items) for peer, (started, items) in self._pending.items()
                   if force or len(items) >= self._max_items or started + self._max_delay_s <= now]
            for peer, _items in due:
                del self._pending[peer]
            self._flushing += sum(len(items) for _peer, items in due)
        for peer, items in due:
            for start in range(0, len(items), self._max_items):
                chunk = items[start:start + self._max_items]
                try:
                    self._flush(peer, chunk)
                except Exception:  # one peer's failure must not stop the others' batches
                    log.exception("flushing %d items to %s failed", len(chunk), peer)
                finally:
                    with self._cond:
                        self._flushing -= len(chunk)

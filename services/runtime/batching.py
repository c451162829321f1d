"""Batching server-to-server hops per peer: win and loss notices from the
exchange, billing and event notices from the ad server and the verifier.

Items for one peer collect until the batch reaches `max_items` or its oldest
item has waited `max_delay_ms`, whichever comes first, and are then handed to
`flush(peer, items)`. Everything runs on the role's event loop: an RPC handler
adds items with a plain call, a full batch is handed over within that call
and a partial one by a loop timer, so the handler never waits for the hop and
no thread is involved. `flush` must not block: it starts the call (a task,
see `Calls`) and returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class _Batch(Generic[Item]):
    """One peer's items and the timer that hands them over at the delay."""

    __slots__ = ("items", "timer")

    def __init__(self, timer: asyncio.TimerHandle):
        self.items: list[Item] = []
        self.timer = timer


class PeerBatcher(Generic[Item]):
    """Collects items per peer on the loop; `add`/`add_many` are called from
    the loop (a handler, a callback) and never wait."""

    def __init__(self, flush: Callable[[str, list[Item]], None], *, max_items: int = 256,
                 max_delay_ms: float = 20.0):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")
        self._flush = flush
        self._max_items = max_items
        self._max_delay_s = max_delay_ms / 1000.0
        self._batches: dict[str, _Batch[Item]] = {}

    def add(self, peer: str, item: Item) -> None:
        self.add_many(peer, (item,))

    def add_many(self, peer: str, items: Iterable[Item]) -> None:
        batch = self._batches.get(peer)
        if batch is None:
            # The delay runs from the batch's oldest item: this one.
            timer = asyncio.get_running_loop().call_later(self._max_delay_s, self._hand_over, peer, True)
            batch = self._batches[peer] = _Batch(timer)
        batch.items.extend(items)
        if len(batch.items) >= self._max_items:
            self._hand_over(peer, everything=False)

    def pending(self) -> int:
        """Items added and not yet handed to `flush`."""
        return sum(len(batch.items) for batch in self._batches.values())

    def drain(self) -> None:
        """Hand every pending item to `flush` now, in batches of at most
        `max_items` (at shutdown)."""
        for peer in list(self._batches):
            self._hand_over(peer, everything=True)

    def _hand_over(self, peer: str, everything: bool) -> None:
        """Flush the peer's full batches, and its partial one too when
        `everything` (its delay is up, or shutdown). A partial remainder left
        behind starts a new batch, its delay running from now."""
        batch = self._batches.pop(peer)
        batch.timer.cancel()
        items = batch.items
        cut = len(items) if everything else len(items) - len(items) % self._max_items
        for start in range(0, cut, self._max_items):
            chunk = items[start:start + self._max_items]
            try:
                self._flush(peer, chunk)
            except Exception:  # one peer's failure must not stop the others' batches, nor the handler
                log.exception("flushing %d items to %s failed", len(chunk), peer)
        if cut < len(items):
            self.add_many(peer, items[cut:])


class Calls:
    """The calls a batcher's flushes started, as tasks on the loop: held
    until they finish (the loop keeps only weak references to tasks), so
    shutdown can wait for their answers."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def start(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for every call in flight, then cancel those
        still waiting for an answer; returns once all of them have ended."""
        if not self._tasks:
            return
        _answered, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch call failed unexpectedly", exc_info=task.exception())

"""Per impression key, what a role decided: the record reconciliation joins
across the chain to attribute every gap to its cause.

Bounded: past `capacity` keys the oldest records are dropped and the journal
says so (`truncated`), so a long-running role never grows without limit. The
durable ledger will append these same records before acknowledging.
"""

from __future__ import annotations

import threading
from collections import deque
import time
from collections.abc import Callable, Iterator

from adchain.v1 import counts_pb2

DEFAULT_CAPACITY = 2_000_000
PAGE_SIZE = 2_000


class Journal:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time):
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, tuple[str, str, str, str, int]] = {}
        # The keys in arrival order, for dropping the oldest: a dict's first
        # key after many deletions from its front is found only by scanning
        # past every deleted slot, which a full journal would do per record.
        self._order: deque[str] = deque()
        self._truncated = False

    def record(self, impression_key: str, outcome: str, *, reason: str = "", campaign_id: str = "",
               seat: str = "") -> None:
        """Keep the first verdict for a key (callers dedupe before counting)."""
        with self._lock:
            if impression_key in self._records:
                return
            if len(self._records) >= self._capacity:
                del self._records[self._order.popleft()]
                self._truncated = True
            self._records[impression_key] = (outcome, reason, campaign_id, seat, int(self._clock() * 1000))
            self._order.append(impression_key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def pages(self, size: int = PAGE_SIZE) -> Iterator[counts_pb2.ImpressionRecords]:
        """The records in arrival order, `size` at a time (a snapshot)."""
        with self._lock:
            items = list(self._records.items())
            truncated = self._truncated
        for start in range(0, max(len(items), 1), size):
            yield counts_pb2.ImpressionRecords(
                records=[counts_pb2.ImpressionRecord(impression_key=k, outcome=o, reason=r, campaign_id=c, seat=s,
                                                     at_ms=t)
                         for k, (o, r, c, s, t) in items[start:start + size]],
                truncated=truncated,
            )

"""At most once per key: the memory behind every stage's dedupe.

Keys expire when the event they guard can no longer be counted (its token or
bid expired), so memory stays bounded by the traffic of one lifetime. A shared
store (Redis) can replace this behind the same methods when replicas must
agree.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Any


class ExpiringMap:
    """Keys (with optional values) remembered until their expiry time."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Any]] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, key: str, expires_at_s: float, value: Any = None) -> bool:
        """Remember `key` until `expires_at_s`; False (and no change) if it is
        already remembered."""
        with self._lock:
            self._prune(self._clock())
            if key in self._entries:
                return False
            self._entries[key] = (expires_at_s, value)
            heapq.heappush(self._heap, (expires_at_s, key))
            return True

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < self._clock():
                return default
            return entry[1]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[0] >= self._clock()

    def __len__(self) -> int:
        with self._lock:
            self._prune(self._clock())
            return len(self._entries)

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            expires_at, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires_at:
                del self._entries[key]

"""At most once per key: the memory behind every stage's dedupe.

Keys expire when the event they guard can no longer be counted (its token or
bid expired), so memory stays bounded by the traffic of one lifetime. A shared
store (Redis) can replace this behind the same methods when replicas must
agree.

Millions of keys live here at full scale, so an entry is kept small: a key
without a value maps to its expiry time alone, and expiry is tracked in
one-second buckets (a list of keys per second) instead of a heap entry per
key. A key is expired the moment its own time passes (every lookup checks
it); buckets only decide when its memory is given back.

With a ledger, `DurableKeys` keeps the same keys in its `keys` table, one
row per (space, key): taking a key is one upsert that succeeds only when the
key is free or expired, so idempotence is the store's constraint and survives
a restart, and memory does not grow with traffic.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from services.runtime.store import LedgerStore


class ExpiringMap:
    """Keys (with optional values) remembered until their expiry time."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        # key -> expiry, or (expiry, value) for a key with a value
        self._entries: dict[str, float | tuple[float, Any]] = {}
        # whole second -> keys expiring within it, and a heap of those seconds
        self._buckets: dict[int, list[str]] = {}
        self._seconds: list[int] = []
        self._next_prune = -math.inf

    def add(self, key: str, expires_at_s: float, value: Any = None) -> bool:
        """Remember `key` until `expires_at_s`; False (and no change) if it is
        already remembered."""
        now = self._clock()
        with self._lock:
            if now >= self._next_prune:
                self._prune(now)
            entry = self._entries.get(key)
            if entry is not None and _expiry(entry) >= now:
                return False
            self._entries[key] = float(expires_at_s) if value is None else (expires_at_s, value)
            second = math.floor(expires_at_s)
            bucket = self._buckets.get(second)
            if bucket is None:
                bucket = self._buckets[second] = []
                heapq.heappush(self._seconds, second)
                self._next_prune = min(self._next_prune, second + 1)
            bucket.append(key)
            return True

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or _expiry(entry) < self._clock():
            return default
        return None if type(entry) is float else entry[1]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
        return entry is not None and _expiry(entry) >= self._clock()

    def __len__(self) -> int:
        now = self._clock()
        with self._lock:
            self._prune(now)
            return sum(1 for entry in self._entries.values() if _expiry(entry) >= now)

    def _prune(self, now: float) -> None:
        """Forget the keys of every second that has wholly passed."""
        seconds, buckets, entries = self._seconds, self._buckets, self._entries
        while seconds and seconds[0] + 1 <= now:
            for key in buckets.pop(heapq.heappop(seconds)):
                entry = entries.get(key)
                if entry is not None and _expiry(entry) < now:  # not added again since, with a later expiry
                    del entries[key]
        self._next_prune = seconds[0] + 1 if seconds else math.inf


def _expiry(entry: float | tuple[float, Any]) -> float:
    return entry if type(entry) is float else entry[0]


class DurableKeys:
    """ExpiringMap's interface on a ledger's `keys` table, for one `space`
    (what the keys guard: "win", "billing", ...). A value is a string, or with
    `pair` a (string, integer) pair; None for a key alone."""

    def __init__(self, store: LedgerStore, space: str, clock: Callable[[], float] = time.time,
                 pair: bool = False):
        self._store = store
        self._space = space
        self._clock = clock
        self._pair = pair

    def add(self, key: str, expires_at_s: float, value: Any = None) -> bool:
        """Take `key` until `expires_at_s`; False (and no change) if it is
        already taken and unexpired."""
        if value is None:
            text = number = None
        elif self._pair:
            text, number = value
        else:
            text, number = value, None
        cursor = self._store.execute(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?) ON CONFLICT (space, key) DO UPDATE SET "
            "expires_at = excluded.expires_at, text = excluded.text, number = excluded.number "
            "WHERE keys.expires_at < ?",
            (self._space, key, float(expires_at_s), text, number, self._clock()))
        return cursor.rowcount == 1

    def get(self, key: str, default: Any = None) -> Any:
        row = self._store.query_one("SELECT expires_at, text, number FROM keys WHERE space = ? AND key = ?",
                                    (self._space, key))
        if row is None or row[0] < self._clock():
            return default
        return (row[1], row[2]) if self._pair else row[1]

    def __contains__(self, key: str) -> bool:
        row = self._store.query_one("SELECT expires_at FROM keys WHERE space = ? AND key = ?", (self._space, key))
        return row is not None and row[0] >= self._clock()

"""Per impression key, what a role decided: the record reconciliation joins
across the chain to attribute every gap to its cause.

Two kinds, one interface. `Journal` is held in memory (a role without a
ledger): bounded, so past `capacity` keys the oldest records are dropped and
the journal says so (`truncated`). `DurableJournal` is the ledger's journal
table: one row per key, the key its primary key (a second verdict for a key
is refused by the store), never truncated, and read in pages from a snapshot
of its own, in key order, so a journal of millions of keys is streamed, never
loaded.
"""

from __future__ import annotations

import threading
from collections import deque
import time
from collections.abc import Callable, Iterator

from adchain.v1 import counts_pb2
from services.runtime.store import LedgerStore, scan

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
        """The records in key order, `size` at a time (a snapshot): every
        journal streams in key order, so reconciliation merges them."""
        with self._lock:
            items = sorted(self._records.items())
            truncated = self._truncated
        for start in range(0, max(len(items), 1), size):
            yield counts_pb2.ImpressionRecords(
                records=[counts_pb2.ImpressionRecord(impression_key=k, outcome=o, reason=r, campaign_id=c, seat=s,
                                                     at_ms=t)
                         for k, (o, r, c, s, t) in items[start:start + size]],
                truncated=truncated,
            )


class DurableJournal:
    """The first verdict per impression key, in the role's ledger."""

    def __init__(self, store: LedgerStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    def record(self, impression_key: str, outcome: str, *, reason: str = "", campaign_id: str = "",
               seat: str = "", viewer: str = "") -> bool:
        """Keep the first verdict for a key: True when this one is it (the
        key was free), False when the key already has one."""
        cursor = self._store.execute(
            "INSERT OR IGNORE INTO journal VALUES (?, ?, ?, ?, ?, ?, ?)",
            (impression_key, outcome, reason, campaign_id, seat, int(self._clock() * 1000), viewer))
        return cursor.rowcount == 1

    def record_many(self, records) -> None:
        """(key, outcome, reason, campaign, seat) records, each kept if its key is free."""
        at_ms = int(self._clock() * 1000)
        self._store.executemany("INSERT OR IGNORE INTO journal VALUES (?, ?, ?, ?, ?, ?, '')",
                                [(*record, at_ms) for record in records])

    def outcome(self, impression_key: str) -> str | None:
        row = self._store.query_one("SELECT outcome FROM journal WHERE key = ?", (impression_key,))
        return None if row is None else row[0]

    def __len__(self) -> int:
        return self._store.query_one("SELECT count(*) FROM journal")[0]

    def pages(self, size: int = PAGE_SIZE) -> Iterator[counts_pb2.ImpressionRecords]:
        """Every record in key order, `size` at a time, from a snapshot of the
        ledger as committed when the first page is read."""
        db = self._store.reader()
        try:
            db.execute("BEGIN")  # one snapshot for every page
            empty = True
            for rows in scan(db, "journal", "key, outcome, reason, campaign, seat, at_ms", "key", size):
                empty = False
                yield counts_pb2.ImpressionRecords(records=[
                    counts_pb2.ImpressionRecord(impression_key=k, outcome=o, reason=r, campaign_id=c, seat=s,
                                                at_ms=t) for k, o, r, c, s, t in rows])
            if empty:
                yield counts_pb2.ImpressionRecords()
        finally:
            db.close()

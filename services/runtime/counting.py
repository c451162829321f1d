"""The one place a role's counts live.

A role counts through its `Tally`: each `add` is one counted event (or a batch
of them). `snapshot` answers GetCounts. With a ledger (services/runtime/store.py)
an add is held back until the ledger commits: written in the committing
transaction as one upsert per (name, reason, campaign), and visible in
snapshots once that transaction is durable. A tally opened on a ledger starts
from the counts it holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from adchain.v1 import counts_pb2
from services.runtime.store import LedgerStore

Key = tuple[str, str, str]  # (name, reason, campaign)


class Tally:
    """Thread-safe counters keyed by (name, reason, campaign)."""

    def __init__(self, role: str, instance: str, clock: Callable[[], float] = time.time,
                 store: LedgerStore | None = None):
        self.role = role
        self.instance = instance
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[Key, int] = {}
        self._store = store
        # Adds not yet committed to the ledger (with one).
        self._pending: dict[Key, int] = {}
        # How many notices the role owes its peers (set by a role that sends them).
        self.notices_owed: Callable[[], int] = lambda: 0
        if store is not None:
            self.reload()
            store.add_flusher(self._flush)
            store.on_failure(self._drop_pending)

    def _drop_pending(self, _why: str) -> None:
        """The ledger rolled back: adds not yet committed never happened."""
        with self._lock:
            self._pending = {}

    def add(self, name: str, n: int = 1, *, reason: str = "", campaign: str = "") -> None:
        key = (name, reason, campaign)
        values = self._values if self._store is None else self._pending
        with self._lock:
            values[key] = values.get(key, 0) + n

    def reload(self) -> None:
        """The counts as the ledger holds them (at start, and after a failed write)."""
        rows = self._store.query("SELECT name, reason, campaign, value FROM counts")
        with self._lock:
            declared = {key: 0 for key, value in self._values.items() if not value}
            self._values = {**declared, **{(n, r, c): v for n, r, c, v in rows}}
            self._pending = {}

    def _flush(self, store: LedgerStore) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        store.executemany("INSERT INTO counts VALUES (?, ?, ?, ?) ON CONFLICT (name, reason, campaign) "
                          "DO UPDATE SET value = value + excluded.value",
                          [(n, r, c, v) for (n, r, c), v in pending.items()])

        def apply() -> None:
            with self._lock:
                values = self._values
                for key, n in pending.items():
                    values[key] = values.get(key, 0) + n

        store.on_commit(apply)

    def declare(self, names: Iterable[str]) -> None:
        """Make `names` appear at zero in snapshots before anything is counted."""
        with self._lock:
            for name in names:
                self._values.setdefault((name, "", ""), 0)

    def get(self, name: str, *, reason: str = "", campaign: str = "") -> int:
        with self._lock:
            return self._values.get((name, reason, campaign), 0)

    def snapshot(self) -> counts_pb2.CountsSnapshot:
        with self._lock:
            items = sorted(self._values.items())
        return counts_pb2.CountsSnapshot(
            role=self.role,
            instance=self.instance,
            counts=[counts_pb2.Count(name=n, reason=r, campaign=c, value=v) for (n, r, c), v in items],
            taken_at_ms=int(self._clock() * 1000),
            notices_owed=self.notices_owed(),
        )


def total(snapshot: counts_pb2.CountsSnapshot, name: str, *, reason: str | None = None) -> int:
    """Sum of a count across campaigns, and across reasons unless one is named.

    Counts are kept at their finest grain (per reason, per campaign), so a
    total is always a sum and never double counts."""
    return sum(c.value for c in snapshot.counts if c.name == name and (reason is None or c.reason == reason))

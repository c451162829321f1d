"""The one place a role's counts live.

A role counts through its `Tally`: each `add` is one counted event (or a batch
of them). `snapshot` answers GetCounts. The future durable ledger hooks in
here, recording each counted event before the RPC that caused it is
acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from adchain.v1 import counts_pb2

Key = tuple[str, str, str]  # (name, reason, campaign)


class Tally:
    """Thread-safe counters keyed by (name, reason, campaign)."""

    def __init__(self, role: str, instance: str, clock: Callable[[], float] = time.time):
        self.role = role
        self.instance = instance
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[Key, int] = {}

    def add(self, name: str, n: int = 1, *, reason: str = "", campaign: str = "") -> None:
        key = (name, reason, campaign)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n

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
        )


def total(snapshot: counts_pb2.CountsSnapshot, name: str, *, reason: str | None = None) -> int:
    """Sum of a count across campaigns, and across reasons unless one is named.

    Counts are kept at their finest grain (per reason, per campaign), so a
    total is always a sum and never double counts."""
    return sum(c.value for c in snapshot.counts if c.name == name and (reason is None or c.reason == reason))

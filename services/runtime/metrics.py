"""Metrics shared by every role: the impression family that makes the chain's
discrepancies visible, and per-RPC request counts and latency.

Label values come from closed lists (roles, stages, RPC method names, gRPC
codes); every combination a role can produce is created at zero at start-up
so rates and ratios never miss a series. No id is ever a label value.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

ROLES = ("dsp", "ssp", "adserver", "verifier")

# Where each role counts an impression in the ad call chain.
STAGES_BY_ROLE = {
    "dsp": ("won",),
    "ssp": ("returned",),
    "adserver": ("rendered",),
    "verifier": ("measurable", "viewable"),
}
STAGES = ("won", "returned", "rendered", "measurable", "viewable")

# gRPC codes a role's RPCs end with in normal operation; others appear on use.
COMMON_CODES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL")

# Codes a batch item's own status takes (google.rpc.Code names).
ITEM_CODES = ("OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "INTERNAL")
_ITEM_CODE_NAMES = {0: "OK", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 13: "INTERNAL"}

# Latency buckets for RPCs that sit on an ad request's critical path:
# sub-millisecond to the seconds an abandoned caller gives up at.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
)


def labelled_counters(name: str, documentation: str, labels: Mapping[str, Sequence[str]],
                      registry: CollectorRegistry) -> dict:
    """A Counter family whose labels take only the given values, every combination
    created at zero, as {value: child} for one label and {(value, ...): child} for more."""
    family = Counter(name, documentation, list(labels), registry=registry)
    return {values if len(labels) > 1 else values[0]: family.labels(*values)
            for values in itertools.product(*labels.values())}


class ImpressionMetrics:
    """`adchain_impressions_total{role, stage}`: one family across the chain."""

    def __init__(self, role: str, registry: CollectorRegistry):
        self._counter = Counter(
            "adchain_impressions",
            "Impressions counted, by the role that counted them and the chain stage it counts at.",
            ["role", "stage"],
            registry=registry,
        )
        self._by_stage = {stage: self._counter.labels(role=role, stage=stage) for stage in STAGES_BY_ROLE[role]}

    def record(self, stage: str, n: int = 1) -> None:
        self._by_stage[stage].inc(n)


class RpcMetrics:
    """Requests by method and status code, and their latency, for one role."""

    def __init__(self, role: str, methods: tuple[str, ...], registry: CollectorRegistry,
                 batch_methods: tuple[str, ...] = ()):
        self._role = role
        self._requests = Counter(
            "adchain_rpc_requests",
            "gRPC requests served, by method and status code.",
            ["role", "method", "code"],
            registry=registry,
        )
        self._duration = Histogram(
            "adchain_rpc_duration_seconds",
            "Time to serve a gRPC request, by method.",
            ["role", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._durations = {m: self._duration.labels(role=role, method=m) for m in methods}
        self._counts = {(m, c): self._requests.labels(role=role, method=m, code=c) for m in methods for c in COMMON_CODES}
        self._items = Counter(
            "adchain_rpc_items",
            "Items of batch and stream RPCs served, by method and the item's own status code.",
            ["role", "method", "code"],
            registry=registry,
        )
        self._item_counts = {(m, c): self._items.labels(role=role, method=m, code=c)
                             for m in batch_methods for c in ITEM_CODES}
        self._batch_methods = frozenset(batch_methods)

    def is_batch(self, method: str) -> bool:
        """Whether `method` answers per item (its results carry their own status)."""
        return method in self._batch_methods

    def observe(self, method: str, code: str, seconds: float) -> None:
        child = self._counts.get((method, code))
        if child is None:
            child = self._counts[(method, code)] = self._requests.labels(role=self._role, method=method, code=code)
        child.inc()
        duration = self._durations.get(method)
        if duration is not None:
            duration.observe(seconds)

    def observe_items(self, method: str, results) -> None:
        """Count a batch's items (each has a `status`) by their own code, one
        inc(n) per code."""
        by_code: dict[int, int] = {}
        for result in results:
            code = result.status.code
            by_code[code] = by_code.get(code, 0) + 1
        for code, n in by_code.items():
            name = _ITEM_CODE_NAMES.get(code, "UNKNOWN")
            child = self._item_counts.get((method, name))
            if child is None:
                child = self._item_counts[(method, name)] = self._items.labels(role=self._role, method=method,
                                                                               code=name)
            child.inc(n)


# CPM prices in micros of the currency: $0.25 to $50 CPM.
PRICE_BUCKETS_MICROS = (
    250_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 6_000_000, 8_000_000,
    10_000_000, 15_000_000, 20_000_000, 30_000_000, 50_000_000,
)

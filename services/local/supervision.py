"""What keeps the local chain up: how long to wait before starting a role
again after its process died, and the supervisor's own metrics, restarts and
liveness per instance, so a crash loop shows on a dashboard instead of only in
a log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge

from services.runtime.metrics import labelled_counters

# 2 ** 64 times any sane first delay is past every cap; a longer crash loop
# must not overflow the float.
_MAX_DOUBLINGS = 64


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Restarts in a row wait `initial_s`, then twice as long each time, never
    more than `max_s`: a role that cannot start (a port taken, a bad setting)
    is retried without spinning, one that crashed once is back at once. A
    role that stayed up for `reset_after_s` starts the count over."""

    initial_s: float = 0.5
    max_s: float = 10.0
    reset_after_s: float = 30.0

    def delay_s(self, attempt: int) -> float:
        """The wait before the `attempt`-th restart in a row (1, 2, ...)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))

    def next_attempt(self, previous: int, up_s: float) -> int:
        """The attempt an exit after `up_s` seconds of serving leads to: the
        next one in a row, or the first again after a long enough run."""
        return 1 if up_s >= self.reset_after_s else previous + 1


class ChainMetrics:
    """`adchain_chain_role_restarts_total{instance}` and
    `adchain_chain_role_up{instance}`, every instance of the chain created at
    zero so a rate or an absent series never hides a role."""

    def __init__(self, instances: Sequence[str], registry: CollectorRegistry):
        self.registry = registry
        self._restarts = labelled_counters(
            "adchain_chain_role_restarts",
            "Times the supervisor started an instance's process again after it exited on its own.",
            {"instance": tuple(instances)}, registry)
        up = Gauge("adchain_chain_role_up", "1 while the instance's process runs and answers SERVING, else 0.",
                   ["instance"], registry=registry)
        self._up = {name: up.labels(instance=name) for name in instances}

    def record_restart(self, instance: str) -> None:
        self._restarts[instance].inc()

    def record_up(self, instance: str, up: bool) -> None:
        self._up[instance].set(1 if up else 0)

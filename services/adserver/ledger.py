"""Everything the ad server counts: rendered impressions (begin-to-render,
at most once per impression key), duplicates, late renders, rejected tokens,
clicks, and the billing notices it sent."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from services.runtime.counting import Tally
from services.runtime.metrics import ImpressionMetrics
from services.runtime.tokens import TOKEN_REJECT_REASONS

BILLING_OUTCOMES = ("sent", "retried", "failed")
EVENTS = ("impression", "click")


class AdServerLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float]):
        self.tally = Tally("adserver", instance, clock)
        self.tally.declare(("rendered", "duplicates", "late", "rejected_tokens", "clicks", "billing_notices"))
        self._impressions = ImpressionMetrics("adserver", registry)
        dup = Counter("adchain_adserver_duplicates", "Events for an impression already counted, by event.",
                      ["event"], registry=registry)
        self._duplicates = {e: dup.labels(event=e) for e in EVENTS}
        late = Counter("adchain_adserver_late_events", "Events after their token expired, by event; never billed.",
                       ["event"], registry=registry)
        self._late = {e: late.labels(event=e) for e in EVENTS}
        rejected = Counter("adchain_adserver_rejected_tokens", "Events with a token that failed verification, by reason.",
                           ["reason"], registry=registry)
        self._rejected = {r: rejected.labels(reason=r) for r in TOKEN_REJECT_REASONS}
        self._clicks = Counter("adchain_adserver_clicks", "Clicks counted.", registry=registry)
        billing = Counter("adchain_adserver_billing_notices", "Billing notices to DSPs, by outcome.", ["outcome"],
                          registry=registry)
        self._billing = {o: billing.labels(outcome=o) for o in BILLING_OUTCOMES}

    def record_rendered(self, seat: str, campaign_id: str, price_micros: int) -> None:
        self.tally.add("rendered", reason=seat, campaign=campaign_id)
        # Billable value at the ad server's count: CPM micros summed; spend is /1000.
        self.tally.add("billable_cpm_micros", price_micros, reason=seat, campaign=campaign_id)
        self._impressions.record("rendered")

    def record_duplicate(self, event: str) -> None:
        self.tally.add("duplicates", reason=event)
        self._duplicates[event].inc()

    def record_late(self, event: str) -> None:
        self.tally.add("late", reason=event)
        self._late[event].inc()

    def record_rejected_token(self, reason: str) -> None:
        self.tally.add("rejected_tokens", reason=reason)
        self._rejected[reason].inc()

    def record_click(self, campaign_id: str) -> None:
        self.tally.add("clicks", campaign=campaign_id)
        self._clicks.inc()

    def record_billing(self, outcome: str) -> None:
        self.tally.add("billing_notices", reason=outcome)
        self._billing[outcome].inc()

"""Everything the DSP counts, in one place: bid requests, bids, no-bids, wins
(on the win notice), losses, and billed impressions with their spend (on the
billing notice, OpenRTB 2.6 §7.2: only billing lets a buyer increment spend),
and the viewable, click and conversion events non-CPM campaigns pay on.

Spend, by pricing model (pricing_core accrues it against the budget):
- CPM: a billed impression at a clearing CPM of P micros costs P/1000 micros,
  rounded half away from zero once per impression (pricing_core.money);
- vCPM: a viewable impression costs the campaign's vCPM/1000, rounded the same way;
- CPC: a click costs the campaign's CPC bid.
The cost the ledger reports is the cost it hands pricing_core, so counts and
budgets agree to the micro.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pricing_core.engine import BILLED_IMPRESSION, CLICK, VIEWABLE, PricingEngine
from pricing_core.money import impression_cost_micros
from services.dsp.bidding import NO_BID_REASONS
from services.dsp.settings import CampaignSettings
from services.runtime.counting import Tally
from services.runtime.dedupe import ExpiringMap
from services.runtime.journal import Journal
from services.runtime.metrics import PRICE_BUCKETS_MICROS, ImpressionMetrics, labelled_counters

# How long an impression key is remembered for billing idempotence.
BILLING_DEDUPE_S = 24 * 3600.0


class DspLedger:
    def __init__(self, instance: str, engine: PricingEngine, campaigns: Sequence[CampaignSettings],
                 registry: CollectorRegistry, clock: Callable[[], float], max_campaign_labels: int = 50):
        self.tally = Tally("dsp", instance, clock)
        self.tally.declare(("bid_requests", "bids", "no_bids", "won", "losses", "billed", "spend_micros",
                            "viewable", "clicks", "conversions"))
        self.journal = Journal(clock=clock)
        self._clock = clock
        self._engine = engine
        self._campaigns = {c.id: c for c in campaigns}
        self._events = ExpiringMap(clock)
        self._wins = ExpiringMap(clock)
        self._billings = ExpiringMap(clock)
        self._impressions = ImpressionMetrics("dsp", registry)
        self._bid_requests = Counter("adchain_dsp_bid_requests", "OpenRTB bid requests received.", registry=registry)
        self._bids = Counter("adchain_dsp_bids", "Bids made.", registry=registry)
        by_reason = labelled_counters("adchain_dsp_no_bids", "Bid requests answered with a no-bid, by reason.",
                                      {"reason": tuple(NO_BID_REASONS.values())}, registry)
        self._no_bids = {code: by_reason[name] for code, name in NO_BID_REASONS.items()}
        self._losses = Counter("adchain_dsp_losses", "Loss notices received.", registry=registry)
        self._billed = Counter("adchain_dsp_billed_impressions", "Impressions billed (billing notices counted).",
                               registry=registry)
        self._spend = Counter("adchain_dsp_spend_micros",
                              "Spend accrued (billed impressions, viewable impressions or clicks, by pricing model), "
                              "in micros of the currency.", registry=registry)
        self._bid_price = Histogram("adchain_dsp_bid_cpm_micros", "Bids made, by CPM-equivalent price in micros.",
                                    buckets=PRICE_BUCKETS_MICROS, registry=registry)
        # Cardinality rule: a campaign label only for a bounded campaign set.
        ids = engine.table.ids
        self._campaign_spend = {}
        if len(ids) <= max_campaign_labels:
            self._campaign_spend = labelled_counters(
                "adchain_dsp_campaign_spend_micros",
                "Spend accrued per campaign, in micros (exported while campaigns are few).", {"campaign": ids},
                registry)
        exhausted = Gauge("adchain_dsp_budget_exhausted_campaigns", "Campaigns whose total or daily budget is spent.",
                          registry=registry)
        exhausted.set_function(engine.exhausted_campaigns)

    def record_bid_request(self) -> None:
        self.tally.add("bid_requests")
        self._bid_requests.inc()

    def record_bid(self, campaign_id: str, bid_micros: int) -> None:
        self.tally.add("bids", campaign=campaign_id)
        self._bids.inc()
        self._bid_price.observe(bid_micros)

    def record_no_bid(self, nbr: int) -> None:
        self.tally.add("no_bids", reason=NO_BID_REASONS[nbr])
        self._no_bids[nbr].inc()

    def record_win(self, bid_id: str, impression_key: str, campaign_id: str) -> bool:
        """Count a won impression once per bid; False for a repeated notice."""
        if not self._wins.add(bid_id, self._clock() + BILLING_DEDUPE_S):
            return False
        self.tally.add("won", campaign=campaign_id)
        self.journal.record(impression_key, "won", campaign_id=campaign_id)
        self._impressions.record("won")
        return True

    def record_loss(self, campaign_id: str, loss_code: int) -> None:
        self.tally.add("losses", reason=str(loss_code), campaign=campaign_id)
        self._losses.inc()

    def record_billing(self, impression_key: str, campaign_id: str, campaign_index: int, price_micros: int,
                       user_key_hash: int | None) -> bool:
        """Accrue one billed impression at a clearing CPM of `price_micros`
        through pricing_core (budget, pacing, frequency); idempotent per
        impression key."""
        if not self._billings.add(impression_key, self._clock() + BILLING_DEDUPE_S):
            return False
        cost = impression_cost_micros(price_micros) if self._model(campaign_id) == "cpm" else 0
        self._engine.accrue(campaign_index, cost, BILLED_IMPRESSION,
                            user_key_hash=user_key_hash if user_key_hash else None)
        self.tally.add("billed", campaign=campaign_id)
        self._billed.inc()
        self._add_spend(campaign_id, cost)
        return True

    def record_event(self, kind: str, impression_key: str, campaign_id: str, campaign_index: int) -> bool:
        """Count a viewable, click or conversion once per impression, and
        accrue what the campaign's pricing model pays on it."""
        if not self._events.add(f"{impression_key}/{kind}", self._clock() + BILLING_DEDUPE_S):
            return False
        campaign = self._campaigns[campaign_id]
        tally_name = {"viewable": "viewable", "click": "clicks", "conversion": "conversions"}[kind]
        self.tally.add(tally_name, campaign=campaign_id)
        if kind == "viewable":
            cost = impression_cost_micros(campaign.bid_micros) if campaign.pricing_model == "vcpm" else 0
            self._engine.accrue(campaign_index, cost, VIEWABLE)
        elif kind == "click":
            cost = campaign.bid_micros if campaign.pricing_model == "cpc" else 0
            self._engine.accrue(campaign_index, cost, CLICK)
        else:
            cost = 0  # conversions are reported (cost per acquisition), not priced
        self._add_spend(campaign_id, cost)
        return True

    def _model(self, campaign_id: str) -> str:
        return self._campaigns[campaign_id].pricing_model

    def _add_spend(self, campaign_id: str, cost: int) -> None:
        if not cost:
            return
        self.tally.add("spend_micros", cost, campaign=campaign_id)
        self._spend.inc(cost)
        child = self._campaign_spend.get(campaign_id)
        if child is not None:
            child.inc(cost)

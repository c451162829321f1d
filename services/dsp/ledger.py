"""Everything the DSP counts, in one place: bid requests, bids, no-bids, wins
(on the win notice) and losses (on the loss notice), each once per bid,
billed impressions with their spend (on the billing notice, OpenRTB 2.6 §7.2:
only billing lets a buyer increment spend), and the viewable, click and
conversion events non-CPM campaigns pay on.

Spend, by pricing model (pricing_core accrues it against the budget):
- CPM: a billed impression at a clearing CPM of P micros costs P/1000 micros,
  rounded half away from zero once per impression (pricing_core.money);
- vCPM: a viewable impression costs the campaign's vCPM/1000, rounded the same way;
- CPC: a click costs the campaign's CPC bid.
The cost the ledger reports is the cost it hands pricing_core, so counts and
budgets agree to the micro.

Notices count through a `LedgerBatch`: a unary notice is a batch of one, a
batch of notices one batch, so both book the same counts and the same spend.
Bid responses answered together (one Bid, or the requests decided together on
a stream) count in one `record_answers`.

With a ledger, the keys that make notices idempotent (win and loss per bid,
billing and events per impression key) are the ledger's, and each notice
batch's accruals are written as one row of columns, applied to pricing_core
once committed; at start they are replayed, oldest first, at the times they
were booked, so spend, budgets, pacing and frequency windows are what they
were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pricing_core.engine import BILLED_IMPRESSION, CLICK, VIEWABLE, PricingEngine
from pricing_core.money import impression_cost_micros
from services.dsp.bidding import NO_BID_REASONS
from services.dsp.settings import CampaignSettings
from services.runtime.counting import Key, Tally
from services.runtime.dedupe import DurableKeys, ExpiringMap
from services.runtime.journal import DurableJournal, Journal
from services.runtime.store import LedgerStore, scan
from services.runtime.metrics import PRICE_BUCKETS_MICROS, ImpressionMetrics, labelled_counters

# How long an impression key is remembered for billing idempotence.
BILLING_DEDUPE_S = 24 * 3600.0


class DspLedger:
    def __init__(self, instance: str, engine: PricingEngine, campaigns: Sequence[CampaignSettings],
                 registry: CollectorRegistry, clock: Callable[[], float], max_campaign_labels: int = 50,
                 bid_ttl_s: float = 600.0, store: LedgerStore | None = None):
        self.store = store
        self.tally = Tally("dsp", instance, clock, store)
        self.tally.declare(("bid_requests", "bids", "no_bids", "won", "losses", "billed", "spend_micros",
                            "viewable", "clicks", "conversions"))
        self.journal = Journal(clock=clock) if store is None else DurableJournal(store, clock)
        self._clock = clock
        self._engine = engine
        self._campaigns = {c.id: c for c in campaigns}

        def keys(space: str):
            return ExpiringMap(clock) if store is None else DurableKeys(store, space, clock)

        self._events = keys("event")
        self._wins = keys("win")
        # A loss notice is taken only for an outstanding bid, so a bid's loss is
        # remembered as long as bids are.
        self._losses_seen = keys("loss")
        self._bid_ttl_s = bid_ttl_s
        self._billings = keys("billing")
        self._impressions = ImpressionMetrics("dsp", registry)
        self._bid_requests = Counter("adchain_dsp_bid_requests", "OpenRTB bid requests received.", registry=registry)
        self._bids = Counter("adchain_dsp_bids", "Bids made.", registry=registry)
        by_reason = labelled_counters("adchain_dsp_no_bids", "Bid requests answered with a no-bid, by reason.",
                                      {"reason": tuple(NO_BID_REASONS.values())}, registry)
        self._no_bids = {name: by_reason[name] for name in NO_BID_REASONS.values()}
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
        # Tally names with a counter of their own (no_bids is by reason, spend by campaign).
        self._counters = {"losses": self._losses, "billed": self._billed}
        exhausted = Gauge("adchain_dsp_budget_exhausted_campaigns", "Campaigns whose total or daily budget is spent.",
                          registry=registry)
        exhausted.set_function(engine.exhausted_campaigns)

    def batch(self) -> LedgerBatch:
        """What one RPC counts, applied together when the batch closes."""
        return LedgerBatch(self)

    def record_bid_requests(self, n: int = 1) -> None:
        self.tally.add("bid_requests", n)
        self._metric(self._bid_requests, n)

    def _metric(self, child, n: int) -> None:
        """inc(n) now, or with a ledger once what it counts is committed."""
        if self.store is None:
            child.inc(n)
        else:
            self.store.on_commit(lambda: child.inc(n))

    def replay_accruals(self) -> int:
        """Book every accrual the ledger holds into pricing_core, oldest first,
        each batch at the time it was booked (at start). Returns how many events."""
        ids = {campaign_id: i for i, campaign_id in enumerate(self._engine.table.ids)}
        events = 0
        db = self.store.reader()
        try:
            for rows in scan(db, "accruals", "id, at_s, campaigns, campaign, cost_micros, kind, user_key_hash",
                             "id", 10_000):
                for _id, at_s, campaigns, campaign, cost, kind, users in rows:
                    index = np.array([ids.get(c, -1) for c in campaigns.split("\n")], np.int32)
                    local = np.frombuffer(campaign, np.int32)
                    self._engine.accrue_batch(index[local], np.frombuffer(cost, np.int64),
                                              np.frombuffer(kind, np.int8), np.frombuffer(users, np.int64),
                                              at_s=at_s)
                    events += len(local)
        finally:
            db.close()
        return events

    def record_answers(self, bids: Sequence[tuple[str, int]], no_bids: Sequence[int]) -> None:
        """What bid responses answered together said: each bid as (campaign id, CPM-equivalent
        bid in micros), each no-bid response by its nbr code."""
        tally = self.tally
        if bids:
            by_campaign: dict[str, int] = {}
            for campaign_id, _bid_micros in bids:
                by_campaign[campaign_id] = by_campaign.get(campaign_id, 0) + 1
            for campaign_id, n in by_campaign.items():
                tally.add("bids", n, campaign=campaign_id)
            if self.store is None:
                self._count_bids(bids)
            else:
                self.store.on_commit(lambda: self._count_bids(bids))
        if no_bids:
            by_reason: dict[str, int] = {}
            for nbr in no_bids:
                reason = NO_BID_REASONS[nbr]
                by_reason[reason] = by_reason.get(reason, 0) + 1
            for reason, n in by_reason.items():
                tally.add("no_bids", n, reason=reason)
                self._metric(self._no_bids[reason], n)

    def _count_bids(self, bids: Sequence[tuple[str, int]]) -> None:
        for _campaign_id, bid_micros in bids:
            self._bid_price.observe(bid_micros)
        self._bids.inc(len(bids))

    def _apply(self, counts: dict[Key, int], won: list[tuple[str, str]], events: _Events,
               spend: dict[str, int]) -> None:
        if self.store is None:
            if events.campaign:
                self._engine.accrue_batch(events.campaign, events.cost_micros, events.kind, events.user_key_hash)
            self._post(counts, won, spend)
            return
        if events.campaign:
            self._write_accruals(events)
        if won:
            self.journal.record_many([(key, "won", "", campaign_id, "") for key, campaign_id in won])
        for (name, reason, campaign), n in counts.items():
            self.tally.add(name, n, reason=reason, campaign=campaign)
        for campaign_id, cost in spend.items():
            self.tally.add("spend_micros", cost, campaign=campaign_id)
        self.store.on_commit(lambda: self._after_commit(counts, won, events, spend))

    def _write_accruals(self, events: _Events) -> None:
        """One row for the batch: its campaigns by id (indices can change
        with the campaign set) and its event columns."""
        distinct = sorted(set(events.campaign))
        local = {index: i for i, index in enumerate(distinct)}
        ids = self._engine.table.ids
        events.at_s = self._clock()
        self.store.execute("INSERT INTO accruals VALUES (NULL, ?, ?, ?, ?, ?, ?)", (
            events.at_s, "\n".join(ids[i] for i in distinct),
            np.array([local[i] for i in events.campaign], np.int32).tobytes(),
            np.array(events.cost_micros, np.int64).tobytes(), np.array(events.kind, np.int8).tobytes(),
            np.array(events.user_key_hash, np.int64).tobytes()))

    def _after_commit(self, counts: dict[Key, int], won: list[tuple[str, str]], events: _Events,
                      spend: dict[str, int]) -> None:
        if events.campaign:
            self._engine.accrue_batch(events.campaign, events.cost_micros, events.kind, events.user_key_hash,
                                      at_s=events.at_s)
        self._post(counts, won, spend, metrics_only=True)

    def _post(self, counts: dict[Key, int], won: list[tuple[str, str]], spend: dict[str, int],
              metrics_only: bool = False) -> None:
        tally = self.tally
        totals: dict[str, int] = {}
        for (name, reason, campaign), n in counts.items():
            if not metrics_only:
                tally.add(name, n, reason=reason, campaign=campaign)
            totals[name] = totals.get(name, 0) + n
        if not metrics_only:
            for impression_key, campaign_id in won:
                self.journal.record(impression_key, "won", campaign_id=campaign_id)
        for name, n in totals.items():
            counter = self._counters.get(name)
            if counter is not None:
                counter.inc(n)
        if won:
            self._impressions.record("won", len(won))
        for campaign_id, cost in spend.items():
            if not metrics_only:
                tally.add("spend_micros", cost, campaign=campaign_id)
            self._spend.inc(cost)
            child = self._campaign_spend.get(campaign_id)
            if child is not None:
                child.inc(cost)


class _Events:
    """Delivery events for one pricing_core accrue call, as its columns."""

    __slots__ = ("campaign", "cost_micros", "kind", "user_key_hash", "at_s")

    def __init__(self) -> None:
        self.at_s: float | None = None  # when booked (with a ledger: when written)
        self.campaign: list[int] = []
        self.cost_micros: list[int] = []
        self.kind: list[int] = []
        self.user_key_hash: list[int] = []  # 0: no user, so no frequency count

    def add(self, campaign_index: int, cost_micros: int, kind: int, user_key_hash: int) -> None:
        self.campaign.append(campaign_index)
        self.cost_micros.append(cost_micros)
        self.kind.append(kind)
        self.user_key_hash.append(user_key_hash)


class LedgerBatch:
    """The counts of one notice RPC (one notice or a batch of them), applied when it
    closes: each count added once with its n, each metric child incremented once, every
    spend in one pricing_core accrue call, in the order recorded, so the result is what
    one call per item would have booked.

    Whether an item counts is decided as it is recorded (the dedupe key is taken then),
    so the same key twice in one batch counts once, as in two separate calls. Use as a
    context manager; it applies on exit, also after an error, so every key taken is
    counted."""

    def __init__(self, ledger: DspLedger):
        self._ledger = ledger
        self._clock = ledger._clock
        self._counts: dict[Key, int] = {}
        self._won: list[tuple[str, str]] = []
        self._events = _Events()
        self._spend: dict[str, int] = {}

    def __enter__(self) -> LedgerBatch:
        return self

    def __exit__(self, *_exc) -> None:
        self.commit()

    def commit(self) -> None:
        counts, self._counts = self._counts, {}
        won, self._won = self._won, []
        events, self._events = self._events, _Events()
        spend, self._spend = self._spend, {}
        self._ledger._apply(counts, won, events, spend)

    def _count(self, name: str, reason: str = "", campaign: str = "") -> None:
        key = (name, reason, campaign)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _add_spend(self, campaign_id: str, cost_micros: int) -> None:
        if cost_micros:
            self._spend[campaign_id] = self._spend.get(campaign_id, 0) + cost_micros

    def record_win(self, bid_id: str, impression_key: str, campaign_id: str) -> bool:
        """Count a won impression once per bid; False for a repeated notice."""
        if not self._ledger._wins.add(bid_id, self._clock() + BILLING_DEDUPE_S):
            return False
        self._count("won", campaign=campaign_id)
        self._won.append((impression_key, campaign_id))
        return True

    def record_loss(self, bid_id: str, campaign_id: str, loss_code: int) -> bool:
        """Count a lost bid once, with its loss code; False for a repeated notice."""
        if not self._ledger._losses_seen.add(bid_id, self._clock() + self._ledger._bid_ttl_s):
            return False
        self._count("losses", reason=str(loss_code), campaign=campaign_id)
        return True

    def record_billing(self, impression_key: str, campaign_id: str, campaign_index: int, price_micros: int,
                       user_key_hash: int | None) -> bool:
        """Accrue one billed impression at a clearing CPM of `price_micros`
        through pricing_core (budget, pacing, frequency); idempotent per
        impression key."""
        if not self._ledger._billings.add(impression_key, self._clock() + BILLING_DEDUPE_S):
            return False
        cpm = self._ledger._campaigns[campaign_id].pricing_model == "cpm"
        cost = impression_cost_micros(price_micros) if cpm else 0
        self._events.add(campaign_index, cost, BILLED_IMPRESSION, user_key_hash or 0)
        self._count("billed", campaign=campaign_id)
        self._add_spend(campaign_id, cost)
        return True

    def record_event(self, kind: str, impression_key: str, campaign_id: str, campaign_index: int) -> bool:
        """Count a viewable, click or conversion once per impression, and
        accrue what the campaign's pricing model pays on it."""
        if not self._ledger._events.add(f"{impression_key}/{kind}", self._clock() + BILLING_DEDUPE_S):
            return False
        campaign = self._ledger._campaigns[campaign_id]
        self._count(_EVENT_COUNTS[kind], campaign=campaign_id)
        if kind == "viewable":
            cost = impression_cost_micros(campaign.bid_micros) if campaign.pricing_model == "vcpm" else 0
            self._events.add(campaign_index, cost, VIEWABLE, 0)
        elif kind == "click":
            cost = campaign.bid_micros if campaign.pricing_model == "cpc" else 0
            self._events.add(campaign_index, cost, CLICK, 0)
        else:
            cost = 0  # conversions are reported (cost per acquisition), not priced
        self._add_spend(campaign_id, cost)
        return True


_EVENT_COUNTS = {"viewable": "viewable", "click": "clicks", "conversion": "conversions"}

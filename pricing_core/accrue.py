"""accrue: turns delivery events (billed impression, viewable impression, click) into
spend, counters, budget-exhausted flags and pacing state. The DSP's only way to spend.

Each event's price_micros is what that one event costs, already converted at the edge
(money.impression_cost_micros for CPM/vCPM, the click price for CPC). A campaign spends
only on the event kind its pricing model pays for: CPM on billed impressions, vCPM on
viewable impressions, CPC on clicks; every event still moves its counter. Integer sums
only, so spend equals the sum of the paid events' prices to the micro.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel

BILLED_IMPRESSION, VIEWABLE, CLICK = 0, 1, 2
EVENT_KINDS = ("billed_impression", "viewable", "click")
# Event kind k pays for pricing model k: campaigns.MODEL_CPM=0, MODEL_VCPM=1, MODEL_CPC=2.
_EXHAUSTED_TOTAL = 1  # campaigns.EXHAUSTED_TOTAL
_EXHAUSTED_DAILY = 2  # campaigns.EXHAUSTED_DAILY


@kernel()
def accrue_events(event_campaign, event_price_micros, event_kind,
                  pricing_model, budget_total_micros, budget_daily_micros,
                  spend_micros, daily_spend_micros, impressions, viewables, clicks,
                  exhausted):
    """Apply events in order. Events with an unknown campaign index, a negative price or
    an unknown kind are skipped and counted; returns that count."""
    n_campaigns = len(pricing_model)
    rejected = 0
    for e in range(len(event_campaign)):
        c = event_campaign[e]
        kind = event_kind[e]
        price = event_price_micros[e]
        if c < 0 or c >= n_campaigns or price < 0 or kind < 0 or kind > 2:
            rejected += 1
            continue
        if kind == BILLED_IMPRESSION:
            impressions[c] += 1
        elif kind == VIEWABLE:
            viewables[c] += 1
        else:
            clicks[c] += 1
        if kind == pricing_model[c]:
            spend_micros[c] += price
            daily_spend_micros[c] += price
            if spend_micros[c] >= budget_total_micros[c]:
                exhausted[c] |= _EXHAUSTED_TOTAL
            daily = budget_daily_micros[c]
            if daily > 0 and daily_spend_micros[c] >= daily:
                exhausted[c] |= _EXHAUSTED_DAILY
    return rejected


@kernel()
def start_day(budget_total_micros, spend_micros, daily_spend_micros, exhausted):
    """UTC day boundary: daily spend (the pacing state) restarts; only the total budget
    can keep a campaign exhausted."""
    for c in range(len(spend_micros)):
        daily_spend_micros[c] = 0
        exhausted[c] = _EXHAUSTED_TOTAL if (
            budget_total_micros[c] <= spend_micros[c]) else 0

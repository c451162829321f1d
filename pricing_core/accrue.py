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
_FLAG_BUDGET, _FLAG_SPENT = 0, 1  # campaigns.FLAG_* rows of CampaignState.flag_bits


@kernel()
def _set_flags(c, budget_total_micros, budget_daily_micros, pacing_even, spend_micros,
               daily_spend_micros, exhausted, flag_bits):
    """Campaign c's bits of flag_bits from its counters (evaluate's budget check, and
    whether pacing can hold it back)."""
    # Branch-free: accrue calls this for every paid event, in random campaign order.
    w = c >> 6
    shift = np.uint64(c & 63)
    bit = np.uint64(1) << shift
    daily = budget_daily_micros[c]
    spend = spend_micros[c]
    daily_spend = daily_spend_micros[c]
    over_budget = (exhausted[c] != 0) | (spend >= budget_total_micros[c]) | (
        (daily > 0) & (daily_spend >= daily))
    spent = (pacing_even[c] != 0) & ((spend != 0) | (daily_spend != 0))
    flag_bits[_FLAG_BUDGET, w] = (flag_bits[_FLAG_BUDGET, w] & ~bit) | (
        np.uint64(over_budget) << shift)
    flag_bits[_FLAG_SPENT, w] = (flag_bits[_FLAG_SPENT, w] & ~bit) | (
        np.uint64(spent) << shift)


@kernel()
def refresh_flags(budget_total_micros, budget_daily_micros, pacing_even, spend_micros,
                  daily_spend_micros, exhausted, flag_bits):
    """Every campaign's flag bits from its counters (after replace, or counters set by
    hand)."""
    for c in range(len(spend_micros)):
        _set_flags(c, budget_total_micros, budget_daily_micros, pacing_even, spend_micros,
                   daily_spend_micros, exhausted, flag_bits)


@kernel()
def accrue_events(event_campaign, event_price_micros, event_kind,
                  pricing_model, budget_total_micros, budget_daily_micros,
                  spend_micros, daily_spend_micros, impressions, viewables, clicks,
                  exhausted, pacing_even, flag_bits):
    """Apply events in order. Events with an unknown campaign index, a negative price or
    an unknown kind are skipped and counted; returns that count. A paid event also
    updates the campaign's flag_bits (CampaignState)."""
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
            _set_flags(c, budget_total_micros, budget_daily_micros, pacing_even,
                       spend_micros, daily_spend_micros, exhausted, flag_bits)
    return rejected


@kernel()
def start_day(budget_total_micros, spend_micros, daily_spend_micros, exhausted,
              budget_daily_micros, pacing_even, flag_bits):
    """UTC day boundary: daily spend (the pacing state) restarts; only the total budget
    can keep a campaign exhausted."""
    for c in range(len(spend_micros)):
        daily_spend_micros[c] = 0
        exhausted[c] = _EXHAUSTED_TOTAL if (
            budget_total_micros[c] <= spend_micros[c]) else 0
        _set_flags(c, budget_total_micros, budget_daily_micros, pacing_even, spend_micros,
                   daily_spend_micros, exhausted, flag_bits)

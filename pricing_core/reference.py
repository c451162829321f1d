"""Plain-Python twins of every kernel, written for reading, not speed: they work from the
CampaignSpecs and Opportunity objects directly (no bitsets, no index), so the property
tests check the encoding and the index as well as the kernels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .accrue import BILLED_IMPRESSION, CLICK, VIEWABLE
from .campaigns import CampaignSpec
from .evaluate import (N_REASONS, REASON_BUDGET, REASON_FLOOR, REASON_FREQUENCY,
                       REASON_NO_CAMPAIGNS, REASON_NONE, REASON_PACING, REASON_TARGETING)
from .opportunities import Opportunity, user_key_hash

SECONDS_PER_DAY = 86400.0


@dataclass
class ReferenceState:
    """Per-campaign state as Python lists, plus the frequency table as a dict
    {(user_key_hash, campaign index): [count, window_start_s]}."""
    spend_micros: list
    daily_spend_micros: list
    impressions: list
    viewables: list
    clicks: list
    exhausted: list
    frequency: dict

    @classmethod
    def zeros(cls, n: int) -> "ReferenceState":
        return cls([0] * n, [0] * n, [0] * n, [0] * n, [0] * n, [0] * n, {})


def frequency_count(frequency: dict, user_hash: int, campaign: int, now_s: int,
                    window_s: int) -> int:
    entry = frequency.get((user_hash, campaign))
    if entry is None or now_s - entry[1] >= window_s:
        return 0
    return entry[0]


def frequency_record(frequency: dict, user_hash: int, campaign: int, now_s: int,
                     window_s: int) -> None:
    entry = frequency.get((user_hash, campaign))
    if entry is None or now_s - entry[1] >= window_s:
        frequency[(user_hash, campaign)] = [1, now_s]
    else:
        entry[0] += 1


def _targeted(spec: CampaignSpec, o: Opportunity) -> bool:
    def single(allowed, value):
        return not allowed or value in allowed

    def overlap(allowed, values):
        return not allowed or bool(set(allowed) & set(values))

    return (single(spec.formats, o.format) and single(spec.sizes, (o.w, o.h))
            and single(spec.device_types, o.device_type) and single(spec.countries, o.country)
            and overlap(spec.categories, o.categories) and overlap(spec.segments, o.segments)
            and overlap(spec.deal_ids, o.deal_ids) and single(spec.domains, o.domain))


def ecpm_micros(spec: CampaignSpec, o: Opportunity) -> int:
    x = float(spec.bid_micros)
    if spec.pricing_model == "vcpm":
        x = x * o.predicted_viewability
    elif spec.pricing_model == "cpc":
        x = x * o.predicted_ctr * 1000.0
    if o.auction_type == 1:
        x = x * spec.shading_factor
    if x >= float(spec.max_bid_micros):
        return spec.max_bid_micros
    return math.floor(x + 0.5)


def _reason(spec: CampaignSpec, c: int, o: Opportunity, state: ReferenceState,
            now_s: float, day_start_s: float) -> tuple[int, int]:
    if not _targeted(spec, o):
        return REASON_TARGETING, 0
    daily = spec.budget_daily_micros
    if (state.exhausted[c] or state.spend_micros[c] >= spec.budget_total_micros
            or (daily > 0 and state.daily_spend_micros[c] >= daily)):
        return REASON_BUDGET, 0
    fs, fe = spec.flight_start_s, spec.flight_end_s
    if fe > 0 and (now_s < fs or now_s >= fe):
        return REASON_PACING, 0
    if spec.pacing == "even":
        if daily > 0:
            fraction = (now_s - day_start_s) / SECONDS_PER_DAY
            paced = float(state.daily_spend_micros[c]) > float(daily) * fraction
        else:
            fraction = (now_s - fs) / float(fe - fs)
            paced = float(state.spend_micros[c]) > float(spec.budget_total_micros) * fraction
        if paced:
            return REASON_PACING, 0
    if spec.frequency_cap > 0 and frequency_count(
            state.frequency, user_key_hash(o.user_key), c, int(now_s),
            spec.frequency_window_s) >= spec.frequency_cap:
        return REASON_FREQUENCY, 0
    bid = ecpm_micros(spec, o)
    if bid < o.floor_micros:
        return REASON_FLOOR, 0
    return REASON_NONE, bid


def evaluate_reference(specs: Sequence[CampaignSpec], opportunities: Sequence[Opportunity],
                       state: ReferenceState, now_s: float, day_start_s: float):
    """Returns (rows, reason_counts): rows[i] = (campaign, bid, second, second_bid, reason),
    with -1 / 0 for a missing campaign / bid, reason_counts over all pairs."""
    rows = []
    counts = [0] * N_REASONS
    for o in opportunities:
        ranked = []
        reasons = []
        for c, spec in enumerate(specs):
            reason, bid = _reason(spec, c, o, state, now_s, day_start_s)
            counts[reason] += 1
            reasons.append(reason)
            if reason == REASON_NONE:
                ranked.append((-bid, c))
        ranked.sort()
        best, best_bid = (ranked[0][1], -ranked[0][0]) if ranked else (-1, 0)
        second, second_bid = (ranked[1][1], -ranked[1][0]) if len(ranked) > 1 else (-1, 0)
        if ranked:
            reason = REASON_NONE
        elif not specs:
            reason = REASON_NO_CAMPAIGNS
        else:
            reason = max(reasons)  # the latest stage any campaign reached
        rows.append((best, best_bid, second, second_bid, reason))
    return rows, counts


def clear_reference(bids: Sequence[int], floor_micros: int, auction_type: int,
                    increment_micros: int):
    valid = [(b, k) for k, b in enumerate(bids) if b >= 0]
    eligible = [(b, k) for b, k in valid if b >= floor_micros]
    if not eligible:
        return -1, 0, [floor_micros if b >= 0 else -1 for b in bids]
    winner_bid = max(b for b, _ in eligible)
    winner = min(k for b, k in eligible if b == winner_bid)
    others = [b for b, k in valid if k != winner]
    second = max(others) if others else -1
    if auction_type == 1:
        price = winner_bid
    else:
        price = min(winner_bid, max(second, floor_micros) + increment_micros)
    loser_min = winner_bid if auction_type == 1 else price
    mtw = []
    for k, b in enumerate(bids):
        if b < 0:
            mtw.append(-1)
        elif k == winner:
            mtw.append(max(second, floor_micros))
        else:
            mtw.append(loser_min)
    return winner, price, mtw


def accrue_reference(specs: Sequence[CampaignSpec], state: ReferenceState, events) -> int:
    """events: iterable of (campaign, price_micros, kind). Mutates state; returns the
    number of rejected events."""
    paid_kind = {"cpm": BILLED_IMPRESSION, "vcpm": VIEWABLE, "cpc": CLICK}
    rejected = 0
    for c, price, kind in events:
        if not (0 <= c < len(specs)) or price < 0 or kind not in (0, 1, 2):
            rejected += 1
            continue
        counter = (state.impressions, state.viewables, state.clicks)[kind]
        counter[c] += 1
        spec = specs[c]
        if paid_kind[spec.pricing_model] == kind:
            state.spend_micros[c] += price
            state.daily_spend_micros[c] += price
            if state.spend_micros[c] >= spec.budget_total_micros:
                state.exhausted[c] |= 1
            if spec.budget_daily_micros > 0 and \
                    state.daily_spend_micros[c] >= spec.budget_daily_micros:
                state.exhausted[c] |= 2
    return rejected



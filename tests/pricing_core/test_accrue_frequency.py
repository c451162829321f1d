import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_core.accrue import BILLED_IMPRESSION, CLICK, VIEWABLE, accrue_events
from pricing_core.campaigns import CampaignState, CampaignTable
from pricing_core.frequency import (FrequencyTable, frequency_check, frequency_count,
                                    frequency_record, grown)
from pricing_core.reference import ReferenceState, accrue_reference
from pricing_core.reference import frequency_count as reference_count
from pricing_core.reference import frequency_record as reference_record

from tests.pricing_core.pricing_strategies import campaign_specs


def _accrue(table, state, events):
    c = np.array([e[0] for e in events], np.int32)
    p = np.array([e[1] for e in events], np.int64)
    k = np.array([e[2] for e in events], np.int8)
    return accrue_events(c, p, k, table.pricing_model, table.budget_total_micros,
                         table.budget_daily_micros, state.spend_micros,
                         state.daily_spend_micros, state.impressions, state.viewables,
                         state.clicks, state.exhausted, table.pacing_even, state.flag_bits)


@settings(max_examples=200, deadline=None)
@given(specs=campaign_specs(n_max=6), data=st.data())
def test_accrue_agrees_with_reference(specs, data):
    n = len(specs)
    events = data.draw(st.lists(st.tuples(st.integers(-1, n), st.integers(-1, 2000),
                                          st.integers(-1, 3)), max_size=40))
    table = CampaignTable.from_specs(specs)
    state = CampaignState.zeros(n)
    ref = ReferenceState.zeros(n)
    assert _accrue(table, state, events) == accrue_reference(specs, ref, events)
    for name in ("spend_micros", "daily_spend_micros", "impressions", "viewables", "clicks",
                 "exhausted"):
        assert list(getattr(state, name)) == getattr(ref, name), name


@settings(max_examples=200, deadline=None)
@given(specs=campaign_specs(n_max=6).filter(bool), data=st.data())
def test_sum_of_spend_equals_sum_of_billed_prices_to_the_micro(specs, data):
    n = len(specs)
    events = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 10 ** 7),
                                          st.sampled_from([BILLED_IMPRESSION, VIEWABLE, CLICK])),
                                max_size=60))
    table = CampaignTable.from_specs(specs)
    state = CampaignState.zeros(n)
    _accrue(table, state, events)
    paid = {"cpm": BILLED_IMPRESSION, "vcpm": VIEWABLE, "cpc": CLICK}
    billed = sum(p for c, p, k in events if paid[specs[c].pricing_model] == k)
    assert int(state.spend_micros.sum()) == billed


def test_exhausted_budget_sets_the_flag():
    from pricing_core.campaigns import CampaignSpec
    spec = CampaignSpec("c", "adv", "cpm", 1000, 1000, budget_total_micros=1000,
                        budget_daily_micros=600)
    table = CampaignTable.from_specs([spec])
    state = CampaignState.zeros(1)
    _accrue(table, state, [(0, 600, BILLED_IMPRESSION)])
    assert state.exhausted[0] == 2
    _accrue(table, state, [(0, 400, BILLED_IMPRESSION)])
    assert state.exhausted[0] == 3


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 200),
                              st.sampled_from([1, 50, 100])), max_size=80))
def test_frequency_table_agrees_with_a_dict(ops):
    table = FrequencyTable.empty(16)
    ref: dict = {}
    now = 0
    for user, campaign, dt, window in ops:
        now += dt
        table = grown(table, 1, n_campaigns=4)
        frequency_record(*table.arrays(), np.array([user * 7919 - 3], np.int64),
                         np.array([campaign], np.int32), np.array([window], np.int64),
                         np.int64(now))
        reference_record(ref, user * 7919 - 3, campaign, now, window)
        for u in range(6):
            for c in range(4):
                assert frequency_count(*table.arrays(), u * 7919 - 3, c, now, window) == \
                    reference_count(ref, u * 7919 - 3, c, now, window)


def test_cap_reached_blocks_until_the_window_ends():
    table = FrequencyTable.empty(16)
    users, campaigns, windows = (np.array([42], np.int64), np.array([0], np.int32),
                                 np.array([60], np.int64))
    for t in (0, 10):
        frequency_record(*table.arrays(), users, campaigns, windows, np.int64(t))
    allowed = np.zeros(1, np.bool_)
    frequency_check(*table.arrays(), users, campaigns, np.array([2], np.int32), windows,
                    np.int64(59), allowed)
    assert not allowed[0]
    frequency_check(*table.arrays(), users, campaigns, np.array([2], np.int32), windows,
                    np.int64(60), allowed)
    assert allowed[0]


def test_rehash_renumbers_and_drops_removed_campaigns():
    table = FrequencyTable.empty(16)
    frequency_record(*table.arrays(), np.array([1, 2], np.int64), np.array([0, 1], np.int32),
                     np.array([60, 60], np.int64), np.int64(0))
    moved = grown(table, 0, remap=np.array([-1, 0], np.int32))
    assert frequency_count(*moved.arrays(), 2, 0, 1, 60) == 1
    assert frequency_count(*moved.arrays(), 1, 0, 1, 60) == 0


def _expected_flags(table, s):
    """flag_bits as the CampaignState docstring defines them, from the counters."""
    from pricing_core.campaigns import pack_campaign_bits
    daily = table.budget_daily_micros
    over_budget = (s.exhausted != 0) | (s.spend_micros >= table.budget_total_micros) | (
        (daily > 0) & (s.daily_spend_micros >= daily))
    spent = (table.pacing_even != 0) & ((s.spend_micros != 0) | (s.daily_spend_micros != 0))
    return pack_campaign_bits(np.stack([over_budget, spent]), len(table))


@settings(max_examples=100, deadline=None)
@given(specs=campaign_specs(n_max=6), replacement=campaign_specs(n_max=6), data=st.data())
def test_flag_bits_follow_the_counters_through_accrue_day_roll_and_replace(
        specs, replacement, data):
    from pricing_core.engine import PricingEngine
    now = [100 * 86400 + 3600.0]
    engine = PricingEngine(specs, clock=lambda: now[0])
    for step in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["accrue", "accrue", "day", "replace"]))
        if action == "day":
            now[0] += 86400
            engine._roll_day(now[0])
        elif action == "replace":
            # Persisting ids keep counters; budgets may change under them.
            engine.replace(replacement if data.draw(st.booleans()) else specs)
        else:
            n = len(engine.table)
            events = data.draw(st.lists(st.tuples(
                st.integers(-1, n), st.sampled_from([0, 1, 500, 1000, 10 ** 9]),
                st.integers(0, 2)), max_size=20))
            if events:
                engine.accrue([e[0] for e in events], [e[1] for e in events],
                              [e[2] for e in events])
        g = engine._generation
        assert (g.state.flag_bits == _expected_flags(g.table, g.state)).all(), step

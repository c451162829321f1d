import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing_core import evaluate as ev
from pricing_core.accrue import refresh_flags
from pricing_core.campaigns import MAX_BID_MICROS, CampaignSpec, CampaignState, CampaignTable
from pricing_core.frequency import FrequencyTable, frequency_record, grown
from pricing_core.opportunities import Opportunity, OpportunityBatch, user_key_hash
from pricing_core.reference import ReferenceState, evaluate_reference
from pricing_core.reference import frequency_record as reference_record

from tests.pricing_core.pricing_strategies import DAY, NOW_S, USERS, campaign_specs, opportunities

DAY_START_S = float(int(NOW_S // DAY) * DAY)


def _world(specs, draw_state):
    """Equal random state for kernel and reference: spend, exhausted flags, caps used."""
    n = len(specs)
    ref = ReferenceState.zeros(n)
    state = CampaignState.zeros(n)
    freq = FrequencyTable.empty(16)
    for c, spec in enumerate(specs):
        spend = draw_state(st.sampled_from([0, 500, spec.budget_total_micros,
                                            spec.budget_total_micros + 1]))
        daily = draw_state(st.sampled_from([0, 500, spec.budget_daily_micros, 10 ** 6]))
        exhausted = draw_state(st.sampled_from([0, 0, 0, 1, 2]))
        ref.spend_micros[c], ref.daily_spend_micros[c], ref.exhausted[c] = spend, daily, exhausted
        state.spend_micros[c], state.daily_spend_micros[c] = spend, daily
        state.exhausted[c] = exhausted
        if spec.frequency_cap:
            for user in USERS:
                shown = draw_state(st.integers(0, 3))
                at = draw_state(st.sampled_from([int(NOW_S), int(NOW_S) - 4000]))
                for _ in range(shown):
                    h = user_key_hash(user)
                    reference_record(ref.frequency, h, c, at, spec.frequency_window_s)
                    freq = grown(freq, 1, n_campaigns=n)
                    frequency_record(*freq.arrays(), np.array([h], np.int64),
                                     np.array([c], np.int32),
                                     np.array([spec.frequency_window_s], np.int64),
                                     np.int64(at))
    return state, freq, ref


def _run(specs, opps, state, freq, parallel, now_s=NOW_S):
    table = CampaignTable.from_specs(specs)
    # The counters were set by hand: derive the flag bits as accrue would have.
    refresh_flags(table.budget_total_micros, table.budget_daily_micros, table.pacing_even,
                  state.spend_micros, state.daily_spend_micros, state.exhausted,
                  state.flag_bits)
    batch = OpportunityBatch.encode(table, opps)
    outputs = ev.new_outputs(len(opps))
    args = ev.evaluate_args(table, state, freq, batch, now_s, DAY_START_S, outputs)
    if parallel:
        ev.evaluate_batch_parallel(3, *args)
    else:
        ev.evaluate_batch(*args)
    results, reason_counts = outputs
    rows = [tuple(int(x) for x in results[:, i]) for i in range(len(opps))]
    return rows, [int(x) for x in reason_counts]


@settings(max_examples=400, deadline=None)
@given(specs=campaign_specs(), opps=opportunities(), parallel=st.booleans(), data=st.data())
def test_evaluate_agrees_with_reference(specs, opps, parallel, data):
    state, freq, ref = _world(specs, data.draw)
    assert _run(specs, opps, state, freq, parallel) == evaluate_reference(
        specs, opps, ref, NOW_S, DAY_START_S)


# Large campaign sets are the point here (past one 64-campaign index word), so
# Hypothesis's warning about large generated inputs does not apply.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(specs=campaign_specs(n_max=300), opps=opportunities(n_max=12), data=st.data())
def test_evaluate_agrees_with_reference_past_one_index_word(specs, opps, data):
    # More than 64 campaigns: the index spans several words and summary bits.
    state, freq, ref = _world(specs, data.draw)
    assert _run(specs, opps, state, freq, False) == evaluate_reference(
        specs, opps, ref, NOW_S, DAY_START_S)


def _spec(i, **kw):
    base = dict(id=f"c{i}", advertiser_domain="adv.com", pricing_model="cpm",
                bid_micros=1_000_000, max_bid_micros=10 ** 9, budget_total_micros=10 ** 9)
    base.update(kw)
    return CampaignSpec(**base)


def _opp(**kw):
    base = dict(format="banner", w=300, h=250, domain="a.com", device_type=2, country="USA",
                categories=(), segments=(), deal_ids=(), floor_micros=0, user_key="u",
                predicted_viewability=0.5, predicted_ctr=0.01, auction_type=2)
    base.update(kw)
    return Opportunity(**base)


def _one(specs, opp, state=None):
    state = state or CampaignState.zeros(len(specs))
    return _run(specs, [opp], state, FrequencyTable.empty(16), False)[0][0]


def test_ecpm_cpm_vcpm_cpc_and_first_price_shading():
    specs = [_spec(0, bid_micros=2_000_000),
             _spec(1, pricing_model="vcpm", bid_micros=3_000_000),
             _spec(2, pricing_model="cpc", bid_micros=200_000, shading_factor=0.5)]
    assert _one(specs[:1], _opp())[1] == 2_000_000
    assert _one(specs[1:2], _opp())[1] == 1_500_000            # x viewability 0.5
    assert _one(specs[2:], _opp())[1] == 2_000_000             # x CTR 0.01 x 1000
    assert _one(specs[2:], _opp(auction_type=1))[1] == 1_000_000  # shaded in first price


def test_ties_go_to_the_lowest_campaign_index():
    specs = [_spec(0, bid_micros=5), _spec(1, bid_micros=7), _spec(2, bid_micros=7)]
    assert _one(specs, _opp())[:4] == (1, 7, 2, 7)


def test_ranking_at_the_largest_max_bid_and_across_index_words():
    """Rank keys pack bid and list position into one int64: bids at MAX_BID_MICROS, ties
    far apart in the index (other words), and a slow candidate (flight window) tying a
    fast one must still rank by bid, then lowest campaign index."""
    top = MAX_BID_MICROS
    specs = [_spec(i, bid_micros=1_000) for i in range(200)]
    specs[150] = _spec(150, bid_micros=top, max_bid_micros=top)
    specs[70] = _spec(70, bid_micros=top + 5, max_bid_micros=top)   # capped to the same bid
    specs[3] = _spec(3, bid_micros=top, max_bid_micros=top, flight_start_s=0,
                     flight_end_s=int(NOW_S) + 1000)                 # slow, lowest index
    assert _one(specs, _opp())[:4] == (3, top, 70, top)
    specs[3] = _spec(3, bid_micros=999)
    assert _one(specs, _opp())[:4] == (70, top, 150, top)
    assert _one(specs, _opp(floor_micros=top))[:4] == (70, top, 150, top)
    assert _one(specs, _opp(floor_micros=top + 1))[4] == ev.REASON_FLOOR


def test_floor_above_every_bid_is_a_below_floor_no_bid():
    assert _one([_spec(0)], _opp(floor_micros=2_000_000)) == (-1, 0, -1, 0, ev.REASON_FLOOR)


def test_empty_campaign_set_is_a_no_campaigns_no_bid():
    assert _one([], _opp()) == (-1, 0, -1, 0, ev.REASON_NO_CAMPAIGNS)


def test_zero_budget_is_a_budget_no_bid():
    assert _one([_spec(0, budget_total_micros=0)], _opp())[4] == ev.REASON_BUDGET


def test_domains_match_exactly():
    specs = [_spec(0, domains=("a.com",))]
    assert _one(specs, _opp(domain="a.com"))[0] == 0
    assert _one(specs, _opp(domain="a.co"))[4] == ev.REASON_TARGETING


def test_deal_campaigns_bid_only_on_their_deals_open_campaigns_bid_anywhere():
    specs = [_spec(0, deal_ids=("d1",), bid_micros=9), _spec(1, bid_micros=1)]
    assert _one(specs, _opp(deal_ids=("d1",)))[:2] == (0, 9)
    assert _one(specs, _opp())[:2] == (1, 1)


def test_unknown_features_match_only_untargeted_campaigns():
    specs = [_spec(0, countries=("USA",), bid_micros=9), _spec(1, bid_micros=1)]
    assert _one(specs, _opp(country="ATA"))[:2] == (1, 1)


def test_reason_counts_cover_every_pair():
    specs = [_spec(i, formats=("video",) if i % 2 else ()) for i in range(10)]
    table = CampaignTable.from_specs(specs)
    opps = [_opp(), _opp(floor_micros=5_000_000)]
    rows, counts = _run(specs, opps, CampaignState.zeros(10), FrequencyTable.empty(16), False)
    assert sum(counts) == len(opps) * len(table)
    assert counts[ev.REASON_TARGETING] == 10 and counts[ev.REASON_FLOOR] == 5

"""The pricing_core entry points the DSP's hot paths use: rows built from
shared parts are exactly the rows OpportunityBatch.encode builds, and one
accrue_batch call books exactly what accrue books one event at a time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_core.accrue import BILLED_IMPRESSION, CLICK, VIEWABLE
from pricing_core.campaigns import (DIM_COUNTRY, DIM_DEVICE, DIM_FORMAT, DIM_SIZE, SET_CATEGORY, SET_DEAL,
                                    SET_DOMAIN, SET_SEGMENT, CampaignSpec)
from pricing_core.engine import PricingEngine
from pricing_core.opportunities import Opportunity, OpportunityBatch, user_key_hash
from tests.pricing_core.pricing_strategies import NOW_S, campaign_specs, opportunities


def engine(specs) -> PricingEngine:
    return PricingEngine(specs, clock=lambda: NOW_S)


def rows_of(e: PricingEngine, opps: list[Opportunity]):
    rows = e.opportunity_rows()
    enc = rows.encoder
    for o in opps:
        rows.add((enc.single(DIM_FORMAT, o.format), enc.single(DIM_SIZE, (o.w, o.h)),
                  enc.single(DIM_DEVICE, o.device_type), enc.single(DIM_COUNTRY, o.country)),
                 (enc.postings(SET_CATEGORY, o.categories), enc.postings(SET_SEGMENT, o.segments),
                  enc.postings(SET_DEAL, o.deal_ids), enc.postings(SET_DOMAIN, (o.domain,))),
                 o.floor_micros, user_key_hash(o.user_key), o.auction_type, o.predicted_viewability, o.predicted_ctr)
    return rows


@settings(max_examples=150, deadline=None)
@given(campaign_specs(), opportunities())
def test_rows_built_from_parts_are_the_rows_encode_builds(specs, opps):
    e = engine(specs)
    built = rows_of(e, opps).arrays()
    encoded = OpportunityBatch.encode(e.table, opps)
    for name in ("rows", "ints", "floats"):
        mine, theirs = getattr(built, name), getattr(encoded, name)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert np.array_equal(mine, theirs), name


@settings(max_examples=150, deadline=None)
@given(campaign_specs(), opportunities())
def test_evaluating_rows_decides_what_evaluating_opportunities_decides(specs, opps):
    e = engine(specs)
    by_rows = e.evaluate_rows(rows_of(e, opps))
    by_opportunities = e.evaluate(opps)
    for name in ("campaign", "bid_micros", "second_campaign", "second_bid_micros", "no_bid_reason",
                 "reason_counts"):
        assert np.array_equal(getattr(by_rows, name), getattr(by_opportunities, name)), name


def test_rows_are_refused_as_encode_refuses_them():
    rows = engine([]).opportunity_rows()
    for floor, auction_type, viewability in ((-1, 2, 0.5), (0, 3, 0.5), (0, 2, float("nan"))):
        with pytest.raises(ValueError):
            rows.add((0, 0, 0, 0), ((), (), (), ()), floor, 0, auction_type, viewability, 0.0)


CAPPED = CampaignSpec(id="capped", advertiser_domain="a.example", pricing_model="cpm", bid_micros=2_000_000,
                      max_bid_micros=2_000_000, budget_total_micros=9_000, frequency_cap=2, frequency_window_s=3600)
VIEWABLE_PAID = CampaignSpec(id="vcpm", advertiser_domain="b.example", pricing_model="vcpm", bid_micros=3_000_000,
                             max_bid_micros=10**9, budget_total_micros=10**9)
CLICK_PAID = CampaignSpec(id="cpc", advertiser_domain="c.example", pricing_model="cpc", bid_micros=400_000,
                          max_bid_micros=10**9, budget_total_micros=10**9)

events = st.lists(st.tuples(st.integers(-1, 3), st.sampled_from([0, 1_000, 2_000, 2_500, -5]),
                            st.sampled_from([BILLED_IMPRESSION, VIEWABLE, CLICK]),
                            st.sampled_from([0, user_key_hash("u1"), user_key_hash("u2")])), max_size=30)


@settings(max_examples=100, deadline=None)
@given(events)
def test_accrue_batch_books_what_accrue_books_one_event_at_a_time(batch):
    one_by_one, together = (engine([CAPPED, VIEWABLE_PAID, CLICK_PAID]) for _ in range(2))
    rejected = 0
    for campaign, price, kind, user in batch:
        # A user key hash of 0 is an event without a user (the DSP's own convention).
        rejected += one_by_one.accrue(campaign, price, kind, user_key_hash=user if user else None)
    columns = [list(column) for column in zip(*batch)] or [[], [], [], []]
    assert together.accrue_batch(*columns) == rejected
    a, b = one_by_one.snapshot(), together.snapshot()
    for name in ("spend_micros", "daily_spend_micros", "impressions", "viewables", "clicks", "exhausted"):
        assert np.array_equal(a[name], b[name]), name
    # The frequency table saw the same impressions: the same users are capped.
    for user in ("u1", "u2", "u3"):
        opp = Opportunity("banner", 300, 250, "d", 2, "USA", (), (), (), 0, user, 0.5, 0.01, 2)
        assert one_by_one.evaluate([opp]).no_bid_reason.tolist() == together.evaluate([opp]).no_bid_reason.tolist()

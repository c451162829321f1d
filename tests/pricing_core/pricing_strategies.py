"""Hypothesis strategies over small vocabularies, so targeting hits, misses and ties are
all common."""
from hypothesis import strategies as st

from pricing_core.campaigns import CampaignSpec
from pricing_core.opportunities import Opportunity

FORMATS = ("banner", "video", "audio", "native")
SIZES = ((300, 250), (728, 90), (320, 50))
DOMAINS = ("a.com", "b.com", "app.c")
DEVICES = (1, 2, 4)
COUNTRIES = ("USA", "CAN", "GBR")
CATEGORIES = ("IAB1", "IAB2", "IAB3")
SEGMENTS = ("s1", "s2", "s3")
DEALS = ("d1", "d2")
USERS = ("u1", "u2", "")
DAY = 86400
NOW_S = 100 * DAY + 43200.5   # noon on day 100


def subset(values):
    return st.lists(st.sampled_from(values), max_size=2, unique=True).map(tuple)


money = st.sampled_from([0, 1, 500_000, 1_000_000, 1_500_000]) | st.integers(0, 5_000_000)


@st.composite
def campaign_specs(draw, n_max=10):
    n = draw(st.integers(0, n_max))
    specs = []
    for i in range(n):
        model = draw(st.sampled_from(["cpm", "vcpm", "cpc"]))
        daily = draw(st.sampled_from([0, 0, 1000, 10 ** 9]))
        flight = draw(st.sampled_from([(0, 0), (0, 0), (int(NOW_S) - DAY, int(NOW_S) + DAY),
                                       (int(NOW_S) + 10, int(NOW_S) + DAY)]))
        pacing = draw(st.sampled_from(["asap", "even"])) if (daily or flight[1]) else "asap"
        cap = draw(st.sampled_from([0, 0, 1, 2]))
        specs.append(CampaignSpec(
            id=f"c{i}", advertiser_domain=draw(st.sampled_from(["x.com", "y.com"])),
            pricing_model=model,
            bid_micros=draw(money) if model != "cpc" else draw(st.integers(0, 3_000_000)),
            max_bid_micros=draw(st.sampled_from([1, 1_000_000, 2 ** 32 - 1])),
            budget_total_micros=draw(st.sampled_from([0, 1000, 10 ** 9])),
            budget_daily_micros=daily, pacing=pacing, frequency_cap=cap,
            frequency_window_s=draw(st.sampled_from([60, 3600])) if cap else 0,
            shading_factor=draw(st.sampled_from([1.0, 0.8, 0.5, 0.333])),
            formats=draw(subset(FORMATS)), sizes=draw(subset(SIZES)),
            domains=draw(subset(DOMAINS)), device_types=draw(subset(DEVICES)),
            countries=draw(subset(COUNTRIES)), categories=draw(subset(CATEGORIES)),
            segments=draw(subset(SEGMENTS)), deal_ids=draw(subset(DEALS)),
            flight_start_s=flight[0], flight_end_s=flight[1]))
    return specs


@st.composite
def opportunities(draw, n_max=6):
    out = []
    for _ in range(draw(st.integers(0, n_max))):
        w, h = draw(st.sampled_from(SIZES + ((1, 1),)))
        out.append(Opportunity(
            format=draw(st.sampled_from(FORMATS)), w=w, h=h,
            domain=draw(st.sampled_from(DOMAINS + ("unknown.org",))),
            device_type=draw(st.sampled_from(DEVICES + (7,))),
            country=draw(st.sampled_from(COUNTRIES + ("FRA",))),
            categories=draw(subset(CATEGORIES + ("IAB9",))),
            segments=draw(subset(SEGMENTS + ("s9",))),
            deal_ids=draw(subset(DEALS + ("d9",))),
            floor_micros=draw(money | st.just(10 ** 13)),
            user_key=draw(st.sampled_from(USERS)),
            predicted_viewability=draw(st.sampled_from([0.0, 0.5, 0.7, 1.0])
                                       | st.floats(0, 1)),
            predicted_ctr=draw(st.sampled_from([0.0, 0.001, 0.02]) | st.floats(0, 0.2)),
            auction_type=draw(st.sampled_from([1, 2]))))
    return out

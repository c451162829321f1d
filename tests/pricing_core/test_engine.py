import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from pricing_core.accrue import BILLED_IMPRESSION
from pricing_core.campaigns import CampaignSpec
from pricing_core.engine import PricingEngine
from pricing_core.evaluate import REASON_BUDGET, REASON_FREQUENCY
from pricing_core.opportunities import Opportunity, user_key_hash

NOW = 100 * 86400 + 3600.0


def _spec(cid, **kw):
    base = dict(id=cid, advertiser_domain="adv.com", pricing_model="cpm",
                bid_micros=1_000_000, max_bid_micros=10 ** 9, budget_total_micros=10 ** 9)
    base.update(kw)
    return CampaignSpec(**base)


def _opp(**kw):
    base = dict(format="banner", w=300, h=250, domain="a.com", device_type=2, country="USA",
                categories=(), segments=(), deal_ids=(), floor_micros=0, user_key="u1",
                predicted_viewability=0.5, predicted_ctr=0.01, auction_type=2)
    base.update(kw)
    return Opportunity(**base)


def test_invalid_specs_report_every_error_together():
    with pytest.raises(ValueError) as err:
        PricingEngine([_spec("a", pricing_model="cpx"), _spec("a", pacing="even"),
                       _spec("b", frequency_cap=2, shading_factor=0.0)])
    text = str(err.value)
    for needle in ("pricing_model", "duplicate id", "even pacing", "frequency_window_s",
                   "shading_factor"):
        assert needle in text


def test_a_max_bid_beyond_the_rank_key_is_refused():
    PricingEngine([_spec("a", max_bid_micros=2 ** 32 - 1)])
    with pytest.raises(ValueError, match="max_bid_micros must be at most 4294967295"):
        PricingEngine([_spec("a", max_bid_micros=2 ** 32)])


@pytest.mark.parametrize("field, value", [("predicted_viewability", 1.01),
                                          ("predicted_ctr", -0.5),
                                          ("predicted_ctr", float("nan"))])
def test_predictions_outside_0_1_are_refused(field, value):
    engine = PricingEngine([_spec("a")], clock=lambda: NOW)
    with pytest.raises(ValueError, match=field):
        engine.evaluate([_opp(**{field: value})])


def test_budget_exhaustion_stops_bidding():
    engine = PricingEngine([_spec("a", budget_total_micros=1000)], clock=lambda: NOW)
    assert engine.evaluate([_opp()]).campaign[0] == 0
    assert engine.exhausted_campaigns() == 0
    engine.accrue(0, 1000, BILLED_IMPRESSION)
    assert engine.exhausted_campaigns() == 1
    ev = engine.evaluate([_opp()])
    assert ev.campaign[0] == -1 and ev.no_bid_reason[0] == REASON_BUDGET


def test_frequency_cap_counts_billed_impressions_with_user_keys():
    engine = PricingEngine([_spec("a", frequency_cap=2, frequency_window_s=3600)],
                           clock=lambda: NOW)
    for _ in range(2):
        assert engine.evaluate([_opp()]).campaign[0] == 0
        engine.accrue(0, 1000, BILLED_IMPRESSION, user_key_hash=user_key_hash("u1"))
    assert engine.evaluate([_opp()]).no_bid_reason[0] == REASON_FREQUENCY
    assert engine.evaluate([_opp(user_key="u2")]).campaign[0] == 0


def test_replace_carries_state_of_persisting_ids():
    engine = PricingEngine([_spec("a"), _spec("b")], clock=lambda: NOW)
    engine.accrue([0, 1], [500, 700], [BILLED_IMPRESSION] * 2)
    engine.replace([_spec("c"), _spec("b", budget_total_micros=700)])
    snap = engine.snapshot()
    assert snap["ids"] == ("c", "b")
    assert list(snap["spend_micros"]) == [0, 700]
    assert list(snap["exhausted"]) == [0, 1]


def test_daily_budget_resets_at_the_utc_day_boundary():
    now = [NOW]
    engine = PricingEngine([_spec("a", budget_daily_micros=1000)], clock=lambda: now[0])
    engine.accrue(0, 1000, BILLED_IMPRESSION)
    assert engine.evaluate([_opp()]).campaign[0] == -1
    now[0] += 86400
    assert engine.evaluate([_opp()]).campaign[0] == 0
    assert engine.snapshot()["spend_micros"][0] == 1000


def test_concurrent_evaluate_and_accrue_book_every_event():
    engine = PricingEngine([_spec(f"c{i}") for i in range(50)], clock=lambda: NOW)
    engine.warm()
    batch = engine.encode([_opp()] * 100)

    def bid():
        for _ in range(20):
            assert (engine.evaluate(batch).campaign == 0).all()

    threads = [threading.Thread(target=bid) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(50):
        engine.accrue(np.arange(50), np.full(50, 10), np.zeros(50, np.int8))
    for t in threads:
        t.join()
    assert engine.snapshot()["spend_micros"].sum() == 50 * 50 * 10


def test_bench_quick_json_has_positive_figures():
    out = subprocess.run([sys.executable, "-m", "pricing_core.bench", "--quick", "--json"],
                         capture_output=True, text=True, check=True, timeout=600)
    res = json.loads(out.stdout)
    for key in ("evaluate_checks_per_s", "evaluate_parallel_checks_per_s",
                "evaluate_numpy_ratio", "evaluate_python_ratio", "evaluate_p99_us_100k",
                "accrue_events_per_s", "accrue_bincount_ratio", "ready_s"):
        assert isinstance(res[key], (int, float)) and res[key] > 0, key

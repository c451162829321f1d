import math

import pytest

from pricing_core.money import (cached_price_to_micros, cpm_cost_micros, impression_cost_micros, micros_to_price,
                                price_to_micros)


@pytest.mark.parametrize("price, micros", [
    (0.0, 0),
    (1.0, 1_000_000),
    (0.85, 850_000),
    (0.91, 910_000),
    (0.1, 100_000),
    (1.2345675, 1_234_568),   # half a micro rounds away from zero
    (1.2345665, 1_234_567),
    (0.0000005, 1),
    (0.0000004, 0),
    (12.999999, 12_999_999),
    (6, 6_000_000),
])
def test_price_to_micros_rounds_half_away_from_zero(price, micros):
    assert price_to_micros(price) == micros


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.01, "1.0", None, True])
def test_price_to_micros_rejects_non_finite_negative_and_non_numbers(bad):
    with pytest.raises(ValueError):
        price_to_micros(bad)


def test_micros_to_price_is_the_inverse_on_the_wire():
    assert micros_to_price(910_000) == 0.91
    assert price_to_micros(micros_to_price(1_234_567)) == 1_234_567


@pytest.mark.parametrize("cpm_micros, per_impression", [
    (6_000_000, 6000), (910_000, 910), (1_234_567, 1235), (1_234_499, 1234), (500, 1),
    (499, 0), (0, 0)])
def test_impression_cost_is_cpm_over_1000_rounded_half_away(cpm_micros, per_impression):
    assert impression_cost_micros(cpm_micros) == per_impression


def test_six_dollar_cpm_on_4_92m_served_is_29520_dollars():
    assert cpm_cost_micros(4_920_000, price_to_micros(6.00)) == price_to_micros(29_520.0)
    assert impression_cost_micros(6_000_000) * 4_920_000 == 29_520 * 1_000_000


def test_the_cached_conversion_agrees_and_still_refuses_what_the_exact_one_refuses():
    assert [cached_price_to_micros(p) for p in (1.0, 0.1, 1.0000005, 1.0)] == [1_000_000, 100_000, 1_000_001,
                                                                               1_000_000]
    # 1.0 is remembered; True equals it but is not a price.
    with pytest.raises(ValueError):
        cached_price_to_micros(True)
    with pytest.raises(ValueError):
        cached_price_to_micros(math.nan)

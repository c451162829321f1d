import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_core.clear import clear, clear_batch
from pricing_core.money import price_to_micros
from pricing_core.reference import clear_reference

FLOOR = price_to_micros(0.85)      # OpenRTB 2.6 §4.4.1 examples
INCREMENT = price_to_micros(0.01)
INVALID = -1
EMPTY = -1

# OpenRTB 2.6 §4.4.1, first-price table: bid, ${AUCTION_PRICE}, ${AUCTION_MIN_TO_WIN}
FIRST_PRICE_TABLE = [
    (1.00, 1.00, 0.90),
    (0.90, None, 1.00),
    (0.80, None, 1.00),
    ("Invalid", None, ""),
]
# §4.4.1, second-price table (clearing = second-best + $0.01)
SECOND_PRICE_TABLE = [
    (1.00, 0.91, 0.90),
    (0.90, None, 0.91),
    (0.80, None, 0.91),
    ("Invalid", None, ""),
]


def _micros(value):
    return INVALID if value == "Invalid" else price_to_micros(value)


@pytest.mark.parametrize("auction_type, table", [(1, FIRST_PRICE_TABLE),
                                                 (2, SECOND_PRICE_TABLE)])
@pytest.mark.parametrize("row", range(4))
def test_auction_min_to_win_matches_openrtb_4_4_1_tables(auction_type, table, row):
    bids = np.array([_micros(r[0]) for r in table], np.int64)
    winner, price, min_to_win = clear(bids, FLOOR, auction_type, INCREMENT)
    bid, auction_price, expected_min = table[row]
    if auction_price is None:
        assert winner != row
    else:
        assert winner == row
        assert price == price_to_micros(auction_price)
    assert min_to_win[row] == (EMPTY if expected_min == "" else price_to_micros(expected_min))


def test_bids_below_floor_cannot_win_and_learn_the_floor():
    winner, price, mtw = clear(np.array([800_000, 840_000]), FLOOR, 2, INCREMENT)
    assert (winner, price) == (-1, 0)
    assert list(mtw) == [FLOOR, FLOOR]


def test_ties_go_to_the_lowest_index():
    winner, price, mtw = clear(np.array([900_000, 1_000_000, 1_000_000]), FLOOR, 2, INCREMENT)
    assert winner == 1
    assert price == 1_000_000   # second price never exceeds the winning bid
    assert list(mtw) == [1_000_000, 1_000_000, 1_000_000]


def test_single_bid_second_price_clears_at_floor_plus_increment():
    winner, price, mtw = clear(np.array([1_000_000]), FLOOR, 2, INCREMENT)
    assert (winner, price, list(mtw)) == (0, FLOOR + INCREMENT, [FLOOR])


def test_empty_auction_has_no_winner():
    winner, price, mtw = clear(np.array([], np.int64), FLOOR, 1, INCREMENT)
    assert (winner, price, len(mtw)) == (-1, 0, 0)


bid_values = st.sampled_from([-1, 0, 500_000, 850_000, 850_001, 900_000, 1_000_000]) | \
    st.integers(-1, 3_000_000)


@settings(max_examples=300, deadline=None)
@given(bids=st.lists(bid_values, max_size=12), floor=st.integers(0, 2_000_000),
       auction_type=st.sampled_from([1, 2]), increment=st.integers(0, 50_000))
def test_clear_agrees_with_reference(bids, floor, auction_type, increment):
    winner, price, mtw = clear(np.array(bids, np.int64), floor, auction_type, increment)
    assert (winner, price, list(mtw)) == clear_reference(bids, floor, auction_type, increment)


@settings(max_examples=100, deadline=None)
@given(auctions=st.lists(st.tuples(st.lists(bid_values, max_size=6), st.integers(0, 2_000_000),
                                   st.sampled_from([1, 2])), max_size=8),
       increment=st.integers(0, 50_000))
def test_clear_batch_agrees_with_reference(auctions, increment):
    bids = np.array([b for a in auctions for b in a[0]], np.int64)
    offsets = np.cumsum([0] + [len(a[0]) for a in auctions]).astype(np.int64)
    n = len(auctions)
    winners, prices, mtw = np.zeros(n, np.int32), np.zeros(n, np.int64), np.zeros(len(bids),
                                                                                np.int64)
    clear_batch(bids, offsets, np.array([a[1] for a in auctions], np.int64),
                np.array([a[2] for a in auctions], np.int8), np.int64(increment), winners,
                prices, mtw)
    for a, (b, floor, at) in enumerate(auctions):
        w, p, m = clear_reference(b, floor, at, increment)
        assert (winners[a], prices[a]) == (w, p)
        assert list(mtw[offsets[a]:offsets[a + 1]]) == m

"""Auction clearing, table-first: OpenRTB 2.6 §4.4.1 (floor $0.85; second
price is the second-best price plus $0.01)."""

from __future__ import annotations

import pytest

from services.ssp.auction import LOSS_BELOW_FLOOR, LOSS_LOST_TO_HIGHER_BID, LOSS_WON, clear, clear_many

FLOOR = 850_000
INCREMENT = 10_000
BIDS = [1_000_000, 900_000, 800_000]


@pytest.mark.parametrize("auction_type, price, min_to_win", [
    # First price: the winner pays its bid; it needed only $0.90; losers needed $1.00.
    (1, 1_000_000, [900_000, 1_000_000, 1_000_000]),
    # Second price: the winner pays $0.91; it needed $0.90; losers needed $0.91.
    (2, 910_000, [900_000, 910_000, 910_000]),
])
def test_the_spec_tables_for_auction_price_and_min_to_win(auction_type, price, min_to_win):
    outcome = clear(BIDS, FLOOR, auction_type, INCREMENT)
    assert outcome.winner == 0
    assert outcome.clearing_price_micros == price
    assert list(outcome.min_to_win_micros) == min_to_win
    assert list(outcome.loss_codes) == [LOSS_WON, LOSS_LOST_TO_HIGHER_BID, LOSS_BELOW_FLOOR]


def test_a_lone_bid_pays_the_floor_plus_increment_and_needed_the_floor():
    outcome = clear([2_000_000], FLOOR, 2, INCREMENT)
    assert (outcome.clearing_price_micros, outcome.min_to_win_micros[0]) == (860_000, FLOOR)


def test_second_price_never_exceeds_the_winning_bid():
    outcome = clear([855_000], FLOOR, 2, INCREMENT)
    assert outcome.clearing_price_micros == 855_000


def test_no_bid_at_or_above_the_floor_clears_nothing():
    outcome = clear([800_000, 700_000], FLOOR, 2, INCREMENT)
    assert outcome.winner is None
    assert list(outcome.loss_codes) == [LOSS_BELOW_FLOOR, LOSS_BELOW_FLOOR]


def test_ties_go_to_the_earlier_bid():
    assert clear([1_000_000, 1_000_000], FLOOR, 1, INCREMENT).winner == 0


def test_many_auctions_cleared_at_once_have_the_outcomes_each_has_alone():
    auctions = [  # (bids, floor, auction type)
        (BIDS, FLOOR, 1), (BIDS, FLOOR, 2), ([2_000_000], FLOOR, 2), ([], FLOOR, 2),
        ([800_000, 700_000], FLOOR, 2), ([1_000_000, 1_000_000], FLOOR, 1), ([855_000], FLOOR, 2),
    ]
    together = clear_many([a[0] for a in auctions], [a[1] for a in auctions], [a[2] for a in auctions], INCREMENT)
    assert together == [clear(bids, floor, at, INCREMENT) for bids, floor, at in auctions]

"""clear: the SSP's auction. Picks the winner among bids (int64 micros, CPM), prices it
(first price or second price plus increment) and fills ${AUCTION_MIN_TO_WIN} per bid as
OpenRTB 2.6 §4.4.1 lays out.

Rules:
- A bid < 0 marks an invalid bid (not allowed into the auction): it cannot win and its
  min-to-win is -1, i.e. the empty string.
- Only bids >= floor can win. The highest wins; ties go to the lowest index.
- Clearing price: first price -> the winning bid. Second price -> max(second-highest valid
  bid, floor) + increment, never more than the winning bid.
- Min to win (§4.4.1): the winner gets max(next-closest bid, floor) ("the floor if there
  was only one bid"); a loser gets the price needed to tie the winner: the winning bid in
  first price, the clearing price in second price (the §4.4.1 tables: $0.91, not $1.00).
  Bids below the floor are losers too (the tables give $0.80 a min-to-win). With no
  winner, every valid bid gets the floor.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel

_FIRST_PRICE = 1


@kernel()
def _clear_one(bids_micros, lo, hi, floor_micros, auction_type, increment_micros,
               out_min_to_win):
    winner = -1
    winner_bid = np.int64(-1)
    for k in range(lo, hi):
        b = bids_micros[k]
        if b >= floor_micros and b > winner_bid:
            winner = k
            winner_bid = b
    second_bid = np.int64(-1)
    for k in range(lo, hi):
        if k != winner and bids_micros[k] > second_bid:
            second_bid = bids_micros[k]
    if winner < 0:
        for k in range(lo, hi):
            out_min_to_win[k] = floor_micros if bids_micros[k] >= 0 else -1
        return -1, np.int64(0)
    if auction_type == _FIRST_PRICE:
        price = winner_bid
    else:
        price = max(second_bid, floor_micros) + increment_micros
        if price > winner_bid:
            price = winner_bid
    loser_min = winner_bid if auction_type == _FIRST_PRICE else price
    for k in range(lo, hi):
        if bids_micros[k] < 0:
            out_min_to_win[k] = -1
        elif k == winner:
            out_min_to_win[k] = max(second_bid, floor_micros)
        else:
            out_min_to_win[k] = loser_min
    return winner - lo, price


@kernel()
def clear_kernel(bids_micros, floor_micros, auction_type, increment_micros, out_min_to_win):
    return _clear_one(bids_micros, 0, len(bids_micros), floor_micros, auction_type,
                      increment_micros, out_min_to_win)


@kernel()
def clear_batch(bids_micros, offsets, floor_micros, auction_type, increment_micros,
                out_winner, out_price_micros, out_min_to_win):
    """Many auctions at once: auction a holds bids[offsets[a]:offsets[a+1]]; out_winner is
    the index within the auction (-1 none)."""
    for a in range(len(floor_micros)):
        w, p = _clear_one(bids_micros, offsets[a], offsets[a + 1], floor_micros[a],
                          auction_type[a], increment_micros, out_min_to_win)
        out_winner[a] = w
        out_price_micros[a] = p


def clear(bids_micros: np.ndarray, floor_micros: int, auction_type: int,
          increment_micros: int) -> tuple[int, int, np.ndarray]:
    """(winner index or -1, clearing price micros (0 when none), min-to-win micros per bid
    with -1 meaning the empty string)."""
    if auction_type not in (1, 2):
        raise ValueError("auction_type must be 1 (first price) or 2 (second price)")
    if floor_micros < 0 or increment_micros < 0:
        raise ValueError("floor_micros and increment_micros must be non-negative")
    bids = np.ascontiguousarray(bids_micros, dtype=np.int64)
    min_to_win = np.empty(len(bids), np.int64)
    winner, price = clear_kernel(bids, np.int64(floor_micros), np.int64(auction_type),
                                 np.int64(increment_micros), min_to_win)
    return int(winner), int(price), min_to_win

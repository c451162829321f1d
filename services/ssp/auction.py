"""Clearing one impression's auction: floor enforcement, first price or
second price plus, the loss reason and ${AUCTION_MIN_TO_WIN} for every bid
(OpenRTB 2.6 §4.4.1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# OpenRTB 3.0 loss reason codes the exchange reports.
LOSS_WON = 0
LOSS_INVALID_BID_RESPONSE = 3
LOSS_BELOW_FLOOR = 100
LOSS_LOST_TO_HIGHER_BID = 102


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Index of the winning bid (None when nothing cleared), what it pays, and
    per bid its loss code and min-to-win (None is the spec's empty string)."""

    winner: int | None
    clearing_price_micros: int
    loss_codes: tuple[int, ...]
    min_to_win_micros: tuple[int | None, ...]


def clear(bids_micros: Sequence[int], floor_micros: int, auction_type: int, increment_micros: int) -> Outcome:
    """Highest bid at or above the floor wins; ties go to the earlier bid."""
    eligible = [i for i, b in enumerate(bids_micros) if b >= floor_micros]
    if not eligible:
        return Outcome(None, 0, tuple(LOSS_BELOW_FLOOR for _ in bids_micros), tuple(None for _ in bids_micros))
    winner = max(eligible, key=lambda i: (bids_micros[i], -i))
    others = [bids_micros[i] for i in range(len(bids_micros)) if i != winner]
    runner_up = max(others) if others else None
    if auction_type == 1:
        price = bids_micros[winner]
    else:
        # Second price plus: the next bid (not below the floor) plus the
        # increment, never above the winner's own bid.
        base = max(runner_up if runner_up is not None else floor_micros, floor_micros)
        price = min(base + increment_micros, bids_micros[winner])
    # §4.4.1: the winner's min-to-win ties the next-closest bid (or the floor
    # when it was alone); a loser's ties what the winner paid (first price:
    # the winning bid; second price: the clearing price).
    winner_mtw = max(runner_up, floor_micros) if runner_up is not None else floor_micros
    loss_codes, mtw = [], []
    for i, bid in enumerate(bids_micros):
        if i == winner:
            loss_codes.append(LOSS_WON)
            mtw.append(winner_mtw)
        else:
            loss_codes.append(LOSS_BELOW_FLOOR if bid < floor_micros else LOSS_LOST_TO_HIGHER_BID)
            mtw.append(price)
    return Outcome(winner, price, tuple(loss_codes), tuple(mtw))

"""Clearing one impression's auction through pricing_core: floor enforcement,
first price or second price plus, and for every bid its loss reason and
${AUCTION_MIN_TO_WIN} (OpenRTB 2.6 §4.4.1)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from pricing_core import clear as pricing_clear

# OpenRTB 3.0 loss reason codes the exchange reports.
LOSS_WON = 0
LOSS_BELOW_FLOOR = 100
LOSS_LOST_TO_HIGHER_BID = 102


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """Index of the winning bid (None when nothing cleared), what it pays, and
    per bid its loss code and min-to-win (None is the spec's empty string)."""

    winner: int | None
    clearing_price_micros: int
    loss_codes: tuple[int, ...]
    min_to_win_micros: tuple[int | None, ...]


def clear(bids_micros: Sequence[int], floor_micros: int, auction_type: int, increment_micros: int) -> Outcome:
    """The highest bid at or above the floor wins; ties go to the earlier bid."""
    winner, price, min_to_win = pricing_clear.clear(np.asarray(bids_micros, dtype=np.int64), floor_micros,
                                                    auction_type, increment_micros)
    loss_codes = tuple(
        LOSS_WON if i == winner else LOSS_BELOW_FLOOR if bid < floor_micros else LOSS_LOST_TO_HIGHER_BID
        for i, bid in enumerate(bids_micros))
    return Outcome(
        winner=None if winner < 0 else winner,
        clearing_price_micros=price,
        loss_codes=loss_codes,
        min_to_win_micros=tuple(None if m < 0 else int(m) for m in min_to_win),
    )


def clear_many(bids_micros: Sequence[Sequence[int]], floors_micros: Sequence[int], auction_types: Sequence[int],
               increment_micros: int) -> list[Outcome]:
    """Many single-Imp auctions cleared in one kernel call, auction a among
    bids_micros[a] under floors_micros[a]: the same outcomes as `clear` on
    each, without a kernel call and its array conversions per auction."""
    offsets = np.zeros(len(bids_micros) + 1, np.int64)
    np.cumsum([len(bids) for bids in bids_micros], out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(bids_micros), np.int64, int(offsets[-1]))
    winners = np.empty(len(bids_micros), np.int64)
    prices = np.empty(len(bids_micros), np.int64)
    min_to_win = np.empty(len(flat), np.int64)
    pricing_clear.clear_batch(flat, offsets, np.asarray(floors_micros, np.int64),
                              np.asarray(auction_types, np.int64), np.int64(increment_micros),
                              winners, prices, min_to_win)
    min_to_win_list, offsets_list = min_to_win.tolist(), offsets.tolist()
    outcomes = []
    for a, (winner, price, bids, floor) in enumerate(zip(winners.tolist(), prices.tolist(), bids_micros,
                                                        floors_micros)):
        lo = offsets_list[a]
        outcomes.append(Outcome(
            winner=None if winner < 0 else winner,
            clearing_price_micros=price,
            loss_codes=tuple(LOSS_WON if i == winner else LOSS_BELOW_FLOOR if bid < floor else LOSS_LOST_TO_HIGHER_BID
                             for i, bid in enumerate(bids)),
            min_to_win_micros=tuple(None if m < 0 else m for m in min_to_win_list[lo:lo + len(bids)]),
        ))
    return outcomes


def warm() -> None:
    """Compile (or load from cache) the clearing kernels before serving."""
    clear([2, 1], 0, 2, 1)
    clear_many([[2, 1], []], [0, 0], [2, 1], 1)

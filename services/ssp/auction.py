"""Clearing one impression's auction through pricing_core: floor enforcement,
first price or second price plus, and for every bid its loss reason and
${AUCTION_MIN_TO_WIN} (OpenRTB 2.6 §4.4.1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pricing_core import clear as pricing_clear

# OpenRTB 3.0 loss reason codes the exchange reports.
LOSS_WON = 0
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


def warm() -> None:
    """Compile (or load from cache) the clearing kernel before serving."""
    clear([2, 1], 0, 2, 1)

"""Money at the edge: OpenRTB float prices in, int64 micros out, converted exactly once.

The rounding rule (the only one in pricing_core): a float price in currency units becomes
micros (10^-6 units) by rounding half away from zero to the nearest micro. NaN, infinities
and negative prices are rejected with ValueError. The decimal expansion of the float's repr
is used, so 0.1 -> 100000 micros and 1.0000005 -> 1000001 micros (not the binary value).

A CPM price of C micros is C micros per thousand impressions. One billed impression costs
C / 1000 micros; that division happens once, at the edge, in `impression_cost_micros`, with
the same rounding rule. From then on the per-impression cost in micros IS the billed price
that `accrue` sums, so the sum of accrued spend equals the sum of billed prices to the micro.
"""
from __future__ import annotations

import functools
import math
from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_UNIT = 1_000_000
IMPRESSIONS_PER_MILLE = 1000


def price_to_micros(price: float) -> int:
    """Float price (currency units, e.g. OpenRTB `bid.price` or `imp.bidfloor`) -> micros.

    Round half away from zero on the shortest decimal repr of the float (ROUND_HALF_UP in
    `decimal` rounds away from zero); prices are non-negative, so this is also half-up.
    """
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        raise ValueError(f"price must be a number, got {price!r}")
    if not math.isfinite(price):
        raise ValueError(f"price must be finite, got {price!r}")
    if price < 0:
        raise ValueError(f"price must be non-negative, got {price!r}")
    micros = (Decimal(repr(float(price))) * MICROS_PER_UNIT).quantize(
        Decimal(1), rounding=ROUND_HALF_UP)
    return int(micros)


# The same conversion, remembered per distinct float (typed: 1 and 1.0 and
# True are kept apart, so a bool is still refused). Prices on the wire repeat
# (a campaign's bid, a placement's floor), so a service converts each once.
cached_price_to_micros = functools.lru_cache(maxsize=4096, typed=True)(price_to_micros)


def micros_to_price(micros: int) -> float:
    """Micros -> float currency units, for the OpenRTB wire only (never summed)."""
    return int(micros) / MICROS_PER_UNIT


def _div_round_half_away(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def impression_cost_micros(cpm_micros: int) -> int:
    """Cost of one impression at a CPM of `cpm_micros`: cpm/1000, rounded half away from
    zero to the micro. This is the per-event price handed to `accrue` for billed
    impressions (CPM) and viewable impressions (vCPM)."""
    if cpm_micros < 0:
        raise ValueError(f"cpm_micros must be non-negative, got {cpm_micros}")
    return _div_round_half_away(int(cpm_micros), IMPRESSIONS_PER_MILLE)


def cpm_cost_micros(impressions: int, cpm_micros: int) -> int:
    """Cost of `impressions` at one CPM, rounded once for the whole count (for invoices and
    reconciliation: $6 CPM on 4.92M impressions is $29,520). Per-event accrual rounds each
    impression instead; the two agree whenever cpm_micros is a multiple of 1000."""
    if impressions < 0 or cpm_micros < 0:
        raise ValueError("impressions and cpm_micros must be non-negative")
    return _div_round_half_away(int(impressions) * int(cpm_micros), IMPRESSIONS_PER_MILLE)

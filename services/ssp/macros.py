"""OpenRTB 2.6 §4.4 substitution macros, resolved by the exchange in notice
URLs and ad markup before they are delivered."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

from adchain.v1 import bidder_pb2

MACROS = (
    "AUCTION_ID", "AUCTION_BID_ID", "AUCTION_IMP_ID", "AUCTION_SEAT_ID", "AUCTION_AD_ID", "AUCTION_PRICE",
    "AUCTION_CURRENCY", "AUCTION_MBR", "AUCTION_LOSS", "AUCTION_MIN_TO_WIN", "AUCTION_MULTIPLIER",
    "AUCTION_IMP_TS", "AUCTION_DISCOUNT_PCT", "AUCTION_DISCOUNT_CPM",
)
# §4.4 best practice: markup rendered for test or ad-quality review carries
# this wherever a value (the clearing price, say) is not known.
AUDIT = "AUDIT"


def _optional_price(field: str) -> Callable[[bidder_pb2.AuctionMacros], str]:
    return lambda m: _price(getattr(m, field)) if m.HasField(field) else ""


# Macro name -> its text for one notice. Prices go out as CPMs in the currency
# unit, as the bid's price was; a value that was not specified is removed
# (the empty string, §4.4). adchain's exchange gives no discounts.
_VALUES: dict[str, Callable[[bidder_pb2.AuctionMacros], str]] = {
    "AUCTION_ID": lambda m: m.auction_id,
    "AUCTION_BID_ID": lambda m: m.bid_id,
    "AUCTION_IMP_ID": lambda m: m.imp_id,
    "AUCTION_SEAT_ID": lambda m: m.seat_id,
    "AUCTION_AD_ID": lambda m: m.ad_id,
    "AUCTION_PRICE": _optional_price("price_micros"),
    "AUCTION_CURRENCY": lambda m: m.currency,
    "AUCTION_MBR": _optional_price("mbr_millionths"),
    "AUCTION_LOSS": lambda m: str(m.loss),
    "AUCTION_MIN_TO_WIN": _optional_price("min_to_win_micros"),
    "AUCTION_MULTIPLIER": _optional_price("multiplier_millionths"),
    "AUCTION_IMP_TS": lambda m: str(m.imp_ts_ms) if m.imp_ts_ms else "",
    "AUCTION_DISCOUNT_PCT": lambda m: "",
    "AUCTION_DISCOUNT_CPM": lambda m: "",
}
_MACRO = re.compile(r"\$\{(AUCTION_[A-Z_]+)\}")


def values(macros: bidder_pb2.AuctionMacros) -> dict[str, str]:
    """Macro name -> substituted text, for every §4.4 macro."""
    return {name: value(macros) for name, value in _VALUES.items()}


def audit_values(macros: bidder_pb2.AuctionMacros) -> dict[str, str]:
    """Values for markup rendered outside an auction (test, ad quality):
    whatever is unknown becomes AUDIT rather than disappearing."""
    return {name: value or AUDIT for name, value in values(macros).items()}


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """Every ${NAME} in `text` whose name is in `replacements`, replaced in
    one pass (a substituted value is never read for macros again); other
    text, unknown macros included, stays as it is."""
    if "${" not in text:
        return text
    return _MACRO.sub(lambda found: replacements.get(found.group(1), found.group(0)), text)


def expand(text: str, macros: bidder_pb2.AuctionMacros) -> str:
    """`substitute(text, values(macros))`, working out only the macros that
    `text` names: a notice URL or an ad's markup names a few of them."""
    if "${" not in text:
        return text
    parts = _template(text)
    out = [parts[0]]
    for k in range(1, len(parts), 2):
        resolve = _VALUES.get(parts[k])
        out.append("${" + parts[k] + "}" if resolve is None else resolve(macros))
        out.append(parts[k + 1])
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _template(text: str) -> tuple[str, ...]:
    """`text` split at its macros: literal, name, literal, ..., literal. A
    campaign's notice URLs and markup repeat on every bid, so each is split once."""
    return tuple(_MACRO.split(text))


def _price(micros: int) -> str:
    # Exact decimal text of an int64 micros amount: 910000 -> "0.91".
    whole, frac = divmod(micros, 1_000_000)
    text = f"{whole}.{frac:06d}".rstrip("0")
    return text[:-1] if text.endswith(".") else text

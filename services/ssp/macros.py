"""OpenRTB 2.6 §4.4 substitution macros, resolved by the exchange in notice
URLs and ad markup before they are delivered."""

from __future__ import annotations

from collections.abc import Mapping

from adchain.v1 import bidder_pb2

MACROS = (
    "AUCTION_ID", "AUCTION_BID_ID", "AUCTION_IMP_ID", "AUCTION_SEAT_ID", "AUCTION_AD_ID", "AUCTION_PRICE",
    "AUCTION_CURRENCY", "AUCTION_MBR", "AUCTION_LOSS", "AUCTION_MIN_TO_WIN", "AUCTION_MULTIPLIER",
    "AUCTION_IMP_TS", "AUCTION_DISCOUNT_PCT", "AUCTION_DISCOUNT_CPM",
)
# §4.4 best practice: markup rendered for test or ad-quality review carries
# this wherever a value (the clearing price, say) is not known.
AUDIT = "AUDIT"


def values(macros: bidder_pb2.AuctionMacros) -> dict[str, str]:
    """Macro name -> substituted text. Prices go out as CPMs in the currency
    unit, as the bid's price was; a value that was not specified is removed
    (the empty string, §4.4). adchain's exchange gives no discounts."""
    return {
        "AUCTION_ID": macros.auction_id,
        "AUCTION_BID_ID": macros.bid_id,
        "AUCTION_IMP_ID": macros.imp_id,
        "AUCTION_SEAT_ID": macros.seat_id,
        "AUCTION_AD_ID": macros.ad_id,
        "AUCTION_PRICE": _price(macros.price_micros) if macros.HasField("price_micros") else "",
        "AUCTION_CURRENCY": macros.currency,
        "AUCTION_MBR": _price(macros.mbr_millionths) if macros.HasField("mbr_millionths") else "",
        "AUCTION_LOSS": str(macros.loss),
        "AUCTION_MIN_TO_WIN": _price(macros.min_to_win_micros) if macros.HasField("min_to_win_micros") else "",
        "AUCTION_MULTIPLIER": (_price(macros.multiplier_millionths) if macros.HasField("multiplier_millionths")
                               else ""),
        "AUCTION_IMP_TS": str(macros.imp_ts_ms) if macros.imp_ts_ms else "",
        "AUCTION_DISCOUNT_PCT": "",
        "AUCTION_DISCOUNT_CPM": "",
    }


def audit_values(macros: bidder_pb2.AuctionMacros) -> dict[str, str]:
    """Values for markup rendered outside an auction (test, ad quality):
    whatever is unknown becomes AUDIT rather than disappearing."""
    return {name: value or AUDIT for name, value in values(macros).items()}


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    if "${" not in text:
        return text
    for name, value in replacements.items():
        text = text.replace("${" + name + "}", value)
    return text


def _price(micros: int) -> str:
    # Exact decimal text of an int64 micros amount: 910000 -> "0.91".
    whole, frac = divmod(micros, 1_000_000)
    text = f"{whole}.{frac:06d}".rstrip("0")
    return text[:-1] if text.endswith(".") else text

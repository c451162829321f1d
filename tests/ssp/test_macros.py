"""OpenRTB 2.6 §4.4 substitution macros."""

from __future__ import annotations

from adchain.v1 import bidder_pb2
from services.ssp.macros import substitute, values


def test_every_macro_is_substituted_with_the_auction_values():
    notice = bidder_pb2.AuctionMacros(auction_id="A", bid_id="B", imp_id="1", seat_id="S", ad_id="AD",
                                      price_micros=910_000, currency="USD", min_to_win_micros=900_000, loss=0,
                                      imp_ts_ms=1700000000000)
    url = ("https://d.example/win?a=${AUCTION_ID}&b=${AUCTION_BID_ID}&i=${AUCTION_IMP_ID}&s=${AUCTION_SEAT_ID}"
           "&ad=${AUCTION_AD_ID}&p=${AUCTION_PRICE}&c=${AUCTION_CURRENCY}&m=${AUCTION_MIN_TO_WIN}"
           "&l=${AUCTION_LOSS}&t=${AUCTION_IMP_TS}&r=${AUCTION_MBR}")
    assert substitute(url, values(notice)) == (
        "https://d.example/win?a=A&b=B&i=1&s=S&ad=AD&p=0.91&c=USD&m=0.9&l=0&t=1700000000000&r=")


def test_undisclosed_values_are_the_empty_string():
    notice = bidder_pb2.AuctionMacros(auction_id="A", loss=102)
    assert substitute("p=${AUCTION_PRICE}&m=${AUCTION_MIN_TO_WIN}&l=${AUCTION_LOSS}", values(notice)) == "p=&m=&l=102"


def test_prices_are_exact_decimals_of_micros():
    assert values(bidder_pb2.AuctionMacros(price_micros=6_000_000))["AUCTION_PRICE"] == "6"
    assert values(bidder_pb2.AuctionMacros(price_micros=1))["AUCTION_PRICE"] == "0.000001"

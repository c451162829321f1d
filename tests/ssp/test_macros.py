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


def test_audit_values_replace_what_is_unknown():
    from services.ssp.macros import audit_values

    audit = audit_values(bidder_pb2.AuctionMacros(auction_id="A"))
    assert audit["AUCTION_ID"] == "A"
    assert audit["AUCTION_PRICE"] == "AUDIT"  # §4.4 best practice for test and ad-quality rendering


def test_the_winning_ads_markup_carries_the_auction_values():
    from tests.conftest import CAMPAIGNS, banner_request, start_chain, stop_chain

    saved = CAMPAIGNS["dsp-1"][0]
    markup = ("<img src='https://t.example/i?a=${AUCTION_ID}&b=${AUCTION_BID_ID}&i=${AUCTION_IMP_ID}"
              "&s=${AUCTION_SEAT_ID}&p=${AUCTION_PRICE}&c=${AUCTION_CURRENCY}&m=${AUCTION_MBR}"
              "&w=${AUCTION_MIN_TO_WIN}&l=${AUCTION_LOSS}&q=${AUCTION_MULTIPLIER}'>")
    CAMPAIGNS["dsp-1"][0] = {**saved, "adm": markup}
    try:
        chain = start_chain()
    finally:
        CAMPAIGNS["dsp-1"][0] = saved
    try:
        ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
        query = dict(part.split("=", 1) for part in ad.adm.split("?", 1)[1].rstrip("'>").split("&"))
        assert query["a"] == ad.auction_id and query["i"] == "1" and query["s"] == "dsp-1"
        assert query["b"] and "$" not in query["b"]  # BidResponse.bidid
        # Second price plus: paid $5.01 on a $6.00 bid; needed only to tie the $5.00 runner-up.
        assert (query["p"], query["c"], query["m"], query["w"], query["l"]) == ("5.01", "USD", "0.835", "5", "0")
        assert query["q"] == ""  # no quantity multiplier on the Imp: removed, per §4.4
    finally:
        stop_chain(chain)


def test_substitution_is_one_pass_a_value_is_never_read_for_macros():
    # A DSP-chosen id that looks like a macro stays as it came (§4.4 values are data).
    notice = bidder_pb2.AuctionMacros(auction_id="A", bid_id="${AUCTION_PRICE}", price_micros=1_000_000)
    assert substitute("b=${AUCTION_BID_ID}&p=${AUCTION_PRICE}", values(notice)) == "b=${AUCTION_PRICE}&p=1"


def test_expand_equals_substituting_every_value():
    from services.ssp.macros import MACROS, expand

    notice = bidder_pb2.AuctionMacros(auction_id="A", bid_id="B", imp_id="1", price_micros=910_000,
                                      mbr_millionths=500_000, loss=102, multiplier_millionths=2_000_000)
    text = "&".join(f"{name}=${{{name}}}" for name in MACROS) + "&other=${NOT_A_MACRO}"
    assert set(values(notice)) == set(MACROS)
    assert expand(text, notice) == substitute(text, values(notice))
    assert expand("no macros", notice) == "no macros"

"""How the DSP reads OpenRTB 2.6 requests and picks bids through pricing_core."""

from __future__ import annotations

import pytest

from adchain.v1 import openrtb_pb2
from pricing_core.engine import PricingEngine
from services.dsp.bidding import (NBR_BELOW_FLOOR, NBR_BUDGET_EXHAUSTED, NBR_NO_MATCHING_CAMPAIGN, Bidder,
                                  read_request)
from services.dsp.settings import CampaignSettings, DspSettings
from services.runtime.errors import InvalidArgument

DISPLAY = CampaignSettings(id="display", advertiser_domain="a.example", bid_micros=6_000_000,
                           budget_total_micros=10**9, formats=("banner",), sizes=("300x250",))
LEADER = CampaignSettings(id="leader", advertiser_domain="b.example", bid_micros=4_000_000,
                          budget_total_micros=10**9, formats=("banner",), sizes=("728x90",), device_types=(2,))


def bidder(*campaigns: CampaignSettings) -> Bidder:
    return Bidder(campaigns, DspSettings(), PricingEngine([c.spec() for c in campaigns]))


def request(**imp) -> openrtb_pb2.BidRequest:
    return openrtb_pb2.BidRequest(id="r", imp=[openrtb_pb2.Imp(id="1", **imp)], site=openrtb_pb2.Site(domain="s"),
                                  device=openrtb_pb2.Device(devicetype=2))


def decide(b: Bidder, req: openrtb_pb2.BidRequest):
    return b.decide(*read_request(req))


def test_every_size_a_banner_slot_accepts_is_evaluated():
    req = request(banner=openrtb_pb2.Banner(format=[openrtb_pb2.Format(w=728, h=90),
                                                    openrtb_pb2.Format(w=300, h=250)]))
    (decision,) = decide(bidder(DISPLAY, LEADER), req)
    assert (decision.campaign.id, decision.size, decision.bid_micros) == ("display", (300, 250), 6_000_000)


def test_no_matching_campaign_answers_nbr_501():
    (decision,) = decide(bidder(DISPLAY), request(video=openrtb_pb2.Video(w=640, h=360)))
    assert (decision.campaign, decision.nbr) == (None, NBR_NO_MATCHING_CAMPAIGN)


def test_a_floor_above_the_bid_answers_nbr_502():
    (decision,) = decide(bidder(DISPLAY), request(banner=openrtb_pb2.Banner(w=300, h=250), bidfloor=7.0))
    assert decision.nbr == NBR_BELOW_FLOOR


def test_a_spent_budget_answers_nbr_503():
    spent = CampaignSettings(id="spent", advertiser_domain="a.example", bid_micros=6_000_000,
                             budget_total_micros=0, formats=("banner",))
    (decision,) = decide(bidder(spent), request(banner=openrtb_pb2.Banner(w=300, h=250)))
    assert decision.nbr == NBR_BUDGET_EXHAUSTED


def test_first_price_shades_the_bid():
    shaded = CampaignSettings(id="shaded", advertiser_domain="a.example", bid_micros=6_000_000,
                              budget_total_micros=10**9, shading_factor=0.8, formats=("banner",))
    first = request(banner=openrtb_pb2.Banner(w=300, h=250))
    first.at = 1
    second = request(banner=openrtb_pb2.Banner(w=300, h=250))
    assert decide(bidder(shaded), first)[0].bid_micros == 4_800_000
    assert decide(bidder(shaded), second)[0].bid_micros == 6_000_000  # OpenRTB default at = 2


def test_the_imps_floor_is_converted_to_micros_once():
    (_context, (placement,)) = read_request(request(banner=openrtb_pb2.Banner(w=1, h=1), bidfloor=0.85))
    assert placement.floor_micros == 850_000


def test_a_site_request_reads_its_domain_categories_and_every_distinct_size():
    req = request(banner=openrtb_pb2.Banner(w=300, h=250, format=[
        openrtb_pb2.Format(w=300, h=250), openrtb_pb2.Format(w=0, h=90), openrtb_pb2.Format(w=728, h=90)]))
    req.site.cat.extend(["IAB1", "IAB2"])
    req.site.content.cat.append("IAB3")
    context, (placement,) = read_request(req)
    assert (context.domain, context.categories) == ("s", ("IAB1", "IAB2", "IAB3"))
    assert placement.sizes == ((300, 250), (728, 90))


@pytest.mark.parametrize("app, domain", [
    (openrtb_pb2.App(bundle="com.example.app", domain="app.example"), "com.example.app"),
    (openrtb_pb2.App(domain="app.example"), "app.example"),
])
def test_an_app_request_is_known_by_its_bundle_else_its_domain(app, domain):
    req = openrtb_pb2.BidRequest(id="r", imp=[openrtb_pb2.Imp(id="1", video=openrtb_pb2.Video(w=640, h=360))],
                                 app=app)
    req.app.cat.append("IAB9")
    context, (placement,) = read_request(req)
    assert (context.domain, context.categories, placement.sizes) == (domain, ("IAB9",), ((640, 360),))


def test_an_empty_floor_currency_is_read_as_usd():
    req = request(banner=openrtb_pb2.Banner(w=300, h=250), bidfloor=1.0, bidfloorcur="")
    (_context, (placement,)) = read_request(req)
    assert placement.floor_micros == 1_000_000


@pytest.mark.parametrize("mutate, field", [
    (lambda r: setattr(r, "id", ""), "id"),
    (lambda r: r.ClearField("imp"), "imp"),
    (lambda r: setattr(r.imp[0], "id", ""), "imp[0].id"),
    (lambda r: setattr(r.imp[0], "bidfloor", -1), "imp[0].bidfloor"),
    (lambda r: setattr(r.imp[0], "bidfloorcur", "EUR"), "imp[0].bidfloorcur"),
    (lambda r: r.imp[0].ClearField("banner"), "imp[0]"),
    (lambda r: setattr(r, "at", 3), "at"),
    (lambda r: r.imp[0].metric.add(type="viewability", value=1.5), "imp[0].metric[0].value"),
    (lambda r: r.imp[0].metric.add(type="click_through_rate", value=-0.1),
     "imp[0].metric[0].value"),
    (lambda r: r.imp[0].metric.add(type="viewability", value=float("nan")),
     "imp[0].metric[0].value"),
])
def test_bad_requests_name_the_field(mutate, field):
    req = request(banner=openrtb_pb2.Banner(w=300, h=250))
    mutate(req)
    with pytest.raises(InvalidArgument) as raised:
        read_request(req)
    assert raised.value.field == field

"""A batch of notices books exactly what the same notices book one call at a
time: the same verdict per item (a refused item's field under items[i]), the
same counts, the same spend to the micro in pricing_core, the same frequency
counts. Two DSPs built from one config, one fed unary calls, one batches."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from adchain.v1 import bidder_pb2, openrtb_pb2
from services.dsp.bidding import NBR_FREQUENCY_CAPPED
from services.dsp.service import DspApp
from services.dsp.settings import DspConfig
from services.runtime import config
from services.runtime.errors import RequestError
from services.runtime.server import RoleContext

NOW_S = 100 * 86400 + 43200.0

CAMPAIGNS = [
    # Spent after two impressions at a $6 CPM (6,000 micros each); two per user.
    {"id": "cpm", "advertiser_domain": "a.example", "bid_micros": 6_000_000, "budget_total_micros": 15_000,
     "frequency_cap": 2, "frequency_window_s": 3600, "formats": ["banner"], "sizes": ["300x250"]},
    {"id": "vcpm", "advertiser_domain": "b.example", "pricing_model": "vcpm", "bid_micros": 8_000_000,
     "budget_total_micros": 10**9, "formats": ["banner"], "sizes": ["728x90"]},
    {"id": "cpc", "advertiser_domain": "c.example", "pricing_model": "cpc", "bid_micros": 500_000,
     "budget_total_micros": 10**9, "formats": ["banner"], "sizes": ["160x600"]},
]


class Dsp:
    def __init__(self):
        settings = config.from_mapping(DspConfig, {"dsp": {"seat": "dsp-t"}, "campaigns": CAMPAIGNS}, env={})
        self.app = DspApp(settings, RoleContext("dsp-t", CollectorRegistry(), clock=lambda: NOW_S))
        self.servicer = self.app.servicers[0].implementation

    def bid(self, user: str, w: int = 300, h: int = 250) -> openrtb_pb2.Bid:
        request = openrtb_pb2.BidRequest(id=f"r-{user}-{w}", imp=[openrtb_pb2.Imp(
            id="1", banner=openrtb_pb2.Banner(w=w, h=h))], user=openrtb_pb2.User(id=user))
        return asyncio.run(self.servicer.Bid(request, None)).seatbid[0].bid[0]

    def counts(self) -> set:
        return {(c.name, c.reason, c.campaign, c.value) for c in self.app.ledger.tally.snapshot().counts}

    def spend(self) -> dict:
        state = self.app.ledger._engine.snapshot()
        return {name: state[name].tolist() for name in ("spend_micros", "impressions", "viewables", "clicks",
                                                         "exhausted")}


def unary_verdicts(method, items) -> list:
    """(counted or None, code, field) per item, one unary call each."""
    verdicts = []
    for item in items:
        try:
            response = method(item, None)
        except RequestError as error:
            verdicts.append((None, error.code.name, error.field))
            continue
        verdicts.append((getattr(response, "counted", None), "OK", ""))
    return verdicts


CODES = {0: "OK", 3: "INVALID_ARGUMENT", 5: "NOT_FOUND"}


def batch_verdicts(results) -> list:
    verdicts = []
    for i, result in enumerate(results):
        if result.status.code:
            prefix = f"items[{i}]."
            assert result.status.field.startswith(prefix)
            verdicts.append((None, CODES[result.status.code], result.status.field[len(prefix):]))
        else:
            verdicts.append((getattr(result.response, "counted", None), "OK", ""))
    return verdicts


def billing(bid: openrtb_pb2.Bid | None, key: str, price_micros: int | None, campaign_id: str | None = None):
    macros = bidder_pb2.AuctionMacros() if price_micros is None else bidder_pb2.AuctionMacros(price_micros=price_micros)
    return bidder_pb2.NotifyBillingRequest(bid_id=bid.id if bid else "", campaign_id=campaign_id or bid.cid,
                                           impression_key=key, macros=macros)


def billings(dsp: Dsp) -> list:
    u1, u1_again, u2, u1_third = dsp.bid("u1"), dsp.bid("u1"), dsp.bid("u2"), dsp.bid("u1")
    return [
        billing(u1, "k1", 6_000_000),
        billing(u1_again, "k2", 6_000_000),
        billing(u2, "k3", None),  # no clearing price: refused
        billing(u1, "k1", 6_000_000),  # the same impression again: not billed twice
        billing(u2, "k4", 1_234_567),  # rounds half away from zero to 1,235 micros
        billing(None, "k5", 6_000_000, campaign_id="nobody"),  # unknown campaign
        billing(u1_third, "k6", 6_000_000),  # past the budget: still booked, the campaign is spent
        billing(None, "k7", 3_000_000, campaign_id="vcpm"),  # vCPM pays on viewable, not here
        billing(u2, "", 6_000_000),  # no impression key
        billing(u2, "k8", -1),  # negative price
    ]


def test_a_batch_of_billings_books_what_the_same_notices_book_one_by_one():
    one_by_one, batched = Dsp(), Dsp()
    unary = unary_verdicts(one_by_one.servicer.NotifyBilling, billings(one_by_one))
    response = batched.servicer.NotifyBillings(bidder_pb2.NotifyBillingsRequest(items=billings(batched)), None)
    assert batch_verdicts(response.results) == unary
    assert [v[1:] for v in unary if v[1] != "OK"] == [
        ("INVALID_ARGUMENT", "macros.price_micros"), ("NOT_FOUND", "campaign_id"),
        ("INVALID_ARGUMENT", "impression_key"), ("INVALID_ARGUMENT", "macros.price_micros")]
    assert [v[0] for v in unary if v[1] == "OK"] == [True, True, False, True, True, True]
    assert batched.counts() == one_by_one.counts()
    assert batched.spend() == one_by_one.spend()
    assert batched.spend()["spend_micros"][0] == 6_000 + 6_000 + 1_235 + 6_000
    # The frequency cap saw the same impressions: u1 has had three (capped at two), u2 one.
    assert frequency_outcomes(one_by_one) == frequency_outcomes(batched) == [NBR_FREQUENCY_CAPPED, 0]


def frequency_outcomes(dsp: Dsp) -> list[int]:
    """Each user's nbr once the budget is raised (spend and frequency counts carry over)."""
    engine = dsp.app.ledger._engine
    engine.replace([dataclasses.replace(spec, budget_total_micros=10**9) for spec in engine.table.specs])
    return [asyncio.run(dsp.servicer.Bid(openrtb_pb2.BidRequest(id="r", imp=[openrtb_pb2.Imp(
        id="1", banner=openrtb_pb2.Banner(w=300, h=250))], user=openrtb_pb2.User(id=user)), None)).nbr
        for user in ("u1", "u2")]


def events(dsp: Dsp) -> list:
    def event(kind, key, campaign_id):
        return bidder_pb2.NotifyEventRequest(kind=kind, impression_key=key, campaign_id=campaign_id)
    return [
        event(bidder_pb2.EVENT_KIND_VIEWABLE, "k1", "vcpm"),  # 8,000 micros
        event(bidder_pb2.EVENT_KIND_CLICK, "k2", "cpc"),  # 500,000 micros
        event(bidder_pb2.EVENT_KIND_UNSPECIFIED, "k3", "cpc"),  # refused: no kind
        event(bidder_pb2.EVENT_KIND_VIEWABLE, "k1", "vcpm"),  # the same event again
        event(bidder_pb2.EVENT_KIND_CLICK, "k1", "vcpm"),  # another kind on the same impression counts
        event(bidder_pb2.EVENT_KIND_CONVERSION, "k2", "cpc"),
        event(bidder_pb2.EVENT_KIND_VIEWABLE, "k4", "nobody"),
        event(bidder_pb2.EVENT_KIND_VIEWABLE, "", "vcpm"),
        event(bidder_pb2.EVENT_KIND_VIEWABLE, "k5", "cpm"),  # a CPM campaign pays nothing on viewable
    ]


def test_a_batch_of_events_books_what_the_same_notices_book_one_by_one():
    one_by_one, batched = Dsp(), Dsp()
    unary = unary_verdicts(one_by_one.servicer.NotifyEvent, events(one_by_one))
    response = batched.servicer.NotifyEvents(bidder_pb2.NotifyEventsRequest(items=events(batched)), None)
    assert batch_verdicts(response.results) == unary
    assert [v[1:] for v in unary if v[1] != "OK"] == [
        ("INVALID_ARGUMENT", "kind"), ("NOT_FOUND", "campaign_id"), ("INVALID_ARGUMENT", "impression_key")]
    assert batched.counts() == one_by_one.counts()
    assert batched.spend() == one_by_one.spend()
    assert batched.spend()["spend_micros"] == [0, 8_000, 500_000]


def wins_and_losses(dsp: Dsp, request_type):
    won, other, lost = dsp.bid("u1"), dsp.bid("u2"), dsp.bid("u3")
    macros = bidder_pb2.AuctionMacros(auction_id="a", imp_id="1", loss=102)
    return [
        request_type(bid_id=won.id, campaign_id=won.cid, macros=macros),
        request_type(bid_id="not-ours", campaign_id=won.cid, macros=macros),
        request_type(bid_id=won.id, campaign_id=won.cid, macros=macros),  # repeated
        request_type(bid_id=other.id, campaign_id="vcpm", macros=macros),  # not the bid's campaign
        request_type(bid_id="", macros=macros),
        request_type(bid_id=lost.id, macros=macros),  # the campaign may be left out
    ]


@pytest.mark.parametrize("unary, batch, request_type, batch_type, counted", [
    ("NotifyWin", "NotifyWins", bidder_pb2.NotifyWinRequest, bidder_pb2.NotifyWinsRequest, "won"),
    ("NotifyLoss", "NotifyLosses", bidder_pb2.NotifyLossRequest, bidder_pb2.NotifyLossesRequest, "losses"),
])
def test_a_batch_of_win_or_loss_notices_counts_what_the_same_notices_count_one_by_one(
        unary, batch, request_type, batch_type, counted):
    one_by_one, batched = Dsp(), Dsp()
    verdicts = unary_verdicts(getattr(one_by_one.servicer, unary), wins_and_losses(one_by_one, request_type))
    response = getattr(batched.servicer, batch)(batch_type(items=wins_and_losses(batched, request_type)), None)
    assert batch_verdicts(response.results) == verdicts
    assert [v[1:] for v in verdicts] == [("OK", ""), ("NOT_FOUND", "bid_id"), ("OK", ""),
                                         ("INVALID_ARGUMENT", "campaign_id"), ("INVALID_ARGUMENT", "bid_id"),
                                         ("OK", "")]
    assert batched.counts() == one_by_one.counts()
    assert batched.app.ledger.tally.get(counted, **({"reason": "102"} if counted == "losses" else {}),
                                        campaign="cpm") == 2  # once per bid
    assert len(batched.app.ledger.journal) == len(one_by_one.app.ledger.journal)


def test_an_empty_batch_answers_no_results():
    response = Dsp().servicer.NotifyBillings(bidder_pb2.NotifyBillingsRequest(), None)
    assert list(response.results) == []

"""RequestAds: many opportunities in one call, each auctioned and counted
exactly as RequestAd would, with its own verdict; bids over one BidStream per
DSP, win and loss notices batched per DSP. Real servers on ephemeral ports."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from google.rpc import code_pb2

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, exchange_pb2, exchange_pb2_grpc, openrtb_pb2
from services.reconcile import read_snapshots
from services.runtime.counting import total
from tests.conftest import TOKENS, banner_request, start_chain, start_role, stop_chain, wait_for


def counts(chain, name: str):
    return read_snapshots({name: chain.addresses()[name]})[name]


def verdicts(stub: exchange_pb2_grpc.ExchangeServiceStub) -> dict[str, str]:
    """The exchange's journal: impression key -> returned / not_returned."""
    return {r.impression_key: r.outcome
            for page in stub.ListImpressions(exchange_pb2.ExchangeServiceListImpressionsRequest(), timeout=5)
            for r in page.page.records}


def request_ads(stub, items, timeout_s: float = 5.0) -> list[exchange_pb2.RequestAdResult]:
    return list(stub.RequestAds(exchange_pb2.RequestAdsRequest(items=items), timeout=timeout_s).results)


def rpc_count(metrics_address: str, method: str) -> float:
    """adchain_rpc_requests_total for `method`, all codes, from a role's /metrics."""
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("adchain_rpc_requests_total{") and f'method="{method}"' in line)


# Per item: its own status, its own auction, its own counts.

def test_a_bad_item_gets_its_own_status_and_the_others_are_auctioned_and_counted(chain):
    bad = banner_request("bad")
    bad.imp.bidfloor = -1.0
    before = counts(chain, "ssp")
    results = request_ads(chain.ssp, [banner_request("a"), banner_request("b"), bad, banner_request("c")])
    assert [r.status.code for r in results] == [code_pb2.OK, code_pb2.OK, code_pb2.INVALID_ARGUMENT, code_pb2.OK]
    assert results[2].status.field == "items[2].imp.bidfloor"
    assert not results[2].HasField("response")
    assert [r.response.request_id for r in results if r.status.code == code_pb2.OK] == ["a", "b", "c"]
    assert all(r.response.ad.seat == "dsp-1" for r in results if r.status.code == code_pb2.OK)
    # Counts move by the three good items only, exactly as three RequestAd calls would move them.
    assert wait_for(lambda: total(counts(chain, "ssp"), "returned") == 3)
    after = counts(chain, "ssp")
    for name in ("ad_requests", "auctions_won"):
        assert total(after, name) - total(before, name) == 3
    assert total(after, "bid_responses", reason="dsp-1:bid") == 3
    assert wait_for(lambda: total(counts(chain, "dsp-1"), "won") == 3)


def test_a_batch_of_only_bad_items_changes_no_count(chain):
    no_site = banner_request("x")
    no_site.ClearField("site")
    no_imp = banner_request("y")
    no_imp.ClearField("imp")
    impatient = banner_request("z")
    impatient.caller_deadline_ms = -1
    before = counts(chain, "ssp").counts
    results = request_ads(chain.ssp, [no_site, no_imp, impatient])
    assert [(r.status.code, r.status.field) for r in results] == [
        (code_pb2.INVALID_ARGUMENT, "items[0].site"), (code_pb2.INVALID_ARGUMENT, "items[1].imp"),
        (code_pb2.INVALID_ARGUMENT, "items[2].caller_deadline_ms")]
    assert list(counts(chain, "ssp").counts) == list(before)


def test_two_items_with_the_same_request_id_are_two_opportunities(chain):
    results = request_ads(chain.ssp, [banner_request("same"), banner_request("same")])
    keys = {r.response.ad.impression_key for r in results}
    assert len(keys) == 2  # the exchange's own auction ids tell them apart
    assert wait_for(lambda: verdicts(chain.ssp) == dict.fromkeys(keys, "returned"))


def test_an_item_whose_page_stopped_waiting_is_not_returned_while_the_rest_are():
    # Every auction takes about 80 ms (both DSPs answer then); the second
    # page waits 20 ms, the third 5 s, the first as long as the batch. The
    # fourth also waits 20 ms, but its floor is above every bid: a no-fill
    # withholds nothing and is answered as it is.
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 80}, "dsp-2": {"response_delay_ms": 80}})
    try:
        items = [banner_request("waits"), banner_request("gave-up"), banner_request("patient"),
                 banner_request("unfilled", floor=50.0)]
        items[1].caller_deadline_ms = items[3].caller_deadline_ms = 20
        items[2].caller_deadline_ms = 5_000
        results = request_ads(chain.ssp, items)
        assert [r.status.code for r in results] == [code_pb2.OK, code_pb2.DEADLINE_EXCEEDED, code_pb2.OK, code_pb2.OK]
        assert results[1].status.field == "items[1].caller_deadline_ms"
        assert results[3].response.no_fill_reason == exchange_pb2.NO_FILL_REASON_NO_BIDS
        assert not results[1].HasField("response")  # its page is gone: the ad is not handed back
        returned = {results[0].response.ad.impression_key, results[2].response.ad.impression_key}
        assert wait_for(lambda: len(verdicts(chain.ssp)) == 3)
        journal = verdicts(chain.ssp)
        assert {k for k, v in journal.items() if v == "returned"} == returned
        assert sorted(journal.values()) == ["not_returned", "returned", "returned"]
        ssp = counts(chain, "ssp")
        assert (total(ssp, "returned"), total(ssp, "not_returned"), total(ssp, "auctions_won")) == (2, 1, 3)
        # The winner was notified of all three: the DSP counts a win the page never saw.
        assert wait_for(lambda: total(counts(chain, "dsp-1"), "won") == 3)
    finally:
        stop_chain(chain)


def test_an_items_ad_reaches_its_page_only_with_the_whole_batch():
    # The hurried item's auction is over at its 30 ms tmax (dsp-1 misses it),
    # well within its page's 70 ms; but the batch is answered only when the
    # other item's auction ends, after dsp-1's 150 ms, and by then that page is gone.
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 150}})
    try:
        hurried, other = banner_request("hurried"), banner_request("other")
        hurried.tmax_ms, hurried.caller_deadline_ms = 30, 70
        other.tmax_ms = 1_000
        results = request_ads(chain.ssp, [hurried, other])
        assert [r.status.code for r in results] == [code_pb2.DEADLINE_EXCEEDED, code_pb2.OK]
        assert wait_for(lambda: sorted(verdicts(chain.ssp).values()) == ["not_returned", "returned"])
    finally:
        stop_chain(chain)


def test_a_batch_the_caller_never_received_returns_none_of_its_ads():
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 150}, "dsp-2": {"response_delay_ms": 150}},
                        ssp_overrides={"tmax_ms": 400})
    try:
        with pytest.raises(grpc.RpcError) as raised:
            request_ads(chain.ssp, [banner_request("a"), banner_request("b")], timeout_s=0.05)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_for(lambda: total(counts(chain, "ssp"), "not_returned") == 2)
        assert total(counts(chain, "ssp"), "returned") == 0
    finally:
        stop_chain(chain)


def test_a_dsp_slower_than_an_items_tmax_is_a_timeout_for_that_item_only():
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 120}})
    try:
        hurried, patient = banner_request("hurried"), banner_request("patient")
        hurried.tmax_ms, patient.tmax_ms = 40, 1_000
        started = time.monotonic()
        results = request_ads(chain.ssp, [hurried, patient])
        assert time.monotonic() - started < 0.9  # each item waits its own tmax, not the batch's longest
        # dsp-1 ($6.00) missed the hurried item's 40 ms: dsp-2 ($5.00) alone wins it.
        assert [r.response.ad.seat for r in results] == ["dsp-2", "dsp-1"]
        ssp = counts(chain, "ssp")
        assert total(ssp, "bid_responses", reason="dsp-1:timeout") == 1
        assert total(ssp, "bid_responses", reason="dsp-1:bid") == 1
        assert total(ssp, "bid_responses", reason="dsp-2:bid") == 2
    finally:
        stop_chain(chain)


def test_a_dsp_that_misses_tmax_on_request_ad_is_a_timeout():
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 120}, "dsp-2": {"response_delay_ms": 120}})
    try:
        request = banner_request()
        request.tmax_ms = 30
        response = chain.ssp.RequestAd(request, timeout=5)
        assert response.no_fill_reason == exchange_pb2.NO_FILL_REASON_TIMEOUT
        ssp = counts(chain, "ssp")
        assert total(ssp, "bid_responses", reason="dsp-1:timeout") == 1
        assert total(ssp, "bid_responses", reason="dsp-2:timeout") == 1
        assert total(ssp, "no_fill", reason="timeout") == 1
    finally:
        stop_chain(chain)


# Notices: batched per DSP, every one counted.

def test_notices_are_batched_and_the_dsps_won_count_equals_the_exchanges_wins():
    chain = start_chain(ssp_overrides={"notice_batch_max_items": 4, "notice_batch_max_delay_ms": 50})
    try:
        results = request_ads(chain.ssp, [banner_request(f"r{i}") for i in range(10)])
        assert all(r.response.ad.token for r in results)
        wins = total(counts(chain, "ssp"), "auctions_won")
        assert wins == 10
        assert wait_for(lambda: total(counts(chain, "dsp-1"), "won") == wins)
        assert wait_for(lambda: total(counts(chain, "dsp-2"), "losses", reason="102") == 10)
        ssp = counts(chain, "ssp")
        assert total(ssp, "win_notices", reason="sent") == 10
        assert total(ssp, "loss_notices", reason="sent") == 10
        dsp_metrics = chain.running["dsp-1"].metrics_address
        # 10 wins in batches of at most 4: three calls at least, ten never.
        assert 3 <= rpc_count(dsp_metrics, "NotifyWins") < 10
        assert rpc_count(dsp_metrics, "NotifyWin") == 0
    finally:
        stop_chain(chain)


def test_notices_still_batching_at_shutdown_are_delivered_before_the_exchange_stops():
    chain = start_chain(ssp_overrides={"notice_batch_max_delay_ms": 60_000})
    try:
        chain.ssp.RequestAd(banner_request(), timeout=5)
        assert total(counts(chain, "dsp-1"), "won") == 0  # the win notice waits in its batch
        chain.running["ssp"].stop(grace_s=1.0)
        assert total(counts(chain, "dsp-1"), "won") == 1
        assert total(counts(chain, "dsp-2"), "losses") == 1
    finally:
        chain.running.pop("ssp")
        stop_chain(chain)


# The BidStream itself, against a scripted DSP.

class ScriptedBidder(bidder_pb2_grpc.BidderServiceServicer):
    """Bids twice each Imp's floor; on a stream, holds answers until `hold`
    requests have arrived, then answers them newest first, one per message."""

    def __init__(self, hold: int = 1):
        self.hold = hold
        self.streams_opened = 0
        self.win_batches: list[int] = []

    def _answer(self, request: openrtb_pb2.BidRequest) -> openrtb_pb2.BidResponse:
        imp = request.imp[0]
        bid = openrtb_pb2.Bid(id=f"b-{request.id}", impid=imp.id, price=imp.bidfloor * 2, cid="c", crid="cr",
                              adomain=["scripted.example"], w=300, h=250)
        return openrtb_pb2.BidResponse(id=request.id, bidid="r", seatbid=[openrtb_pb2.SeatBid(seat="s", bid=[bid])])

    def BidStream(self, request_iterator, context):
        self.streams_opened += 1
        held = []
        for message in request_iterator:
            held.extend(message.items)
            if len(held) >= self.hold:
                for request in reversed(held):
                    yield bidder_pb2.BidStreamResponse(results=[
                        bidder_pb2.BidStreamResult(request_id=request.id, response=self._answer(request))])
                held = []

    def NotifyWins(self, request, context):
        self.win_batches.append(len(request.items))
        return bidder_pb2.NotifyWinsResponse(results=[bidder_pb2.NotifyWinResult() for _ in request.items])

    def NotifyLosses(self, request, context):
        return bidder_pb2.NotifyLossesResponse(results=[bidder_pb2.NotifyLossResult() for _ in request.items])


def _serve(servicer, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    bidder_pb2_grpc.add_BidderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


@pytest.fixture
def scripted():
    """An exchange whose one DSP is a ScriptedBidder: (exchange stub, bidder, restart)."""
    bidder = ScriptedBidder()
    state = {}
    state["server"], port = _serve(bidder)
    ssp = start_role("ssp", "ssp", {"dsps": [{"name": "dsp-1", "address": f"127.0.0.1:{port}"}], "tokens": TOKENS,
                                    "exchange": {"auction_type": 1}})
    channel = grpc.insecure_channel(ssp.grpc_address)

    def restart():
        state["server"].stop(0).wait()
        state["server"], _port = _serve(bidder, port)

    yield exchange_pb2_grpc.ExchangeServiceStub(channel), bidder, restart
    channel.close()
    ssp.stop(grace_s=0)
    state["server"].stop(0)


def _floored(request_id: str, floor: float) -> exchange_pb2.RequestAdRequest:
    request = banner_request(request_id, floor=floor)
    request.tmax_ms = 2_000
    return request


def test_stream_answers_arriving_out_of_order_are_matched_to_their_requests_by_id(scripted):
    stub, bidder, _restart = scripted
    bidder.hold = 4
    floors = [1.0, 2.0, 3.0, 4.0]
    results = request_ads(stub, [_floored(f"r{i}", f) for i, f in enumerate(floors)])
    # First price: each item pays its own bid, twice its own floor.
    assert [r.response.ad.price_micros for r in results] == [2_000_000, 4_000_000, 6_000_000, 8_000_000]
    assert bidder.streams_opened == 1  # one stream carried all four


def test_one_stream_per_dsp_carries_every_request(scripted):
    stub, bidder, _restart = scripted
    for i in range(3):
        assert stub.RequestAd(_floored(f"u{i}", 1.0), timeout=5).ad.price_micros == 2_000_000
    request_ads(stub, [_floored("b1", 1.0), _floored("b2", 1.0)])
    assert bidder.streams_opened == 1


def test_a_broken_bid_stream_is_reopened(scripted):
    stub, bidder, restart = scripted
    assert stub.RequestAd(_floored("before", 1.0), timeout=5).HasField("ad")
    restart()  # the DSP goes away and comes back: the stream broke

    def filled() -> bool:
        return stub.RequestAd(_floored("after", 1.0), timeout=5).HasField("ad")

    assert wait_for(filled, timeout_s=10, interval_s=0.1)
    assert bidder.streams_opened == 2


def test_win_notices_go_out_in_batches(scripted):
    stub, bidder, _restart = scripted
    calls = [threading.Thread(target=lambda i=i: request_ads(stub, [_floored(f"t{i}-{j}", 1.0) for j in range(5)]))
             for i in range(4)]
    for call in calls:
        call.start()
    for call in calls:
        call.join()
    assert wait_for(lambda: sum(bidder.win_batches) == 20)
    assert len(bidder.win_batches) < 20

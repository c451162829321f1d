"""The DSP's batch and stream RPCs over real gRPC: every item of a notice
batch gets its own verdict and only good items count, once per key; bid
requests on one BidStream are answered as each is ready, many in flight,
counted exactly as unary Bid counts them."""

from __future__ import annotations

import queue
import random
import threading
import time
import urllib.request

import grpc
import pytest
from google.rpc import code_pb2
from prometheus_client.parser import text_string_to_metric_families

from adchain.v1 import bidder_pb2, bidder_pb2_grpc, openrtb_pb2
from services.dsp.settings import DspSettings
from services.runtime.counting import total
from tests.conftest import CAMPAIGNS, start_role, wait_for


def start_dsp(**dsp):
    return start_role("dsp", "dsp-1", {"dsp": {"seat": "dsp-1", **dsp}, "campaigns": CAMPAIGNS["dsp-1"]})


@pytest.fixture
def dsp():
    running = start_dsp()
    channel = grpc.insecure_channel(running.grpc_address)
    yield bidder_pb2_grpc.BidderServiceStub(channel)
    channel.close()
    running.stop(grace_s=1.0)


def bid_request(request_id: str, floor: float = 0.5, w: int = 300, h: int = 250, user: str = "u1",
                video: bool = False) -> openrtb_pb2.BidRequest:
    imp = openrtb_pb2.Imp(id="1", bidfloor=floor)
    if video:
        imp.video.CopyFrom(openrtb_pb2.Video(w=1280, h=720))
    else:
        imp.banner.CopyFrom(openrtb_pb2.Banner(w=w, h=h))
    return openrtb_pb2.BidRequest(id=request_id, imp=[imp], site=openrtb_pb2.Site(domain="news.example"),
                                  device=openrtb_pb2.Device(devicetype=2), user=openrtb_pb2.User(id=user))


def counts(stub) -> dict:
    snapshot = stub.GetCounts(bidder_pb2.BidderServiceGetCountsRequest(), timeout=5).snapshot
    return {(c.name, c.reason, c.campaign): c.value for c in snapshot.counts}


def count(stub, name: str, reason: str | None = None) -> int:
    return total(stub.GetCounts(bidder_pb2.BidderServiceGetCountsRequest(), timeout=5).snapshot, name, reason=reason)


def bids(stub, n: int) -> list[openrtb_pb2.Bid]:
    return [stub.Bid(bid_request(f"b{i}", user=f"u{i}"), timeout=5).seatbid[0].bid[0] for i in range(n)]


def macros(**values) -> bidder_pb2.AuctionMacros:
    return bidder_pb2.AuctionMacros(**{"auction_id": "a", "imp_id": "1", **values})


def status(result) -> tuple[int, str]:
    return result.status.code, result.status.field


# -- batches of notices -------------------------------------------------------------

def test_a_bad_win_notice_in_a_batch_gets_its_own_status_and_the_others_count(dsp):
    first, second = bids(dsp, 2)
    items = [bidder_pb2.NotifyWinRequest(bid_id=first.id, campaign_id=first.cid, macros=macros()),
             bidder_pb2.NotifyWinRequest(bid_id="not-ours", macros=macros()),
             bidder_pb2.NotifyWinRequest(bid_id=second.id, campaign_id="c-video", macros=macros()),
             bidder_pb2.NotifyWinRequest(bid_id=second.id, campaign_id=second.cid, macros=macros(imp_id="2"))]
    results = dsp.NotifyWins(bidder_pb2.NotifyWinsRequest(items=items), timeout=5).results
    assert [status(r) for r in results] == [(code_pb2.OK, ""), (code_pb2.NOT_FOUND, "items[1].bid_id"),
                                            (code_pb2.INVALID_ARGUMENT, "items[2].campaign_id"), (code_pb2.OK, "")]
    assert [r.response.counted for r in results] == [True, False, False, True]
    assert count(dsp, "won") == 2


def test_the_same_bid_twice_in_one_win_batch_is_won_once(dsp):
    (bid,) = bids(dsp, 1)
    notice = bidder_pb2.NotifyWinRequest(bid_id=bid.id, campaign_id=bid.cid, macros=macros())
    results = dsp.NotifyWins(bidder_pb2.NotifyWinsRequest(items=[notice, notice]), timeout=5).results
    assert [r.response.counted for r in results] == [True, False]
    assert count(dsp, "won") == 1


def test_a_bad_loss_notice_in_a_batch_gets_its_own_status_and_the_others_count(dsp):
    first, second = bids(dsp, 2)
    items = [bidder_pb2.NotifyLossRequest(bid_id=first.id, macros=macros(loss=102)),
             bidder_pb2.NotifyLossRequest(bid_id="", macros=macros(loss=102)),
             bidder_pb2.NotifyLossRequest(bid_id=second.id, macros=macros(loss=205))]
    results = dsp.NotifyLosses(bidder_pb2.NotifyLossesRequest(items=items), timeout=5).results
    assert [status(r) for r in results] == [(code_pb2.OK, ""), (code_pb2.INVALID_ARGUMENT, "items[1].bid_id"),
                                            (code_pb2.OK, "")]
    assert (count(dsp, "losses", "102"), count(dsp, "losses", "205")) == (1, 1)


def test_the_same_bid_twice_in_one_loss_batch_is_lost_once(dsp):
    (bid,) = bids(dsp, 1)
    notice = bidder_pb2.NotifyLossRequest(bid_id=bid.id, macros=macros(loss=102))
    results = dsp.NotifyLosses(bidder_pb2.NotifyLossesRequest(items=[notice, notice]), timeout=5).results
    assert [status(r) for r in results] == [(code_pb2.OK, ""), (code_pb2.OK, "")]
    assert count(dsp, "losses") == 1


def billing(key: str, price_micros: int | None = 6_000_000, campaign_id: str = "c-display"):
    values = {} if price_micros is None else {"price_micros": price_micros}
    return bidder_pb2.NotifyBillingRequest(impression_key=key, campaign_id=campaign_id, macros=macros(**values))


def test_a_bad_billing_notice_in_a_batch_gets_its_own_status_and_the_others_are_billed(dsp):
    items = [billing("k1"), billing("k2", 5_010_000), billing("k3", None), billing("k4", campaign_id="nobody"),
             billing("k5", 1_234_567)]
    results = dsp.NotifyBillings(bidder_pb2.NotifyBillingsRequest(items=items), timeout=5).results
    assert [status(r) for r in results] == [
        (code_pb2.OK, ""), (code_pb2.OK, ""), (code_pb2.INVALID_ARGUMENT, "items[2].macros.price_micros"),
        (code_pb2.NOT_FOUND, "items[3].campaign_id"), (code_pb2.OK, "")]
    assert count(dsp, "billed") == 3
    assert count(dsp, "spend_micros") == 6_000 + 5_010 + 1_235  # each rounded once, half away from zero


def test_the_same_impression_twice_in_one_billing_batch_is_billed_once(dsp):
    results = dsp.NotifyBillings(bidder_pb2.NotifyBillingsRequest(items=[billing("k1"), billing("k1")]),
                                 timeout=5).results
    assert [r.response.counted for r in results] == [True, False]
    assert (count(dsp, "billed"), count(dsp, "spend_micros")) == (1, 6_000)


def test_a_billing_batch_and_the_same_unary_notices_book_the_same_counts():
    unary, batched = start_dsp(), start_dsp()
    try:
        with grpc.insecure_channel(unary.grpc_address) as a, grpc.insecure_channel(batched.grpc_address) as b:
            one, many = bidder_pb2_grpc.BidderServiceStub(a), bidder_pb2_grpc.BidderServiceStub(b)
            items = [billing("k1"), billing("k2", 7_777_777), billing("k1"), billing("k3", -5), billing("k4", 0)]
            for item in items:
                try:
                    one.NotifyBilling(item, timeout=5)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            many.NotifyBillings(bidder_pb2.NotifyBillingsRequest(items=items), timeout=5)
            assert counts(one) == counts(many)
            assert count(many, "spend_micros") == 6_000 + 7_778
    finally:
        unary.stop(grace_s=1.0)
        batched.stop(grace_s=1.0)


def event(kind, key: str, campaign_id: str = "c-display"):
    return bidder_pb2.NotifyEventRequest(kind=kind, impression_key=key, campaign_id=campaign_id)


def test_a_bad_event_notice_in_a_batch_gets_its_own_status_and_the_others_count(dsp):
    items = [event(bidder_pb2.EVENT_KIND_VIEWABLE, "k1"), event(bidder_pb2.EVENT_KIND_UNSPECIFIED, "k2"),
             event(bidder_pb2.EVENT_KIND_CLICK, "k1"), event(bidder_pb2.EVENT_KIND_CLICK, ""),
             event(bidder_pb2.EVENT_KIND_CONVERSION, "k1", "nobody")]
    results = dsp.NotifyEvents(bidder_pb2.NotifyEventsRequest(items=items), timeout=5).results
    assert [status(r) for r in results] == [
        (code_pb2.OK, ""), (code_pb2.INVALID_ARGUMENT, "items[1].kind"), (code_pb2.OK, ""),
        (code_pb2.INVALID_ARGUMENT, "items[3].impression_key"), (code_pb2.NOT_FOUND, "items[4].campaign_id")]
    assert (count(dsp, "viewable"), count(dsp, "clicks"), count(dsp, "conversions")) == (1, 1, 0)


def test_the_same_event_twice_in_one_batch_counts_once(dsp):
    viewable = event(bidder_pb2.EVENT_KIND_VIEWABLE, "k1")
    results = dsp.NotifyEvents(bidder_pb2.NotifyEventsRequest(items=[viewable, viewable]), timeout=5).results
    assert [r.response.counted for r in results] == [True, False]
    assert count(dsp, "viewable") == 1


def test_the_unary_notices_answer_as_before(dsp):
    with pytest.raises(grpc.RpcError) as raised:
        dsp.NotifyBilling(billing("k1", None), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "macros.price_micros" in raised.value.details()
    assert dsp.NotifyBilling(billing("k1"), timeout=5).counted is True
    assert dsp.NotifyBilling(billing("k1"), timeout=5).counted is False


# -- BidStream ----------------------------------------------------------------------

class Requests:
    """A client's side of the stream: requests go out as the test sends them."""

    _END = object()

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()

    def send(self, *requests: openrtb_pb2.BidRequest) -> None:
        """The requests in one stream message."""
        self._queue.put(bidder_pb2.BidStreamRequest(items=requests))

    def finish(self) -> None:
        self._queue.put(self._END)

    def __iter__(self):
        while (item := self._queue.get()) is not self._END:
            yield item


def results_of(messages):
    """Every answer of a stream's messages, in the order they arrived."""
    for message in messages:
        yield from message.results


def separated_delays(n: int, jitter_ms: float) -> tuple[int, list[float]]:
    """A seed whose first n drawn delays are at least 15 ms apart and not ascending,
    so arrival order and due order differ clearly."""
    settings = DspSettings(response_jitter_ms=jitter_ms)
    for seed in range(1000):
        rng = random.Random(seed)
        delays = [settings.draw_response_delay_ms(rng) for _ in range(n)]
        ordered = sorted(delays)
        if delays != ordered and min(b - a for a, b in zip(ordered, ordered[1:])) >= 15 and ordered[-1] < 400:
            return seed, delays
    raise AssertionError("no seed found")


def test_stream_answers_leave_as_each_is_ready_matched_by_request_id():
    seed, delays_ms = separated_delays(5, jitter_ms=60)
    running = start_dsp(response_jitter_ms=60, response_delay_seed=seed)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            requests = Requests()
            stream = bidder_pb2_grpc.BidderServiceStub(channel).BidStream(iter(requests), timeout=10)
            sent_at = time.monotonic()
            requests.send(*(bid_request(f"r{i}") for i in range(5)))
            requests.finish()
            arrived = [(answer.request_id, answer.response.id, time.monotonic() - sent_at)
                       for answer in results_of(stream)]
        by_due = [f"r{i}" for i in sorted(range(5), key=lambda i: delays_ms[i])]
        assert [request_id for request_id, _id, _at in arrived] == by_due
        assert all(request_id == response_id for request_id, response_id, _at in arrived)
        for request_id, _id, waited_s in arrived:
            assert waited_s * 1000 >= delays_ms[int(request_id[1:])] - 1  # a real delay, per answer
    finally:
        running.stop(grace_s=1.0)


def test_many_bid_requests_are_in_flight_on_one_stream():
    running = start_dsp(response_delay_ms=300)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            requests = Requests()
            threads_before = threading.active_count()
            stream = bidder_pb2_grpc.BidderServiceStub(channel).BidStream(iter(requests), timeout=10)
            started = time.monotonic()
            requests.send(*(bid_request(f"r{i}", user=f"u{i}") for i in range(100)))
            first = next(stream)
            threads_in_flight = threading.active_count()
            requests.finish()
            answered = [*first.results, *results_of(stream)]
            elapsed_s = time.monotonic() - started
        assert sorted(a.request_id for a in answered) == sorted(f"r{i}" for i in range(100))
        assert 0.3 <= elapsed_s < 2.0  # 100 answers in about one delay, not 100 delays
        assert threads_in_flight - threads_before < 10  # no thread per request
    finally:
        running.stop(grace_s=1.0)


def test_an_invalid_bid_request_on_a_stream_gets_its_status_and_the_stream_goes_on(dsp):
    requests = Requests()
    no_id = bid_request("")
    requests.send(bid_request("good-1"), bid_request("bad", floor=-1), no_id, bid_request("good-2"))
    requests.finish()
    answers = {a.request_id: a for a in results_of(dsp.BidStream(iter(requests), timeout=10))}
    assert status(answers["bad"]) == (code_pb2.INVALID_ARGUMENT, "items[1].imp[0].bidfloor")
    assert status(answers[""]) == (code_pb2.INVALID_ARGUMENT, "items[2].id")
    assert not answers["bad"].HasField("response")
    for good in ("good-1", "good-2"):
        assert status(answers[good]) == (code_pb2.OK, "")
        assert answers[good].response.seatbid[0].bid[0].cid == "c-display"
    assert (count(dsp, "bid_requests"), count(dsp, "bids")) == (2, 2)  # refused requests count as nothing


def mixed_requests() -> list[openrtb_pb2.BidRequest]:
    two_imps = bid_request("two-imps")
    two_imps.imp.add(id="2", video=openrtb_pb2.Video(w=640, h=360))
    return [bid_request("bid"), bid_request("below-floor", floor=50.0), bid_request("no-match", w=728, h=90),
            bid_request("video", video=True), two_imps, bid_request("first-price", user="u9")]


def test_a_stream_counts_exactly_what_unary_bid_counts():
    unary, streamed = start_dsp(), start_dsp()
    try:
        with grpc.insecure_channel(unary.grpc_address) as a, grpc.insecure_channel(streamed.grpc_address) as b:
            one, many = bidder_pb2_grpc.BidderServiceStub(a), bidder_pb2_grpc.BidderServiceStub(b)
            requests = mixed_requests()
            requests[-1].at = 1
            by_unary = {r.id: one.Bid(r, timeout=5) for r in requests}
            stream_requests = Requests()
            stream_requests.send(*requests)
            stream_requests.finish()
            by_stream = {a.request_id: a.response
                         for a in results_of(many.BidStream(iter(stream_requests), timeout=10))}
            assert counts(one) == counts(many)
            assert count(many, "no_bids", "below_floor") == count(many, "no_bids", "no_matching_campaign") == 1
            for request_id, response in by_unary.items():
                assert _without_ids(by_stream[request_id]) == _without_ids(response)
            # The stream's bids are outstanding: their win notices count.
            for response in by_stream.values():
                for bid in (bid for seatbid in response.seatbid for bid in seatbid.bid):
                    win = bidder_pb2.NotifyWinRequest(bid_id=bid.id, campaign_id=bid.cid,
                                                      macros=macros(imp_id=bid.impid))
                    assert many.NotifyWin(win, timeout=5).counted is True
    finally:
        unary.stop(grace_s=1.0)
        streamed.stop(grace_s=1.0)


def _without_ids(response: openrtb_pb2.BidResponse) -> openrtb_pb2.BidResponse:
    copy = openrtb_pb2.BidResponse()
    copy.CopyFrom(response)
    copy.bidid = ""
    for seatbid in copy.seatbid:
        for bid in seatbid.bid:
            bid.id = ""
    return copy


def _streams_ended(running) -> dict[str, float]:
    """BidStream calls whose handler has ended, by status code (the role's own
    request metric, counted when the handler returns)."""
    body = urllib.request.urlopen(f"http://{running.metrics_address}/metrics", timeout=5).read().decode()
    ended = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "adchain_rpc_requests_total" and sample.labels["method"] == "BidStream":
                ended[sample.labels["code"]] = sample.value
    return {code: n for code, n in ended.items() if n}


def test_a_stream_the_client_cancels_ends_its_handler():
    running = start_dsp()
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            requests = Requests()
            stream = bidder_pb2_grpc.BidderServiceStub(channel).BidStream(iter(requests), timeout=30)
            requests.send(bid_request("r1"))
            assert next(stream).results[0].request_id == "r1"
            assert _streams_ended(running) == {}
            stream.cancel()
            assert wait_for(lambda: _streams_ended(running) == {"CANCELLED": 1.0}, timeout_s=5)
    finally:
        running.stop(grace_s=1.0)


def test_a_stream_the_client_half_closes_ends_after_its_last_answer():
    running = start_dsp(response_delay_ms=100)
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            requests = Requests()
            stream = bidder_pb2_grpc.BidderServiceStub(channel).BidStream(iter(requests), timeout=10)
            requests.send(bid_request("r1"), bid_request("r2"))
            requests.finish()
            assert sorted(a.request_id for a in results_of(stream)) == ["r1", "r2"]
            assert stream.code() == grpc.StatusCode.OK
        assert wait_for(lambda: _streams_ended(running) == {"OK": 1.0}, timeout_s=5)
    finally:
        running.stop(grace_s=1.0)


def test_graceful_stop_does_not_hang_on_an_open_stream():
    running = start_dsp()
    channel = grpc.insecure_channel(running.grpc_address)
    try:
        requests = Requests()
        stream = bidder_pb2_grpc.BidderServiceStub(channel).BidStream(iter(requests), timeout=30)
        requests.send(bid_request("r1"))
        assert next(stream).results[0].request_id == "r1"
        started = time.monotonic()
        running.stop(grace_s=1.0)  # the client never closes its side
        assert time.monotonic() - started < 4.0
        with pytest.raises(grpc.RpcError):
            next(stream)
    finally:
        requests.finish()
        channel.close()

"""RecordImpressions: many begin-to-render beacons in one call, each judged
exactly as RecordImpression judges it, with its own verdict. Over real gRPC,
with tokens signed here and a DSP that takes every billing notice."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from google.rpc import code_pb2

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, batch_pb2, bidder_pb2, bidder_pb2_grpc, token_pb2)
from services.runtime.counting import total
from services.runtime.tokens import TokenCodec, TokenSettings
from tests.conftest import TOKENS, start_role, wait_for

HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
CODEC = TokenCodec(TokenSettings(TOKENS["signing_key_id"], tuple(TOKENS["keys"])))
FORGER = TokenCodec(TokenSettings("k1", ("k1:" + "cd" * 32,)))
ADSERVER = {"tokens": TOKENS, "ivt": {"min_render_ms": 0},
            "frequency_caps": [{"campaign": "c-capped", "impressions": 1, "window_s": 3600}],
            "billing": {"batch_max_delay_ms": 5}}


class BillingSink(bidder_pb2_grpc.BidderServiceServicer):
    """A DSP that takes every billing notice and remembers its key."""

    def __init__(self):
        self.billed: list[str] = []
        self._lock = threading.Lock()

    def NotifyBillings(self, request, context):
        with self._lock:
            self.billed.extend(item.impression_key for item in request.items)
        return bidder_pb2.NotifyBillingsResponse(results=[
            bidder_pb2.NotifyBillingResult(status=batch_pb2.ItemStatus(),
                                           response=bidder_pb2.NotifyBillingResponse(counted=True))
            for _item in request.items])


class AdServer:
    def __init__(self, sink_address: str):
        self.running = start_role("adserver", "adserver",
                                  {**ADSERVER, "dsps": [{"name": "dsp-1", "address": sink_address}]})
        self.channel = grpc.insecure_channel(self.running.grpc_address)
        self.stub = ad_server_pb2_grpc.AdServerServiceStub(self.channel)

    def counts(self) -> dict[tuple[str, str, str], int]:
        snapshot = self.stub.GetCounts(ad_server_pb2.AdServerServiceGetCountsRequest(), timeout=5).snapshot
        return {(c.name, c.reason, c.campaign): c.value for c in snapshot.counts}

    def total(self, name: str, reason: str | None = None) -> int:
        return total(self.stub.GetCounts(ad_server_pb2.AdServerServiceGetCountsRequest(), timeout=5).snapshot,
                     name, reason=reason)

    def journal(self) -> list[tuple[str, str, str, str, str]]:
        return [(r.impression_key, r.outcome, r.reason, r.campaign_id, r.seat)
                for page in self.stub.ListImpressions(ad_server_pb2.AdServerServiceListImpressionsRequest(),
                                                      timeout=5)
                for r in page.page.records]

    def ledger_metrics(self) -> list[str]:
        """The ad server's own metric samples and the impressions family (not the per-RPC ones)."""
        with urllib.request.urlopen(f"http://{self.running.metrics_address}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sorted(line for line in text.splitlines()
                      if line.startswith(("adchain_adserver_", "adchain_impressions_total"))
                      and "_created" not in line)

    def stop(self) -> None:
        self.channel.close()
        self.running.stop(grace_s=0)


@pytest.fixture
def sink():
    servicer = BillingSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    bidder_pb2_grpc.add_BidderServiceServicer_to_server(servicer, server)
    servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(0)


@pytest.fixture
def adserver(sink):
    running = AdServer(sink.address)
    yield running
    running.stop()


def token(key: str, *, seat: str = "dsp-1", campaign: str = "c-display", user: str = "u1",
          expires_in_s: float = 300.0, duration_s: int = 0, codec: TokenCodec = CODEC) -> str:
    now_ms = int(time.time() * 1000)
    return codec.sign(token_pb2.ImpressionToken(
        impression_key=key, auction_id=key.split(":")[0], imp_id="1", bid_id=f"bid-{key}", seat=seat,
        campaign_id=campaign, price_micros=5_010_000, currency="USD", mtype=1, w=300, h=250,
        issued_at_ms=now_ms - 1_000, expires_at_ms=now_ms + int(expires_in_s * 1000), user_key=user,
        duration_s=duration_s))


def beacon(text: str, user_agent: str = HUMAN, ip: str = "203.0.113.9") -> ad_server_pb2.RecordImpressionRequest:
    return ad_server_pb2.RecordImpressionRequest(token=text, user_agent=user_agent, ip=ip)


def record(adserver: AdServer, *beacons) -> list[ad_server_pb2.RecordImpressionResult]:
    return list(adserver.stub.RecordImpressions(ad_server_pb2.RecordImpressionsRequest(items=beacons),
                                                timeout=5).results)


def test_a_bad_item_gets_its_own_status_and_the_others_count(adserver, sink):
    results = record(adserver, beacon(token("a:1")), beacon(token("b:1", codec=FORGER)), beacon(token("c:1")),
                     beacon("not-a-token"), beacon(token("d:1", seat="dsp-9")), beacon(token("e:1")))
    assert [(r.status.code, r.status.field) for r in results] == [
        (code_pb2.OK, ""), (code_pb2.INVALID_ARGUMENT, "items[1].token"), (code_pb2.OK, ""),
        (code_pb2.INVALID_ARGUMENT, "items[3].token"), (code_pb2.NOT_FOUND, "items[4].token"), (code_pb2.OK, "")]
    assert [r.response.outcome for r in results if r.status.code == code_pb2.OK] == \
        [ad_server_pb2.EVENT_OUTCOME_COUNTED] * 3
    assert not any(r.HasField("response") for r in results if r.status.code != code_pb2.OK)
    assert adserver.total("rendered") == 3
    # Rejected tokens are tallied by reason, as the unary call tallies them; a token naming an
    # unknown DSP verified, so it is not one.
    assert (adserver.total("rejected_tokens", "bad_signature"), adserver.total("rejected_tokens", "malformed"),
            adserver.total("rejected_tokens")) == (1, 1, 2)
    assert wait_for(lambda: sorted(sink.billed) == ["a:1", "c:1", "e:1"])


def test_the_same_impression_twice_in_one_batch_counts_once(adserver, sink):
    text = token("a:1")
    results = record(adserver, beacon(text), beacon(text))
    assert [r.response.outcome for r in results] == [ad_server_pb2.EVENT_OUTCOME_COUNTED,
                                                     ad_server_pb2.EVENT_OUTCOME_DUPLICATE]
    assert (adserver.total("rendered"), adserver.total("duplicates", "impression")) == (1, 1)
    assert wait_for(lambda: sink.billed == ["a:1"])
    assert adserver.journal() == [("a:1", "rendered", "", "c-display", "dsp-1")]


def test_a_batch_counts_renders_and_their_value_per_seat_and_campaign(adserver):
    record(adserver, beacon(token("a:1")), beacon(token("b:1", user="u2")),
           beacon(token("c:1", campaign="c-video", user="u3", duration_s=15)),
           beacon(token("d:1", campaign="c-video", user="u4", duration_s=30)),
           beacon(token("e:1", user="u5"), ip="54.80.1.2"))  # a data-center address: never billed
    assert {key: n for key, n in adserver.counts().items()
            if key[0] in ("rendered", "billable_cpm_micros", "ad_seconds", "invalid") and n} == {
        ("rendered", "dsp-1", "c-display"): 2, ("billable_cpm_micros", "dsp-1", "c-display"): 10_020_000,
        ("rendered", "dsp-1", "c-video"): 2, ("billable_cpm_micros", "dsp-1", "c-video"): 10_020_000,
        ("ad_seconds", "", "c-video"): 45, ("invalid", "datacenter_ip", "c-display"): 1}
    assert 'adchain_impressions_total{role="adserver",stage="rendered"} 4.0' in adserver.ledger_metrics()


def test_an_empty_batch_counts_nothing(adserver):
    assert record(adserver) == []
    assert adserver.total("rendered") == 0


def events() -> list[ad_server_pb2.RecordImpressionRequest]:
    """One beacon for each way the ad server judges a render."""
    return [
        beacon(token("a:1")),
        beacon(token("b:1", user="u2"), user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
        beacon(token("c:1", user="u3"), ip="54.80.1.2"),  # a data-center address
        beacon(token("a:1")),  # a repeated pixel
        beacon(token("d:1", expires_in_s=-1)),  # after the token expired
        beacon(token("e:1", campaign="c-capped", user="u4")),
        beacon(token("f:1", campaign="c-capped", user="u4")),  # over the cap of one
        beacon(token("g:1", codec=FORGER)),
        beacon("v1.k1.!!.YQ"),
        beacon(""),
        beacon(token("h:1", seat="dsp-9")),
        beacon(token("b:1", user="u2"), user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
        beacon(token("i:1", user="u5")),
    ]


def test_a_batch_counts_exactly_what_the_same_unary_calls_count(sink):
    unary, batched = AdServer(sink.address), AdServer(sink.address)
    try:
        requests = events()
        answers = []
        for request in requests:
            try:
                answers.append((code_pb2.OK, "", unary.stub.RecordImpression(request, timeout=5)))
            except grpc.RpcError as error:
                answers.append((error.code().value[0], "token", None))
        results = record(batched, *requests)
        assert [(r.status.code, r.status.field, r.response if r.status.code == code_pb2.OK else None)
                for r in results] == [(code, f"items[{i}].{field}" if field else "", response)
                                      for i, (code, field, response) in enumerate(answers)]
        assert wait_for(lambda: sorted(sink.billed) == ["a:1", "a:1", "e:1", "e:1", "i:1", "i:1"])
        assert wait_for(lambda: batched.total("billing_notices", "sent") == unary.total("billing_notices", "sent") == 3)
        assert batched.counts() == unary.counts()
        assert batched.journal() == unary.journal()
        assert batched.ledger_metrics() == unary.ledger_metrics()
        assert (unary.total("rendered"), unary.total("invalid"), unary.total("capped"), unary.total("late"),
                unary.total("duplicates"), unary.total("rejected_tokens")) == (3, 2, 1, 1, 2, 3)
    finally:
        unary.stop()
        batched.stop()

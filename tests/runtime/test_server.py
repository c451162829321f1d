"""The runtime every role is served by: health, graceful drain, metrics port."""

from __future__ import annotations

import threading
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adchain.v1 import bidder_pb2_grpc, openrtb_pb2
from services.runtime.errors import InvalidArgument
from tests.conftest import start_role

CAMPAIGN = {"id": "c", "advertiser_domain": "a.example", "bid_micros": 1_000_000, "budget_total_micros": 10**9}


def bid_request() -> openrtb_pb2.BidRequest:
    return openrtb_pb2.BidRequest(id="r", imp=[openrtb_pb2.Imp(id="1", banner=openrtb_pb2.Banner(w=300, h=250))],
                                  site=openrtb_pb2.Site(domain="s.example"))


def test_health_says_serving_for_the_server_and_its_service():
    running = start_role("dsp", "dsp-t", {"campaigns": [CAMPAIGN]})
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "adchain.v1.BidderService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
        body = urllib.request.urlopen(f"http://{running.metrics_address}/metrics", timeout=5).read()
        assert b"adchain_rpc_requests_total" in body
    finally:
        running.stop(grace_s=0)


def test_stop_drains_an_in_flight_request_and_refuses_new_ones():
    running = start_role("dsp", "dsp-t", {"dsp": {"response_delay_ms": 400}, "campaigns": [CAMPAIGN]})
    channel = grpc.insecure_channel(running.grpc_address)
    stub = bidder_pb2_grpc.BidderServiceStub(channel)
    stub.Bid(bid_request(), timeout=5)  # connect
    in_flight = stub.Bid.future(bid_request(), timeout=5)
    threading.Event().wait(0.1)
    stopper = threading.Thread(target=running.stop, kwargs={"grace_s": 3.0})
    stopper.start()
    response = in_flight.result()
    assert response.seatbid[0].bid[0].cid == "c"
    stopper.join(10)
    assert not stopper.is_alive()
    try:
        stub.Bid(bid_request(), timeout=1)
        raise AssertionError("a stopped server answered")
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    channel.close()


class _Streaming(bidder_pb2_grpc.BidderServiceServicer):
    """A servicer whose streaming RPCs answer, refuse and fail, for the runtime's interceptor."""

    def ListImpressions(self, request, context):
        from adchain.v1 import bidder_pb2

        yield bidder_pb2.BidderServiceListImpressionsResponse()
        raise InvalidArgument("page", "refused mid-stream")

    async def BidStream(self, request_iterator, context):
        async for _request in request_iterator:
            raise RuntimeError("unexpected")
            yield bidder_pb2.BidStreamResponse()


def _serve_streaming():
    import dataclasses

    from services.runtime.config import ServerSettings
    from services.runtime.server import Role, Servicer, start

    @dataclasses.dataclass(frozen=True)
    class Settings:
        server: ServerSettings = dataclasses.field(default_factory=ServerSettings)

    class App:
        def __init__(self, settings, context):
            self.servicers = [Servicer(bidder_pb2_grpc.add_BidderServiceServicer_to_server, _Streaming(),
                                       "adchain.v1.BidderService", ("ListImpressions", "BidStream"))]

        def start(self):
            pass

        def close(self, timeout_s):
            pass

    return start(Role("dsp", Settings, App), Settings())


def test_streaming_rpcs_get_the_same_error_mapping_and_metrics_as_unary_ones():
    from adchain.v1 import bidder_pb2
    from services.runtime.errors import field_violations

    running = _serve_streaming()
    try:
        with grpc.insecure_channel(running.grpc_address) as channel:
            stub = bidder_pb2_grpc.BidderServiceStub(channel)
            stream = stub.ListImpressions(bidder_pb2.BidderServiceListImpressionsRequest(), timeout=5)
            next(stream)
            try:
                next(stream)
                raise AssertionError("the refusal did not reach the caller")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert field_violations(error) == {"page": "refused mid-stream"}
            bidi = stub.BidStream(iter([bidder_pb2.BidStreamRequest()]), timeout=5)
            try:
                list(bidi)
                raise AssertionError("the failure did not reach the caller")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL
        body = urllib.request.urlopen(f"http://{running.metrics_address}/metrics", timeout=5).read().decode()
        assert 'adchain_rpc_requests_total{code="INVALID_ARGUMENT",method="ListImpressions",role="dsp"} 1.0' in body
        assert 'adchain_rpc_requests_total{code="INTERNAL",method="BidStream",role="dsp"} 1.0' in body
    finally:
        running.stop(grace_s=0)

"""The exchange counts an ad as returned only when the caller received it."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.delivery import on_delivered


class SlowHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.outcomes: list[str] = []
        self.done = threading.Event()

    def Check(self, request, context):
        time.sleep(self.delay_s)
        on_delivered(context, lambda: self._end("delivered"), lambda: self._end("lost"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def _end(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.done.set()


@pytest.fixture
def serve():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    yield start
    for server in servers:
        server.stop(0)


def test_a_response_the_caller_receives_is_delivered(serve):
    servicer = SlowHealth(0.0)
    serve(servicer).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert servicer.done.wait(5)
    assert servicer.outcomes == ["delivered"]


def test_a_response_after_the_callers_deadline_is_lost(serve):
    servicer = SlowHealth(0.3)
    with pytest.raises(grpc.RpcError) as raised:
        serve(servicer).Check(health_pb2.HealthCheckRequest(), timeout=0.05)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.done.wait(5)
    assert servicer.outcomes == ["lost"]


def test_a_caller_that_hangs_up_never_gets_the_response(serve):
    servicer = SlowHealth(0.3)
    call = serve(servicer).Check.future(health_pb2.HealthCheckRequest(), timeout=5)
    time.sleep(0.05)
    call.cancel()
    assert servicer.done.wait(5)
    assert servicer.outcomes == ["lost"]

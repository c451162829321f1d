"""The exchange counts an ad as returned only when the caller received it."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.delivery import on_delivered


class SlowHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.outcomes: list[str] = []
        self.done = threading.Event()

    async def Check(self, request, context):
        if request.service == "block":  # busy past the deadline, where no cancellation can reach it
            time.sleep(self.delay_s)
        else:
            await asyncio.sleep(self.delay_s)
        on_delivered(context, lambda: self._end("delivered"), lambda: self._end("lost"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def _end(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.done.set()


@pytest.fixture
def serve():
    """An aio server on a loop thread of its own, as a role serves."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def start(servicer):
        async def started():
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        server, port = asyncio.run_coroutine_threadsafe(started(), loop).result()
        servers.append(server)
        return health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    yield start
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


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
    time.sleep(0.4)  # the handler, if it ran on, has returned by now
    assert servicer.outcomes in ([], ["lost"])  # cancelled under the handler, or judged lost
    assert "delivered" not in servicer.outcomes


def test_a_caller_that_hangs_up_never_gets_the_response(serve):
    servicer = SlowHealth(0.3)
    call = serve(servicer).Check.future(health_pb2.HealthCheckRequest(), timeout=5)
    time.sleep(0.05)
    call.cancel()
    time.sleep(0.4)
    assert "delivered" not in servicer.outcomes


def test_a_response_that_could_only_leave_after_the_callers_deadline_is_lost(serve):
    servicer = SlowHealth(0.2)
    with pytest.raises(grpc.RpcError) as raised:
        serve(servicer).Check(health_pb2.HealthCheckRequest(service="block"), timeout=0.05)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.done.wait(5)
    assert servicer.outcomes == ["lost"]

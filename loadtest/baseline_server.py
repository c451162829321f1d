"""The benchmark's baseline: a BidderService whose Bid returns one fixed bid
and does nothing else, served on the roles' own stack (the runtime server:
grpc.aio with its wrapped handlers, health and reflection), on bare grpc.aio,
or on grpcio's threaded server (a thread pool of 16). What a role costs above
the first is the role's own work; the other two show what the serving model
itself costs.

    python -m loadtest.baseline_server runtime|aio|threaded    prints its address, serves until killed
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import threading
from concurrent import futures

import grpc

from adchain.v1 import bidder_pb2_grpc, openrtb_pb2
from services.runtime.config import ServerSettings
from services.runtime.server import Role, RoleContext, Servicer, start

FIXED = openrtb_pb2.BidResponse(id="bench", bidid="b", cur="USD", seatbid=[openrtb_pb2.SeatBid(seat="dsp-1", bid=[
    openrtb_pb2.Bid(id="bid-1", impid="1", price=6.0, adm="<div>ad</div>", adomain=["brand.example"], cid="c",
                    crid="c-creative", w=300, h=250, mtype=1,
                    nurl="grpc://dsp-1/notice/win?auction=${AUCTION_ID}&price=${AUCTION_PRICE}")])])


class DoNothing(bidder_pb2_grpc.BidderServiceServicer):
    def Bid(self, request, context):
        return FIXED


class DoNothingAsync(bidder_pb2_grpc.BidderServiceServicer):
    async def Bid(self, request, context):
        return FIXED


@dataclasses.dataclass(frozen=True)
class Settings:
    server: ServerSettings = dataclasses.field(default_factory=lambda: ServerSettings(name="baseline"))


class App:
    def __init__(self, settings: Settings, context: RoleContext):
        self.servicers = [Servicer(bidder_pb2_grpc.add_BidderServiceServicer_to_server, DoNothing(),
                                   "adchain.v1.BidderService", ("Bid",))]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass


def serve_runtime() -> None:
    running = start(Role("dsp", Settings, App), Settings())
    print(running.grpc_address, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    running.stop(grace_s=0)


async def serve_aio() -> None:
    server = grpc.aio.server()
    bidder_pb2_grpc.add_BidderServiceServicer_to_server(DoNothingAsync(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def serve_threaded() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    bidder_pb2_grpc.add_BidderServiceServicer_to_server(DoNothing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["aio"]:
        asyncio.run(serve_aio())
    elif sys.argv[1:] == ["threaded"]:
        serve_threaded()
    else:
        serve_runtime()

"""Channels to the DSPs a role calls (the exchange for bids and notices, the
ad server and the verifier for notices), opened once and closed together.

They are grpc.aio channels on the role's event loop, where every caller of a
DSP runs: the exchange's bid streams and the notice senders. They open when
`aio_stubs` is first read, which must be on the loop."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adchain.v1 import bidder_pb2_grpc
from services.runtime.config import Peer

# Batches of thousands of bid requests or notices exceed gRPC's default 4 MiB.
MESSAGE_LIMIT_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                         ("grpc.max_send_message_length", 64 * 1024 * 1024)]


class BidderPeers:
    def __init__(self, peers: Sequence[Peer]):
        self._addresses = {p.name: p.address for p in peers}
        self._aio_channels: dict[str, grpc.aio.Channel] = {}

    @property
    def aio_stubs(self) -> dict[str, bidder_pb2_grpc.BidderServiceStub]:
        if not self._aio_channels:
            self._aio_channels = {name: grpc.aio.insecure_channel(address, options=MESSAGE_LIMIT_OPTIONS)
                                  for name, address in self._addresses.items()}
        return {name: bidder_pb2_grpc.BidderServiceStub(ch) for name, ch in self._aio_channels.items()}

    async def aclose(self) -> None:
        for channel in self._aio_channels.values():
            await channel.close()

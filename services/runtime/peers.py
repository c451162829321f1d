"""Channels to the DSPs a role calls (the exchange for bids and notices, the
ad server and the verifier for notices), opened once and closed together."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from adchain.v1 import bidder_pb2_grpc
from services.runtime.config import Peer


class BidderPeers:
    def __init__(self, peers: Sequence[Peer]):
        self._channels = {p.name: grpc.insecure_channel(p.address) for p in peers}
        self.stubs = {name: bidder_pb2_grpc.BidderServiceStub(ch) for name, ch in self._channels.items()}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

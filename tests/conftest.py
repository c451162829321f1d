"""Shared fixtures: an in-process chain of real gRPC servers on ephemeral
loopback ports, each role with its own metrics registry."""

from __future__ import annotations

import atexit
import dataclasses
import os
import tempfile

# Numba's on-disk cache goes to a folder of this test session's own, set
# before anything imports numba (and inherited by the processes tests start),
# so tests never read or write a shared cache.
_NUMBA_CACHE_DIR = tempfile.mkdtemp(prefix="adchain-test-numba-")
os.environ["NUMBA_CACHE_DIR"] = _NUMBA_CACHE_DIR
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from adchain.v1 import (ad_server_pb2_grpc, bidder_pb2_grpc, exchange_pb2, exchange_pb2_grpc, openrtb_pb2,
                        verifier_pb2_grpc)
from services.roles import ROLES
from services.runtime import config, server

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"signing_key_id": "k1", "keys": ["k1:" + "ab" * 32]}

CAMPAIGNS = {
    "dsp-1": [
        {"id": "c-display", "advertiser_domain": "brand.example", "bid_micros": 6_000_000,
         "budget_total_micros": 1_000_000_000, "formats": ["banner"], "sizes": ["300x250"]},
        {"id": "c-video", "advertiser_domain": "auto.example", "bid_micros": 12_000_000,
         "budget_total_micros": 1_000_000_000, "formats": ["video"], "duration_s": 30},
    ],
    "dsp-2": [
        {"id": "c-rival", "advertiser_domain": "travel.example", "bid_micros": 5_000_000,
         "budget_total_micros": 1_000_000_000, "formats": ["banner"], "sizes": ["300x250"]},
        {"id": "c-rival-video", "advertiser_domain": "travel.example", "bid_micros": 10_000_000,
         "budget_total_micros": 1_000_000_000, "formats": ["video"], "duration_s": 15},
    ],
}


@dataclasses.dataclass
class Chain:
    running: dict[str, server.RunningRole]
    channels: dict[str, grpc.Channel]

    def addresses(self) -> dict[str, dict[str, str]]:
        return {n: {"grpc": r.grpc_address, "metrics": r.metrics_address} for n, r in self.running.items()}

    def dsp(self, name: str = "dsp-1") -> bidder_pb2_grpc.BidderServiceStub:
        return bidder_pb2_grpc.BidderServiceStub(self.channels[name])

    @property
    def ssp(self) -> exchange_pb2_grpc.ExchangeServiceStub:
        return exchange_pb2_grpc.ExchangeServiceStub(self.channels["ssp"])

    @property
    def adserver(self) -> ad_server_pb2_grpc.AdServerServiceStub:
        return ad_server_pb2_grpc.AdServerServiceStub(self.channels["adserver"])

    @property
    def verifier(self) -> verifier_pb2_grpc.VerifierServiceStub:
        return verifier_pb2_grpc.VerifierServiceStub(self.channels["verifier"])


def start_role(role: str, name: str, data: dict, grpc_port: int = 0) -> server.RunningRole:
    data = {**data, "server": {"name": name, "host": "127.0.0.1", "grpc_port": grpc_port, "metrics_port": 0,
                               "grace_s": 1.0}}
    settings = config.from_mapping(ROLES[role].settings_type, data, env={})
    return server.start(ROLES[role], settings)


# Tests render right after the ad returns; the render-speed heuristic has its own tests.
ADSERVER_DEFAULTS = {"ivt": {"min_render_ms": 0}}


def start_chain(dsp_overrides: dict | None = None, ssp_overrides: dict | None = None,
                adserver_overrides: dict | None = None, ledger_dir: Path | None = None) -> Chain:
    """The chain in this process; with `ledger_dir`, each role keeps its
    ledger there (a second chain on the same folder resumes its counts)."""
    def ledger(name: str) -> dict:
        return {} if ledger_dir is None else {"ledger": {"path": str(ledger_dir / f"{name}.sqlite")}}

    running: dict[str, server.RunningRole] = {}
    for name, campaigns in CAMPAIGNS.items():
        dsp = {"seat": name, **(dsp_overrides or {}).get(name, {})}
        running[name] = start_role("dsp", name, {"dsp": dsp, "campaigns": campaigns, **ledger(name)})
    dsps = [{"name": n, "address": running[n].grpc_address} for n in CAMPAIGNS]
    running["ssp"] = start_role("ssp", "ssp", {"dsps": dsps, "tokens": TOKENS, "exchange": ssp_overrides or {},
                                               **ledger("ssp")})
    running["adserver"] = start_role("adserver", "adserver", {
        "dsps": dsps, "tokens": TOKENS, **(adserver_overrides or ADSERVER_DEFAULTS), **ledger("adserver")})
    running["verifier"] = start_role("verifier", "verifier", {"dsps": dsps, "tokens": TOKENS, **ledger("verifier")})
    channels = {n: grpc.insecure_channel(r.grpc_address) for n, r in running.items()}
    return Chain(running, channels)


def stop_chain(chain: Chain) -> None:
    for channel in chain.channels.values():
        channel.close()
    # In parallel: each stop waits out its metrics server's poll interval.
    with ThreadPoolExecutor(max_workers=len(chain.running)) as pool:
        list(pool.map(lambda r: r.stop(grace_s=1.0), chain.running.values()))


@pytest.fixture
def chain():
    running = start_chain()
    yield running
    stop_chain(running)


def banner_request(request_id: str = "r1", floor: float = 0.5, w: int = 300, h: int = 250) -> exchange_pb2.RequestAdRequest:
    return exchange_pb2.RequestAdRequest(
        request_id=request_id,
        imp=openrtb_pb2.Imp(id="1", banner=openrtb_pb2.Banner(w=w, h=h), bidfloor=floor),
        site=openrtb_pb2.Site(domain="news.example", page="https://news.example/a"),
        device=openrtb_pb2.Device(ua="Mozilla/5.0", ip="203.0.113.7", devicetype=2),
        user=openrtb_pb2.User(id="u1"),
    )


def wait_for(predicate, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def system_program(name: str) -> str:
    """Path of a system program; skip without it, except under CI where its
    absence is a failure (.ci/run installs it)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI; .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


def _remove_numba_cache() -> None:
    shutil.rmtree(_NUMBA_CACHE_DIR, ignore_errors=True)


atexit.register(_remove_numba_cache)

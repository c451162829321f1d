"""A short, bounded load through the whole chain: a publisher client that asks
the exchange for ads, renders most of them, and lets the verification tag
report most exposures. Discrepancies come only from what the client does:
deadlines that pass, renders that never happen, tags that cannot measure,
ads scrolled past too quickly."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, exchange_pb2, exchange_pb2_grpc, openrtb_pb2,
                        verifier_pb2, verifier_pb2_grpc)

SITES = ("news.example", "sports.example", "recipes.example", "weather.example")
BANNER_SIZES = ((300, 250), (728, 90), (320, 50), (160, 600), (970, 250))
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How the demo's publisher client behaves; shares are probabilities."""

    # Callers that give the exchange too little time (a slow page's ad call).
    tight_deadline_share: float = 0.03
    tight_deadline_ms: float = 8.0
    deadline_ms: float = 1000.0
    # Ads returned but never rendered (user left, slot collapsed).
    abandon_share: float = 0.025
    # Rendered ads whose verification tag cannot read geometry.
    unmeasurable_share: float = 0.065
    # Measurable ads that stay in view long enough.
    in_view_share: float = 0.69
    video_share: float = 0.15
    # From ad return to begin-to-render in a person's browser.
    render_delay_s: tuple[float, float] = (0.04, 0.25)


def run(addresses: Mapping[str, Mapping[str, str]], opportunities: int, seed: int = 7,
        behaviour: Behaviour = Behaviour(), concurrency: int = 64) -> dict[str, int]:
    """Drive `opportunities` ad requests; returns what the client did."""
    done = {"requested": 0, "filled": 0, "rendered": 0, "exposed": 0}
    lock = threading.Lock()
    channels = [grpc.insecure_channel(addresses[n]["grpc"]) for n in ("ssp", "adserver", "verifier")]
    exchange = exchange_pb2_grpc.ExchangeServiceStub(channels[0])
    ad_server = ad_server_pb2_grpc.AdServerServiceStub(channels[1])
    verifier = verifier_pb2_grpc.VerifierServiceStub(channels[2])

    def one(i: int) -> None:
        rng = random.Random(seed * 1_000_003 + i)
        did = _opportunity(rng, behaviour, exchange, ad_server, verifier, i)
        with lock:
            for key in did:
                done[key] += 1

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(opportunities)))
    finally:
        for channel in channels:
            channel.close()
    return done


def _opportunity(rng: random.Random, b: Behaviour, exchange, ad_server, verifier, i: int) -> list[str]:
    did = ["requested"]
    request = exchange_pb2.RequestAdRequest(
        request_id=f"demo-{i}",
        site=openrtb_pb2.Site(domain=rng.choice(SITES), page="https://news.example/article"),
        device=openrtb_pb2.Device(ua=USER_AGENT, ip=f"203.0.113.{rng.randrange(1, 255)}", devicetype=2),
        user=openrtb_pb2.User(id=f"user-{rng.randrange(5000)}"),
    )
    if rng.random() < b.video_share:
        request.imp.video.CopyFrom(openrtb_pb2.Video(mimes=["video/mp4"], w=1280, h=720, minduration=5,
                                                     maxduration=30))
        request.imp.bidfloor = 8.0
    else:
        w, h = rng.choice(BANNER_SIZES)
        request.imp.banner.CopyFrom(openrtb_pb2.Banner(w=w, h=h))
        request.imp.bidfloor = rng.choice((0.5, 1.0, 2.0))
    deadline_ms = b.tight_deadline_ms if rng.random() < b.tight_deadline_share else b.deadline_ms
    try:
        response = exchange.RequestAd(request, timeout=deadline_ms / 1000.0)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return did  # the page gave up waiting: no ad, nothing to render
        raise
    if not response.HasField("ad"):
        return did
    did.append("filled")
    if rng.random() < b.abandon_share:
        return did
    time.sleep(rng.uniform(*b.render_delay_s))  # the browser fetches and lays out the creative
    ad_server.RecordImpression(ad_server_pb2.RecordImpressionRequest(
        token=response.ad.token, user_agent=USER_AGENT, ip=request.device.ip), timeout=5)
    did.append("rendered")
    verifier.RecordExposure(_exposure(rng, b, response.ad), timeout=5)
    did.append("exposed")
    return did


def _exposure(rng: random.Random, b: Behaviour, ad: exchange_pb2.Ad) -> verifier_pb2.RecordExposureRequest:
    if rng.random() < b.unmeasurable_share:
        return verifier_pb2.RecordExposureRequest(token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_NONE)
    needed_ms = 2000 if ad.mtype == 2 else 1000
    if rng.random() < b.in_view_share:
        percent, dwell_ms = rng.randint(55, 100), rng.randint(needed_ms + 300, needed_ms * 4)
    elif rng.random() < 0.5:
        percent, dwell_ms = rng.randint(0, 25), rng.randint(500, 5000)  # below the fold
    else:
        percent, dwell_ms = rng.randint(55, 100), rng.randint(100, needed_ms - 300)  # scrolled past
    samples, t = [], 0
    while t <= dwell_ms:
        samples.append(verifier_pb2.InViewSample(offset_ms=t, in_view_percent=percent))
        t += rng.randint(100, 200)
    samples.append(verifier_pb2.InViewSample(offset_ms=t, in_view_percent=0))  # scrolled away
    return verifier_pb2.RecordExposureRequest(token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY,
                                              samples=samples)

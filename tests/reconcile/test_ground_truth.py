"""Traffic with a known ground truth crosses the real chain, and `adchain
reconcile` reports exactly the counts and causes that ground truth implies.

Each opportunity's client does one thing a real client does; nothing edits a
count. The capped viewer's two renders run in order inside one client, so
which of them is capped is known.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adchain.v1 import ad_server_pb2, verifier_pb2
from services.reconcile import read_snapshots
from services.runtime.counting import total
from tests.conftest import ROOT, banner_request, start_chain, stop_chain, wait_for

HUMAN = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"
BOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"

# What each client does, and how many clients do it.
PLAN = [
    ("deadline", 3),        # gives up before the auction ends: won, never returned
    ("abandon", 3),         # the ad comes back, the page never renders it
    ("bot", 2),             # a declared crawler renders it
    ("datacenter", 1),      # a render from a cloud address
    ("capped", 1),          # the second impression for a viewer capped at one
    ("late", 2),            # the render arrives after the token expired
    ("duplicate", 2),       # the render pixel fires twice
    ("no_tag", 3),          # rendered, the verification tag never reports
    ("unmeasurable", 3),    # rendered, the tag cannot read geometry
    ("not_viewable", 4),    # measured, in view for less than a second
    ("viewable", 16),
]


def exposure(token: str, method: int, in_view_ms: int) -> verifier_pb2.RecordExposureRequest:
    samples = [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=80) for t in range(0, in_view_ms + 1, 150)]
    samples.append(verifier_pb2.InViewSample(offset_ms=in_view_ms + 150, in_view_percent=0))
    return verifier_pb2.RecordExposureRequest(token=token, method=method, samples=samples)


@pytest.fixture
def slow_chain():
    # DSPs answer in 400 ms, so a caller that waits 200 ms gives up while the
    # auction is still running, however loaded the machine.
    chain = start_chain(
        dsp_overrides={"dsp-1": {"response_delay_ms": 400}, "dsp-2": {"response_delay_ms": 400}},
        ssp_overrides={"tmax_ms": 1500, "token_ttl_s": 3},
        adserver_overrides={"ivt": {"min_render_ms": 0},
                            "frequency_caps": [{"campaign": "c-display", "impressions": 1, "window_s": 3600}]},
    )
    yield chain
    stop_chain(chain)


def client(chain, n: int, behaviour: str):
    """One opportunity's client doing `behaviour`; returns an ad to render late."""
    request = banner_request(f"o{n}")
    request.user.id = "capped-viewer" if behaviour == "capped" else f"u{n}"
    if behaviour == "deadline":
        with pytest.raises(grpc.RpcError):
            chain.ssp.RequestAd(request, timeout=0.2)
        return None
    if behaviour == "capped":
        # The same viewer saw an ad a moment ago: that one renders first.
        first = banner_request(f"o{n}-first")
        first.user.id = "capped-viewer"
        earlier = chain.ssp.RequestAd(first, timeout=10).ad
        chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(
            token=earlier.token, user_agent=HUMAN, ip="198.51.100.7"), timeout=5)
        chain.verifier.RecordExposure(exposure(earlier.token, 2, 1500), timeout=5)
    ad = chain.ssp.RequestAd(request, timeout=10).ad
    if behaviour == "abandon":
        return None
    if behaviour == "late":
        return ad
    agent, ip = {"bot": (BOT, "203.0.113.50"), "datacenter": (HUMAN, "35.190.1.1")}.get(
        behaviour, (HUMAN, "198.51.100.7"))
    pixel = ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=agent, ip=ip)
    chain.adserver.RecordImpression(pixel, timeout=5)
    if behaviour == "duplicate":
        chain.adserver.RecordImpression(pixel, timeout=5)
    if behaviour in ("bot", "datacenter", "capped", "no_tag"):
        return None
    if behaviour == "unmeasurable":
        chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_NONE), timeout=5)
        return None
    chain.verifier.RecordExposure(exposure(ad.token, 2, 600 if behaviour == "not_viewable" else 1500), timeout=5)
    return None


@pytest.mark.slow
def test_reconcile_reports_exactly_what_the_ground_truth_implies(slow_chain, tmp_path):
    chain = slow_chain
    behaviours = [b for b, count in PLAN for _ in range(count)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        late_ads = [ad for ad in pool.map(lambda nb: client(chain, *nb), enumerate(behaviours, 1)) if ad]
    time.sleep(3.1)  # the late renders arrive after their tokens expired
    for ad in late_ads:
        chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(
            token=ad.token, user_agent=HUMAN, ip="198.51.100.7"), timeout=5)

    # The abandoned callers' auctions finish after they hung up; wait for their notices.
    ssp = lambda: read_snapshots({"ssp": chain.addresses()["ssp"]})["ssp"]  # noqa: E731
    assert wait_for(lambda: total(ssp(), "not_returned") == 3, timeout_s=10)
    dsp = lambda: read_snapshots({"dsp-1": chain.addresses()["dsp-1"]})["dsp-1"]  # noqa: E731
    assert wait_for(lambda: total(dsp(), "won") == 41, timeout_s=10), dsp()

    addresses = tmp_path / "addresses.json"
    addresses.write_text(json.dumps(chain.addresses()))
    result = subprocess.run([sys.executable, "-m", "services", "reconcile", "--addresses", str(addresses), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    # 40 planned opportunities plus the capped viewer's earlier ad.
    assert report["stages"] == {"won": 41, "returned": 38, "rendered": 29, "measurable": 23, "viewable": 19}
    assert report["causes"] == {
        "won->returned": {"not_returned_before_deadline": 3},
        "returned->rendered": {"frequency_capped": 1, "invalid:bot_user_agent": 2, "invalid:datacenter_ip": 1,
                               "late": 2, "not_rendered": 3},
        "rendered->measurable": {"not_measured": 3, "unmeasurable": 3},
        "measurable->viewable": {"not_viewable": 4},
    }
    assert report["duplicates"] == {"adserver": 2}
    # Every counted render cleared at the rival's $5.00 plus $0.01.
    assert report["billing"]["spend_micros"] == 29 * 5_010
    assert report["billing"]["viewable_rate"] == round(19 / 29, 6)
    assert report["campaigns"]["c-display"]["served"] == 29

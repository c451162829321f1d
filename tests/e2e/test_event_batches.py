"""Events in batches through the real chain: renders and tag reports arrive
in RecordImpressions and RecordExposures, and their billing and event
notices reach the DSP in NotifyBillings and NotifyEvents, counted once each."""

from __future__ import annotations

import urllib.request

from adchain.v1 import ad_server_pb2, verifier_pb2
from services.reconcile import read_snapshots
from services.runtime.counting import total
from tests.conftest import banner_request, wait_for

HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def counts(chain, name):
    return read_snapshots({name: chain.addresses()[name]})[name]


def rpc_requests(chain, name: str, method: str) -> float:
    """adchain_rpc_requests_total for one method of one role, all codes."""
    with urllib.request.urlopen(f"http://{chain.running[name].metrics_address}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("adchain_rpc_requests_total{") and f'method="{method}"' in line)


def test_batched_renders_and_reports_reach_the_dsp_in_batches(chain):
    ads = [chain.ssp.RequestAd(banner_request(f"r{i}"), timeout=5).ad for i in range(6)]
    assert {ad.seat for ad in ads} == {"dsp-1"}
    beacons = [ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=HUMAN, ip="203.0.113.9")
               for ad in ads]
    rendered = chain.adserver.RecordImpressions(ad_server_pb2.RecordImpressionsRequest(items=beacons), timeout=5)
    assert [r.response.outcome for r in rendered.results] == [ad_server_pb2.EVENT_OUTCOME_COUNTED] * 6

    in_view = [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=90) for t in range(0, 1301, 130)]
    glimpse = in_view[:3]
    reports = [verifier_pb2.RecordExposureRequest(token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY,
                                                  samples=in_view if i % 2 == 0 else glimpse)
               for i, ad in enumerate(ads)]
    measured = chain.verifier.RecordExposures(verifier_pb2.RecordExposuresRequest(items=reports), timeout=5)
    assert [r.response.exposure_class for r in measured.results] == [
        verifier_pb2.EXPOSURE_CLASS_VIEWABLE, verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE] * 3

    # Each notice counted once at the DSP, and every one came in a batch.
    assert wait_for(lambda: total(counts(chain, "dsp-1"), "billed") == 6)
    assert wait_for(lambda: total(counts(chain, "dsp-1"), "viewable") == 3)
    assert total(counts(chain, "adserver"), "billing_notices", reason="sent") == 6
    assert total(counts(chain, "verifier"), "viewable_notices", reason="sent") == 3
    assert rpc_requests(chain, "dsp-1", "NotifyBillings") >= 1
    assert rpc_requests(chain, "dsp-1", "NotifyEvents") >= 1
    assert rpc_requests(chain, "dsp-1", "NotifyBilling") == rpc_requests(chain, "dsp-1", "NotifyEvent") == 0
    # Second price plus, six times: the rival's $5.00 plus $0.01 per thousand.
    assert total(counts(chain, "dsp-1"), "spend_micros") == 6 * 5_010


def test_a_click_notice_reaches_the_dsp_in_a_batch(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=HUMAN),
                                    timeout=5)
    assert chain.adserver.RecordClick(ad_server_pb2.RecordClickRequest(token=ad.token),
                                      timeout=5).outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
    assert wait_for(lambda: total(counts(chain, "dsp-1"), "clicks") == 1)
    assert total(counts(chain, "adserver"), "event_notices", reason="click:sent") == 1
    assert rpc_requests(chain, "dsp-1", "NotifyEvent") == 0

"""Each role counts what its real-world counterpart counts, at the same
event, with the same filters: one test per rule, over real gRPC."""

from __future__ import annotations

import time

import grpc
import pytest

from adchain.v1 import ad_server_pb2, bidder_pb2, exchange_pb2, openrtb_pb2, verifier_pb2
from services.reconcile import read_snapshots
from services.runtime.counting import total
from tests.conftest import ADSERVER_DEFAULTS, banner_request, start_chain, start_role, stop_chain, wait_for

HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def snapshot(chain, name):
    return read_snapshots({name: chain.addresses()[name]})[name]


def render(chain, ad, user_agent=HUMAN, ip="203.0.113.9"):
    return chain.adserver.RecordImpression(
        ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=user_agent, ip=ip), timeout=5)


def video_request(request_id="v1", **video) -> exchange_pb2.RequestAdRequest:
    request = banner_request(request_id)
    request.imp.ClearField("banner")
    request.imp.video.CopyFrom(openrtb_pb2.Video(mimes=["video/mp4"], w=1280, h=720, **video))
    return request


@pytest.mark.parametrize("user_agent, ip, reason", [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "203.0.113.9", "bot_user_agent"),
    ("python-requests/2.32", "203.0.113.9", "bot_user_agent"),
    (HUMAN, "54.80.1.2", "datacenter_ip"),
])
def test_general_invalid_traffic_is_excluded_and_never_billed(chain, user_agent, ip, reason):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    response = render(chain, ad, user_agent, ip)
    assert (response.outcome, response.reason) == (ad_server_pb2.EVENT_OUTCOME_INVALID, reason)
    adserver = snapshot(chain, "adserver")
    assert total(adserver, "rendered") == 0
    assert total(adserver, "invalid", reason=reason) == 1
    time.sleep(0.3)
    assert total(snapshot(chain, "dsp-1"), "billed") == 0
    assert total(adserver, "billing_notices") == 0


def test_a_render_faster_than_a_browser_could_is_invalid():
    chain = start_chain(adserver_overrides={"ivt": {"min_render_ms": 200}})
    try:
        ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
        assert render(chain, ad).reason == "render_too_fast"
        late_enough = chain.ssp.RequestAd(banner_request("b"), timeout=5).ad
        time.sleep(0.25)
        assert render(chain, late_enough).outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
    finally:
        stop_chain(chain)


def test_a_viewer_over_the_per_minute_rate_is_invalid():
    chain = start_chain(adserver_overrides={"ivt": {"min_render_ms": 0, "max_impressions_per_user_per_minute": 3}})
    try:
        outcomes = [render(chain, chain.ssp.RequestAd(banner_request(f"r{i}"), timeout=5).ad).reason
                    for i in range(5)]
        assert outcomes == ["", "", "", "user_rate_exceeded", "user_rate_exceeded"]
    finally:
        stop_chain(chain)


def test_the_ad_servers_frequency_cap_stops_counting_and_billing():
    caps = {**ADSERVER_DEFAULTS, "frequency_caps": [{"campaign": "c-display", "impressions": 2, "window_s": 3600}]}
    chain = start_chain(adserver_overrides=caps)
    try:
        outcomes = [render(chain, chain.ssp.RequestAd(banner_request(f"r{i}"), timeout=5).ad).outcome
                    for i in range(3)]
        assert outcomes[2] == ad_server_pb2.EVENT_OUTCOME_CAPPED
        adserver = snapshot(chain, "adserver")
        assert (total(adserver, "rendered"), total(adserver, "capped")) == (2, 1)
        assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "billed") == 2)
    finally:
        stop_chain(chain)


def test_the_billing_notice_is_idempotent_per_impression(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "won") == 1)
    notice = bidder_pb2.NotifyBillingRequest(impression_key=ad.impression_key, campaign_id=ad.campaign_id,
                                             macros=bidder_pb2.AuctionMacros(price_micros=ad.price_micros))
    assert chain.dsp().NotifyBilling(notice, timeout=5).counted is True
    assert chain.dsp().NotifyBilling(notice, timeout=5).counted is False
    dsp = snapshot(chain, "dsp-1")
    assert (total(dsp, "billed"), total(dsp, "spend_micros")) == (1, 5_010)


def test_a_billing_notice_is_retried_until_the_dsp_takes_it():
    """The DSP is down when the impression counts; the notice is retried and
    lands once the DSP is back, and the spend is booked exactly once."""
    dsp = start_role("dsp", "dsp-1", {"dsp": {"seat": "dsp-1"}, "campaigns": [
        {"id": "c", "advertiser_domain": "a.example", "bid_micros": 2_000_000, "budget_total_micros": 10**9}]})
    address = dsp.grpc_address
    tokens = {"signing_key_id": "k1", "keys": ["k1:" + "ab" * 32]}
    ssp = start_role("ssp", "ssp", {"dsps": [{"name": "dsp-1", "address": address}], "tokens": tokens})
    adserver = start_role("adserver", "adserver", {
        "dsps": [{"name": "dsp-1", "address": address}], "tokens": tokens, "ivt": {"min_render_ms": 0},
        "billing": {"retry_interval_s": 0.3, "retry_for_s": 30.0, "timeout_ms": 200}})
    revived = None
    try:
        with grpc.insecure_channel(ssp.grpc_address) as channel:
            from adchain.v1 import exchange_pb2_grpc
            ad = exchange_pb2_grpc.ExchangeServiceStub(channel).RequestAd(banner_request(), timeout=5).ad
        dsp.stop(grace_s=0)  # the DSP goes down before the render
        with grpc.insecure_channel(adserver.grpc_address) as channel:
            from adchain.v1 import ad_server_pb2_grpc
            stub = ad_server_pb2_grpc.AdServerServiceStub(channel)
            assert stub.RecordImpression(ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=HUMAN),
                                         timeout=5).outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
        counts = lambda: read_snapshots({"adserver": {"grpc": adserver.grpc_address}})["adserver"]  # noqa: E731
        assert wait_for(lambda: total(counts(), "billing_notices", reason="retried") >= 2, timeout_s=10)
        port = int(address.rsplit(":", 1)[1])
        revived = start_role("dsp", "dsp-1", {"dsp": {"seat": "dsp-1"}, "campaigns": [
            {"id": "c", "advertiser_domain": "a.example", "bid_micros": 2_000_000, "budget_total_micros": 10**9}]},
            grpc_port=port)
        dsp_counts = lambda: read_snapshots({"dsp-1": {"grpc": address}})["dsp-1"]  # noqa: E731

        def billed_once() -> bool:
            try:
                return total(dsp_counts(), "billed") == 1
            except grpc.RpcError:  # the in-process channel to the address is still backing off
                return False

        assert wait_for(billed_once, timeout_s=20)
        assert total(counts(), "billing_notices", reason="sent") == 1
        # Alone in a second-price auction: the $0.50 floor plus $0.01, per thousand.
        assert total(dsp_counts(), "spend_micros") == 510
    finally:
        for running in (ssp, adserver, revived):
            if running is not None:
                running.stop(grace_s=0)


def test_a_billing_notice_that_never_lands_is_counted_as_failed():
    tokens = {"signing_key_id": "k1", "keys": ["k1:" + "ab" * 32]}
    dsp = start_role("dsp", "dsp-1", {"dsp": {"seat": "dsp-1"}, "campaigns": [
        {"id": "c", "advertiser_domain": "a.example", "bid_micros": 2_000_000, "budget_total_micros": 10**9}]})
    ssp = start_role("ssp", "ssp", {"dsps": [{"name": "dsp-1", "address": dsp.grpc_address}], "tokens": tokens})
    adserver = start_role("adserver", "adserver", {
        "dsps": [{"name": "dsp-1", "address": dsp.grpc_address}], "tokens": tokens, "ivt": {"min_render_ms": 0},
        "billing": {"retry_interval_s": 0.2, "retry_for_s": 0.7, "timeout_ms": 100}})
    try:
        from adchain.v1 import ad_server_pb2_grpc, exchange_pb2_grpc
        with grpc.insecure_channel(ssp.grpc_address) as channel:
            ad = exchange_pb2_grpc.ExchangeServiceStub(channel).RequestAd(banner_request(), timeout=5).ad
        dsp.stop(grace_s=0)
        with grpc.insecure_channel(adserver.grpc_address) as channel:
            ad_server_pb2_grpc.AdServerServiceStub(channel).RecordImpression(
                ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=HUMAN), timeout=5)
        counts = lambda: read_snapshots({"adserver": {"grpc": adserver.grpc_address}})["adserver"]  # noqa: E731
        assert wait_for(lambda: total(counts(), "billing_notices", reason="failed") == 1, timeout_s=10)
        assert total(counts(), "billing_notices", reason="sent") == 0
        assert total(counts(), "rendered") == 1  # the impression stays counted
    finally:
        ssp.stop(grace_s=0)
        adserver.stop(grace_s=0)


def test_a_render_after_the_token_expired_is_late_and_not_billed():
    chain = start_chain(ssp_overrides={"token_ttl_s": 1})
    try:
        ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
        time.sleep(1.1)
        assert render(chain, ad).outcome == ad_server_pb2.EVENT_OUTCOME_LATE
        exposure = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY), timeout=5)
        assert exposure.exposure_class == verifier_pb2.EXPOSURE_CLASS_LATE
        assert (total(snapshot(chain, "adserver"), "late"), total(snapshot(chain, "adserver"), "rendered")) == (1, 0)
        assert total(snapshot(chain, "verifier"), "measurable") == 0
    finally:
        stop_chain(chain)


def test_video_counts_on_the_impression_event_and_tallies_quartiles(chain):
    ad = chain.ssp.RequestAd(video_request(), timeout=5).ad
    assert ad.mtype == 2
    event = lambda e: chain.adserver.RecordVideoEvent(  # noqa: E731
        ad_server_pb2.RecordVideoEventRequest(token=ad.token, event=e), timeout=5).outcome
    # No quartile counts before the VAST Impression event (first frame).
    assert event(ad_server_pb2.VIDEO_EVENT_START) == ad_server_pb2.EVENT_OUTCOME_NO_IMPRESSION
    assert render(chain, ad).outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
    for e in (ad_server_pb2.VIDEO_EVENT_START, ad_server_pb2.VIDEO_EVENT_FIRST_QUARTILE,
              ad_server_pb2.VIDEO_EVENT_MIDPOINT, ad_server_pb2.VIDEO_EVENT_MIDPOINT):
        event(e)
    adserver = snapshot(chain, "adserver")
    assert total(adserver, "video_events", reason="start") == 1
    assert total(adserver, "video_events", reason="midpoint") == 1
    assert total(adserver, "duplicates", reason="video") == 1
    # The verifier applies the 2-second rule to video.
    one_and_a_half = [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=100) for t in range(0, 1501, 150)]
    verdict = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
        token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_OM_SDK, samples=one_and_a_half), timeout=5)
    assert verdict.exposure_class == verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE


def test_an_ad_break_keeps_advertisers_apart_and_counts_ad_load(chain):
    slots = [openrtb_pb2.Imp(id=str(i + 1), video=openrtb_pb2.Video(
        mimes=["video/mp4"], w=1920, h=1080, podid="break-1", podseq=1, slotinpod=i + 1, poddur=90, maxseq=3))
        for i in range(3)]
    response = chain.ssp.RequestAdPod(exchange_pb2.RequestAdPodRequest(
        request_id="pod", position=exchange_pb2.BREAK_POSITION_MID_ROLL, imp=slots,
        app=openrtb_pb2.App(bundle="tv.example.app"), device=openrtb_pb2.Device(devicetype=3),
        content_seconds=1800), timeout=5)
    domains = [d for ad in response.ads for d in ad.adomain]
    assert len(domains) == len(set(domains)) == 2  # two advertisers, the third slot stays empty
    assert response.unfilled_slots == 1
    ssp = snapshot(chain, "ssp")
    assert total(ssp, "pod_ad_seconds") == 45  # 30 s + 15 s of ads in half an hour of content
    assert total(ssp, "pod_content_seconds") == 1800
    # The higher bidder's second bid lost to competitive separation (loss code 205).
    assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "losses", reason="205") >= 1)


def test_clicks_and_conversions_count_once_after_a_counted_render(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    click = lambda: chain.adserver.RecordClick(ad_server_pb2.RecordClickRequest(token=ad.token), timeout=5).outcome  # noqa: E731
    convert = lambda: chain.adserver.RecordConversion(  # noqa: E731
        ad_server_pb2.RecordConversionRequest(token=ad.token, value_micros=25_000_000), timeout=5).outcome
    assert click() == ad_server_pb2.EVENT_OUTCOME_NO_IMPRESSION
    render(chain, ad)
    assert convert() == ad_server_pb2.EVENT_OUTCOME_NO_IMPRESSION  # post-click only
    assert [click(), click()] == [ad_server_pb2.EVENT_OUTCOME_COUNTED, ad_server_pb2.EVENT_OUTCOME_DUPLICATE]
    assert convert() == ad_server_pb2.EVENT_OUTCOME_COUNTED
    adserver = snapshot(chain, "adserver")
    assert (total(adserver, "clicks"), total(adserver, "conversions")) == (1, 1)
    assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "conversions") == 1)


def _pricing_chain(model: str, bid_micros: int):
    from tests import conftest
    saved = conftest.CAMPAIGNS["dsp-1"]
    conftest.CAMPAIGNS["dsp-1"] = [{"id": "c-model", "advertiser_domain": "m.example", "pricing_model": model,
                                    "bid_micros": bid_micros, "budget_total_micros": 10**9, "formats": ["banner"]}]
    try:
        return start_chain()
    finally:
        conftest.CAMPAIGNS["dsp-1"] = saved


def test_cpc_campaigns_pay_on_clicks_not_on_impressions():
    chain = _pricing_chain("cpc", 500_000)  # $0.50 per click
    try:
        request = banner_request()
        request.imp.metric.add(type="click_through_rate", value=0.02)  # eCPM $10 beats the rival's $5
        ad = chain.ssp.RequestAd(request, timeout=5).ad
        assert ad.campaign_id == "c-model"
        render(chain, ad)
        assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "billed") == 1)
        assert total(snapshot(chain, "dsp-1"), "spend_micros") == 0
        chain.adserver.RecordClick(ad_server_pb2.RecordClickRequest(token=ad.token), timeout=5)
        assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "spend_micros") == 500_000)
    finally:
        stop_chain(chain)


def test_vcpm_campaigns_pay_on_viewable_impressions():
    chain = _pricing_chain("vcpm", 20_000_000)  # $20 vCPM
    try:
        ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
        assert ad.campaign_id == "c-model"
        render(chain, ad)
        assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "billed") == 1)
        assert total(snapshot(chain, "dsp-1"), "spend_micros") == 0
        samples = [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=90) for t in range(0, 1301, 130)]
        chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY, samples=samples), timeout=5)
        assert wait_for(lambda: total(snapshot(chain, "dsp-1"), "spend_micros") == 20_000)
        assert total(snapshot(chain, "dsp-1"), "viewable") == 1
    finally:
        stop_chain(chain)

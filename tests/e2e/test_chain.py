"""One opportunity at a time through the real chain: each role counts at its
own event, and bad requests change no count."""

from __future__ import annotations

import grpc
import pytest

from adchain.v1 import (ad_server_pb2, bidder_pb2, counts_pb2, exchange_pb2, openrtb_pb2, token_pb2,
                        verifier_pb2)
from services.reconcile import chain_counts, read_snapshots
from services.runtime.counting import total
from services.runtime.errors import field_violations
from services.runtime.tokens import TokenCodec, TokenSettings
from tests.conftest import TOKENS, banner_request, wait_for


def stages(chain) -> dict[str, int]:
    return chain_counts(read_snapshots(chain.addresses())).stages


def in_view(ms: int, percent: int = 100, step: int = 150) -> list[verifier_pb2.InViewSample]:
    return [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=percent) for t in range(0, ms + 1, step)]


def test_an_ad_is_won_returned_rendered_measured_and_viewed(chain):
    response = chain.ssp.RequestAd(banner_request(), timeout=5)
    assert response.WhichOneof("result") == "ad"
    ad = response.ad
    assert (ad.seat, ad.campaign_id) == ("dsp-1", "c-display")
    # Second price plus: the rival's $5.00 plus $0.01.
    assert ad.price_micros == 5_010_000
    assert wait_for(lambda: stages(chain)["won"] == 1 and stages(chain)["returned"] == 1)

    rendered = chain.adserver.RecordImpression(
        ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent="Mozilla/5.0", ip="203.0.113.7"), timeout=5)
    assert rendered.outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
    exposure = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
        token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY, samples=in_view(1200)), timeout=5)
    assert exposure.exposure_class == verifier_pb2.EXPOSURE_CLASS_VIEWABLE

    assert stages(chain) == {"won": 1, "returned": 1, "rendered": 1, "measurable": 1, "viewable": 1}
    # The billing notice reaches the DSP that won and accrues spend: $5.01 CPM is 5,010 micros.
    dsp = lambda: read_snapshots({"dsp-1": chain.addresses()["dsp-1"]})["dsp-1"]  # noqa: E731
    assert wait_for(lambda: total(dsp(), "billed") == 1)
    assert total(dsp(), "spend_micros") == 5_010


def test_the_losing_dsp_gets_a_loss_notice_and_counts_no_win(chain):
    chain.ssp.RequestAd(banner_request(), timeout=5)
    dsp2 = lambda: read_snapshots({"dsp-2": chain.addresses()["dsp-2"]})["dsp-2"]  # noqa: E731
    assert wait_for(lambda: total(dsp2(), "losses") == 1)
    assert total(dsp2(), "losses", reason="102") == 1  # lost to a higher bid
    assert total(dsp2(), "won") == 0


def test_a_render_counts_once_and_a_repeat_is_a_duplicate(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    beacon = ad_server_pb2.RecordImpressionRequest(token=ad.token)
    assert chain.adserver.RecordImpression(beacon, timeout=5).outcome == ad_server_pb2.EVENT_OUTCOME_COUNTED
    assert chain.adserver.RecordImpression(beacon, timeout=5).outcome == ad_server_pb2.EVENT_OUTCOME_DUPLICATE
    snapshot = read_snapshots({"adserver": chain.addresses()["adserver"]})["adserver"]
    assert total(snapshot, "rendered") == 1
    assert total(snapshot, "duplicates") == 1


def test_unmeasurable_and_not_viewable_exposures(chain):
    first = chain.ssp.RequestAd(banner_request("a"), timeout=5).ad
    second = chain.ssp.RequestAd(banner_request("b"), timeout=5).ad
    unmeasurable = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
        token=first.token, method=verifier_pb2.MEASUREMENT_METHOD_NONE), timeout=5)
    assert unmeasurable.exposure_class == verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE
    brief = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
        token=second.token, method=verifier_pb2.MEASUREMENT_METHOD_SAFEFRAME, samples=in_view(800)), timeout=5)
    assert brief.exposure_class == verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE
    counts = stages(chain)
    assert (counts["measurable"], counts["viewable"]) == (1, 0)


def test_a_floor_above_every_bid_gets_no_bids_and_no_win(chain):
    response = chain.ssp.RequestAd(banner_request(floor=50.0), timeout=5)
    # The DSPs respect the floor themselves: they answer with a no-bid.
    assert response.no_fill_reason == exchange_pb2.NO_FILL_REASON_NO_BIDS
    dsp = read_snapshots({"dsp-1": chain.addresses()["dsp-1"]})["dsp-1"]
    assert total(dsp, "no_bids", reason="below_floor") == 1
    assert stages(chain)["won"] == 0


def test_an_ad_the_caller_never_received_is_not_counted_as_returned():
    from tests.conftest import start_chain, stop_chain

    # Both DSPs answer in 150 ms; the caller gives up after 50 ms.
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 150}, "dsp-2": {"response_delay_ms": 150}},
                        ssp_overrides={"tmax_ms": 400})
    try:
        with pytest.raises(grpc.RpcError) as raised:
            chain.ssp.RequestAd(banner_request(), timeout=0.05)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        ssp = lambda: read_snapshots({"ssp": chain.addresses()["ssp"]})["ssp"]  # noqa: E731
        # The auction still cleared and the winner was notified...
        assert wait_for(lambda: total(ssp(), "not_returned") == 1, timeout_s=5)
        assert wait_for(lambda: stages(chain)["won"] == 1)
        # ...but the SSP counts no return: the DSP and the SSP now disagree.
        assert stages(chain)["returned"] == 0
    finally:
        stop_chain(chain)


def test_a_page_whose_own_wait_ran_out_gets_deadline_exceeded_and_no_return():
    from tests.conftest import start_chain, stop_chain

    # The DSPs answer in 80 ms; the page waits 20 ms from the exchange's
    # receipt, under a gRPC deadline that would have waited for the ad.
    chain = start_chain(dsp_overrides={"dsp-1": {"response_delay_ms": 80}, "dsp-2": {"response_delay_ms": 80}})
    try:
        request = banner_request()
        request.caller_deadline_ms = 20
        with pytest.raises(grpc.RpcError) as raised:
            chain.ssp.RequestAd(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "caller_deadline_ms" in field_violations(raised.value)
        ssp = lambda: read_snapshots({"ssp": chain.addresses()["ssp"]})["ssp"]  # noqa: E731
        assert wait_for(lambda: total(ssp(), "not_returned") == 1, timeout_s=5)
        assert wait_for(lambda: stages(chain)["won"] == 1)
        assert total(ssp(), "returned") == 0
        # A page that waits long enough gets its ad and is counted returned.
        request = banner_request("patient")
        request.caller_deadline_ms = 5_000
        assert chain.ssp.RequestAd(request, timeout=5).HasField("ad")
        assert wait_for(lambda: total(ssp(), "returned") == 1, timeout_s=5)
    finally:
        stop_chain(chain)


# Bad requests: a clear status naming the field, and no count changes.

def _assert_rejected(call, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code
    assert raised.value.details().startswith(field)
    assert field in field_violations(raised.value)


def _notices_settled(chain) -> bool:
    ssp = read_snapshots({"ssp": chain.addresses()["ssp"]})["ssp"]
    return total(ssp, "win_notices") == 1 and total(ssp, "loss_notices") == 1


def _all_counts(chain) -> dict[str, list]:
    return {name: [(c.name, c.reason, c.campaign, c.value) for c in snap.counts
                   if c.name not in ("rejected_tokens",)]
            for name, snap in read_snapshots(chain.addresses()).items()}


@pytest.mark.parametrize("mutate, field", [
    (lambda r: setattr(r, "id", ""), "id"),
    (lambda r: r.ClearField("imp"), "imp"),
    (lambda r: setattr(r.imp[0], "bidfloor", -1.0), "imp[0].bidfloor"),
    (lambda r: setattr(r.imp[0], "bidfloor", float("nan")), "imp[0].bidfloor"),
    (lambda r: setattr(r.imp[0], "bidfloor", float("inf")), "imp[0].bidfloor"),
])
def test_the_dsp_rejects_a_bad_bid_request(chain, mutate, field):
    request = openrtb_pb2.BidRequest(id="a1", imp=[openrtb_pb2.Imp(id="1", banner=openrtb_pb2.Banner(w=300, h=250))],
                                     site=openrtb_pb2.Site(domain="news.example"))
    mutate(request)
    before = _all_counts(chain)
    _assert_rejected(lambda: chain.dsp().Bid(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert _all_counts(chain) == before


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.ClearField("imp"), "imp"),
    (lambda r: setattr(r.imp, "bidfloor", -0.01), "imp.bidfloor"),
    (lambda r: setattr(r.imp, "bidfloor", float("nan")), "imp.bidfloor"),
    (lambda r: r.ClearField("site"), "site"),
])
def test_the_exchange_rejects_a_bad_opportunity(chain, mutate, field):
    request = banner_request()
    mutate(request)
    before = _all_counts(chain)
    _assert_rejected(lambda: chain.ssp.RequestAd(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert _all_counts(chain) == before


def test_forged_unknown_and_missing_tokens_are_rejected_and_change_no_count(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    version, key_id, payload, signature = ad.token.split(".")
    forged_payload = token_pb2.ImpressionToken()
    forged_payload.MergeFromString(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_payload.price_micros = 1
    other = TokenCodec(TokenSettings(signing_key_id="k1", keys=("k1:" + "cd" * 32,)))
    forged = other.sign(forged_payload)  # right key id, wrong secret
    unknown = ".".join((version, "k9", payload, signature))
    # Win and loss notices travel in batches: let the auction's land before the snapshot.
    assert wait_for(lambda: _notices_settled(chain))
    before = _all_counts(chain)
    for bad in (forged, unknown, "not-a-token", ""):
        _assert_rejected(lambda: chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(token=bad),
                                                                 timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "token")
        _assert_rejected(lambda: chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=bad, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT, "token")
    assert _all_counts(chain) == before
    adserver = read_snapshots({"adserver": chain.addresses()["adserver"]})["adserver"]
    assert total(adserver, "rejected_tokens") == 4


def test_a_token_for_an_unknown_dsp_is_not_found(chain):
    codec = TokenCodec(TokenSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in TOKENS.items()}))
    token = codec.sign(token_pb2.ImpressionToken(impression_key="x:1", seat="dsp-9", campaign_id="c",
                                                 price_micros=1_000_000, expires_at_ms=2**62))
    before = _all_counts(chain)
    _assert_rejected(lambda: chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(token=token),
                                                             timeout=5), grpc.StatusCode.NOT_FOUND, "token")
    assert _all_counts(chain) == before


def test_notices_for_unknown_bids_and_campaigns_are_not_found(chain):
    before = _all_counts(chain)
    _assert_rejected(lambda: chain.dsp().NotifyWin(bidder_pb2.NotifyWinRequest(bid_id="nope"), timeout=5),
                     grpc.StatusCode.NOT_FOUND, "bid_id")
    billing = bidder_pb2.NotifyBillingRequest(campaign_id="nope", impression_key="k",
                                              macros=bidder_pb2.AuctionMacros(price_micros=1))
    _assert_rejected(lambda: chain.dsp().NotifyBilling(billing, timeout=5), grpc.StatusCode.NOT_FOUND, "campaign_id")
    assert _all_counts(chain) == before


def test_exposure_samples_out_of_range_name_the_sample(chain):
    ad = chain.ssp.RequestAd(banner_request(), timeout=5).ad
    request = verifier_pb2.RecordExposureRequest(token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY,
                                                 samples=[verifier_pb2.InViewSample(offset_ms=0, in_view_percent=101)])
    _assert_rejected(lambda: chain.verifier.RecordExposure(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                     "samples[0].in_view_percent")

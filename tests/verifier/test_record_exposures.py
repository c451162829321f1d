"""RecordExposures: many tag reports in one call, each judged exactly as
RecordExposure judges it (token, once per key, expiry, the MRC rule), with
its own verdict. Over real gRPC, with tokens signed here."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from google.rpc import code_pb2

from adchain.v1 import token_pb2, verifier_pb2, verifier_pb2_grpc
from services.runtime.counting import total
from services.runtime.tokens import TokenCodec, TokenSettings
from tests.conftest import TOKENS, start_role

CODEC = TokenCodec(TokenSettings(TOKENS["signing_key_id"], tuple(TOKENS["keys"])))
FORGER = TokenCodec(TokenSettings("k1", ("k1:" + "cd" * 32,)))
GEOMETRY = verifier_pb2.MEASUREMENT_METHOD_GEOMETRY


class Verifier:
    def __init__(self):
        self.running = start_role("verifier", "verifier", {"tokens": TOKENS})
        self.channel = grpc.insecure_channel(self.running.grpc_address)
        self.stub = verifier_pb2_grpc.VerifierServiceStub(self.channel)

    def snapshot(self):
        return self.stub.GetCounts(verifier_pb2.VerifierServiceGetCountsRequest(), timeout=5).snapshot

    def counts(self) -> dict[tuple[str, str, str], int]:
        return {(c.name, c.reason, c.campaign): c.value for c in self.snapshot().counts}

    def total(self, name: str, reason: str | None = None) -> int:
        return total(self.snapshot(), name, reason=reason)

    def journal(self) -> list[tuple[str, str, str, str]]:
        return [(r.impression_key, r.outcome, r.campaign_id, r.seat)
                for page in self.stub.ListImpressions(verifier_pb2.VerifierServiceListImpressionsRequest(), timeout=5)
                for r in page.page.records]

    def ledger_metrics(self) -> list[str]:
        with urllib.request.urlopen(f"http://{self.running.metrics_address}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sorted(line for line in text.splitlines()
                      if line.startswith(("adchain_verifier_", "adchain_impressions_total"))
                      and "_created" not in line)

    def stop(self) -> None:
        self.channel.close()
        self.running.stop(grace_s=0)


@pytest.fixture
def verifier():
    running = Verifier()
    yield running
    running.stop()


def token(key: str, *, mtype: int = 1, w: int = 300, h: int = 250, expires_in_s: float = 300.0,
          codec: TokenCodec = CODEC) -> str:
    now_ms = int(time.time() * 1000)
    return codec.sign(token_pb2.ImpressionToken(
        impression_key=key, auction_id=key.split(":")[0], imp_id="1", bid_id=f"bid-{key}", seat="dsp-1",
        campaign_id="c-display" if mtype == 1 else "c-video", price_micros=5_010_000, mtype=mtype, w=w, h=h,
        issued_at_ms=now_ms - 1_000, expires_at_ms=now_ms + int(expires_in_s * 1000)))


def in_view(until_ms: int, percent: int = 100, step_ms: int = 150) -> list[verifier_pb2.InViewSample]:
    return [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=percent) for t in range(0, until_ms + 1, step_ms)]


def report(text: str, samples=(), method: int = GEOMETRY) -> verifier_pb2.RecordExposureRequest:
    return verifier_pb2.RecordExposureRequest(token=text, method=method, samples=list(samples))


def record(verifier: Verifier, *reports) -> list[verifier_pb2.RecordExposureResult]:
    return list(verifier.stub.RecordExposures(verifier_pb2.RecordExposuresRequest(items=reports), timeout=5).results)


def samples(*pairs) -> list[verifier_pb2.InViewSample]:
    return [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=p) for t, p in pairs]


def test_a_bad_item_gets_its_own_status_and_the_others_count(verifier):
    results = record(
        verifier,
        report(token("a:1"), in_view(1200)),
        report(token("b:1"), in_view(1200), method=verifier_pb2.MEASUREMENT_METHOD_UNSPECIFIED),
        report(token("c:1"), samples((0, 80), (150, 101))),
        report(token("d:1", codec=FORGER), in_view(1200)),
        report(token("e:1"), in_view(600)),
    )
    assert [(r.status.code, r.status.field) for r in results] == [
        (code_pb2.OK, ""), (code_pb2.INVALID_ARGUMENT, "items[1].method"),
        (code_pb2.INVALID_ARGUMENT, "items[2].samples[1].in_view_percent"),
        (code_pb2.INVALID_ARGUMENT, "items[3].token"), (code_pb2.OK, "")]
    assert [(r.response.exposure_class, r.response.viewable_ms) for r in (results[0], results[4])] == [
        (verifier_pb2.EXPOSURE_CLASS_VIEWABLE, 1200), (verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE, 600)]
    assert (verifier.total("measurable"), verifier.total("viewable"), verifier.total("tracked")) == (2, 1, 2)
    assert verifier.total("rejected_tokens", "bad_signature") == verifier.total("rejected_tokens") == 1


def test_the_same_impression_twice_in_one_batch_is_measured_once(verifier):
    text = token("a:1")
    results = record(verifier, report(text, in_view(1200)), report(text, in_view(1200)))
    assert [r.response.exposure_class for r in results] == [verifier_pb2.EXPOSURE_CLASS_VIEWABLE,
                                                            verifier_pb2.EXPOSURE_CLASS_DUPLICATE]
    assert results[1].response.viewable_ms == 0
    assert (verifier.total("measurable"), verifier.total("viewable"), verifier.total("duplicates")) == (1, 1, 1)
    assert verifier.journal() == [("a:1", "viewable", "c-display", "dsp-1")]


def test_a_batch_counts_each_stage_per_campaign(verifier):
    record(verifier,
           report(token("a:1"), in_view(1200)),
           report(token("b:1"), in_view(500)),
           report(token("c:1"), method=verifier_pb2.MEASUREMENT_METHOD_NONE),
           report(token("a:1"), in_view(1200)),  # a repeat
           report(token("d:1", expires_in_s=-1), in_view(1200)),
           report(token("e:1", mtype=2, w=1280, h=720), in_view(2100)))
    assert {key: n for key, n in verifier.counts().items() if n} == {
        ("tracked", "", "c-display"): 3, ("unmeasurable", "", "c-display"): 1, ("measurable", "", "c-display"): 2,
        ("viewable", "", "c-display"): 1, ("late", "", "c-display"): 1, ("duplicates", "", ""): 1,
        ("tracked", "", "c-video"): 1, ("measurable", "", "c-video"): 1, ("viewable", "", "c-video"): 1}
    metrics = verifier.ledger_metrics()
    assert {'adchain_impressions_total{role="verifier",stage="measurable"} 3.0',
            'adchain_impressions_total{role="verifier",stage="viewable"} 2.0',
            'adchain_verifier_exposures_total{verdict="viewable"} 2.0',
            'adchain_verifier_exposures_total{verdict="not_viewable"} 1.0',
            'adchain_verifier_exposures_total{verdict="unmeasurable"} 1.0',
            'adchain_verifier_exposures_total{verdict="duplicate"} 1.0',
            'adchain_verifier_exposures_total{verdict="late"} 1.0'} <= set(metrics)


def reports() -> list[verifier_pb2.RecordExposureRequest]:
    """One report for each way the verifier judges one."""
    return [
        report(token("a:1"), in_view(1200)),
        report(token("b:1"), in_view(500)),
        report(token("c:1"), in_view(1200), method=verifier_pb2.MEASUREMENT_METHOD_UNSPECIFIED),
        report(token("d:1"), samples((0, 80), (150, 101))),
        report(token("e:1"), samples((0, 80), (150, 80), (100, 80))),  # out of time order
        report(token("f:1", codec=FORGER), in_view(1200)),
        report(token("a:1"), in_view(1200)),  # a repeat
        report(token("g:1", expires_in_s=-1), in_view(1200)),  # after the token expired
        report(token("h:1"), method=verifier_pb2.MEASUREMENT_METHOD_NONE),
        report(token("i:1", w=970, h=250), in_view(1100, percent=35)),  # large display: 30% suffices
        report(token("j:1", mtype=2, w=1280, h=720), in_view(1500)),  # video needs 2 s
        report(token("k:1", codec=FORGER), samples((0, -1))),  # the samples are refused before the token
        report(token("l:1")),  # measurable, but no sample in view
        report("v1.k1.!!.YQ", in_view(1200)),
        report(token("m:1"), samples((0, 90), (300, 20), (600, 90), (1700, 90), (1800, 0))),
        report(token("n:1", mtype=2, w=1280, h=720), in_view(2100), method=verifier_pb2.MEASUREMENT_METHOD_OM_SDK),
    ]


def test_a_batch_counts_exactly_what_the_same_unary_calls_count():
    unary, batched = Verifier(), Verifier()
    try:
        requests = reports()
        answers = []
        for request in requests:
            try:
                answers.append((code_pb2.OK, "", unary.stub.RecordExposure(request, timeout=5)))
            except grpc.RpcError as error:
                field = error.details().split(":", 1)[0]
                answers.append((error.code().value[0], field, None))
        results = record(batched, *requests)
        assert [(r.status.code, r.status.field, r.response if r.status.code == code_pb2.OK else None)
                for r in results] == [(code, f"items[{i}].{field}" if field else "", response)
                                      for i, (code, field, response) in enumerate(answers)]
        assert batched.counts() == unary.counts()
        assert batched.journal() == unary.journal()
        assert batched.ledger_metrics() == unary.ledger_metrics()
        assert (unary.total("tracked"), unary.total("measurable"), unary.total("viewable"),
                unary.total("unmeasurable"), unary.total("duplicates"), unary.total("late"),
                unary.total("rejected_tokens")) == (8, 7, 4, 1, 1, 1, 2)
    finally:
        unary.stop()
        batched.stop()

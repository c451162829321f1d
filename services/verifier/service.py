"""The verifier's counting, ledger and gRPC servicer: each impression is
classified once as unmeasurable, or measurable and then viewable or not."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from adchain.v1 import verifier_pb2, verifier_pb2_grpc
from services.runtime.counting import Tally
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import InvalidArgument
from services.runtime.metrics import ImpressionMetrics
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TOKEN_REJECT_REASONS, TokenCodec, TokenError
from services.verifier import viewability
from services.verifier.settings import VerifierConfig

NONE = verifier_pb2.MEASUREMENT_METHOD_NONE
CLASS_NAMES = {
    verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE: "unmeasurable",
    verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE: "not_viewable",
    verifier_pb2.EXPOSURE_CLASS_VIEWABLE: "viewable",
    verifier_pb2.EXPOSURE_CLASS_DUPLICATE: "duplicate",
}


class VerifierLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float]):
        self.tally = Tally("verifier", instance, clock)
        self.tally.declare(("tracked", "measurable", "viewable", "unmeasurable", "duplicates", "rejected_tokens"))
        self._impressions = ImpressionMetrics("verifier", registry)
        exposures = Counter("adchain_verifier_exposures", "Exposure reports, by verdict.", ["verdict"], registry=registry)
        self._exposures = {name: exposures.labels(verdict=name) for name in CLASS_NAMES.values()}
        rejected = Counter("adchain_verifier_rejected_tokens", "Reports with a token that failed verification, by reason.",
                           ["reason"], registry=registry)
        self._rejected = {r: rejected.labels(reason=r) for r in TOKEN_REJECT_REASONS}

    def record(self, verdict: int, campaign_id: str) -> None:
        name = CLASS_NAMES[verdict]
        self._exposures[name].inc()
        if verdict == verifier_pb2.EXPOSURE_CLASS_DUPLICATE:
            self.tally.add("duplicates")
            return
        self.tally.add("tracked", campaign=campaign_id)
        if verdict == verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE:
            self.tally.add("unmeasurable", campaign=campaign_id)
            return
        self.tally.add("measurable", campaign=campaign_id)
        self._impressions.record("measurable")
        if verdict == verifier_pb2.EXPOSURE_CLASS_VIEWABLE:
            self.tally.add("viewable", campaign=campaign_id)
            self._impressions.record("viewable")

    def record_rejected_token(self, reason: str) -> None:
        self.tally.add("rejected_tokens", reason=reason)
        self._rejected[reason].inc()


class ExposureClassifier:
    def __init__(self, tokens: TokenCodec, ledger: VerifierLedger, clock: Callable[[], float]):
        self._tokens = tokens
        self._ledger = ledger
        self._seen = ExpiringMap(clock)

    def record(self, request: verifier_pb2.RecordExposureRequest) -> verifier_pb2.RecordExposureResponse:
        if request.method == verifier_pb2.MEASUREMENT_METHOD_UNSPECIFIED:
            raise InvalidArgument("method", "is required")
        viewability.validate_samples(request.samples)
        try:
            token = self._tokens.verify(request.token)
        except TokenError as error:
            self._ledger.record_rejected_token(error.reason)
            raise
        # Verification data outlives the render window; keep keys a day past expiry.
        if not self._seen.add(token.impression_key, token.expires_at_ms / 1000.0 + 86_400):
            self._ledger.record(verifier_pb2.EXPOSURE_CLASS_DUPLICATE, token.campaign_id)
            return verifier_pb2.RecordExposureResponse(exposure_class=verifier_pb2.EXPOSURE_CLASS_DUPLICATE)
        if request.method == NONE:
            verdict, in_view_ms = verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE, 0
        else:
            threshold = viewability.threshold_percent(token.mtype, token.w, token.h)
            in_view_ms = viewability.longest_in_view_ms(request.samples, threshold)
            verdict = (verifier_pb2.EXPOSURE_CLASS_VIEWABLE if in_view_ms >= viewability.required_ms(token.mtype)
                       else verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE)
        self._ledger.record(verdict, token.campaign_id)
        return verifier_pb2.RecordExposureResponse(exposure_class=verdict, viewable_ms=in_view_ms)


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, classifier: ExposureClassifier, ledger: VerifierLedger):
        self._classifier = classifier
        self._ledger = ledger

    def RecordExposure(self, request, context) -> verifier_pb2.RecordExposureResponse:
        return self._classifier.record(request)

    def GetCounts(self, request, context) -> verifier_pb2.VerifierServiceGetCountsResponse:
        return verifier_pb2.VerifierServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())


class VerifierApp:
    def __init__(self, config: VerifierConfig, context: RoleContext):
        self.ledger = VerifierLedger(context.instance, context.registry, context.clock)
        classifier = ExposureClassifier(TokenCodec(config.tokens), self.ledger, context.clock)
        self.servicers = [Servicer(
            verifier_pb2_grpc.add_VerifierServiceServicer_to_server, VerifierServicer(classifier, self.ledger),
            "adchain.v1.VerifierService", ("RecordExposure", "GetCounts"),
        )]

    def start(self) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass

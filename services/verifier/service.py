"""The verifier's counting, ledger and gRPC servicer: each impression is
classified once as unmeasurable, or measurable and then viewable or not."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from adchain.v1 import bidder_pb2, token_pb2, verifier_pb2, verifier_pb2_grpc
from services.runtime.counting import Tally
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import InvalidArgument
from services.runtime.journal import Journal
from services.runtime.metrics import ImpressionMetrics, labelled_counters
from services.runtime.notices import NoticeSender
from services.runtime.peers import BidderPeers
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
    verifier_pb2.EXPOSURE_CLASS_LATE: "late",
}
NOTICE_OUTCOMES = ("sent", "retried", "failed")


class VerifierLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float]):
        self.tally = Tally("verifier", instance, clock)
        self.tally.declare(("tracked", "measurable", "viewable", "unmeasurable", "duplicates", "late",
                            "rejected_tokens"))
        self.journal = Journal(clock=clock)
        self._impressions = ImpressionMetrics("verifier", registry)
        self._exposures = labelled_counters("adchain_verifier_exposures", "Exposure reports, by verdict.",
                                            {"verdict": tuple(CLASS_NAMES.values())}, registry)
        self._rejected = labelled_counters("adchain_verifier_rejected_tokens",
                                           "Reports with a token that failed verification, by reason.",
                                           {"reason": TOKEN_REJECT_REASONS}, registry)
        self._notices = labelled_counters("adchain_verifier_viewable_notices",
                                          "Viewable-impression notices to DSPs, by outcome.",
                                          {"outcome": NOTICE_OUTCOMES}, registry)

    def record(self, verdict: int, token: token_pb2.ImpressionToken) -> None:
        name = CLASS_NAMES[verdict]
        campaign_id = token.campaign_id
        self._exposures[name].inc()
        if verdict == verifier_pb2.EXPOSURE_CLASS_DUPLICATE:
            self.tally.add("duplicates")
            return
        self.journal.record(token.impression_key, name, campaign_id=campaign_id, seat=token.seat)
        if verdict == verifier_pb2.EXPOSURE_CLASS_LATE:
            self.tally.add("late", campaign=campaign_id)
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

    def record_notice(self, _kind: str, outcome: str) -> None:
        self.tally.add("viewable_notices", reason=outcome)
        self._notices[outcome].inc()

    def record_rejected_token(self, reason: str) -> None:
        self.tally.add("rejected_tokens", reason=reason)
        self._rejected[reason].inc()


class ExposureClassifier:
    def __init__(self, tokens: TokenCodec, ledger: VerifierLedger, clock: Callable[[], float],
                 notify: Callable[[str, str, bidder_pb2.NotifyEventRequest], None] | None = None):
        self._tokens = tokens
        self._ledger = ledger
        self._clock = clock
        self._notify = notify
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
        # Keep keys a day past expiry: a repeat long after is still a duplicate.
        if not self._seen.add(token.impression_key, token.expires_at_ms / 1000.0 + 86_400):
            self._ledger.record(verifier_pb2.EXPOSURE_CLASS_DUPLICATE, token)
            return verifier_pb2.RecordExposureResponse(exposure_class=verifier_pb2.EXPOSURE_CLASS_DUPLICATE)
        if self._clock() * 1000 > token.expires_at_ms:
            self._ledger.record(verifier_pb2.EXPOSURE_CLASS_LATE, token)
            return verifier_pb2.RecordExposureResponse(exposure_class=verifier_pb2.EXPOSURE_CLASS_LATE)
        if request.method == NONE:
            verdict, in_view_ms = verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE, 0
        else:
            threshold = viewability.threshold_percent(token.mtype, token.w, token.h)
            in_view_ms = viewability.longest_in_view_ms(request.samples, threshold)
            verdict = (verifier_pb2.EXPOSURE_CLASS_VIEWABLE if in_view_ms >= viewability.required_ms(token.mtype)
                       else verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE)
        self._ledger.record(verdict, token)
        if verdict == verifier_pb2.EXPOSURE_CLASS_VIEWABLE and self._notify is not None:
            self._notify(token.seat, "viewable", viewable_notice(token))
        return verifier_pb2.RecordExposureResponse(exposure_class=verdict, viewable_ms=in_view_ms)


def viewable_notice(token: token_pb2.ImpressionToken) -> bidder_pb2.NotifyEventRequest:
    return bidder_pb2.NotifyEventRequest(
        kind=bidder_pb2.EVENT_KIND_VIEWABLE,
        macros=bidder_pb2.AuctionMacros(auction_id=token.auction_id, imp_id=token.imp_id, seat_id=token.seat,
                                        price_micros=token.price_micros, currency=token.currency),
        bid_id=token.bid_id, campaign_id=token.campaign_id, impression_key=token.impression_key,
    )


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, classifier: ExposureClassifier, ledger: VerifierLedger):
        self._classifier = classifier
        self._ledger = ledger

    def RecordExposure(self, request, context) -> verifier_pb2.RecordExposureResponse:
        return self._classifier.record(request)

    def GetCounts(self, request, context) -> verifier_pb2.VerifierServiceGetCountsResponse:
        return verifier_pb2.VerifierServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield verifier_pb2.VerifierServiceListImpressionsResponse(page=page)


class VerifierApp:
    def __init__(self, config: VerifierConfig, context: RoleContext):
        self.ledger = VerifierLedger(context.instance, context.registry, context.clock)
        self._dsps = BidderPeers(config.dsps)
        stubs = self._dsps.stubs
        self.notices = NoticeSender(stubs, config.notices, self.ledger.record_notice)
        # A token naming a DSP the verifier does not know is still measured; only the notice is skipped.
        notify = (lambda seat, kind, notice: self.notices.submit(seat, kind, notice) if seat in stubs else None)
        classifier = ExposureClassifier(TokenCodec(config.tokens), self.ledger, context.clock,
                                        notify if stubs else None)
        self.servicers = [Servicer(
            verifier_pb2_grpc.add_VerifierServiceServicer_to_server, VerifierServicer(classifier, self.ledger),
            "adchain.v1.VerifierService", ("RecordExposure", "GetCounts", "ListImpressions"),
        )]

    def start(self) -> None:
        self.notices.start()

    def close(self, timeout_s: float) -> None:
        self.notices.close(timeout_s)
        self._dsps.close()

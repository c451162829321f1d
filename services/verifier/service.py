"""The verifier's classifier, gRPC servicer and role wiring: each impression
is classified once as unmeasurable, or measurable and then viewable or not.
Tag reports come one per call (RecordExposure) or in batches from an edge
collector (RecordExposures); both judge each report the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from google.protobuf.message import Message
from prometheus_client import Gauge

from adchain.v1 import bidder_pb2, token_pb2, verifier_pb2, verifier_pb2_grpc
from services.runtime.batch import answer_each
from services.runtime.dedupe import ExpiringMap
from services.runtime.errors import InvalidArgument
from services.runtime.notices import NoticeSender
from services.runtime.peers import BidderPeers
from services.runtime.server import RoleContext, Servicer
from services.runtime.tokens import TokenCodec, TokenError
from services.verifier import viewability
from services.verifier.ledger import VerifierEntries, VerifierLedger
from services.verifier.settings import VerifierConfig

log = logging.getLogger(__name__)

NONE = verifier_pb2.MEASUREMENT_METHOD_NONE
VIEWABLE = verifier_pb2.EXPOSURE_CLASS_VIEWABLE
# A measurable report the MRC rule has yet to judge (never a response's class).
MEASURE = verifier_pb2.EXPOSURE_CLASS_UNSPECIFIED


class ExposureClassifier:
    """The verdict on each tag report: refused (bad method, samples or
    token), duplicate, late, unmeasurable, or held to the MRC rule."""

    def __init__(self, tokens: TokenCodec, ledger: VerifierLedger, clock: Callable[[], float],
                 notify: Callable[[list[tuple[str, str, Message]]], None] | None = None):
        """`notify([(seat, kind, request)])` takes one call's viewable notices,
        after its counts are posted."""
        self._tokens = tokens
        self._ledger = ledger
        self._clock = clock
        self._notify = notify
        self._seen = ExpiringMap(clock) if ledger.store is None else None

    def record(self, request: verifier_pb2.RecordExposureRequest) -> verifier_pb2.RecordExposureResponse:
        samples = list(request.samples)  # read once, for the check and the rule
        with self._ledger.batch() as entries:
            verdict, token = self._screen(request, entries, unchecked_samples=samples)
            in_view_ms = 0
            if verdict == MEASURE:
                threshold = viewability.threshold_percent(token.mtype, token.w, token.h)
                in_view_ms = viewability.longest_in_view_ms(samples, threshold)
                verdict = _viewable_or_not(token, in_view_ms)
            entries.record(verdict, token)
        if verdict == VIEWABLE:
            self._send([token])
        return verifier_pb2.RecordExposureResponse(exposure_class=verdict, viewable_ms=in_view_ms)

    def record_batch(self, requests: Sequence[verifier_pb2.RecordExposureRequest],
                     add_result: Callable[..., verifier_pb2.RecordExposureResult]) -> None:
        """Each report judged in order exactly as `record` judges it, a refused
        one with its own status, its result made by `add_result(status=...,
        response=...)` (a response's `results.add`). The samples of the whole
        batch are decoded once, checked and held to the MRC rule in
        vectorised passes."""
        samples = viewability.SampleArrays(requests)
        flagged = frozenset(samples.invalid_reports().tolist())
        # Every report's longest run at each threshold the rule uses, before
        # any token is read: each report is then judged whole as it is
        # screened, in report order.
        in_view_ms = {threshold: samples.longest_in_view_ms(np.full(len(requests), threshold)).tolist()
                      for threshold in viewability.THRESHOLDS_PERCENT}
        viewable: list[token_pb2.ImpressionToken] = []
        with self._ledger.batch() as entries:
            def judge(item: tuple[int, verifier_pb2.RecordExposureRequest]) -> dict:
                i, request = item
                verdict, token = self._screen(request, entries, request.samples if i in flagged else None)
                report_ms = 0
                if verdict == MEASURE:
                    report_ms = in_view_ms[viewability.threshold_percent(token.mtype, token.w, token.h)][i]
                    verdict = _viewable_or_not(token, report_ms)
                entries.record(verdict, token)
                if verdict == VIEWABLE:
                    viewable.append(token)
                # The response's fields, set straight into the result: no message to build and copy.
                return dict(exposure_class=verdict, viewable_ms=report_ms)

            answer_each(list(enumerate(requests)), judge, add_result)
        self._send(viewable)

    def _screen(self, request: verifier_pb2.RecordExposureRequest, entries: VerifierEntries,
                unchecked_samples: Sequence[verifier_pb2.InViewSample] | None
                ) -> tuple[int, token_pb2.ImpressionToken]:
        """(verdict, token) for a report, or (MEASURE, token) for one the MRC
        rule must judge; raises for a refused one. `unchecked_samples`: the
        report's samples to check here, None when they are known to be valid
        (a batch checks all of its samples at once)."""
        if request.method == verifier_pb2.MEASUREMENT_METHOD_UNSPECIFIED:
            raise InvalidArgument("method", "is required")
        if unchecked_samples is not None:
            viewability.validate_samples(unchecked_samples)
        try:
            token = self._tokens.verify(request.token)
        except TokenError as error:
            entries.record_rejected_token(error.reason)
            raise
        # Keep keys a day past expiry: a repeat long after is still a duplicate.
        # With a ledger, the journal is the memory: a key with a verdict is taken.
        if self._seen is None:
            if self._ledger.seen(token.impression_key):
                return verifier_pb2.EXPOSURE_CLASS_DUPLICATE, token
        elif not self._seen.add(token.impression_key, token.expires_at_ms / 1000.0 + 86_400):
            return verifier_pb2.EXPOSURE_CLASS_DUPLICATE, token
        if self._clock() * 1000 > token.expires_at_ms:
            return verifier_pb2.EXPOSURE_CLASS_LATE, token
        if request.method == NONE:
            return verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE, token
        return MEASURE, token

    def _send(self, viewable: list[token_pb2.ImpressionToken]) -> None:
        # After the post: a DSP is told only of what the verifier has counted.
        if viewable and self._notify is not None:
            self._notify([(token.seat, "viewable", viewable_notice(token)) for token in viewable])


def _viewable_or_not(token: token_pb2.ImpressionToken, in_view_ms: int) -> int:
    return VIEWABLE if in_view_ms >= viewability.required_ms(token.mtype) else verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE


def viewable_notice(token: token_pb2.ImpressionToken) -> bidder_pb2.NotifyEventRequest:
    return bidder_pb2.NotifyEventRequest(
        kind=bidder_pb2.EVENT_KIND_VIEWABLE,
        # The AuctionMacros fields as a dict: set straight into the notice, no message to copy.
        macros=dict(auction_id=token.auction_id, imp_id=token.imp_id, seat_id=token.seat,
                    price_micros=token.price_micros, currency=token.currency),
        bid_id=token.bid_id, campaign_id=token.campaign_id, impression_key=token.impression_key,
    )


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, classifier: ExposureClassifier, ledger: VerifierLedger):
        self._classifier = classifier
        self._ledger = ledger

    def RecordExposure(self, request, context) -> verifier_pb2.RecordExposureResponse:
        return self._classifier.record(request)

    def RecordExposures(self, request, context) -> verifier_pb2.RecordExposuresResponse:
        response = verifier_pb2.RecordExposuresResponse()
        # Results are added in place: building a list and handing it to the
        # constructor copies every result again.
        self._classifier.record_batch(request.items, response.results.add)
        return response

    def GetCounts(self, request, context) -> verifier_pb2.VerifierServiceGetCountsResponse:
        return verifier_pb2.VerifierServiceGetCountsResponse(snapshot=self._ledger.tally.snapshot())

    def ListImpressions(self, request, context):
        for page in self._ledger.journal.pages():
            yield verifier_pb2.VerifierServiceListImpressionsResponse(page=page)


class VerifierApp:
    def __init__(self, config: VerifierConfig, context: RoleContext):
        self.ledger = VerifierLedger(context.instance, context.registry, context.clock, context.store)
        started = time.perf_counter()
        # The samples decoder compiles (or loads from Numba's cache) now, never on a first request.
        viewability.warm()
        log.info("%s: viewability kernels ready in %.2fs", context.instance, time.perf_counter() - started)
        self._dsps = BidderPeers(config.dsps)
        stubs = self._dsps.aio_stubs
        self.notices = NoticeSender(stubs, config.notices, self.ledger.record_notice, store=context.store)
        self.ledger.tally.notices_owed = self.notices.pending
        Gauge("adchain_verifier_notices_owed", "Notices owed to DSPs and not yet settled (delivered, or failed for "
              "good): in the outbox, batching, in flight or waiting to retry.",
              registry=context.registry).set_function(self.notices.pending)
        # A token naming a DSP the verifier does not know is still measured; only the notice is skipped.
        notify = (lambda notices: self.notices.submit_many(n for n in notices if n[0] in stubs))
        classifier = ExposureClassifier(TokenCodec(config.tokens), self.ledger, context.clock,
                                        notify if stubs else None)
        self.servicers = [Servicer(
            verifier_pb2_grpc.add_VerifierServiceServicer_to_server, VerifierServicer(classifier, self.ledger),
            "adchain.v1.VerifierService", ("RecordExposure", "RecordExposures", "GetCounts", "ListImpressions"),
            batch_methods=("RecordExposures",),
        )]

    def start(self) -> None:
        self.notices.resume()

    def reload(self) -> None:
        """After the ledger failed a write and takes writes again: counts as the ledger holds them."""
        self.ledger.tally.reload()

    async def close(self, timeout_s: float) -> None:
        # Notices still batching or waiting to retry get one last try, and
        # their answers, before the channels close.
        await self.notices.close(timeout_s)
        await self._dsps.aclose()

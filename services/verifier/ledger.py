"""Everything the verifier counts, in one place: tracked, measurable and
viewable impressions per campaign (IAB/MRC), unmeasurable, duplicate and
late reports, rejected tokens, and the viewable notices it sent to DSPs.
Each first verdict per impression key also goes to the journal for
reconciliation.

Reports are entered per call (`with ledger.batch() as entries`), counted by
verdict and campaign, and posted together when the call ends, so a batch RPC
of many reports costs one tally add per count and one inc(n) per metric
child, not one per report."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from adchain.v1 import token_pb2, verifier_pb2
from services.runtime.counting import Tally
from services.runtime.journal import DurableJournal, Journal
from services.runtime.store import LedgerStore
from services.runtime.metrics import ImpressionMetrics, labelled_counters
from services.runtime.tokens import TOKEN_REJECT_REASONS

CLASS_NAMES = {
    verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE: "unmeasurable",
    verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE: "not_viewable",
    verifier_pb2.EXPOSURE_CLASS_VIEWABLE: "viewable",
    verifier_pb2.EXPOSURE_CLASS_DUPLICATE: "duplicate",
    verifier_pb2.EXPOSURE_CLASS_LATE: "late",
}
NOTICE_OUTCOMES = ("sent", "retried", "failed")
# The counts each verdict adds to: every report once tracked is measurable or
# not, and a measurable one is viewable or not. A duplicate is counted
# across campaigns, the others per campaign.
STAGES = {
    verifier_pb2.EXPOSURE_CLASS_UNMEASURABLE: ("tracked", "unmeasurable"),
    verifier_pb2.EXPOSURE_CLASS_NOT_VIEWABLE: ("tracked", "measurable"),
    verifier_pb2.EXPOSURE_CLASS_VIEWABLE: ("tracked", "measurable", "viewable"),
    verifier_pb2.EXPOSURE_CLASS_DUPLICATE: ("duplicates",),
    verifier_pb2.EXPOSURE_CLASS_LATE: ("late",),
}


class VerifierLedger:
    def __init__(self, instance: str, registry: CollectorRegistry, clock: Callable[[], float],
                 store: LedgerStore | None = None):
        self.store = store
        self.tally = Tally("verifier", instance, clock, store)
        self.tally.declare(("tracked", "measurable", "viewable", "unmeasurable", "duplicates", "late",
                            "rejected_tokens"))
        self.journal = Journal(clock=clock) if store is None else DurableJournal(store, clock)
        self._impressions = ImpressionMetrics("verifier", registry)
        self._exposures = labelled_counters("adchain_verifier_exposures", "Exposure reports, by verdict.",
                                            {"verdict": tuple(CLASS_NAMES.values())}, registry)
        self._rejected = labelled_counters("adchain_verifier_rejected_tokens",
                                           "Reports with a token that failed verification, by reason.",
                                           {"reason": TOKEN_REJECT_REASONS}, registry)
        self._notices = labelled_counters("adchain_verifier_viewable_notices",
                                          "Viewable-impression notices to DSPs, by outcome.",
                                          {"outcome": NOTICE_OUTCOMES}, registry)

    def batch(self) -> VerifierEntries:
        """The entries of one call, posted to the tally, journal and metrics when it ends."""
        return VerifierEntries(self)

    def seen(self, impression_key: str) -> bool:
        """Whether the key already has its verdict in the ledger's journal
        (written as each report is judged, so a repeat in the same batch sees it)."""
        return self.journal.outcome(impression_key) is not None

    def record_notice(self, _kind: str, outcome: str, n: int = 1) -> None:
        self.tally.add("viewable_notices", n, reason=outcome)
        child = self._notices[outcome]
        if self.store is None:
            child.inc(n)
        else:
            self.store.on_commit(lambda: child.inc(n))

    def _post(self, entries: VerifierEntries) -> None:
        counts: dict[tuple[str, str], int] = {}  # (name, campaign) -> n
        exposures: dict[str, int] = {}  # verdict name -> n
        for (verdict, campaign_id), n in entries.verdict_counts.items():
            if verdict == verifier_pb2.EXPOSURE_CLASS_DUPLICATE:
                campaign_id = ""
            for stage in STAGES[verdict]:
                counts[(stage, campaign_id)] = counts.get((stage, campaign_id), 0) + n
            name = CLASS_NAMES[verdict]
            exposures[name] = exposures.get(name, 0) + n
        for (name, campaign), n in counts.items():
            self.tally.add(name, n, campaign=campaign)
        for reason, n in entries.rejected.items():
            self.tally.add("rejected_tokens", n, reason=reason)
        for impression_key, verdict, campaign_id, seat in entries.verdicts:
            self.journal.record(impression_key, verdict, campaign_id=campaign_id, seat=seat)
        if self.store is None:
            self._count_metrics(exposures, entries.rejected)
        else:  # metrics move with the ledger: only what is committed
            self.store.on_commit(lambda: self._count_metrics(exposures, entries.rejected))

    def _count_metrics(self, exposures: dict[str, int], rejected: dict[str, int]) -> None:
        for reason, n in rejected.items():
            self._rejected[reason].inc(n)
        for name, n in exposures.items():
            self._exposures[name].inc(n)
        viewable = exposures.get("viewable", 0)
        measurable = viewable + exposures.get("not_viewable", 0)
        if measurable:
            self._impressions.record("measurable", measurable)
        if viewable:
            self._impressions.record("viewable", viewable)


class VerifierEntries:
    """What one call counts, one report or a batch of them, posted to the
    ledger together when the `with` block ends (on an error too: a rejected
    token is tallied before the call fails): one tally add per count and one
    inc(n) per metric child, however many reports."""

    def __init__(self, ledger: VerifierLedger):
        self._ledger = ledger
        # With a ledger, each first verdict is written as it is judged.
        self._journal = None if ledger.store is None else ledger.journal
        # (exposure class, campaign) -> reports: one entry per report, expanded
        # to the counts it adds to (STAGES) only when posted.
        self.verdict_counts: dict[tuple[int, str], int] = {}
        self.rejected: dict[str, int] = {}  # token reject reason -> n
        self.verdicts: list[tuple[str, str, str, str]] = []  # journal records, in report order

    def __enter__(self) -> VerifierEntries:
        return self

    def __exit__(self, *_exc) -> None:
        self._ledger._post(self)

    def record(self, verdict: int, token: token_pb2.ImpressionToken) -> None:
        campaign_id = token.campaign_id
        key = (verdict, campaign_id)
        self.verdict_counts[key] = self.verdict_counts.get(key, 0) + 1
        if verdict != verifier_pb2.EXPOSURE_CLASS_DUPLICATE:  # the first verdict is the key's record
            if self._journal is None:
                self.verdicts.append((token.impression_key, CLASS_NAMES[verdict], campaign_id, token.seat))
            else:
                self._journal.record(token.impression_key, CLASS_NAMES[verdict], campaign_id=campaign_id,
                                     seat=token.seat)

    def record_rejected_token(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

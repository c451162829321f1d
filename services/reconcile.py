"""Reconciliation: every role's own counts lined up along the ad call chain,
the four numbers of a media plan (served, measurable, viewable, effective
vCPM), and, joined on impression key, the cause of every impression one
stage counted and the next did not.

won (DSP) -> returned (SSP) -> rendered (ad server) -> measurable -> viewable
(verifier). Billing settles on the ad server's count; the viewable rate is
viewable / served, as media plans report it.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter as Multiset
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, bidder_pb2, bidder_pb2_grpc, counts_pb2, exchange_pb2,
                        exchange_pb2_grpc, verifier_pb2, verifier_pb2_grpc)
from services.runtime.counting import total
from services.runtime.store import open_read_only, scan

STAGES = ("won", "returned", "rendered", "measurable", "viewable")
# Which role counts each stage.
STAGE_ROLE = {"won": "dsp", "returned": "ssp", "rendered": "adserver", "measurable": "verifier", "viewable": "verifier"}
TRANSITIONS = tuple(zip(STAGES, STAGES[1:]))

# A role's journal outcome -> the stages that outcome counts toward.
_COUNTS_TOWARD = {
    ("dsp", "won"): ("won",),
    ("ssp", "returned"): ("returned",),
    ("adserver", "rendered"): ("rendered",),
    ("verifier", "viewable"): ("measurable", "viewable"),
    ("verifier", "not_viewable"): ("measurable",),
}


def instance_role(name: str) -> str:
    """Role of an instance named in an addresses file (dsp-1 -> dsp)."""
    return "dsp" if name.startswith("dsp") else name


def _roles(addresses: Mapping[str, Mapping[str, str]]):
    for name, where in addresses.items():
        role = instance_role(name)
        if role in _STUBS:
            yield name, role, where["grpc"]


def read_snapshots(addresses: Mapping[str, Mapping[str, str]], timeout_s: float = 15.0
                   ) -> dict[str, counts_pb2.CountsSnapshot]:
    """GetCounts from every role in an addresses file (as `adchain up
    --addresses` writes it). A role being restarted is waited for, up to
    `timeout_s`."""
    snapshots = {}
    for name, role, target in _roles(addresses):
        stub_type, counts_request, _list_request = _STUBS[role]
        with grpc.insecure_channel(target) as channel:
            snapshots[name] = stub_type(channel).GetCounts(counts_request, timeout=timeout_s,
                                                           wait_for_ready=True).snapshot
    return snapshots


def journal_pages(addresses: Mapping[str, Mapping[str, str]], timeout_s: float = 3600.0
                  ) -> Iterator[tuple[str, counts_pb2.ImpressionRecords]]:
    """Every role's journal as it streams, (role, page) by page, one role
    after the other: for readers that keep what they need of each record."""
    for _name, role, target in _roles(addresses):
        for page in _list_impressions(role, target, timeout_s):
            yield role, page


@dataclasses.dataclass(frozen=True)
class ChainCounts:
    stages: dict[str, int]
    # Sum of clearing CPMs (micros) of the impressions the ad server counted.
    billable_cpm_micros: int

    @property
    def spend_micros(self) -> int:
        """Spend at the ad server's count: sum of CPM prices / 1000, rounded
        half away from zero once for the whole sum."""
        return _div_round(self.billable_cpm_micros, 1000)


def chain_counts(snapshots: Mapping[str, counts_pb2.CountsSnapshot], campaign: str | None = None) -> ChainCounts:
    """Stage totals from the roles' own counts (for one campaign if named)."""
    stages = dict.fromkeys(STAGES, 0)
    billable = 0
    for snapshot in snapshots.values():
        for stage in STAGES:
            if STAGE_ROLE[stage] == snapshot.role:
                stages[stage] += _sum(snapshot, stage, campaign)
        if snapshot.role == "adserver":
            billable += _sum(snapshot, "billable_cpm_micros", campaign)
    return ChainCounts(stages, billable)


def _sum(snapshot: counts_pb2.CountsSnapshot, name: str, campaign: str | None) -> int:
    if campaign is None:
        return total(snapshot, name)
    return sum(c.value for c in snapshot.counts if c.name == name and c.campaign == campaign)


@dataclasses.dataclass(frozen=True)
class Billing:
    """The money of a media plan line, settled on the ad server's count."""

    served: int
    viewable: int
    spend_micros: int

    @property
    def cpm(self) -> float:
        return self.spend_micros / self.served * 1000 / 1e6 if self.served else 0.0

    @property
    def viewable_rate(self) -> float:
        return self.viewable / self.served if self.served else 0.0

    @property
    def effective_vcpm(self) -> float:
        """What a thousand viewable impressions really cost."""
        return self.spend_micros / self.viewable * 1000 / 1e6 if self.viewable else 0.0

    def to_json(self) -> dict:
        return {"served": self.served, "viewable": self.viewable, "spend_micros": self.spend_micros,
                "cpm": round(self.cpm, 6), "viewable_rate": round(self.viewable_rate, 6),
                "effective_vcpm": round(self.effective_vcpm, 6)}


def billing(counts: ChainCounts) -> Billing:
    return Billing(counts.stages["rendered"], counts.stages["viewable"], counts.spend_micros)


class JournalStreams:
    """Every role instance's journal as a stream of pages in impression key
    order (each ListImpressions stream and each ledger file reads that way),
    merged into one pass over the keys: reconciliation holds one key's
    records at a time, never a journal."""

    def __init__(self, streams: Iterable[tuple[str, Iterator[counts_pb2.ImpressionRecords]]]):
        self._streams = list(streams)
        self.truncated = False

    def by_key(self) -> Iterator[tuple[str, dict[str, counts_pb2.ImpressionRecord]]]:
        """(impression key, {role: its record}) for every key any journal holds, in key order."""
        merged = heapq.merge(*(self._records(role, pages) for role, pages in self._streams), key=lambda r: r[0])
        key, found = None, {}
        for record_key, role, record in merged:
            if record_key != key:
                if key is not None:
                    yield key, found
                key, found = record_key, {}
            found.setdefault(role, record)
        if key is not None:
            yield key, found

    def _records(self, role: str, pages: Iterator[counts_pb2.ImpressionRecords]):
        for page in pages:
            self.truncated |= page.truncated
            for record in page.records:
                yield record.impression_key, role, record


def online_journals(addresses: Mapping[str, Mapping[str, str]], timeout_s: float = 3600.0) -> JournalStreams:
    """The journals of a running chain, each streamed by its ListImpressions."""
    return JournalStreams((role, _list_impressions(role, target, timeout_s)) for _name, role, target in _roles(addresses))


def _list_impressions(role: str, target: str, timeout_s: float) -> Iterator[counts_pb2.ImpressionRecords]:
    stub_type, _counts_request, list_request = _STUBS[role]
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        for response in stub_type(channel).ListImpressions(list_request, timeout=timeout_s, wait_for_ready=True):
            yield response.page


def attribute(journals: JournalStreams) -> dict[str, dict[str, int]]:
    """For each adjacent pair of stages, the impressions counted at the first
    and not at the second, by cause, joined on impression key."""
    causes: dict[str, Multiset] = {f"{before}->{after}": Multiset() for before, after in TRANSITIONS}
    for _key, records in journals.by_key():
        counted = set()
        for role, record in records.items():
            counted.update(_COUNTS_TOWARD.get((role, record.outcome), ()))
        for before, after in TRANSITIONS:
            if before in counted and after not in counted:
                causes[f"{before}->{after}"][_cause(after, records.get(STAGE_ROLE[after]))] += 1
    return {gap: dict(sorted(found.items())) for gap, found in causes.items()}


def ledger_files(folder: Path) -> list[Path]:
    """The ledger files in a data folder (as `adchain up --data` keeps them)."""
    return sorted(p for p in Path(folder).glob("*.sqlite") if p.is_file())


def ledger_snapshots(folder: Path) -> dict[str, counts_pb2.CountsSnapshot]:
    """Every role's counts as its ledger file holds them (the chain may be stopped)."""
    snapshots = {}
    for path in ledger_files(folder):
        db = open_read_only(path)
        try:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            counts = db.execute("SELECT name, reason, campaign, value FROM counts ORDER BY name, reason, campaign")
            snapshots[meta.get("instance", path.stem)] = counts_pb2.CountsSnapshot(
                role=meta.get("role", instance_role(path.stem)), instance=meta.get("instance", path.stem),
                counts=[counts_pb2.Count(name=n, reason=r, campaign=c, value=v) for n, r, c, v in counts])
        finally:
            db.close()
    return snapshots


def ledger_journals(folder: Path, page_size: int = 5_000) -> JournalStreams:
    """Every role's journal read from its ledger file, in key order."""
    streams = []
    for path in ledger_files(folder):
        db = open_read_only(path)
        try:
            role = dict(db.execute("SELECT name, value FROM meta").fetchall()).get("role", instance_role(path.stem))
        finally:
            db.close()
        streams.append((role, _ledger_pages(path, page_size)))
    return JournalStreams(streams)


def _ledger_pages(path: Path, page_size: int) -> Iterator[counts_pb2.ImpressionRecords]:
    db = open_read_only(path)
    try:
        db.execute("BEGIN")  # one snapshot for every page
        for rows in scan(db, "journal", "key, outcome, reason, campaign, seat, at_ms", "key", page_size):
            yield counts_pb2.ImpressionRecords(records=[
                counts_pb2.ImpressionRecord(impression_key=k, outcome=o, reason=r, campaign_id=c, seat=s, at_ms=t)
                for k, o, r, c, s, t in rows])
    finally:
        db.close()


def _cause(stage: str, record: counts_pb2.ImpressionRecord | None) -> str:
    """Why `stage` did not count an impression the stage before it counted."""
    if record is None:
        return {"returned": "no_return_recorded", "rendered": "not_rendered", "measurable": "not_measured",
                "viewable": "not_measured"}[stage]
    outcome = record.outcome
    if outcome == "not_returned":
        return "not_returned_before_deadline"
    if outcome == "invalid":
        return f"invalid:{record.reason}"
    if outcome == "capped":
        return "frequency_capped"
    return outcome  # late, unmeasurable, not_viewable


def duplicates(snapshots: Mapping[str, counts_pb2.CountsSnapshot]) -> dict[str, int]:
    found: dict[str, int] = {}
    for snapshot in snapshots.values():
        n = total(snapshot, "duplicates")
        if n:
            found[snapshot.role] = found.get(snapshot.role, 0) + n
    return found


def campaigns(snapshots: Mapping[str, counts_pb2.CountsSnapshot]) -> list[str]:
    return sorted({c.campaign for s in snapshots.values() for c in s.counts if c.campaign})


def report(snapshots: Mapping[str, counts_pb2.CountsSnapshot], journals: JournalStreams | None = None) -> dict:
    """Everything reconciliation knows, as one JSON-ready object."""
    counts = chain_counts(snapshots)
    result = {
        "stages": counts.stages,
        "discrepancy": {f"{a}->{b}": _gap(counts.stages[a], counts.stages[b]) for a, b in TRANSITIONS},
        "billing": billing(counts).to_json(),
        "campaigns": {},
        "duplicates": duplicates(snapshots),
    }
    for campaign_id in campaigns(snapshots):
        line = chain_counts(snapshots, campaign_id)
        entry = {"stages": line.stages, **billing(line).to_json()}
        clicks = sum(_sum(s, "clicks", campaign_id) for s in snapshots.values() if s.role == "adserver")
        conversions = sum(_sum(s, "conversions", campaign_id) for s in snapshots.values() if s.role == "adserver")
        dsp_spend = sum(_sum(s, "spend_micros", campaign_id) for s in snapshots.values() if s.role == "dsp")
        entry.update({
            "clicks": clicks,
            "ctr": round(clicks / line.stages["rendered"], 6) if line.stages["rendered"] else 0.0,
            "conversions": conversions,
            "conversion_rate": round(conversions / clicks, 6) if clicks else 0.0,
            "dsp_spend_micros": dsp_spend,
            "cost_per_acquisition": round(dsp_spend / conversions / 1e6, 6) if conversions else None,
        })
        result["campaigns"][campaign_id] = entry
    if journals is not None:
        result["causes"] = attribute(journals)
        result["journals_truncated"] = journals.truncated
    return result


def format_report(result: dict) -> str:
    """The media plan's four numbers per campaign and in total, the stage
    discrepancies, and the causes of every gap."""
    lines = [f"{'campaign':<18}{'served':>12}{'measurable':>12}{'viewable':>12}{'view rate':>10}"
             f"{'spend':>14}{'eff. vCPM':>11}"]

    def row(name: str, stages: dict, money: dict) -> str:
        return (f"{name:<18}{stages['rendered']:>12,}{stages['measurable']:>12,}{stages['viewable']:>12,}"
                f"{money['viewable_rate'] * 100:>9.1f}%{'$' + format(money['spend_micros'] / 1e6, ',.2f'):>14}"
                f"{'$' + format(money['effective_vcpm'], ',.2f'):>11}")

    for campaign_id, entry in result["campaigns"].items():
        if entry["stages"]["rendered"] or entry["stages"]["won"]:
            lines.append(row(campaign_id, entry["stages"], entry))
    lines.append(row("total", result["stages"], result["billing"]))
    lines.append("")
    lines.append(f"{'stage':<12}{'count':>12}{'vs previous':>14}")
    for i, stage in enumerate(STAGES):
        gap = "" if i == 0 else f"{result['discrepancy'][f'{STAGES[i - 1]}->{stage}'] * 100:+.1f}%"
        lines.append(f"{stage:<12}{result['stages'][stage]:>12,}{gap:>14}")
    if "causes" in result:
        lines.append("")
        lines.append("why impressions are missing at the next stage (joined on impression key):")
        for transition, causes in result["causes"].items():
            listed = ", ".join(f"{cause} {n:,}" for cause, n in causes.items()) or "none"
            lines.append(f"  {transition:<22}{listed}")
        if result.get("journals_truncated"):
            lines.append("  (a journal dropped old records: some gaps cannot be attributed)")
    if result["duplicates"]:
        lines.append("duplicates (counted once, repeats tallied): "
                     + ", ".join(f"{role} {n:,}" for role, n in result["duplicates"].items()))
    return "\n".join(lines)


def _gap(before: int, after: int) -> float:
    return (after - before) / before if before else 0.0


def _div_round(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    return quotient + (1 if 2 * remainder >= denominator else 0)


_STUBS = {
    "dsp": (bidder_pb2_grpc.BidderServiceStub, bidder_pb2.BidderServiceGetCountsRequest(),
            bidder_pb2.BidderServiceListImpressionsRequest()),
    "ssp": (exchange_pb2_grpc.ExchangeServiceStub, exchange_pb2.ExchangeServiceGetCountsRequest(),
            exchange_pb2.ExchangeServiceListImpressionsRequest()),
    "adserver": (ad_server_pb2_grpc.AdServerServiceStub, ad_server_pb2.AdServerServiceGetCountsRequest(),
                 ad_server_pb2.AdServerServiceListImpressionsRequest()),
    "verifier": (verifier_pb2_grpc.VerifierServiceStub, verifier_pb2.VerifierServiceGetCountsRequest(),
                 verifier_pb2.VerifierServiceListImpressionsRequest()),
}



"""Did the chain keep what it acknowledged? Per stage: how many events the
clients saw acknowledged, how many of those no service recorded (lost), and
how many counts have no impression of their own behind them (double
counted).

What was acknowledged is what only a client can know: the ads it received
(each owes a win at a DSP and is the exchange's returned), the render beacons
the ad server answered COUNTED, the tag reports the verifier answered with a
measurable or viewable class. Whether each was recorded is read from the
services' own journals (one row per impression key, streamed page by page,
never loaded whole), and double counting from their counts against their
journals: a stage's count that grew by more than the keys its service
journaled for this run counted something twice. The load test's own
bookkeeping decides neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loadtest.truth import Record
from services.reconcile import STAGES, ChainCounts, journal_pages

# stage -> (role whose journal records it, the outcomes that count at it)
STAGE_OUTCOMES = {
    "won": ("dsp", ("won",)),
    "returned": ("ssp", ("returned",)),
    "rendered": ("adserver", ("rendered",)),
    "measurable": ("verifier", ("viewable", "not_viewable")),
    "viewable": ("verifier", ("viewable",)),
}


def acknowledged(records: Iterable[Record]) -> dict[str, set[str]]:
    """Per stage, the impression keys whose event a client saw acknowledged."""
    found: dict[str, set[str]] = {stage: set() for stage in STAGES}
    for r in records:
        if r.request != "returned":
            continue
        found["won"].add(r.key)
        found["returned"].add(r.key)
        if r.render_answer == "COUNTED":
            found["rendered"].add(r.key)
        if r.tag_answer in ("viewable", "not_viewable"):
            found["measurable"].add(r.key)
        if r.tag_answer == "viewable":
            found["viewable"].add(r.key)
    return found


def audit(records: Iterable[Record], addresses: Mapping[str, Mapping[str, str]], since_ms: int,
          before: ChainCounts, after: ChainCounts) -> dict[str, dict[str, int | None]]:
    """{stage: {acknowledged, lost, double_counted}} for a run that began at
    `since_ms` (Unix ms) and moved the chain's counts from `before` to
    `after`. lost and double_counted are None when a journal was truncated
    (a role without a ledger keeps a bounded journal in memory): what it
    dropped cannot be told from what it never recorded."""
    found = _Found(acknowledged(records), since_ms)
    truncated = False
    for role, page in journal_pages(addresses):
        truncated |= page.truncated
        for record in page.records:
            found.take(role, record)
    result = {}
    for stage in STAGES:
        counted = after.stages[stage] - before.stages[stage]
        wanted = found.wanted[stage]
        result[stage] = {
            "acknowledged": len(wanted),
            "lost": None if truncated else len(wanted - found.recorded[stage]),
            "double_counted": None if truncated else max(0, counted - found.journaled[stage]),
        }
    return result


class _Found:
    """What the journals hold of one run, stage by stage, as they stream by."""

    def __init__(self, wanted: dict[str, set[str]], since_ms: int):
        self.wanted = wanted
        self.since_ms = since_ms
        self.recorded: dict[str, set[str]] = {stage: set() for stage in STAGES}  # acknowledged and journaled
        self.journaled = {stage: 0 for stage in STAGES}  # this run's keys each stage's journal counts
        self._stages: dict[str, list[str]] = {}
        for stage, (role, _outcomes) in STAGE_OUTCOMES.items():
            self._stages.setdefault(role, []).append(stage)

    def take(self, role: str, record) -> None:
        for stage in self._stages.get(role, ()):
            if record.outcome not in STAGE_OUTCOMES[stage][1]:
                continue
            if record.at_ms >= self.since_ms:
                self.journaled[stage] += 1
            if record.impression_key in self.wanted[stage]:
                self.recorded[stage].add(record.impression_key)

"""The report's checks: expectations with tolerances, and its JSON keys."""

from __future__ import annotations

from loadtest import report
from loadtest.scenario import Expectation


def _report(counts: dict[str, int], agrees: bool = True, vcpm: float = 9.28) -> dict:
    return {"stages": [{"stage": s, "count": c} for s, c in counts.items()], "truth_agrees": agrees,
            "billing": {"effective_vcpm_usd": vcpm, "cpm_usd": 6.0}}


COUNTS = {"won": 5200, "returned": 5050, "rendered": 4920, "measurable": 4610, "viewable": 3180}


def test_a_ratio_inside_its_tolerance_passes():
    assert report.check(Expectation("returned/won", 0.971154, 0.005), _report(COUNTS))["ok"]


def test_a_ratio_outside_its_tolerance_fails():
    assert not report.check(Expectation("viewable/measurable", 0.9, 0.005), _report(COUNTS))["ok"]


def test_effective_vcpm_and_truth_agreement_are_metrics():
    assert report.check(Expectation("effective_vcpm", 9.28, 0.10), _report(COUNTS, vcpm=9.31))["ok"]
    assert not report.check(Expectation("truth_agreement", 1, 0), _report(COUNTS, agrees=False))["ok"]


def test_latency_percentiles_and_histogram():
    summary = report.latency_summary([float(v) for v in range(1, 101)])
    assert (summary["p50"], summary["p90"], summary["p99"]) == (50.0, 90.0, 99.0)
    assert sum(b["count"] for b in summary["histogram"]) == 100

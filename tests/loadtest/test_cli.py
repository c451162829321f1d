"""`adchain loadtest` as CI runs it: real processes, bounded in time, the
exit status telling whether the run met the scenario's expectations."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from loadtest import scenario
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _loadtest(*args: str, timeout_s: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services", "loadtest", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout_s)
    return result, time.monotonic() - started


@pytest.mark.parametrize("name", ["ctv-ad-breaks", "slow-dsp"])
def test_shipped_scenario_runs_bounded_and_meets_its_expectations(name, tmp_path):
    result, took = _loadtest(name, "--scale", "0.0005", "--json", "--html", str(tmp_path / "r.html"),
                             "--duration", "60", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) >= {"stages", "billing", "causes", "latency_ms", "throughput"}
    assert report["truth_agrees"]
    assert "<svg" in (tmp_path / "r.html").read_text()
    assert took < 120


def test_slow_dsp_opens_a_won_to_returned_gap_from_expired_deadlines(tmp_path):
    result, _ = _loadtest("slow-dsp", "--scale", "0.0005", "--json", "--run-dir", str(tmp_path))
    report = json.loads(result.stdout)
    assert report["causes"]["won->returned"]["deadline_expired"]["count"] > 0
    assert report["latency_ms"]["p50"] >= 90  # the exchange waits tmax for the slow buyer


def test_bot_storm_bots_are_not_counted_as_rendered(tmp_path):
    result, took = _loadtest("bot-storm", "--scale", "0.0005", "--json", "--run-dir", str(tmp_path))
    report = json.loads(result.stdout)
    stages = {row["stage"]: row for row in report["stages"]}
    # What the ground truth says must happen: no bot render is counted.
    assert stages["rendered"]["count"] == stages["rendered"]["truth_expects"]
    assert result.returncode == 0 and took < 120


def test_impossible_expectations_make_the_command_fail(tmp_path):
    text = scenario.find("slow-dsp").read_text() + """
[[expect]]
metric = "viewable/won"
value = 1.0
tolerance = 0.0001
"""
    path = tmp_path / "impossible.toml"
    path.write_text(text)
    result, _ = _loadtest(str(path), "--scale", "0.0002", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1, result.stdout
    assert "FAIL  viewable/won" in result.stdout


def test_a_bad_scenario_exits_2_naming_every_problem(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[scenario]\n[traffic]\nopportunities = 0\n')
    result, _ = _loadtest(str(path))
    assert result.returncode == 2
    assert "scenario.name" in result.stderr and "traffic.opportunities" in result.stderr


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2])
def test_seed_example_at_scale_0_01_reproduces_the_worked_example(seed, tmp_path):
    result, took = _loadtest("seed-example", "--scale", "0.01", "--seed", str(seed), "--json",
                             "--run-dir", str(tmp_path), timeout_s=560)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    counts = _assert_reproduces_the_worked_example(report)
    print(f"seed {seed}: {took:.0f}s, counts {counts}, vCPM {report['billing']['effective_vcpm_usd']}")


@pytest.mark.timeout(600)
def test_bulk_seed_example_reproduces_the_worked_example_through_the_batch_rpcs(tmp_path):
    """The reduced version of `--scale 1 --bulk` (the full-scale run is a
    benchmark): the same world through RequestAds, RecordImpressions and
    RecordExposures, every verdict the services' own."""
    result, took = _loadtest("seed-example", "--scale", "0.02", "--seed", "3", "--bulk", "--json",
                             "--run-dir", str(tmp_path), timeout_s=560)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["throughput"]["mode"] == "bulk"
    assert report["truth_agrees"]
    counts = _assert_reproduces_the_worked_example(report)
    print(f"bulk: {took:.0f}s, {report['throughput']}, counts {counts}")


def _assert_reproduces_the_worked_example(report: dict) -> dict[str, int]:
    """Each stage-to-stage ratio of the seed within 0.5 points, $6 CPM, effective vCPM $9.28 ± $0.10."""
    counts = {row["stage"]: row["count"] for row in report["stages"]}
    seed_counts = {"won": 5.2, "returned": 5.05, "rendered": 4.92, "measurable": 4.61, "viewable": 3.18}
    stages = list(seed_counts)
    for top, bottom in zip(stages[1:], stages):
        got, want = counts[top] / counts[bottom], seed_counts[top] / seed_counts[bottom]
        assert abs(got - want) <= 0.005, (top, bottom, got, want)
    assert abs(report["billing"]["effective_vcpm_usd"] - 9.28) <= 0.10
    assert report["billing"]["cpm_usd"] == pytest.approx(6.0)
    return counts

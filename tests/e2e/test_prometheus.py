"""The real Prometheus on the real chain: after a bounded load, the recording
rules agree with the services' own counts, every rule evaluates cleanly, and
every query of the Grafana dashboard returns data.

How exact each comparison is, and why:

- Rules over totals (stage:adchain_impressions_total:sum and
  stage:adchain_impression_discrepancy:ratio) read the same counters
  GetCounts reports, so once Prometheus has scraped the final counts they
  equal 1 - next/previous from GetCounts to the last bit.
- Rules over 5-minute rates cannot: rate() extrapolates each series from its
  own scrape times, and the roles are scraped at different moments. Here every
  series starts at 0 inside the window (Prometheus is up before the load), so
  rate() does not extrapolate backwards, and forwards by at most 1.1 sample
  intervals: each stage's increase is its count times a factor in
  [1, 1 + 1.1 / (n - 1)], n being the series' samples in the window. The test
  asserts the rate rules inside that bound, and asserts exactly that each
  ratio rule is 1 - next/previous of the stage rates recorded with it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from loadtest import scenario
from loadtest.run import run as run_load
from services.local import prometheus as local_prometheus
from services.reconcile import STAGES, chain_counts, read_snapshots
from services.runtime.counting import total
from tests.conftest import ROOT, start_chain, stop_chain, system_program, wait_for
from tests.deploy.promql import dashboard_queries, rules

pytestmark = pytest.mark.slow

INTERVAL_S = 0.5
WINDOW_S = 300  # the rules' [5m]
PAIRS = list(zip(STAGES, STAGES[1:]))
OPPORTUNITIES = 300


@pytest.fixture
def observed(tmp_path):
    binary = system_program("prometheus")
    chain = start_chain()
    prometheus = None
    try:
        prometheus = local_prometheus.start(chain.addresses(), tmp_path, binary=binary, interval_s=INTERVAL_S)
        yield chain, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_chain(chain)


def query(prometheus, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def values(results: list[dict], *labels: str) -> dict:
    """Sample values keyed by the given labels (one label: its value)."""
    key = (lambda m: m[labels[0]]) if len(labels) == 1 else (lambda m: tuple(m[l] for l in labels))
    return {key(r["metric"]): float(r["value"][1]) for r in results}


def services_counts(chain) -> tuple[dict[str, int], int]:
    """Impressions per stage and billed spend (micros), from GetCounts."""
    snapshots = read_snapshots(chain.addresses())
    spend = sum(total(s, "spend_micros") for s in snapshots.values() if s.role == "dsp")
    return chain_counts(snapshots).stages, spend


def load_world() -> scenario.Scenario:
    """seed-example's world, kept to what the test chain's DSPs buy."""
    world = scenario.load("seed-example")
    placements = (dataclasses.replace(world.traffic.placements[0], sizes=((300, 250),), share=1.0),)
    return dataclasses.replace(world, traffic=dataclasses.replace(world.traffic, placements=placements,
                                                                  concurrency=8))


def test_recording_rules_match_the_services_counts_and_every_dashboard_query_has_data(observed):
    chain, prometheus = observed

    # Every role scraped at least once before any traffic: every series then
    # starts at 0 inside the rules' windows.
    assert wait_for(lambda: len(query(prometheus, 'up{job="adchain"} == 1')) == 5
                    and len(query(prometheus, "adchain_impressions_total")) == 6
                    and len(query(prometheus, "adchain_dsp_spend_micros_total")) == 2, timeout_s=30, interval_s=0.2)

    run_load(load_world(), scale=0.001, seed=11, addresses=chain.addresses(), max_opportunities=OPPORTUNITIES,
             progress=io.StringIO())

    # Notices (wins, billing) land after the client is done: wait until the
    # services' counts hold still, then until Prometheus has scraped them.
    previous = [None]

    def settled() -> bool:
        now = services_counts(chain)
        same, previous[0] = now == previous[0], now
        return same

    assert wait_for(settled, timeout_s=30, interval_s=1.0), "counts kept changing"
    counts, spend = previous[0]
    assert all(counts[stage] > 0 for stage in STAGES) and spend > 0

    def scraped() -> bool:
        totals = values(query(prometheus, "stage:adchain_impressions_total:sum"), "stage")
        billed = query(prometheus, "sum(adchain_dsp_spend_micros_total)")
        return totals == {s: float(c) for s, c in counts.items()} and float(billed[0]["value"][1]) == spend

    assert wait_for(scraped, timeout_s=30, interval_s=0.2), "Prometheus never showed the final counts"
    # Evaluate everything at one instant after the rules had the final counts.
    time.sleep(3 * INTERVAL_S)
    at = time.time() - INTERVAL_S

    # Totals: exactly what GetCounts says.
    assert values(query(prometheus, "stage:adchain_impressions_total:sum", at), "stage") == {
        s: float(c) for s, c in counts.items()}
    discrepancy = values(query(prometheus, "stage:adchain_impression_discrepancy:ratio", at), "previous_stage", "stage")
    assert discrepancy == {(p, n): 1 - counts[n] / counts[p] for p, n in PAIRS}

    # Rates: each ratio rule is 1 - next/previous of the stage rates it was
    # recorded with (sums first, divided last) ...
    rates_result = query(prometheus, "stage:adchain_impressions:rate5m", at)
    ratio_result = query(prometheus, "stage:adchain_impression_discrepancy:ratio_rate5m", at)
    assert len({r["value"][0] for r in rates_result + ratio_result}) == 1, "not from one evaluation"
    rates = values(rates_result, "stage")
    ratio_rate = values(ratio_result, "previous_stage", "stage")
    assert ratio_rate == {(p, n): 1 - rates[n] / rates[p] for p, n in PAIRS}

    # ... and agrees with the services' counts within rate()'s extrapolation.
    samples = query(prometheus, 'count_over_time({__name__=~"adchain_impressions_total|adchain_dsp_spend_micros_total"}'
                                f"[{WINDOW_S}s])", at)
    n = min(float(r["value"][1]) for r in samples)
    epsilon = 1.1 / (n - 2)  # one sample fewer than the query saw, in case one landed after the evaluation
    for stage in STAGES:
        assert counts[stage] * (1 - 1e-9) <= rates[stage] * WINDOW_S <= counts[stage] * (1 + epsilon) + 1e-9, stage
    for p, n_ in PAIRS:
        exact = counts[n_] / counts[p]
        assert exact / (1 + epsilon) - 1e-12 <= 1 - ratio_rate[(p, n_)] <= exact * (1 + epsilon) + 1e-12, (p, n_)

    # Billed spend and effective vCPM (their own group, so their own
    # evaluation time): within the same bound of the DSPs' and verifier's counts.
    spend_rate = float(query(prometheus, "chain:adchain_dsp_spend_micros:rate5m", at)[0]["value"][1])
    assert spend * (1 - 1e-9) <= spend_rate * WINDOW_S <= spend * (1 + epsilon) + 1e-9
    vcpm = float(query(prometheus, "chain:adchain_effective_vcpm_micros:ratio_rate5m", at)[0]["value"][1])
    exact_vcpm = 1000 * spend / counts["viewable"]
    assert exact_vcpm / (1 + epsilon) - 1e-6 <= vcpm <= exact_vcpm * (1 + epsilon) + 1e-6

    # Every rule in the files is loaded and evaluates without error.
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/rules", timeout=10) as r:
        groups = json.load(r)["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in loaded), [r for r in loaded if r["health"] != "ok"]
    assert sorted(r["name"] for r in loaded) == sorted(name for kind in ("record", "alert") for name, _ in rules(kind))

    # Every dashboard query returns data.
    for title, expr in dashboard_queries():
        result = query(prometheus, expr, at)
        assert result, f"no data for {title!r}: {expr}"
        assert any(math.isfinite(float(r["value"][1])) for r in result), f"only NaN for {title!r}: {expr}"


def test_adchain_up_with_prometheus_scrapes_every_role_and_stops_it(tmp_path):
    system_program("prometheus")
    addresses = tmp_path / "addresses.json"
    up = subprocess.Popen([sys.executable, "-m", "services", "up", "--prometheus", "--addresses", str(addresses),
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(addresses.exists, timeout_s=90), "no addresses file"
        found = json.loads(addresses.read_text())
        address = found["prometheus"]["http"]
        assert address.startswith("127.0.0.1:")
        prometheus = local_prometheus.LocalPrometheus(None, address, None, None)  # for query() only
        assert wait_for(lambda: len(query(prometheus, 'up{job="adchain"} == 1')) == 5, timeout_s=30, interval_s=0.2)
        assert values(query(prometheus, 'up{job="adchain"}'), "instance", "role") == {
            ("dsp-1", "dsp"): 1, ("dsp-2", "dsp"): 1, ("ssp", "ssp"): 1, ("adserver", "adserver"): 1,
            ("verifier", "verifier"): 1}
        assert wait_for(lambda: len(query(prometheus, "stage:adchain_impressions_total:sum")) == 5, timeout_s=30)
        # The supervisor in a job of its own, its series naming the role they are about.
        restarts = 'adchain_chain_role_restarts_total{job="adchain-supervisor"}'
        assert wait_for(lambda: len(query(prometheus, restarts)) == 5, timeout_s=30, interval_s=0.2)
        assert {r["metric"]["instance"]: float(r["value"][1]) for r in query(prometheus, restarts)} == {
            "dsp-1": 0, "dsp-2": 0, "ssp": 0, "adserver": 0, "verifier": 0}
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert f"prometheus http://{address}" in output
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/-/ready", timeout=2)

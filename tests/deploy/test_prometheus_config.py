"""The shipped Prometheus configuration, rules and dashboard: promtool
accepts them, every rule has unit tests that make it fire and not fire, and
every metric they read is one the roles export."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from services.local import prometheus as local_prometheus
from tests.conftest import banner_request, system_program
from tests.deploy.promql import PROMETHEUS, RULE_FILES, RULE_TESTS, dashboard_queries, metric_names, rules

# Metrics rules may read before any role exports them (none today). Keep this
# list explicit: a name leaves it once a role exports it.
PENDING_METRICS: set[str] = set()
# Series Prometheus itself writes for every target.
SCRAPE_SERIES = {"up"}


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([system_program("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_accepts_the_shipped_config():
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_accepts_the_config_adchain_up_writes(tmp_path):
    targets_file = tmp_path / "targets.json"
    targets_file.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps(local_prometheus.config(targets_file)))
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_adchain_up_scrapes_with_the_shipped_job():
    shipped = (PROMETHEUS / "prometheus.yml").read_text()
    job = local_prometheus.config(PROMETHEUS / "targets" / "adchain.json")["scrape_configs"][0]
    assert f"job_name: {job['job_name']}" in shipped
    assert job["honor_labels"] is True and "honor_labels: true" in shipped


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", *[p.name for p in RULE_TESTS], cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_recording_rule_has_a_unit_test():
    tested = "\n".join(p.read_text() for p in RULE_TESTS)
    exprs = re.findall(r"^\s*- expr: (.*)$", tested, re.M)
    for name, _ in rules("record"):
        assert any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e) for e in exprs), name


def test_every_alert_is_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for path in RULE_TESTS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"\s*alertname: (\S+)", line)
            if match:
                expected = lines[i + 1].strip()
                (silent if expected == "exp_alerts: []" else firing).add(match.group(1))
    names = {name for name, _ in rules("alert")}
    assert names == firing, f"alerts never tested firing: {names - firing}"
    assert names == silent, f"alerts never tested silent: {names - silent}"


def test_record_names_follow_level_metric_operations():
    for name, _ in rules("record"):
        assert re.fullmatch(r"[a-z]+:adchain_[a-z_]+:[a-z0-9_]+", name), name


@pytest.fixture
def exported(chain) -> set[str]:
    """Every sample name any role exports, after one ad request so every
    family has its children."""
    chain.ssp.RequestAd(banner_request(), timeout=5)
    names = set()
    for where in chain.addresses().values():
        text = urllib.request.urlopen(f"http://{where['metrics']}/metrics", timeout=5).read().decode()
        names |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names


def test_every_metric_the_rules_and_dashboard_read_is_exported(exported):
    recorded = {name for name, _ in rules("record")}
    exprs = [e for _, e in rules("record")] + [e for _, e in rules("alert")] + [e for _, e in dashboard_queries()]
    read = set().union(*(metric_names(e) for e in exprs))
    unknown = read - exported - recorded - PENDING_METRICS - SCRAPE_SERIES
    assert not unknown, f"read but neither exported nor recorded: {sorted(unknown)}"
    assert not PENDING_METRICS & exported, "an exported metric is still listed as pending"
    assert PENDING_METRICS <= read


def test_the_dashboard_reads_no_pending_metric():
    # Its integration test asks every query for data, which a metric not yet
    # exported cannot give.
    for title, expr in dashboard_queries():
        assert not metric_names(expr) & PENDING_METRICS, title


def test_without_a_prometheus_binary_the_chain_goes_on_without_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    addresses = {"ssp": {"grpc": "127.0.0.1:1", "metrics": "127.0.0.1:2"}}
    assert local_prometheus.start(addresses, tmp_path) is None
    assert "prometheus is not installed" in caplog.text


def test_targets_name_each_instance_and_its_role():
    addresses = {"dsp-1": {"grpc": "127.0.0.1:1", "metrics": "127.0.0.1:2"},
                 "verifier": {"grpc": "127.0.0.1:3", "metrics": "127.0.0.1:4"},
                 "prometheus": {"http": "127.0.0.1:5"}}
    assert local_prometheus.targets(addresses) == [
        {"targets": ["127.0.0.1:2"], "labels": {"instance": "dsp-1", "role": "dsp"}},
        {"targets": ["127.0.0.1:4"], "labels": {"instance": "verifier", "role": "verifier"}},
    ]

"""The supervisor's rules on their own: how long it waits before starting a
role again, what it exports, what Prometheus scrapes of it, and that every
role accepts the settings the chain writes for it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.local import chain as local_chain
from services.local import prometheus as local_prometheus
from services.local.supervision import Backoff, ChainMetrics
from services.roles import ROLES
from services.runtime import config

NAMES = tuple(local_chain.INSTANCES)


@pytest.mark.parametrize(("attempt", "delay_s"), [
    (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (7, 10.0), (10_000, 10.0),
])
def test_restarts_in_a_row_wait_twice_as_long_up_to_the_cap(attempt, delay_s):
    assert Backoff(initial_s=0.5, max_s=10.0).delay_s(attempt) == delay_s


def test_a_role_that_stayed_up_long_enough_starts_the_count_over():
    backoff = Backoff(reset_after_s=30.0)
    assert backoff.next_attempt(previous=4, up_s=29.9) == 5
    assert backoff.next_attempt(previous=4, up_s=30.0) == 1
    # Never SERVING after a restart: the next try waits longer.
    assert backoff.next_attempt(previous=0, up_s=0.0) == 1


def _samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {s.labels["instance"]: s.value for m in registry.collect() for s in m.samples if s.name == name}


def test_restarts_and_up_exist_at_zero_for_every_instance():
    registry = CollectorRegistry()
    metrics = ChainMetrics(NAMES, registry)
    assert _samples(registry, "adchain_chain_role_restarts_total") == dict.fromkeys(NAMES, 0.0)
    assert _samples(registry, "adchain_chain_role_up") == dict.fromkeys(NAMES, 0.0)
    metrics.record_up("verifier", True)
    metrics.record_restart("verifier")
    assert _samples(registry, "adchain_chain_role_restarts_total")["verifier"] == 1.0
    assert _samples(registry, "adchain_chain_role_up")["verifier"] == 1.0


def test_prometheus_scrapes_the_supervisor_in_a_job_of_its_own(tmp_path):
    addresses = {"dsp-1": {"grpc": "127.0.0.1:1", "metrics": "127.0.0.1:2"},
                 "supervisor": {"metrics": "127.0.0.1:3"},
                 "prometheus": {"http": "127.0.0.1:4"}}
    # The role job (and so `up{job="adchain"}` and its alert) sees roles only.
    assert local_prometheus.targets(addresses) == [
        {"targets": ["127.0.0.1:2"], "labels": {"instance": "dsp-1", "role": "dsp"}}]
    assert local_prometheus.supervisor_targets(addresses) == [
        {"targets": ["127.0.0.1:3"], "labels": {"instance": "supervisor"}}]
    assert local_prometheus.supervisor_targets({"dsp-1": addresses["dsp-1"]}) == []
    jobs = local_prometheus.config(tmp_path / "t.json", supervisor_file=tmp_path / "s.json")["scrape_configs"]
    assert [(j["job_name"], j["honor_labels"]) for j in jobs] == [("adchain", True), ("adchain-supervisor", True)]
    assert len(local_prometheus.config(tmp_path / "t.json")["scrape_configs"]) == 1


@pytest.mark.parametrize("name", NAMES)
def test_every_role_accepts_the_settings_the_chain_writes(name):
    written = local_chain._settings(local_chain.DEFAULTS, name, "127.0.0.1", f"/data/{name}.sqlite")
    wiring = {"dsps": [{"name": "dsp-1", "address": "127.0.0.1:1"}], "tokens": {"keys": ["k1:" + "ab" * 32]}}
    data = written if local_chain.INSTANCES[name] == "dsp" else {**written, **wiring}
    settings = config.from_mapping(ROLES[local_chain.INSTANCES[name]].settings_type, data, env={})
    assert settings.ledger.path == f"/data/{name}.sqlite"
    assert settings.server.grpc_port == 0 and settings.server.name == name

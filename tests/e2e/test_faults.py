"""kill -9 of each role in turn while seed-example runs through the
supervised local chain, every role on its ledger: nothing a client saw
acknowledged is lost, nothing is counted twice, every notice owed at a kill
is delivered, and the DSPs bill exactly what the ad server counted."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from loadtest import run as runs
from loadtest import scenario as scenarios
from services import reconcile
from services.local import chain as local_chain
from services.runtime.counting import total

# Killed in this order, each once it serves again after the one before.
VICTIMS = ("dsp-1", "ssp", "adserver", "verifier", "dsp-2")


def kill_each_in_turn(chain: local_chain.LocalChain, first_after_s: float, between_s: float,
                      killed: list[tuple[str, int]], stop: threading.Event) -> None:
    if stop.wait(first_after_s):
        return
    for name in VICTIMS:
        process = chain.processes[name]
        pid = process.popen.pid
        os.kill(pid, signal.SIGKILL)
        killed.append((name, pid))
        # Back when a new process of it answers SERVING.
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if process.popen.pid != pid and up(chain, name):
                break
            time.sleep(0.1)
        if stop.wait(between_s):
            return


def up(chain: local_chain.LocalChain, name: str) -> bool:
    text = chain.metrics.registry.get_sample_value("adchain_chain_role_up", {"instance": name})
    return text == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("bulk", [False, True], ids=["per_event", "bulk"])
def test_kill_9_of_each_role_in_turn_loses_and_double_counts_nothing(tmp_path, monkeypatch, bulk):
    # Retries sooner than a real chain's, so what a kill left owed lands within the test.
    monkeypatch.setenv("ADCHAIN_BILLING_RETRY_INTERVAL_S", "1")
    monkeypatch.setenv("ADCHAIN_NOTICES_RETRY_INTERVAL_S", "1")
    monkeypatch.setenv("ADCHAIN_EXCHANGE_NOTICE_RETRY_INTERVAL_S", "1")
    world = scenarios.load("seed-example")
    config = runs.write_chain_config(world, tmp_path / "config")
    chain = local_chain.start(config, tmp_path / "chain", data_dir=tmp_path / "data")
    killed: list[tuple[str, int]] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_each_in_turn, args=(chain, 2.0, 1.0, killed, stop), daemon=True)
    try:
        killer.start()
        # Back-to-back runs (each audited on its own) until every role was
        # killed and is back: a run meeting a dead exchange ends fast.
        reports = []
        while killer.is_alive() or not reports:
            reports.append(runs.run(world, scale=0.0005 if not bulk else 0.005, seed=len(reports) + 1,
                                    addresses=chain.addresses(), progress=None, bulk=bulk, max_duration_s=120))
        killer.join()
        assert [name for name, _pid in killed] == list(VICTIMS)
        for name in VICTIMS:
            assert chain.metrics.registry.get_sample_value(
                "adchain_chain_role_restarts_total", {"instance": name}) == 1.0, name
        acknowledged = {}
        for report in reports:
            for row in report["stages"]:
                assert (row["stage"], row["lost"], row["double_counted"]) == (row["stage"], 0, 0), row
                acknowledged[row["stage"]] = acknowledged.get(row["stage"], 0) + row["acknowledged"]
        assert all(acknowledged.values()), acknowledged
        snapshots = reconcile.read_snapshots(chain.addresses())
        assert sum(s.notices_owed for s in snapshots.values()) == 0
        rendered = total(snapshots["adserver"], "rendered")
        billed = total(snapshots["dsp-1"], "billed") + total(snapshots["dsp-2"], "billed")
        assert billed == rendered
        assert total(snapshots["adserver"], "billing_notices", reason="failed") == 0
        # Spend: each billed impression costs its clearing CPM / 1000, rounded
        # once per impression; the sum of the prices is the ad server's.
        billable = total(snapshots["adserver"], "billable_cpm_micros")
        spend = total(snapshots["dsp-1"], "spend_micros") + total(snapshots["dsp-2"], "spend_micros")
        assert abs(spend * 1000 - billable) <= 500 * billed
    finally:
        stop.set()
        chain.stop()

"""The supervised local chain, as real processes on loopback: a role killed
with SIGKILL comes back on the same addresses while the others keep serving,
and the supervisor's /metrics counts the restart."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request

import grpc
import pytest

from services.local import chain as local_chain
from services.reconcile import read_snapshots
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

KILLED = "adserver"


def supervisor_samples(chain: local_chain.LocalChain, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{chain.supervisor_metrics}/metrics", timeout=5).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].split("} ")
            found[labels.removeprefix('instance="').removesuffix('"')] = float(value)
    return found


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        return local_chain._is_serving(channel, timeout_s=1.0)


class Watch:
    """Health-checks the roles not killed, every 50 ms, on channels held
    open throughout, and remembers every answer that was not SERVING."""

    def __init__(self, addresses: dict[str, str]):
        self._channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
        self.failures: list[str] = []
        self.checks = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            for name, channel in self._channels.items():
                self.checks += 1
                if not local_chain._is_serving(channel, timeout_s=1.0):
                    self.failures.append(name)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        for channel in self._channels.values():
            channel.close()


@pytest.fixture
def chain(tmp_path):
    chain = local_chain.start(run_dir=tmp_path / "run")
    yield chain
    chain.stop(timeout_s=5.0)


def test_a_killed_role_comes_back_on_the_same_addresses_while_the_others_serve(chain, tmp_path):
    run = tmp_path / "run"
    before = chain.addresses()
    pids = {name: p.popen.pid for name, p in chain.processes.items()}
    assert supervisor_samples(chain, "adchain_chain_role_up") == dict.fromkeys(local_chain.INSTANCES, 1.0)
    others = Watch({name: before[name]["grpc"] for name in local_chain.INSTANCES if name != KILLED})
    # A connection open to it while it dies leaves its ports in TIME_WAIT,
    # which only SO_REUSEADDR lets the replacement bind through.
    held = grpc.insecure_channel(before[KILLED]["grpc"])
    try:
        assert local_chain._is_serving(held, timeout_s=2.0)
        os.kill(pids[KILLED], signal.SIGKILL)
        assert wait_for(lambda: supervisor_samples(chain, "adchain_chain_role_up")[KILLED] == 0.0, timeout_s=5)
        assert wait_for(lambda: supervisor_samples(chain, "adchain_chain_role_up")[KILLED] == 1.0, timeout_s=60,
                        interval_s=0.1), (run / f"{KILLED}.log").read_text()[-3000:]
        assert local_chain._is_serving(held, timeout_s=2.0)  # the same address, SERVING again
    finally:
        held.close()
        others.stop()

    assert chain.addresses() == before
    assert serving(before[KILLED]["grpc"])
    ready = json.loads((run / f"{KILLED}.ready.json").read_text())
    assert ready["pid"] != pids[KILLED]
    assert (ready["grpc"], ready["metrics"]) == (before[KILLED]["grpc"], before[KILLED]["metrics"])
    assert urllib.request.urlopen(f"http://{before[KILLED]['metrics']}/metrics", timeout=5).status == 200
    # It answers its RPCs again, with the ledger it was started with.
    assert read_snapshots({KILLED: before[KILLED]})[KILLED].role == KILLED
    written = json.loads((run / f"{KILLED}.json").read_text())
    assert written["ledger"]["path"] == str(run / "data" / f"{KILLED}.sqlite")
    assert written["server"]["grpc_port"] == local_chain._port(before[KILLED]["grpc"])

    assert supervisor_samples(chain, "adchain_chain_role_restarts_total") == {
        name: 1.0 if name == KILLED else 0.0 for name in local_chain.INSTANCES}
    assert others.checks > 0 and others.failures == []
    assert {n: p.popen.pid for n, p in chain.processes.items() if n != KILLED} == \
        {n: pid for n, pid in pids.items() if n != KILLED}


def test_stop_is_not_a_crash_and_starts_nothing_again(chain):
    processes = list(chain.processes.values())
    pids = [p.popen.pid for p in processes]
    chain.stop(timeout_s=5.0)
    assert all(p.popen.poll() is not None for p in processes)
    # Longer than the first backoff: a supervisor still watching would have restarted one by now.
    threading.Event().wait(1.0)
    assert [p.popen.pid for p in processes] == pids
    assert all(p.popen.poll() is not None for p in processes)


def test_without_a_ledger_the_roles_start_with_an_empty_path(tmp_path):
    chain = local_chain.start(run_dir=tmp_path / "run", ledger=False)
    try:
        for name in local_chain.INSTANCES:
            assert json.loads((tmp_path / "run" / f"{name}.json").read_text())["ledger"]["path"] == ""
        assert chain.data_dir is None
        assert not (tmp_path / "run" / "data").exists()
    finally:
        chain.stop(timeout_s=5.0)

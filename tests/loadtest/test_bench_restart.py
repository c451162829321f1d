"""The restart benchmark's ledgers are what the roles read: each role starts
on one and answers with the counts it holds."""

from __future__ import annotations

import json

import pytest

from loadtest import bench_restart
from services.reconcile import ledger_snapshots
from services.runtime.counting import total


def test_a_filled_ledger_holds_its_events_in_the_roles_own_shapes(tmp_path):
    for name in bench_restart.ROLES:
        bench_restart.fill(name, tmp_path / f"{name}.sqlite", 3_000)
    snapshots = ledger_snapshots(tmp_path)
    assert total(snapshots["adserver"], "rendered") == 3_000
    assert total(snapshots["dsp-1"], "won") == 3_000


@pytest.mark.slow
def test_each_role_starts_on_a_filled_ledger(tmp_path, capsys):
    assert bench_restart.main(["--events", "5000", "--json", "--dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    for name, row in result["roles"].items():
        assert row["full"]["seconds"] > 0 and row["empty"]["seconds"] > 0, name

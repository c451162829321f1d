"""Counts that outlive the process: every role on its ledger, stopped and
started again on the same folder, answers with the same counts, journals
and idempotence keys, and the DSP's pricing state is rebuilt from its
accruals."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adchain.v1 import ad_server_pb2, exchange_pb2, verifier_pb2
from services import reconcile
from services.reconcile import online_journals, read_snapshots
from services.runtime.journal import DurableJournal
from services.runtime.store import LedgerStore
from tests.conftest import ROOT, banner_request, start_chain, stop_chain, wait_for

HUMAN = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
ROLES = ("dsp-1", "dsp-2", "ssp", "adserver", "verifier")


def counts(chain) -> dict[str, dict[tuple[str, str, str], int]]:
    snapshots = read_snapshots(chain.addresses())
    return {name: {(c.name, c.reason, c.campaign): c.value for c in snapshots[name].counts if c.value}
            for name in ROLES}


def journals(chain) -> dict[str, list[tuple]]:
    streams = online_journals(chain.addresses())
    found: dict[str, list[tuple]] = {}
    for _key, records in streams.by_key():
        for role, r in records.items():
            found.setdefault(role, []).append((r.impression_key, r.outcome, r.reason, r.campaign_id, r.seat, r.at_ms))
    assert not streams.truncated
    return found


def play(chain, n: int, render: bool = True) -> list[exchange_pb2.Ad]:
    """n opportunities: ad request, render, tag report (every third one not
    in view); only the ad requests without `render`."""
    ads = []
    for i in range(n):
        request = banner_request(f"r{i}")
        request.tmax_ms = 2_000  # this test is about what is kept, not about a slow first auction
        response = chain.ssp.RequestAd(request, timeout=5)
        assert response.HasField("ad"), response
        ad = response.ad
        ads.append(ad)
        if not render:
            continue
        chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(
            token=ad.token, user_agent=HUMAN, ip="203.0.113.9"), timeout=5)
        in_view = 0 if i % 3 == 0 else 100
        chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=ad.token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY,
            samples=[verifier_pb2.InViewSample(offset_ms=t, in_view_percent=in_view) for t in range(0, 1500, 100)]),
            timeout=5)
    return ads


def settled(chain, ads: int) -> bool:
    """Every billing and viewable notice has reached a DSP."""
    now = counts(chain)
    billed = sum(v for (name, _r, _c), v in now["dsp-1"].items() if name == "billed") + \
        sum(v for (name, _r, _c), v in now["dsp-2"].items() if name == "billed")
    rendered = sum(v for (name, _r, _c), v in now["adserver"].items() if name == "rendered")
    return rendered == ads and billed == rendered


def test_a_chain_started_again_on_its_ledgers_answers_as_before(tmp_path):
    chain = start_chain(ledger_dir=tmp_path)
    try:
        ads = play(chain, 12)
        assert len(ads) == 12
        assert wait_for(lambda: settled(chain, 12), timeout_s=10)
        before = counts(chain)
        journals_before = journals(chain)
        online = reconcile.report(read_snapshots(chain.addresses()), online_journals(chain.addresses()))
        spend_before = chain.running["dsp-1"].app.ledger._engine.snapshot()
    finally:
        stop_chain(chain)
    assert before["adserver"][("rendered", "dsp-1", "c-display")] == 12
    assert before["verifier"][("viewable", "", "c-display")] == 8
    # The chain stopped, its ledger files alone give the same report.
    offline = reconcile.report(reconcile.ledger_snapshots(tmp_path), reconcile.ledger_journals(tmp_path))
    assert offline == online
    assert online["causes"]["measurable->viewable"] == {"not_viewable": 4}
    cli = subprocess.run([sys.executable, "-m", "services", "reconcile", "--ledgers", str(tmp_path), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == offline

    chain = start_chain(ledger_dir=tmp_path)
    try:
        after = counts(chain)
        assert after == before
        assert journals(chain) == journals_before
        spend_after = chain.running["dsp-1"].app.ledger._engine.snapshot()
        for field in ("spend_micros", "daily_spend_micros", "impressions", "viewables"):
            assert np.array_equal(spend_after[field], spend_before[field]), field
        # The keys taken before are still taken: a repeated pixel, tag report
        # or win notice counts nothing.
        repeat = chain.adserver.RecordImpression(ad_server_pb2.RecordImpressionRequest(
            token=ads[0].token, user_agent=HUMAN, ip="203.0.113.9"), timeout=5)
        assert repeat.outcome == ad_server_pb2.EVENT_OUTCOME_DUPLICATE
        report = chain.verifier.RecordExposure(verifier_pb2.RecordExposureRequest(
            token=ads[1].token, method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY,
            samples=[verifier_pb2.InViewSample(offset_ms=0, in_view_percent=100)]), timeout=5)
        assert report.exposure_class == verifier_pb2.EXPOSURE_CLASS_DUPLICATE
        # New traffic counts on top of the old.
        assert len(play(chain, 3)) == 3
        assert wait_for(lambda: settled(chain, 15), timeout_s=10)
        final = counts(chain)
        assert final["adserver"][("rendered", "dsp-1", "c-display")] == 15
        assert final["adserver"][("duplicates", "impression", "")] == 1
        assert final["dsp-1"][("won", "", "c-display")] == 15
    finally:
        stop_chain(chain)


def test_the_journal_is_read_from_the_ledger_in_pages(tmp_path):
    store = LedgerStore(tmp_path / "role.sqlite")
    journal = DurableJournal(store)
    keys = [f"{i:08d}:1" for i in range(5_000)]
    for key in reversed(keys):
        assert journal.record(key, "rendered", campaign_id="c")
    assert not journal.record(keys[0], "invalid", reason="bot_user_agent")  # the first verdict stays
    store.commit()
    pages = list(journal.pages(size=2_000))
    assert [len(p.records) for p in pages] == [2_000, 2_000, 1_000]
    assert [r.impression_key for p in pages for r in p.records] == keys  # in key order
    assert {r.outcome for p in pages for r in p.records} == {"rendered"}
    assert not any(p.truncated for p in pages)
    store.close()
    reopened = LedgerStore(tmp_path / "role.sqlite")
    assert len(DurableJournal(reopened)) == 5_000
    reopened.close()


def test_what_was_not_committed_is_not_in_the_ledger(tmp_path):
    store = LedgerStore(tmp_path / "role.sqlite")
    journal = DurableJournal(store)
    journal.record("a:1", "rendered")
    store.commit()
    journal.record("b:1", "rendered")  # written, never committed: the process dies here
    store._db.close()
    reopened = LedgerStore(tmp_path / "role.sqlite")
    assert [r.impression_key for p in DurableJournal(reopened).pages() for r in p.records] == ["a:1"]
    reopened.close()


def judged(chain) -> int:
    """Beacons the ad server gave a verdict (rendered, or filtered as invalid or capped)."""
    return sum(v for (name, _r, _c), v in counts(chain)["adserver"].items() if name in ("rendered", "invalid", "capped"))


def health(chain, name: str) -> int:
    with grpc.insecure_channel(chain.running[name].grpc_address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_a_ledger_that_cannot_be_written_acknowledges_nothing_until_it_can(tmp_path, fault):
    chain = start_chain(ledger_dir=tmp_path)
    try:
        ads = play(chain, 400, render=False)
        store = chain.running["adserver"].store
        beacon = [ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=HUMAN, ip="203.0.113.9")
                  for ad in ads]
        # The disk fills up (SQLite's own limit on the file, the error a full
        # disk gives), or the ledger becomes read-only.
        if fault == "disk_full":
            pages = store.query_one("PRAGMA page_count")[0]
            store.query(f"PRAGMA max_page_count = {pages}")
        else:
            store.query("PRAGMA query_only = ON")
        acknowledged, refused = 0, None
        for i, request in enumerate(beacon):
            try:
                chain.adserver.RecordImpression(request, timeout=5)
                acknowledged += 1
            except grpc.RpcError as error:
                refused = i
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "ledger" in error.details() and "cannot be written" in error.details()
                break
        assert refused is not None, "the ledger never refused a write"
        assert wait_for(lambda: health(chain, "adserver") == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as again:  # nothing is taken while it cannot write
            chain.adserver.RecordImpression(beacon[refused], timeout=5)
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
        # Room again: the probe finds it, and the role serves.
        store.query("PRAGMA max_page_count = 1073741823" if fault == "disk_full" else "PRAGMA query_only = OFF")
        assert wait_for(lambda: health(chain, "adserver") == health_pb2.HealthCheckResponse.SERVING, timeout_s=10)
        assert judged(chain) == acknowledged  # the refused one was not counted
        # The refused beacon, sent again, is judged now: its first try left nothing behind.
        again_answer = chain.adserver.RecordImpression(beacon[refused], timeout=5)
        assert again_answer.outcome != ad_server_pb2.EVENT_OUTCOME_DUPLICATE
        assert judged(chain) == acknowledged + 1
    finally:
        stop_chain(chain)


def test_a_torn_last_write_is_not_part_of_the_ledger(tmp_path):
    """The process died while appending its last commit to the WAL: the
    ledger opens at the commit before it, whole."""
    store = LedgerStore(tmp_path / "role.sqlite")
    journal = DurableJournal(store)
    journal.record("a:1", "rendered")
    store.commit()
    journal.record_many([(f"b:{i}", "rendered", "", "c", "dsp-1") for i in range(200)])
    store.commit()
    torn = tmp_path / "torn"
    torn.mkdir()
    for suffix in ("", "-wal"):  # the files as a crash leaves them: nothing checkpointed
        (torn / f"role.sqlite{suffix}").write_bytes((tmp_path / f"role.sqlite{suffix}").read_bytes())
    store.close()
    wal = torn / "role.sqlite-wal"
    wal.write_bytes(wal.read_bytes()[:-100])  # the last frame cut short
    reopened = LedgerStore(torn / "role.sqlite")
    keys = [r.impression_key for p in DurableJournal(reopened).pages() for r in p.records]
    assert keys == ["a:1"]
    reopened.close()

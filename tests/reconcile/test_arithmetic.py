"""The media plan's arithmetic, on the seed's worked example: DSP 5.2M,
SSP 5.05M, ad server 4.92M, measurable 4.61M, viewable 3.18M, $6 CPM."""

from __future__ import annotations

import pytest

from adchain.v1 import counts_pb2
from services.reconcile import Billing, billing, chain_counts

SEED = {"won": 5_200_000, "returned": 5_050_000, "rendered": 4_920_000, "measurable": 4_610_000,
        "viewable": 3_180_000}
CPM_MICROS = 6_000_000


def seed_snapshots() -> dict[str, counts_pb2.CountsSnapshot]:
    def snap(role, **counts):
        return counts_pb2.CountsSnapshot(role=role, counts=[counts_pb2.Count(name=k, campaign="line-1", value=v)
                                                            for k, v in counts.items()])
    return {
        "dsp-1": snap("dsp", won=SEED["won"]),
        "ssp": snap("ssp", returned=SEED["returned"]),
        "adserver": snap("adserver", rendered=SEED["rendered"], billable_cpm_micros=SEED["rendered"] * CPM_MICROS),
        "verifier": snap("verifier", measurable=SEED["measurable"], viewable=SEED["viewable"]),
    }


def test_billing_settles_on_the_ad_server_count_at_the_contracted_cpm():
    counts = chain_counts(seed_snapshots())
    assert counts.stages == SEED
    assert counts.spend_micros == 29_520 * 1_000_000  # 4,920,000 at $6 CPM is $29,520
    assert billing(counts).cpm == pytest.approx(6.0)


def test_viewable_rate_and_effective_vcpm():
    money = billing(chain_counts(seed_snapshots()))
    assert round(money.viewable_rate * 100, 1) == 64.6  # 3.18M of 4.92M served
    assert round(money.effective_vcpm, 2) == 9.28  # $29,520 / 3.18M * 1000


def test_the_other_seed_figures():
    # $5 CPM on 4,000,000 served is $20,000; with 30% below the threshold, ~$7.14 per thousand viewable.
    money = Billing(served=4_000_000, viewable=2_800_000, spend_micros=4_000_000 * 5_000_000 // 1000)
    assert money.spend_micros == 20_000 * 1_000_000
    assert round(money.effective_vcpm, 2) == 7.14

"""Reading every role's counts from the running services and lining them up
along the ad call chain: won (DSP) -> returned (SSP) -> rendered (ad server)
-> measurable -> viewable (verifier)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, bidder_pb2, bidder_pb2_grpc, counts_pb2, exchange_pb2,
                        exchange_pb2_grpc, verifier_pb2, verifier_pb2_grpc)
from services.runtime.counting import total

STAGES = ("won", "returned", "rendered", "measurable", "viewable")
# Which role counts each stage.
STAGE_ROLE = {"won": "dsp", "returned": "ssp", "rendered": "adserver", "measurable": "verifier", "viewable": "verifier"}


def instance_role(name: str) -> str:
    """Role of an instance named in an addresses file (dsp-1 -> dsp)."""
    return "dsp" if name.startswith("dsp") else name


def read_snapshots(addresses: Mapping[str, Mapping[str, str]], timeout_s: float = 5.0) -> dict[str, counts_pb2.CountsSnapshot]:
    """GetCounts from every role in an addresses file (as `adchain up
    --addresses` writes it)."""
    snapshots = {}
    for name, where in addresses.items():
        role = instance_role(name)
        if role not in _GETTERS:
            continue  # e.g. a Prometheus entry
        stub_type, request = _GETTERS[role]
        with grpc.insecure_channel(where["grpc"]) as channel:
            snapshots[name] = stub_type(channel).GetCounts(request, timeout=timeout_s).snapshot
    return snapshots


@dataclasses.dataclass(frozen=True)
class ChainCounts:
    stages: dict[str, int]
    # Sum of clearing CPMs (micros) of the impressions the ad server counted.
    billable_cpm_micros: int

    @property
    def spend_micros(self) -> int:
        """Spend at the ad server's count: sum of CPM prices / 1000."""
        return self.billable_cpm_micros // 1000


def chain_counts(snapshots: Mapping[str, counts_pb2.CountsSnapshot]) -> ChainCounts:
    stages = dict.fromkeys(STAGES, 0)
    billable = 0
    for snapshot in snapshots.values():
        for stage in STAGES:
            if STAGE_ROLE[stage] == snapshot.role:
                stages[stage] += total(snapshot, stage)
        if snapshot.role == "adserver":
            billable += total(snapshot, "billable_cpm_micros")
    return ChainCounts(stages, billable)


def format_stage_table(counts: ChainCounts) -> str:
    """Counts per stage with the discrepancy to the stage before."""
    rows = [f"{'stage':<12}{'counted by':<12}{'count':>10}{'vs previous':>14}"]
    previous = None
    for stage in STAGES:
        value = counts.stages[stage]
        gap = ""
        if previous:
            gap = f"{(value - previous) / previous * 100:+.1f}%"
        rows.append(f"{stage:<12}{STAGE_ROLE[stage]:<12}{value:>10,}{gap:>14}")
        previous = value
    rendered, viewable = counts.stages["rendered"], counts.stages["viewable"]
    spend = counts.spend_micros / 1e6
    rows.append("")
    rows.append(f"spend at the ad server's count: ${spend:,.2f}"
                + (f" (CPM ${spend / rendered * 1000:,.2f})" if rendered else ""))
    if viewable:
        rows.append(f"viewable rate {viewable / counts.stages['measurable'] * 100:.1f}% of measurable, "
                    f"effective vCPM ${spend / viewable * 1000:,.2f}")
    return "\n".join(rows)


_GETTERS = {
    "dsp": (bidder_pb2_grpc.BidderServiceStub, bidder_pb2.BidderServiceGetCountsRequest()),
    "ssp": (exchange_pb2_grpc.ExchangeServiceStub, exchange_pb2.ExchangeServiceGetCountsRequest()),
    "adserver": (ad_server_pb2_grpc.AdServerServiceStub, ad_server_pb2.AdServerServiceGetCountsRequest()),
    "verifier": (verifier_pb2_grpc.VerifierServiceStub, verifier_pb2.VerifierServiceGetCountsRequest()),
}

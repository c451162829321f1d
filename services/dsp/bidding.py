"""How the DSP reads a bid request and picks its bid.

`placements` turns each OpenRTB Imp into the features targeting looks at;
`Bidder.decide` picks the best eligible campaign for one placement. Money is
int64 micros; the OpenRTB float floor is converted once, here at the edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from adchain.v1 import openrtb_pb2
from pricing_core.money import price_to_micros
from services.dsp.settings import CampaignSettings, parse_size
from services.runtime.errors import InvalidArgument

# OpenRTB 3.0 no-bid reason codes the DSP sends; 500+ are adchain's own
# (the list reserves 500+ for values agreed with the counterparty).
NBR_UNKNOWN_ERROR = 0
NBR_NO_MATCHING_CAMPAIGN = 501
NBR_BELOW_FLOOR = 502
NBR_BUDGET_EXHAUSTED = 503
NO_BID_REASONS = {
    NBR_UNKNOWN_ERROR: "unknown_error",
    NBR_NO_MATCHING_CAMPAIGN: "no_matching_campaign",
    NBR_BELOW_FLOOR: "below_floor",
    NBR_BUDGET_EXHAUSTED: "budget_exhausted",
}

# OpenRTB 2.6 mtype by offered format.
MTYPES = {"banner": 1, "video": 2, "audio": 3, "native": 4}


@dataclasses.dataclass(frozen=True)
class Placement:
    """What targeting and pricing see of one Imp."""

    imp_id: str
    format: str
    sizes: tuple[tuple[int, int], ...]
    domain: str
    device_type: int
    floor_micros: int


@dataclasses.dataclass(frozen=True)
class Decision:
    campaign: CampaignSettings | None
    bid_micros: int
    nbr: int


def placements(request: openrtb_pb2.BidRequest) -> list[Placement]:
    """Validate a bid request and read its placements; raises InvalidArgument
    naming the offending field."""
    if not request.id:
        raise InvalidArgument("id", "is required (OpenRTB 2.6 §3.2.1)")
    if not request.imp:
        raise InvalidArgument("imp", "at least one Imp is required (OpenRTB 2.6 §3.2.1)")
    if request.HasField("site") and request.HasField("app"):
        raise InvalidArgument("site", "a request has a site or an app, not both (OpenRTB 2.6 §3.2.1)")
    domain = request.site.domain or request.app.bundle or request.app.domain
    device_type = request.device.devicetype
    found = []
    for i, imp in enumerate(request.imp):
        where = f"imp[{i}]"
        if not imp.id:
            raise InvalidArgument(f"{where}.id", "is required (OpenRTB 2.6 §3.2.4)")
        if imp.bidfloor < 0:
            raise InvalidArgument(f"{where}.bidfloor", f"must not be negative, got {imp.bidfloor}")
        formats = [f for f in ("banner", "video", "audio", "native") if imp.HasField(f)]
        if not formats:
            raise InvalidArgument(where, "offers none of banner, video, audio, native")
        fmt = formats[0]
        found.append(Placement(
            imp_id=imp.id,
            format=fmt,
            sizes=_sizes(imp, fmt),
            domain=domain,
            device_type=device_type,
            floor_micros=price_to_micros(imp.bidfloor),
        ))
    return found


def _sizes(imp: openrtb_pb2.Imp, fmt: str) -> tuple[tuple[int, int], ...]:
    if fmt == "banner":
        sizes = [(f.w, f.h) for f in imp.banner.format]
        if imp.banner.w and imp.banner.h:
            sizes.append((imp.banner.w, imp.banner.h))
        return tuple(sizes)
    if fmt == "video" and imp.video.w and imp.video.h:
        return ((imp.video.w, imp.video.h),)
    return ()


class Bidder:
    """Picks the best eligible campaign for a placement: targeting first,
    then remaining budget, then the floor; the highest bid wins, ties to the
    campaign listed first."""

    def __init__(self, campaigns: Sequence[CampaignSettings], remaining_budget_micros: Callable[[str], int]):
        self._campaigns = tuple(campaigns)
        self._sizes = {c.id: {parse_size(s) for s in c.sizes} for c in campaigns}
        self._remaining = remaining_budget_micros

    def decide(self, placement: Placement) -> Decision:
        targeted = [c for c in self._campaigns if self._targets(c, placement)]
        if not targeted:
            return Decision(None, 0, NBR_NO_MATCHING_CAMPAIGN)
        # A CPM bid costs bid/1000 micros per impression; it must fit the budget left.
        funded = [c for c in targeted if self._remaining(c.id) * 1000 >= c.bid_micros]
        if not funded:
            return Decision(None, 0, NBR_BUDGET_EXHAUSTED)
        above_floor = [c for c in funded if c.bid_micros >= placement.floor_micros]
        if not above_floor:
            return Decision(None, 0, NBR_BELOW_FLOOR)
        best = max(above_floor, key=lambda c: c.bid_micros)  # max keeps the first of equals
        return Decision(best, best.bid_micros, 0)

    def _targets(self, campaign: CampaignSettings, placement: Placement) -> bool:
        if campaign.formats and placement.format not in campaign.formats:
            return False
        sizes = self._sizes[campaign.id]
        if sizes and not sizes.intersection(placement.sizes):
            return False
        if campaign.domains and placement.domain not in campaign.domains:
            return False
        if campaign.device_types and placement.device_type not in campaign.device_types:
            return False
        return True

    def campaign(self, campaign_id: str) -> CampaignSettings | None:
        return next((c for c in self._campaigns if c.id == campaign_id), None)

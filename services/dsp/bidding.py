"""How the DSP reads a bid request and decides its bids.

`placements` validates an OpenRTB 2.6 request and turns each Imp into the
features targeting and pricing look at; `Bidder` evaluates them all in one
batch through pricing_core (targeting, budget, pacing, frequency cap, floor,
eCPM, first-price shading) and picks each Imp's best bid. Money is int64
micros; the OpenRTB float floor is converted once, here at the edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from adchain.v1 import openrtb_pb2
from pricing_core.engine import PricingEngine
from pricing_core.money import price_to_micros
from pricing_core.opportunities import Opportunity, user_key_hash
from services.dsp.settings import CampaignSettings, DspSettings
from services.runtime.errors import InvalidArgument

# OpenRTB 3.0 no-bid reason codes the DSP sends. 500+ are adchain's own (the
# list reserves them for values agreed with the counterparty).
NBR_UNKNOWN_ERROR = 0
NBR_NO_MATCHING_CAMPAIGN = 501
NBR_BELOW_FLOOR = 502
NBR_BUDGET_EXHAUSTED = 503
NBR_FREQUENCY_CAPPED = 504
NBR_PACING = 505
NO_BID_REASONS = {
    NBR_UNKNOWN_ERROR: "unknown_error",
    NBR_NO_MATCHING_CAMPAIGN: "no_matching_campaign",
    NBR_BELOW_FLOOR: "below_floor",
    NBR_BUDGET_EXHAUSTED: "budget_exhausted",
    NBR_FREQUENCY_CAPPED: "frequency_capped",
    NBR_PACING: "pacing",
}
# pricing_core's dominant ineligibility reason -> no-bid reason code.
_NBR_BY_REASON = {
    "no_campaigns": NBR_NO_MATCHING_CAMPAIGN,
    "targeting": NBR_NO_MATCHING_CAMPAIGN,
    "budget": NBR_BUDGET_EXHAUSTED,
    "pacing": NBR_PACING,
    "frequency_cap": NBR_FREQUENCY_CAPPED,
    "below_floor": NBR_BELOW_FLOOR,
}

FORMATS = ("banner", "video", "audio", "native")
# OpenRTB 2.6 mtype by offered format.
MTYPES = {"banner": 1, "video": 2, "audio": 3, "native": 4}


@dataclasses.dataclass(frozen=True)
class Placement:
    """One Imp as targeting and pricing see it; `sizes` lists every size the
    slot accepts (banner w/h and format list), each evaluated."""

    imp_id: str
    format: str
    sizes: tuple[tuple[int, int], ...]
    floor_micros: int
    deal_ids: tuple[str, ...]
    predicted_viewability: float | None
    predicted_ctr: float | None


@dataclasses.dataclass(frozen=True)
class Context:
    """What the request says about where and to whom, shared by its Imps."""

    domain: str
    device_type: int
    country: str
    categories: tuple[str, ...]
    segments: tuple[str, ...]
    user_key: str
    auction_type: int


@dataclasses.dataclass(frozen=True)
class Decision:
    """The best bid for one Imp, or the no-bid reason."""

    placement: Placement
    campaign: CampaignSettings | None
    campaign_index: int
    bid_micros: int
    size: tuple[int, int]
    nbr: int
    user_key_hash: int


def read_request(request: openrtb_pb2.BidRequest) -> tuple[Context, list[Placement]]:
    """Validate a bid request and read it; raises InvalidArgument naming the
    offending field, before anything is counted."""
    if not request.id:
        raise InvalidArgument("id", "is required (OpenRTB 2.6 §3.2.1)")
    if not request.imp:
        raise InvalidArgument("imp", "at least one Imp is required (OpenRTB 2.6 §3.2.1)")
    if request.HasField("site") and request.HasField("app"):
        raise InvalidArgument("site", "a request has a site or an app, not both (OpenRTB 2.6 §3.2.1)")
    if request.HasField("at") and request.at not in (1, 2):
        raise InvalidArgument("at", f"must be 1 (first price) or 2 (second price plus), got {request.at}")
    publisher = request.app if request.HasField("app") else request.site
    categories = tuple(publisher.cat) + tuple(publisher.content.cat)
    segments = tuple(s.id for d in request.user.data for s in d.segment if s.id)
    context = Context(
        domain=request.site.domain or request.app.bundle or request.app.domain,
        device_type=request.device.devicetype,
        country=request.device.geo.country,
        categories=categories,
        segments=segments,
        user_key=request.user.buyeruid or request.user.id or request.device.ifa,
        auction_type=request.at if request.HasField("at") else 2,  # OpenRTB 2.6 §3.2.1 default
    )
    return context, [_placement(i, imp) for i, imp in enumerate(request.imp)]


def _placement(i: int, imp: openrtb_pb2.Imp) -> Placement:
    where = f"imp[{i}]"
    if not imp.id:
        raise InvalidArgument(f"{where}.id", "is required (OpenRTB 2.6 §3.2.4)")
    if imp.bidfloor < 0:
        raise InvalidArgument(f"{where}.bidfloor", f"must not be negative, got {imp.bidfloor}")
    if imp.HasField("bidfloorcur") and imp.bidfloorcur not in ("USD", ""):
        raise InvalidArgument(f"{where}.bidfloorcur", f"only USD is supported, got {imp.bidfloorcur!r}")
    offered = [f for f in FORMATS if imp.HasField(f)]
    if not offered:
        raise InvalidArgument(where, "offers none of banner, video, audio, native")
    fmt = offered[0]
    metrics = {}
    for j, m in enumerate(imp.metric):
        if not m.HasField("value"):
            continue
        # OpenRTB 2.6 §3.2.5: probabilities are in 0.0-1.0; these two price the bid.
        if m.type in ("viewability", "click_through_rate") and not 0.0 <= m.value <= 1.0:
            raise InvalidArgument(f"{where}.metric[{j}].value",
                                  f"a {m.type} probability must be in [0, 1], got {m.value}")
        metrics[m.type] = m.value
    return Placement(
        imp_id=imp.id,
        format=fmt,
        sizes=_sizes(imp, fmt) or ((0, 0),),
        floor_micros=price_to_micros(imp.bidfloor),
        deal_ids=tuple(d.id for d in imp.pmp.deals if d.id),
        # OpenRTB 2.6 §3.2.5: the exchange's own predictions, when it sends them.
        predicted_viewability=metrics.get("viewability"),
        predicted_ctr=metrics.get("click_through_rate"),
    )


def _sizes(imp: openrtb_pb2.Imp, fmt: str) -> tuple[tuple[int, int], ...]:
    if fmt == "banner":
        sizes = [(imp.banner.w, imp.banner.h)] if imp.banner.w and imp.banner.h else []
        sizes += [(f.w, f.h) for f in imp.banner.format if (f.w, f.h) not in sizes and f.w and f.h]
        return tuple(sizes)
    if fmt == "video" and imp.video.w and imp.video.h:
        return ((imp.video.w, imp.video.h),)
    return ()


class Bidder:
    """Every (Imp, size) of a request is one opportunity row in one kernel
    call; an Imp's bid is its best row (ties to the size listed first)."""

    def __init__(self, campaigns: Sequence[CampaignSettings], settings: DspSettings, engine: PricingEngine):
        self._campaigns = tuple(campaigns)
        self._by_id = {c.id: i for i, c in enumerate(campaigns)}
        self._settings = settings
        self.engine = engine

    def decide(self, context: Context, placements: Sequence[Placement]) -> list[Decision]:
        rows: list[Opportunity] = []
        owner: list[int] = []
        for p_index, placement in enumerate(placements):
            for w, h in placement.sizes:
                rows.append(Opportunity(
                    format=placement.format, w=w, h=h, domain=context.domain, device_type=context.device_type,
                    country=context.country, categories=context.categories, segments=context.segments,
                    deal_ids=placement.deal_ids, floor_micros=placement.floor_micros, user_key=context.user_key,
                    predicted_viewability=_or(placement.predicted_viewability, self._settings.default_viewability),
                    predicted_ctr=_or(placement.predicted_ctr, self._settings.default_ctr),
                    auction_type=context.auction_type,
                ))
                owner.append(p_index)
        evaluation = self.engine.evaluate(rows)
        user_hash = user_key_hash(context.user_key) if context.user_key else 0
        owners = np.asarray(owner)
        decisions = []
        for p_index, placement in enumerate(placements):
            mine = np.flatnonzero(owners == p_index)
            bids = evaluation.bid_micros[mine]
            best = int(mine[int(np.argmax(bids))])
            campaign_index = int(evaluation.campaign[best])
            if campaign_index < 0:
                reason = evaluation.reason_names[int(evaluation.no_bid_reason[best])]
                decisions.append(Decision(placement, None, -1, 0, (0, 0), _NBR_BY_REASON.get(reason, 0), user_hash))
                continue
            row = rows[best]
            decisions.append(Decision(placement, self._campaigns[campaign_index], campaign_index,
                                      int(evaluation.bid_micros[best]), (row.w, row.h), 0, user_hash))
        return decisions

    def campaign_index(self, campaign_id: str) -> int | None:
        return self._by_id.get(campaign_id)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value

"""How the DSP reads a bid request and decides its bids.

`read_request` validates an OpenRTB 2.6 request and turns each Imp into the
features targeting and pricing look at; `Bidder` evaluates them all in one
batch through pricing_core (targeting, budget, pacing, frequency cap, floor,
eCPM, first-price shading) and picks each Imp's best bid; requests that
arrive together on a stream share that batch. Money is int64 micros; the
OpenRTB float floor is converted once, here at the edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from adchain.v1 import openrtb_pb2
from pricing_core.campaigns import (DIM_COUNTRY, DIM_DEVICE, DIM_FORMAT, DIM_SIZE, SET_CATEGORY, SET_DEAL,
                                    SET_DOMAIN, SET_SEGMENT)
from pricing_core.engine import PricingEngine
from pricing_core.evaluate import REASON_NAMES
from pricing_core.money import cached_price_to_micros
from pricing_core.opportunities import user_key_hash
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


class Placement(NamedTuple):
    """One Imp as targeting and pricing see it; `sizes` lists every size the
    slot accepts (banner w/h and format list), each evaluated."""

    imp_id: str
    format: str
    sizes: tuple[tuple[int, int], ...]
    floor_micros: int
    deal_ids: tuple[str, ...]
    predicted_viewability: float | None
    predicted_ctr: float | None


class Context(NamedTuple):
    """What the request says about where and to whom, shared by its Imps."""

    domain: str
    device_type: int
    country: str
    categories: tuple[str, ...]
    segments: tuple[str, ...]
    user_key: str
    auction_type: int


class Decision(NamedTuple):
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
    imps = request.imp
    if not imps:
        raise InvalidArgument("imp", "at least one Imp is required (OpenRTB 2.6 §3.2.1)")
    has_app = request.HasField("app")
    if has_app and request.HasField("site"):
        raise InvalidArgument("site", "a request has a site or an app, not both (OpenRTB 2.6 §3.2.1)")
    auction_type = 2  # OpenRTB 2.6 §3.2.1 default
    if request.HasField("at"):
        auction_type = request.at
        if auction_type not in (1, 2):
            raise InvalidArgument("at", f"must be 1 (first price) or 2 (second price plus), got {auction_type}")
    if has_app:
        publisher = request.app
        domain = publisher.bundle or publisher.domain
    else:
        publisher = request.site
        domain = publisher.domain
    # Reading a repeated field is dear next to testing it, and most are empty.
    categories = _strings(publisher.cat)
    if publisher.HasField("content"):
        categories += _strings(publisher.content.cat)
    user = request.user
    device = request.device
    data = user.data
    context = Context(  # positional, in field order: the hot path builds one per request
        domain,
        device.devicetype,
        device.geo.country,
        categories,
        tuple(s.id for d in data for s in d.segment if s.id) if data else (),
        user.buyeruid or user.id or device.ifa,
        auction_type,
    )
    return context, [_placement(i, imp) for i, imp in enumerate(imps)]


def _strings(values) -> tuple[str, ...]:
    return tuple(values) if values else ()


def _placement(i: int, imp: openrtb_pb2.Imp) -> Placement:
    imp_id = imp.id
    if not imp_id:
        raise InvalidArgument(f"imp[{i}].id", "is required (OpenRTB 2.6 §3.2.4)")
    bidfloor = imp.bidfloor
    # NaN compares false with everything, so it is refused by name, as infinity is.
    if not 0 <= bidfloor < math.inf:
        raise InvalidArgument(f"imp[{i}].bidfloor", f"must be a finite, non-negative CPM, got {bidfloor}")
    currency = imp.bidfloorcur  # "" when absent
    if currency and currency != "USD":
        raise InvalidArgument(f"imp[{i}].bidfloorcur", f"only USD is supported, got {currency!r}")
    for fmt in FORMATS:  # the first offered, in FORMATS order
        if imp.HasField(fmt):
            break
    else:
        raise InvalidArgument(f"imp[{i}]", "offers none of banner, video, audio, native")
    viewability = ctr = None
    metrics = imp.metric
    if metrics:
        found = {}
        for j, m in enumerate(metrics):
            if not m.HasField("value"):
                continue
            # OpenRTB 2.6 §3.2.5: probabilities are in 0.0-1.0; these two price the bid.
            if m.type in ("viewability", "click_through_rate") and not 0.0 <= m.value <= 1.0:
                raise InvalidArgument(f"imp[{i}].metric[{j}].value",
                                      f"a {m.type} probability must be in [0, 1], got {m.value}")
            found[m.type] = m.value
        # OpenRTB 2.6 §3.2.5: the exchange's own predictions, when it sends them.
        viewability = found.get("viewability")
        ctr = found.get("click_through_rate")
    return Placement(  # positional, in field order
        imp_id,
        fmt,
        _sizes(imp, fmt) or _NO_SIZE,
        cached_price_to_micros(bidfloor),
        tuple(d.id for d in imp.pmp.deals if d.id) if imp.HasField("pmp") else (),
        viewability,
        ctr,
    )


_NO_SIZE = ((0, 0),)


def _sizes(imp: openrtb_pb2.Imp, fmt: str) -> tuple[tuple[int, int], ...]:
    if fmt == "banner":
        banner = imp.banner
        w, h = banner.w, banner.h
        sizes = [(w, h)] if w and h else []
        formats = banner.format
        if formats:
            for f in formats:
                size = w, h = f.w, f.h
                if w and h and size not in sizes:
                    sizes.append(size)
        return tuple(sizes)
    if fmt == "video":
        video = imp.video
        w, h = video.w, video.h
        if w and h:
            return ((w, h),)
    return ()


class Bidder:
    """Every (Imp, size) of a request is one opportunity row in one kernel
    call; an Imp's bid is its best row (ties to the size listed first).
    Several requests decided together share that one call."""

    def __init__(self, campaigns: Sequence[CampaignSettings], settings: DspSettings, engine: PricingEngine):
        self._campaigns = tuple(campaigns)
        self._by_id = {c.id: i for i, c in enumerate(campaigns)}
        self._settings = settings
        self.engine = engine

    def decide(self, context: Context, placements: Sequence[Placement]) -> list[Decision]:
        return self.decide_many(((context, placements),))[0]

    def decide_many(self, requests: Sequence[tuple[Context, Sequence[Placement]]]) -> list[list[Decision]]:
        """Each request's decisions, one per placement, from one evaluate call."""
        rows = self.engine.opportunity_rows()
        encoder = rows.encoder
        default_viewability = self._settings.default_viewability
        default_ctr = self._settings.default_ctr
        user_hashes = []
        for context, placements in requests:
            # What the request's Imps share is looked up once.
            device = encoder.single(DIM_DEVICE, context.device_type)
            country = encoder.single(DIM_COUNTRY, context.country)
            categories = encoder.postings(SET_CATEGORY, context.categories)
            segments = encoder.postings(SET_SEGMENT, context.segments)
            domain = encoder.postings(SET_DOMAIN, (context.domain,))
            if context.user_key:
                user_hash = row_user_hash = user_key_hash(context.user_key)
            else:
                # No user: billing keeps no frequency count for it (hash 0); the kernel's
                # row still hashes the empty key, as OpportunityBatch.encode does.
                user_hash, row_user_hash = 0, _EMPTY_USER_KEY_HASH
            user_hashes.append(user_hash)
            for placement in placements:
                fmt = encoder.single(DIM_FORMAT, placement.format)
                sets = (categories, segments, encoder.postings(SET_DEAL, placement.deal_ids), domain)
                viewability = placement.predicted_viewability
                ctr = placement.predicted_ctr
                for size in placement.sizes:
                    rows.add((fmt, encoder.single(DIM_SIZE, size), device, country), sets, placement.floor_micros,
                             row_user_hash, context.auction_type,
                             default_viewability if viewability is None else viewability,
                             default_ctr if ctr is None else ctr)
        # Serially: a batch is a few stream messages' rows, which the kernel prices in
        # well under a millisecond, while the parallel kernel's OpenMP threads spin-wait
        # after every call: on 2 cores it cost 3-8 times the CPU, and was no faster.
        evaluation = self.engine.evaluate_rows(rows, parallel=False)
        campaigns, bids, reasons = evaluation.campaign, evaluation.bid_micros, evaluation.no_bid_reason
        decided = []
        row = 0
        for (_context, placements), user_hash in zip(requests, user_hashes):
            decisions = []
            for placement in placements:
                # The placement's best row; the first listed size on a tie (as argmax).
                best = row
                for r in range(row + 1, row + len(placement.sizes)):
                    if bids[r] > bids[best]:
                        best = r
                campaign_index = campaigns[best]
                if campaign_index < 0:
                    decisions.append(Decision(placement, None, -1, 0, (0, 0), _NBR_BY_REASON_INDEX[reasons[best]],
                                              user_hash))
                else:
                    decisions.append(Decision(placement, self._campaigns[campaign_index], campaign_index, bids[best],
                                              placement.sizes[best - row], 0, user_hash))
                row += len(placement.sizes)
            decided.append(decisions)
        return decided

    def campaign_index(self, campaign_id: str) -> int | None:
        return self._by_id.get(campaign_id)


_EMPTY_USER_KEY_HASH = user_key_hash("")
# pricing_core's reason index -> no-bid reason code.
_NBR_BY_REASON_INDEX = tuple(_NBR_BY_REASON.get(name, NBR_UNKNOWN_ERROR) for name in REASON_NAMES)

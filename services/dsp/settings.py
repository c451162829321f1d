"""The DSP's configuration: its seat, its campaigns, its simulated latency."""

from __future__ import annotations

import dataclasses
import random

from pricing_core.campaigns import MAX_BID_MICROS, CampaignSpec, validate_specs
from services.runtime.config import LedgerSettings, ServerSettings

@dataclasses.dataclass(frozen=True)
class CampaignSettings:
    """One campaign as configured; `spec()` is what pricing_core evaluates."""

    id: str = ""
    advertiser_domain: str = ""
    # cpm, vcpm (per thousand viewable impressions) or cpc (per click).
    pricing_model: str = "cpm"
    # CPM and vCPM: micros per thousand ($6.00 CPM = 6_000_000); CPC: micros per click.
    bid_micros: int = 0
    # Cap on the CPM-equivalent bid; 0 = the bid itself for CPM, otherwise the largest cap
    # pricing_core takes (MAX_BID_MICROS, $4,294.967295 CPM).
    max_bid_micros: int = 0
    budget_total_micros: int = 0
    budget_daily_micros: int = 0  # 0 = no daily budget
    pacing: str = "asap"  # or "even"
    frequency_cap: int = 0  # impressions per user per window; 0 = none
    frequency_window_s: int = 86_400
    # First-price bid shading: the share of the value bid when at = 1.
    shading_factor: float = 1.0
    creative_id: str = ""
    # Seconds of a video or audio creative (Bid.dur); 0 for display.
    duration_s: int = 0
    # Ad markup; OpenRTB 2.6 §4.4 macros are substituted by the exchange.
    adm: str = '<div class="ad"><img src="https://ads.example/creative.png" alt="ad"></div>'
    # Targeting; an empty list matches everything.
    formats: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()  # "300x250"
    domains: tuple[str, ...] = ()  # site domain or app bundle
    device_types: tuple[int, ...] = ()  # AdCOM device types
    countries: tuple[str, ...] = ()  # ISO-3166-1 alpha-3, as OpenRTB geo.country
    categories: tuple[str, ...] = ()  # IAB content categories of the site or app
    segments: tuple[str, ...] = ()  # user data segment ids
    deal_ids: tuple[str, ...] = ()  # bids only on these deals when set

    def validate(self, where: str) -> list[str]:
        problems = [f"{where}.sizes: {s!r} is not WIDTHxHEIGHT" for s in self.sizes if parse_size(s) is None]
        # pricing_core states every other rule of a campaign ("campaign[0] 'id': bid_micros must be
        # non-negative"); report it under the configured path ("campaigns.0.bid_micros must be ...").
        problems += [f"{where}.{p.split(': ', 1)[-1]}" for p in validate_specs([self.spec()])]
        if self.duration_s < 0:
            problems.append(f"{where}.duration_s: must not be negative")
        return problems

    def spec(self) -> CampaignSpec:
        max_bid = self.max_bid_micros or (self.bid_micros if self.pricing_model == "cpm" else MAX_BID_MICROS)
        return CampaignSpec(
            id=self.id, advertiser_domain=self.advertiser_domain, pricing_model=self.pricing_model,
            bid_micros=self.bid_micros, max_bid_micros=max_bid, budget_total_micros=self.budget_total_micros,
            budget_daily_micros=self.budget_daily_micros, pacing=self.pacing, frequency_cap=self.frequency_cap,
            frequency_window_s=self.frequency_window_s, shading_factor=self.shading_factor, formats=self.formats,
            sizes=tuple(size for size in map(parse_size, self.sizes) if size), domains=self.domains, device_types=self.device_types,
            countries=self.countries, categories=self.categories, segments=self.segments, deal_ids=self.deal_ids,
        )


@dataclasses.dataclass(frozen=True)
class DspSettings:
    # The seat id this DSP bids as (SeatBid.seat).
    seat: str = "dsp"
    currency: str = "USD"
    # Time added before answering a bid request: the DSP's network and
    # decision latency, so a slow buyer really misses tmax.
    response_delay_ms: float = 0.0
    # A tail on top of it: each bid request waits an extra exponentially
    # distributed time with this mean, so a buyer can miss tmax some of the
    # time, as real ones do; 0 = a fixed delay. Drawn from a source seeded
    # with response_delay_seed.
    response_jitter_ms: float = 0.0
    response_delay_seed: int = 0
    # How long a bid is remembered for its win or loss notice.
    bid_ttl_s: float = 600.0
    # Used when the request carries no Imp.metric prediction (OpenRTB 2.6 §3.2.5).
    default_viewability: float = 0.7
    default_ctr: float = 0.002
    # Spend is exported per campaign (a `campaign` label) only while the DSP
    # has at most this many campaigns, so label cardinality stays bounded.
    max_campaign_labels: int = 50

    def draw_response_delay_ms(self, rng: random.Random) -> float:
        """One bid request's delay: the fixed part plus the exponential tail."""
        tail = rng.expovariate(1.0 / self.response_jitter_ms) if self.response_jitter_ms else 0.0
        return self.response_delay_ms + tail

    def validate(self, where: str) -> list[str]:
        problems = []
        if not self.seat:
            problems.append(f"{where}.seat: is required")
        if self.response_delay_ms < 0:
            problems.append(f"{where}.response_delay_ms: must not be negative")
        if self.response_jitter_ms < 0:
            problems.append(f"{where}.response_jitter_ms: must not be negative")
        for name in ("default_viewability", "default_ctr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{where}.{name}: must be a probability in [0, 1]")
        return problems


@dataclasses.dataclass(frozen=True)
class DspConfig:
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    dsp: DspSettings = DspSettings()
    campaigns: tuple[CampaignSettings, ...] = ()

    def validate(self, where: str) -> list[str]:
        ids = [c.id for c in self.campaigns]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        return [f"campaigns: duplicate id {i!r}" for i in duplicates]


def parse_size(text: str) -> tuple[int, int] | None:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        return None
    return int(w), int(h)

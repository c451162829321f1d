"""The DSP's configuration: its seat, its campaigns, its simulated latency."""

from __future__ import annotations

import dataclasses

from services.runtime.config import ServerSettings

FORMATS = ("banner", "video", "audio", "native")
PRICING_MODELS = ("cpm", "vcpm", "cpc")


@dataclasses.dataclass(frozen=True)
class CampaignSettings:
    id: str = ""
    advertiser_domain: str = ""
    pricing_model: str = "cpm"
    # The bid as a CPM, in micros ($6.00 CPM = 6_000_000).
    bid_micros: int = 0
    max_bid_micros: int = 0
    budget_total_micros: int = 0
    creative_id: str = ""
    # Ad markup; OpenRTB 2.6 §4.4 macros are substituted by the exchange.
    adm: str = '<div class="ad"><img src="https://ads.example/creative.png" alt="ad"></div>'
    # Targeting; an empty list matches everything.
    formats: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()  # "300x250"
    domains: tuple[str, ...] = ()  # site domain or app bundle
    device_types: tuple[int, ...] = ()  # AdCOM device types

    def validate(self, where: str) -> list[str]:
        problems = []
        if not self.id:
            problems.append(f"{where}.id: is required")
        if not self.advertiser_domain:
            problems.append(f"{where}.advertiser_domain: is required")
        if self.pricing_model not in PRICING_MODELS:
            problems.append(f"{where}.pricing_model: must be one of {', '.join(PRICING_MODELS)}")
        if self.bid_micros <= 0:
            problems.append(f"{where}.bid_micros: must be positive")
        if self.max_bid_micros and self.max_bid_micros < self.bid_micros:
            problems.append(f"{where}.max_bid_micros: must be at least bid_micros")
        if self.budget_total_micros < 0:
            problems.append(f"{where}.budget_total_micros: must not be negative")
        for fmt in self.formats:
            if fmt not in FORMATS:
                problems.append(f"{where}.formats: {fmt!r} is not one of {', '.join(FORMATS)}")
        for size in self.sizes:
            if parse_size(size) is None:
                problems.append(f"{where}.sizes: {size!r} is not WIDTHxHEIGHT")
        return problems


@dataclasses.dataclass(frozen=True)
class DspSettings:
    # The seat id this DSP bids as (SeatBid.seat).
    seat: str = "dsp"
    currency: str = "USD"
    # Time added before answering a bid request: the DSP's network and
    # decision latency, so a slow buyer really misses tmax.
    response_delay_ms: float = 0.0
    # How long a bid is remembered for its win or loss notice.
    bid_ttl_s: float = 600.0

    def validate(self, where: str) -> list[str]:
        problems = []
        if not self.seat:
            problems.append(f"{where}.seat: is required")
        if self.response_delay_ms < 0:
            problems.append(f"{where}.response_delay_ms: must not be negative")
        return problems


@dataclasses.dataclass(frozen=True)
class DspConfig:
    server: ServerSettings = ServerSettings()
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

"""The ad server's configuration: where each DSP takes its notices, how
notices are retried, invalid-traffic filtering, frequency caps, token keys."""

from __future__ import annotations

import dataclasses

from services.adserver.ivt import IvtSettings
from services.runtime.config import LedgerSettings, Peer, RetrySettings, ServerSettings, duplicate_names
from services.runtime.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class FrequencyCap:
    """At most `impressions` counted per viewer per `window_s` for a campaign."""

    campaign: str = ""
    impressions: int = 0
    window_s: int = 86_400

    def validate(self, where: str) -> list[str]:
        problems = []
        if not self.campaign:
            problems.append(f"{where}.campaign: is required")
        if self.impressions < 1:
            problems.append(f"{where}.impressions: must be at least 1")
        if self.window_s < 1:
            problems.append(f"{where}.window_s: must be at least 1")
        return problems


@dataclasses.dataclass(frozen=True)
class AdServerConfig:
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    # Billing and event notices to DSPs (OpenRTB 2.6 burl): every 10 s for a minute by default.
    billing: RetrySettings = RetrySettings()
    ivt: IvtSettings = IvtSettings()
    frequency_caps: tuple[FrequencyCap, ...] = ()
    # The DSPs, by seat, that notices go to.
    dsps: tuple[Peer, ...] = ()
    tokens: TokenSettings = TokenSettings()

    def validate(self, where: str) -> list[str]:
        return duplicate_names("dsps", self.dsps)

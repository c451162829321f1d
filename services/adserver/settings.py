"""The ad server's configuration: where each DSP takes its billing notices,
how billing notices are retried, and the token keys."""

from __future__ import annotations

import dataclasses

from services.runtime.config import Peer, ServerSettings, duplicate_names
from services.runtime.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class BillingSettings:
    # A billing notice the DSP did not take is retried every interval...
    retry_interval_s: float = 10.0
    # ...for this long after the first try, then counted as failed.
    retry_for_s: float = 60.0
    timeout_ms: int = 1000

    def validate(self, where: str) -> list[str]:
        problems = []
        if self.retry_interval_s <= 0:
            problems.append(f"{where}.retry_interval_s: must be positive")
        if self.retry_for_s < 0:
            problems.append(f"{where}.retry_for_s: must not be negative")
        if self.timeout_ms <= 0:
            problems.append(f"{where}.timeout_ms: must be positive")
        return problems


@dataclasses.dataclass(frozen=True)
class AdServerConfig:
    server: ServerSettings = ServerSettings()
    billing: BillingSettings = BillingSettings()
    # The DSPs, by seat, that billing notices go to.
    dsps: tuple[Peer, ...] = ()
    tokens: TokenSettings = TokenSettings()

    def validate(self, where: str) -> list[str]:
        return duplicate_names("dsps", self.dsps)

"""The verifier's configuration: its server and the token keys."""

from __future__ import annotations

import dataclasses

from services.runtime.config import LedgerSettings, Peer, RetrySettings, ServerSettings, duplicate_names
from services.runtime.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    tokens: TokenSettings = TokenSettings()
    # Viewable impressions are reported to the DSP that won (vCPM campaigns
    # pay on them), retried like billing notices.
    dsps: tuple[Peer, ...] = ()
    notices: RetrySettings = RetrySettings()

    def validate(self, where: str) -> list[str]:
        return duplicate_names("dsps", self.dsps)

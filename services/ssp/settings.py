"""The exchange's configuration: its DSPs, auction defaults and token keys."""

from __future__ import annotations

import dataclasses

from services.runtime.config import LedgerSettings, Peer, ServerSettings, duplicate_names
from services.runtime.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class ExchangeSettings:
    # Auction time allowed to the DSPs when the caller names none.
    tmax_ms: int = 100
    # 1 first price, 2 second price plus (OpenRTB 2.6 §3.2.1, default 2).
    auction_type: int = 2
    # Second price plus: the winner pays the second bid (or floor) plus this.
    increment_micros: int = 10_000
    currency: str = "USD"
    # How long a returned ad may wait for its render before it is late
    # (OpenRTB 2.6 Imp.exp); the token expires then.
    token_ttl_s: int = 300
    # Time allowed to deliver a batch of win or loss notices.
    notice_timeout_ms: int = 1000
    # Win and loss notices go to each DSP in batches (NotifyWins, NotifyLosses):
    # a batch leaves at this many notices...
    notice_batch_max_items: int = 256
    # ...or this long after its oldest notice joined it, whichever comes first.
    notice_batch_max_delay_ms: int = 20
    # With a ledger, a batch whose call failed (the DSP down, the deadline
    # passed) is sent again this often while its notices are this young.
    notice_retry_interval_s: float = 2.0
    notice_retry_for_s: float = 60.0

    def validate(self, where: str) -> list[str]:
        problems = []
        if self.tmax_ms <= 0:
            problems.append(f"{where}.tmax_ms: must be positive")
        if self.auction_type not in (1, 2):
            problems.append(f"{where}.auction_type: must be 1 (first price) or 2 (second price plus)")
        if self.increment_micros < 0:
            problems.append(f"{where}.increment_micros: must not be negative")
        if self.token_ttl_s <= 0:
            problems.append(f"{where}.token_ttl_s: must be positive")
        if self.notice_batch_max_items < 1:
            problems.append(f"{where}.notice_batch_max_items: must be at least 1")
        if self.notice_batch_max_delay_ms < 0:
            problems.append(f"{where}.notice_batch_max_delay_ms: must not be negative")
        if self.notice_retry_interval_s <= 0:
            problems.append(f"{where}.notice_retry_interval_s: must be positive")
        if self.notice_retry_for_s < 0:
            problems.append(f"{where}.notice_retry_for_s: must not be negative")
        return problems


@dataclasses.dataclass(frozen=True)
class SspConfig:
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    dsps: tuple[Peer, ...] = ()
    tokens: TokenSettings = TokenSettings()

    def validate(self, where: str) -> list[str]:
        problems = duplicate_names("dsps", self.dsps)
        if not self.dsps:
            problems.append("dsps: at least one DSP is required")
        return problems

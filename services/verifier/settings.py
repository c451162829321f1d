"""The verifier's configuration: its server and the token keys."""

from __future__ import annotations

import dataclasses

from services.runtime.config import ServerSettings
from services.runtime.tokens import TokenSettings


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    server: ServerSettings = ServerSettings()
    tokens: TokenSettings = TokenSettings()

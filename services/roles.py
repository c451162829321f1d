"""Every role adchain can serve, by name."""

from __future__ import annotations

from services.adserver.service import AdServerApp
from services.adserver.settings import AdServerConfig
from services.dsp.service import DspApp
from services.dsp.settings import DspConfig
from services.runtime.server import Role
from services.ssp.service import SspApp
from services.ssp.settings import SspConfig
from services.verifier.service import VerifierApp
from services.verifier.settings import VerifierConfig

ROLES = {
    "dsp": Role("dsp", DspConfig, DspApp),
    "ssp": Role("ssp", SspConfig, SspApp),
    "adserver": Role("adserver", AdServerConfig, AdServerApp),
    "verifier": Role("verifier", VerifierConfig, VerifierApp),
}

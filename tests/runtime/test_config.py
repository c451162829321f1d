"""Role settings: TOML, environment overrides, every error reported at once."""

from __future__ import annotations

import pytest

from services.dsp.settings import DspConfig
from services.runtime.config import ConfigError, from_mapping, load
from services.ssp.settings import SspConfig


def test_settings_come_from_toml(tmp_path):
    path = tmp_path / "dsp.toml"
    path.write_text('[server]\ngrpc_port = 5001\n[dsp]\nseat = "buyer"\n'
                    '[[campaigns]]\nid = "c1"\nadvertiser_domain = "a.example"\nbid_micros = 6_000_000\n'
                    'sizes = ["300x250"]\n')
    settings = load(DspConfig, path, env={})
    assert settings.server.grpc_port == 5001
    assert settings.server.host == "127.0.0.1"  # loopback unless told otherwise
    assert settings.dsp.seat == "buyer"
    assert settings.campaigns[0].bid_micros == 6_000_000
    assert settings.campaigns[0].sizes == ("300x250",)


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "ssp.toml"
    path.write_text('[exchange]\ntmax_ms = 100\n[[dsps]]\nname = "d"\naddress = "127.0.0.1:1"\n'
                    '[tokens]\nkeys = ["k1:' + "00" * 16 + '"]\n')
    env = {"ADCHAIN_EXCHANGE_TMAX_MS": "250", "ADCHAIN_SERVER_HOST": "::1",
           "ADCHAIN_TOKENS_KEYS": "k1:" + "11" * 16 + ",k2:" + "22" * 16}
    settings = load(SspConfig, path, env=env)
    assert settings.exchange.tmax_ms == 250
    assert settings.server.host == "::1"
    assert settings.tokens.keys == ("k1:" + "11" * 16, "k2:" + "22" * 16)


def test_every_problem_is_reported_together():
    with pytest.raises(ConfigError) as raised:
        from_mapping(DspConfig, {
            "server": {"grpc_port": 70000, "bogus": 1},
            "dsp": {"seat": ""},
            "campaigns": [{"id": "", "advertiser_domain": "a", "bid_micros": -1, "sizes": ["big"]}],
        }, env={"ADCHAIN_SERVER_MAX_CONCURRENT_RPCS": "many"})
    problems = "\n".join(raised.value.problems)
    for expected in ("server.bogus: unknown setting", "ADCHAIN_SERVER_MAX_CONCURRENT_RPCS", "server.grpc_port",
                     "dsp.seat", "campaigns.0.id", "campaigns.0.bid_micros", "campaigns.0.sizes"):
        assert expected in problems

"""The [ledger] section every role takes: where its SQLite ledger lives (none
by default) and how hard each commit is pushed to disk."""

from __future__ import annotations

import pytest

from services.roles import ROLES
from services.runtime.config import ConfigError, LedgerSettings, from_mapping


def test_no_path_means_no_ledger():
    assert LedgerSettings() == LedgerSettings(path="", synchronous="normal")


# What each role needs besides, to be valid at all.
REQUIRED = {
    "dsp": {},
    "ssp": {"dsps": [{"name": "dsp-1", "address": "127.0.0.1:1"}], "tokens": {"keys": ["k1:" + "ab" * 32]}},
    "adserver": {"tokens": {"keys": ["k1:" + "ab" * 32]}},
    "verifier": {"tokens": {"keys": ["k1:" + "ab" * 32]}},
}


@pytest.mark.parametrize("role", sorted(REQUIRED))
def test_every_role_takes_a_ledger_section(role):
    data = {**REQUIRED[role], "ledger": {"path": "/tmp/x.sqlite", "synchronous": "full"}}
    settings = from_mapping(ROLES[role].settings_type, data, env={})
    assert settings.ledger == LedgerSettings(path="/tmp/x.sqlite", synchronous="full")


def test_the_environment_sets_the_path():
    settings = from_mapping(ROLES["dsp"].settings_type, {}, env={"ADCHAIN_LEDGER_PATH": "/var/lib/dsp.sqlite"})
    assert settings.ledger.path == "/var/lib/dsp.sqlite"


def test_synchronous_is_normal_or_full():
    with pytest.raises(ConfigError) as raised:
        from_mapping(ROLES["dsp"].settings_type, {"ledger": {"synchronous": "off"}}, env={})
    assert raised.value.problems == ["ledger.synchronous: 'off' is not one of normal, full"]

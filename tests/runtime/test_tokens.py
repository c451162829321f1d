"""Impression tokens: signed by the exchange, checked before any count."""

from __future__ import annotations

import pytest

from adchain.v1 import token_pb2
from services.runtime.tokens import TokenCodec, TokenError, TokenSettings

OLD = "k1:" + "aa" * 32
NEW = "k2:" + "bb" * 32


def token() -> token_pb2.ImpressionToken:
    return token_pb2.ImpressionToken(impression_key="a:1", seat="dsp-1", campaign_id="c", price_micros=6_000_000)


def test_a_signed_token_verifies_and_carries_its_payload():
    codec = TokenCodec(TokenSettings("k1", (OLD,)))
    verified = codec.verify(codec.sign(token()))
    assert (verified.impression_key, verified.price_micros, verified.key_id) == ("a:1", 6_000_000, "k1")


def test_a_tampered_payload_fails_the_signature():
    codec = TokenCodec(TokenSettings("k1", (OLD,)))
    version, key_id, payload, signature = codec.sign(token()).split(".")
    other = codec.sign(token_pb2.ImpressionToken(impression_key="a:1", price_micros=1))
    forged = ".".join((version, key_id, other.split(".")[2], signature))
    with pytest.raises(TokenError) as raised:
        codec.verify(forged)
    assert raised.value.reason == "bad_signature"


@pytest.mark.parametrize("text, reason", [("", "malformed"), ("v1.k1.x", "malformed"), ("v2.k1.a.b", "malformed"),
                                          ("v1.k9.YQ.YQ", "unknown_key"), ("v1.k1.!!.YQ", "malformed")])
def test_malformed_and_unknown_tokens_are_rejected_with_a_reason(text, reason):
    with pytest.raises(TokenError) as raised:
        TokenCodec(TokenSettings("k1", (OLD,))).verify(text)
    assert raised.value.reason == reason
    assert raised.value.field == "token"


def test_keys_rotate_without_rejecting_tokens_in_flight():
    before = TokenCodec(TokenSettings("k1", (OLD,))).sign(token())
    rotated = TokenCodec(TokenSettings("k2", (OLD, NEW)))
    after = rotated.sign(token())
    assert after.split(".")[1] == "k2"
    assert rotated.verify(before).impression_key == "a:1"
    retired = TokenCodec(TokenSettings("k2", (NEW,)))
    with pytest.raises(TokenError):
        retired.verify(before)


def test_settings_require_a_known_signing_key():
    problems = TokenSettings("k3", (OLD, "bad")).validate("tokens")
    assert any("signing_key_id" in p for p in problems)
    assert any("tokens.keys.1" in p for p in problems)

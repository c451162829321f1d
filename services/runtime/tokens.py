"""Impression tokens: what the exchange signs into every returned ad, and
what the ad server and the verifier check before they count an event.

Format: `v1.<key id>.<payload>.<signature>`, payload the serialized
ImpressionToken and signature HMAC-SHA256 over "v1.<key id>.<payload>", both
base64url without padding. Several keys may verify at once while only one
signs, so keys rotate without rejecting tokens already in flight.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac

from google.protobuf.message import DecodeError

from adchain.v1 import token_pb2
from services.runtime.errors import InvalidArgument

VERSION = "v1"


class TokenError(InvalidArgument):
    """A token that must not be counted. `reason` is from a closed list:
    malformed, unknown_key, bad_signature."""

    def __init__(self, reason: str, message: str, field: str = "token"):
        self.reason = reason
        super().__init__(field, message)


@dataclasses.dataclass(frozen=True)
class TokenSettings:
    # The key that signs new tokens.
    signing_key_id: str = "k1"
    # "key_id:hex secret" entries; every listed key verifies.
    keys: tuple[str, ...] = ()

    def validate(self, where: str) -> list[str]:
        problems = []
        ids = set()
        for i, entry in enumerate(self.keys):
            key_id, sep, secret = entry.partition(":")
            if not sep or not key_id or not secret:
                problems.append(f"{where}.keys.{i}: expected 'key_id:hex secret'")
                continue
            try:
                if len(bytes.fromhex(secret)) < 16:
                    problems.append(f"{where}.keys.{i}: secret must be at least 16 bytes")
            except ValueError:
                problems.append(f"{where}.keys.{i}: secret is not hex")
            ids.add(key_id)
        if self.keys and self.signing_key_id not in ids:
            problems.append(f"{where}.signing_key_id: {self.signing_key_id!r} is not among the keys")
        if not self.keys:
            problems.append(f"{where}.keys: at least one key is required")
        return problems


class TokenCodec:
    def __init__(self, settings: TokenSettings):
        self._keys = {}
        for entry in settings.keys:
            key_id, _, secret = entry.partition(":")
            self._keys[key_id] = bytes.fromhex(secret)
        self._signing_key_id = settings.signing_key_id
        # One keyed HMAC state per key, copied for each token: the key's pads
        # are hashed once here, not on every verify.
        self._keyed = {key_id: hmac.new(key, digestmod=hashlib.sha256) for key_id, key in self._keys.items()}

    def sign(self, token: token_pb2.ImpressionToken) -> str:
        token.key_id = self._signing_key_id
        payload = _b64(token.SerializeToString())
        head = f"{VERSION}.{self._signing_key_id}.{payload}"
        return f"{head}.{_b64(self._mac(self._keys[self._signing_key_id], head))}"

    def verify(self, text: str, field: str = "token") -> token_pb2.ImpressionToken:
        """The token's payload if its signature checks; raises TokenError.
        Expiry is the caller's decision: a late event is counted as late."""
        if not text:
            raise TokenError("malformed", "is required", field)
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise TokenError("malformed", "is not an adchain impression token", field)
        _version, key_id, payload, signature = parts
        keyed = self._keyed.get(key_id)
        if keyed is None:
            raise TokenError("unknown_key", f"signed with unknown key {key_id!r}", field)
        try:
            given = _unb64(signature)
            raw = _unb64(payload)
        except ValueError:
            raise TokenError("malformed", "is not valid base64url", field) from None
        mac = keyed.copy()
        # The signed head "v1.<key id>.<payload>" is the text up to the last dot.
        mac.update(text[:len(text) - len(signature) - 1].encode("ascii"))
        # Constant-time, and before the payload is parsed: nothing unsigned is decoded.
        if not hmac.compare_digest(given, mac.digest()):
            raise TokenError("bad_signature", "signature does not verify", field)
        try:
            return token_pb2.ImpressionToken.FromString(raw)
        except DecodeError:
            raise TokenError("malformed", "payload does not decode", field) from None

    @staticmethod
    def _mac(key: bytes, head: str) -> bytes:
        # HMAC-SHA256 in one call (OpenSSL's one-shot HMAC): the same bytes as
        # hmac.new(...).digest(), without building an HMAC object per token.
        return hmac.digest(key, head.encode("ascii"), "sha256")


TOKEN_REJECT_REASONS = ("malformed", "unknown_key", "bad_signature")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url decoding: padding restored, anything but base64 characters refused."""
    try:
        data = (text + "=" * (-len(text) % 4)).encode("ascii").translate(_URLSAFE_TO_STANDARD)
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(str(error)) from None

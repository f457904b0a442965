"""Locally issued bearer tokens for the local API: HS256 JWTs whose `sub` is the user name.

A deployed stack trusts Cognito (or another OIDC issuer) through API Gateway's JWT authorizer; the
local API server plays that authorizer. Tokens are real JWTs (header.claims.signature) so clients
treat them as they would a Cognito access token, and they are signed with a key that lives only in
the running stack's memory: a token from an earlier `local up` is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

ISSUER = "loraforge-local"
AUDIENCE = "loraforge-local"
TOKEN_LIFETIME_SECONDS = 30 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LocalIssuer:
    def __init__(self, key: bytes | None = None, *, now: float | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._now = now

    def _time(self) -> int:
        return int(self._now if self._now is not None else time.time())

    def issue(self, user: str) -> str:
        issued = self._time()
        claims = {"sub": user, "username": user, "iss": ISSUER, "aud": AUDIENCE, "token_use": "access", "iat": issued,
                  "exp": issued + TOKEN_LIFETIME_SECONDS, "jti": secrets.token_hex(8)}
        header = {"alg": "HS256", "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header, separators=(',', ':')).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims when it is ours, unexpired and meant for this API; otherwise None (→ 401)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}"
        expected = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return None
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return None
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE or not isinstance(claims.get("sub"), str):
            return None
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= self._time():
            return None
        return claims


def bearer_token(authorization: str | None) -> str | None:
    """API Gateway's JWT authorizer takes `Bearer <jwt>` or the bare token."""
    if not authorization:
        return None
    value = authorization.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None

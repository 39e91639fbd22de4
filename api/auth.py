"""Bearer tokens and console sessions.

A presented token is hashed with SHA-256 and its digest compared in constant time with every
configured digest, so neither the comparison nor an early exit leaks which token nearly
matched. The console's session cookie is an HMAC-signed record of the token's digest, so
removing a token from the configuration also ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from gridpatrol.api.settings import Principal, Settings, TokenEntry

SESSION_COOKIE = "gp_session"
CSRF_HEADER = "X-CSRF-Token"


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._entries: list[tuple[bytes, TokenEntry]] = settings.token_digests()
        self._secret = settings.session_secret.encode()
        self.max_age_s = settings.session_max_age_s

    def by_digest(self, digest: bytes) -> Principal | None:
        found: Principal | None = None
        for known, entry in self._entries:
            if hmac.compare_digest(known, digest):
                found = Principal(entry.name, entry.role, known)
        return found

    def by_token(self, token: str) -> Principal | None:
        return self.by_digest(hashlib.sha256(token.encode()).digest())

    def issue_session(self, principal: Principal) -> tuple[str, str]:
        """A signed cookie value and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        record = {
            "d": principal.token_digest.hex(),
            "c": csrf,
            "e": int(time.time()) + self.max_age_s,
        }
        payload = base64.urlsafe_b64encode(json.dumps(record).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}", csrf

    def open_session(self, cookie: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a valid, unexpired session cookie.

        A cookie this server issued is ASCII (base64url); any other character makes it
        invalid, as constant-time comparison of strings takes ASCII only.
        """
        if not cookie.isascii():
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            record = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            digest = bytes.fromhex(record["d"])
            csrf = str(record["c"])
            expires = int(record["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        principal = self.by_digest(digest)
        return (principal, csrf) if principal is not None else None

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

"""Bearer tokens and console sessions.

A presented token is hashed with SHA-256 and its digest compared in constant time with every
configured digest, so neither the comparison nor an early exit leaks which token nearly
matched. The console's session cookie is an HMAC-signed record of the token's digest, a
session id, the CSRF token and the expiry, so removing a token from the configuration also
ends its sessions. Logging out records the session id in the database (``revoked_sessions``)
until the session would have expired: every instance refuses the cookie from then on, with
one primary-key lookup per request that comes with a cookie. A cookie without a session id
(signed before session ids existed) is refused: it could not be ended by logging out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.db import Database, RevokedSessionRow
from gridpatrol.api.settings import Principal, Settings, TokenEntry

SESSION_COOKIE = "gp_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class ConsoleSession:
    """An opened session cookie: whose it is, its CSRF token, its id and its expiry."""

    principal: Principal
    csrf: str
    sid: str
    expires: int  # Unix seconds


class Authenticator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._entries: list[tuple[bytes, TokenEntry]] = settings.token_digests()
        self._secret = settings.session_secret.encode()
        self.max_age_s = settings.session_max_age_s
        self.cookie_secure = settings.session_cookie_secure
        self._db = db
        # A PostgreSQL lookup is a network round trip: it leaves the event loop. A SQLite read
        # in WAL mode waits for no writer and costs less than the hop to a thread.
        self._lookup_inline = db.dialect == "sqlite"
        dialect_insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        # Logging out twice (two tabs, a retry) records the session once.
        self._insert_revoked = dialect_insert(RevokedSessionRow).on_conflict_do_nothing()

    def by_digest(self, digest: bytes) -> Principal | None:
        found: Principal | None = None
        for known, entry in self._entries:
            if hmac.compare_digest(known, digest):
                found = Principal(entry.name, entry.role, known)
        return found

    def by_token(self, token: str) -> Principal | None:
        return self.by_digest(hashlib.sha256(token.encode()).digest())

    def secure(self, scheme: str) -> bool:
        """Whether the session cookie of a request made over ``scheme`` is Secure."""
        return self.cookie_secure == "true" or (self.cookie_secure == "auto" and scheme == "https")

    def issue_session(self, principal: Principal) -> tuple[str, str]:
        """A signed cookie value and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        record = {
            "d": principal.token_digest.hex(),
            "s": secrets.token_urlsafe(16),
            "c": csrf,
            "e": int(time.time()) + self.max_age_s,
        }
        payload = base64.urlsafe_b64encode(json.dumps(record).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}", csrf

    def read_session(self, cookie: str) -> ConsoleSession | None:
        """The session of a cookie this server signed that has a session id, has not expired
        and names a configured token; whether it was revoked is not looked up.

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
            sid = str(record["s"])
            csrf = str(record["c"])
            expires = int(record["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        principal = self.by_digest(digest)
        return ConsoleSession(principal, csrf, sid, expires) if principal is not None else None

    async def open_session(self, cookie: str) -> ConsoleSession | None:
        """The session of a valid cookie that was not logged out."""
        session = self.read_session(cookie)
        return session if session is not None and await self.still_open(session) else None

    async def still_open(self, session: ConsoleSession) -> bool:
        """Whether ``session`` has neither expired nor been logged out."""
        if session.expires < time.time():
            return False
        if self._lookup_inline:
            return not self.revoked(session.sid)
        return not await run_in_threadpool(self.revoked, session.sid)

    def revoked(self, sid: str) -> bool:
        with self._db.read() as db:
            return db.get(RevokedSessionRow, sid) is not None

    def revoke(self, session: ConsoleSession) -> None:
        """End ``session`` on every instance until it would have expired."""
        now = datetime.now(UTC)
        with self._db.write() as db:
            # A row past its session's expiry guards nothing (the cookie is refused as expired):
            # each logout deletes those, through the expiry index, so the table holds only the
            # sessions logged out within the last session lifetime.
            db.execute(delete(RevokedSessionRow).where(RevokedSessionRow.expires_at < now))
            expires = datetime.fromtimestamp(session.expires, UTC)
            db.execute(self._insert_revoked, {"id": session.sid, "expires_at": expires})

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

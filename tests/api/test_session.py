"""Console sessions: the cookie's Secure attribute, and logging out ending the session on the
server, on every instance."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gridpatrol.api.app import create_app
from gridpatrol.api.auth import Authenticator
from gridpatrol.api.db import Database, RevokedSessionRow
from gridpatrol.api.settings import Settings

from .conftest import TOKENS, Server, on_event_loop, settings_for
from .test_evidence import migrate
from .test_proxy_sample import _nginx_directives

SESSION = "/api/v1/session"
SECRET = "a-session-secret-shared-by-every-instance"
PLAIN = {"HttpOnly", "Max-Age=43200", "Path=/", "SameSite=strict"}
LOGOUT_PLAIN = {"HttpOnly", "Max-Age=0", "Path=/", "SameSite=strict", 'expires="*"'}


def attributes(set_cookie: str) -> set[str]:
    """The attributes of a ``gp_session`` Set-Cookie header, without its value; an expiry
    date (of a deleted cookie) as ``expires="*"``."""
    name_value, *rest = set_cookie.split("; ")
    assert name_value.startswith("gp_session=")
    return {'expires="*"' if a.lower().startswith("expires=") else a for a in rest}


@pytest.fixture
def app_of(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Open an app on this test's database (with one session secret) through a TestClient at
    ``base_url``; extra keyword arguments go to Settings."""
    clients: list[TestClient] = []

    def build(base_url: str = "http://testserver", **extra: Any) -> TestClient:
        settings = settings_for(db_url, tmp_path, session_secret=SECRET, **extra)
        client = TestClient(create_app(settings), base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def login(http: TestClient) -> tuple[str, str]:
    """Log in as the reviewer: the cookie's value and the CSRF token."""
    response = http.post(SESSION, json={"token": TOKENS["reviewer"]})
    assert response.status_code == 200, response.text
    return http.cookies["gp_session"], response.json()["csrf_token"]


def with_cookie(cookie: str) -> dict[str, str]:
    return {"Cookie": f"gp_session={cookie}"}


def session_id(cookie: str) -> str:
    payload = cookie.partition(".")[0]
    record = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(record["s"])


def revoked_rows(http: TestClient) -> list[tuple[str, datetime]]:
    db: Database = http.app.state.db  # type: ignore[attr-defined]
    with db.read() as session:
        rows = session.execute(sa.select(RevokedSessionRow.id, RevokedSessionRow.expires_at))
        return sorted((str(sid), at) for sid, at in rows)


@pytest.mark.parametrize(
    ("setting", "base_url", "secure"),
    [
        ("auto", "https://gridpatrol.example", True),
        ("auto", "http://testserver", False),
        ("true", "http://testserver", True),
        ("false", "https://gridpatrol.example", False),
    ],
)
def test_the_session_cookie_is_secure_over_https(
    app_of: Any, setting: str, base_url: str, secure: bool
) -> None:
    http = app_of(base_url, session_cookie_secure=setting)
    response = http.post(SESSION, json={"token": TOKENS["reviewer"]})
    assert response.status_code == 200
    flag = {"Secure"} if secure else set()
    assert attributes(response.headers["set-cookie"]) == PLAIN | flag
    # The cookie that deletes it has the same attributes, so the browser replaces that one.
    logout = http.delete(SESSION)
    assert logout.status_code == 204
    assert attributes(logout.headers["set-cookie"]) == LOGOUT_PLAIN | flag


def test_auto_is_the_default_and_the_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().session_cookie_secure == "auto"
    monkeypatch.setenv("GRIDPATROL_SESSION_COOKIE_SECURE", " True ")
    assert Settings().session_cookie_secure == "true"
    monkeypatch.setenv("GRIDPATROL_SESSION_COOKIE_SECURE", "yes")
    with pytest.raises(ValidationError) as refused:
        Settings()
    (error,) = refused.value.errors()
    assert (error["loc"], error["input"]) == (("session_cookie_secure",), "yes")


def test_a_cookie_saved_before_logging_out_is_refused(app_of: Any) -> None:
    http = app_of()
    cookie, csrf = login(http)
    assert http.get(SESSION).json()["csrf_token"] == csrf
    assert http.delete(SESSION).status_code == 204
    assert not http.cookies  # the browser's copy is gone; a captured one is presented below
    refused = http.get(SESSION, headers=with_cookie(cookie))
    assert (refused.status_code, refused.json()["detail"]) == (
        401,
        "the session has expired or is invalid",
    )
    assert http.get("/api/v1/candidates", headers=with_cookie(cookie)).status_code == 401
    review = f"/api/v1/candidates/{uuid.uuid4()}/review"
    write = http.post(
        review, json={"decision": "confirm"}, headers={**with_cookie(cookie), "X-CSRF-Token": csrf}
    )
    assert write.status_code == 401
    # Logging out with it again changes nothing; a new login is a new session.
    assert http.delete(SESSION, headers=with_cookie(cookie)).status_code == 204
    fresh, _ = login(http)
    assert session_id(fresh) != session_id(cookie)
    assert http.get(SESSION).status_code == 200


def test_logging_out_on_one_instance_ends_the_session_on_another(app_of: Any) -> None:
    first, second = app_of(), app_of()
    cookie, csrf = login(first)
    assert second.get(SESSION, headers=with_cookie(cookie)).json()["csrf_token"] == csrf
    assert first.delete(SESSION).status_code == 204
    assert second.get(SESSION, headers=with_cookie(cookie)).status_code == 401


def signed(record: dict[str, Any]) -> str:
    """A cookie of ``record``, signed as the API signs its own with SECRET."""
    payload = base64.urlsafe_b64encode(json.dumps(record).encode()).decode().rstrip("=")
    mac = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def test_a_cookie_without_a_session_id_is_refused(app_of: Any) -> None:
    # As signed before sessions had ids: such a session could not be ended by logging out.
    http = app_of()
    record = {
        "d": hashlib.sha256(TOKENS["reviewer"].encode()).hexdigest(),
        "c": "csrf",
        "e": int(time.time()) + 3600,
    }
    assert http.get(SESSION, headers=with_cookie(signed(record))).status_code == 401
    # The same record with an id is accepted: only the missing id refuses it.
    accepted = http.get(SESSION, headers=with_cookie(signed({**record, "s": "x"})))
    assert accepted.json()["csrf_token"] == "csrf"


def test_a_logout_is_kept_until_its_session_expires_and_purged_after(app_of: Any) -> None:
    http = app_of()
    db: Database = http.app.state.db
    expired = datetime.now(UTC) - timedelta(seconds=1)
    with db.write() as session:
        session.add(RevokedSessionRow(id="ended-earlier", expires_at=expired))
    started = int(time.time())
    cookie, _ = login(http)
    assert http.delete(SESSION).status_code == 204
    ((sid, expires),) = revoked_rows(http)
    assert sid == session_id(cookie)
    # The cookie's own expiry, to the second (the login took less than a second or two).
    assert started + 43200 <= expires.timestamp() <= int(time.time()) + 43200
    assert expires.tzinfo is not None
    # A second logout of the same session (another tab) records nothing more.
    assert http.delete(SESSION, headers=with_cookie(cookie)).status_code == 204
    assert revoked_rows(http) == [(sid, expires)]


def test_the_revocation_lookup_leaves_the_event_loop_on_postgresql(
    app_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = app_of()
    login(http)
    on_loop: list[bool] = []
    looked_up = Authenticator.revoked

    def revoked(self: Authenticator, sid: str) -> bool:
        on_loop.append(on_event_loop())
        return looked_up(self, sid)

    monkeypatch.setattr(Authenticator, "revoked", revoked)
    assert http.get(SESSION).status_code == 200
    # SQLite reads in WAL mode wait for no writer: cheaper on the loop than a thread hop.
    assert on_loop == [http.app.state.db.dialect == "sqlite"]


def test_the_revoked_sessions_table_is_migrated(app_of: Any) -> None:
    db: Database = app_of().app.state.db

    def schema() -> tuple[bool, list[str]]:
        with db.engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table("revoked_sessions"):
                return False, []
            names = [str(i["name"]) for i in inspector.get_indexes("revoked_sessions")]
            return True, sorted(names)

    assert schema() == (True, ["ix_revoked_sessions_expires"])
    migrate(db, "0004", down=True)
    assert schema() == (False, [])
    migrate(db, "head")
    assert schema() == (True, ["ix_revoked_sessions_expires"])


def test_behind_a_proxy_on_this_host_auto_follows_x_forwarded_proto(server: Server) -> None:
    # `gridpatrol api` (uvicorn) takes X-Forwarded-Proto from 127.0.0.1 by default, the
    # documented load balancer or reverse proxy on the same host; another host's address goes
    # in FORWARDED_ALLOW_IPS.
    # The documented nginx settings send it ($scheme: https behind TLS).
    assert _nginx_directives()["proxy_set_header"] == "X-Forwarded-Proto $scheme"
    url = f"{server.url}/session"
    body = {"token": TOKENS["reviewer"]}
    with httpx.Client(timeout=60) as http:
        behind_tls = http.post(url, json=body, headers={"X-Forwarded-Proto": "https"})
        plain = http.post(url, json=body)
    assert (behind_tls.status_code, plain.status_code) == (200, 200)
    assert attributes(behind_tls.headers["set-cookie"]) == PLAIN | {"Secure"}
    assert attributes(plain.headers["set-cookie"]) == PLAIN

"""Console sessions: the cookie's Secure attribute, and logging out ending the session on the
server, on every instance."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
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
from gridpatrol.api.routers import events
from gridpatrol.api.settings import Settings

from ..demo.test_compose import database
from .conftest import TOKENS, Server, on_event_loop, settings_for
from .test_evidence import migrate
from .test_proxy_sample import _nginx_directives

__all__ = ["database"]  # a fixture: a PostgreSQL database of the test's own

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


@pytest.fixture
def own_database(database: str, tmp_path: Path) -> Iterator[tuple[TestClient, sa.Engine]]:
    """The app on a PostgreSQL database of this test's own (whose settings a test may change),
    and an engine that administers that database."""
    admin = sa.create_engine(database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    settings = settings_for(database, tmp_path, session_secret=SECRET)
    try:
        with TestClient(create_app(settings)) as http:
            yield http, admin
    finally:
        admin.dispose()


def drop_connections(http: TestClient, admin: sa.Engine) -> int:
    """End the app's connections to its database, as a restart or a failover would."""
    name = sa.make_url(str(http.app.state.db.url)).database  # type: ignore[attr-defined]
    with admin.connect() as conn:
        dropped = conn.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :app AND datname = :db"
            ),
            {"app": f"gridpatrol-api-{os.getpid()}", "db": name},
        )
    return int(dropped or 0)


def alter_database(http: TestClient, admin: sa.Engine, change: str) -> None:
    name = sa.make_url(str(http.app.state.db.url)).database  # type: ignore[attr-defined]
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" {change}')


def assert_logged_out_in_the_browser(http: TestClient, response: httpx.Response) -> None:
    assert attributes(response.headers["set-cookie"]) == LOGOUT_PLAIN
    assert response.headers["set-cookie"].startswith('gp_session=""; ')
    assert not http.cookies
    assert http.get(SESSION).status_code == 401


@pytest.mark.postgres
def test_a_logout_on_a_dropped_connection_is_recorded_on_a_fresh_one(
    own_database: tuple[TestClient, sa.Engine],
) -> None:
    http, admin = own_database
    cookie, _ = login(http)
    assert http.get(SESSION).status_code == 200  # a pooled connection, dropped below
    assert drop_connections(http, admin) >= 1
    logout = http.delete(SESSION)
    assert logout.status_code == 204
    assert_logged_out_in_the_browser(http, logout)
    assert [sid for sid, _ in revoked_rows(http)] == [session_id(cookie)]
    assert http.get(SESSION, headers=with_cookie(cookie)).status_code == 401


UNRECORDED = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "the logout could not be recorded (the database is unavailable): this browser no "
    "longer holds the session, but a copy of its cookie stays valid until it expires",
    "instance": "/api/v1/session",
}


def assert_unrecorded(
    http: TestClient, logout: httpx.Response, cookie: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A logout the database could not record: 503, the browser's cookie deleted all the
    same, and an error in the log naming the reviewer, without the cookie."""
    assert_logged_out_in_the_browser(http, logout)
    assert (logout.status_code, logout.headers["content-type"]) == (503, "application/problem+json")
    assert logout.json() == UNRECORDED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage().partition(": ")[0]) for r in errors] == [
        (
            "gridpatrol.api.routers.session",
            "the logout of test-reviewer could not be recorded (a copy of its session cookie "
            "stays valid until it expires)",
        )
    ]
    assert cookie not in errors[0].getMessage()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "undo"),
    [
        # A standby the failover has not promoted yet, or one left read-only.
        ("SET default_transaction_read_only = on", "RESET default_transaction_read_only"),
        # The database does not come back within the second attempt.
        ("ALLOW_CONNECTIONS false", "ALLOW_CONNECTIONS true"),
    ],
    ids=["read-only", "refusing-connections"],
)
def test_a_logout_postgresql_cannot_record_still_deletes_the_cookie(
    own_database: tuple[TestClient, sa.Engine],
    caplog: pytest.LogCaptureFixture,
    change: str,
    undo: str,
) -> None:
    http, admin = own_database
    cookie, _ = login(http)
    assert http.get(SESSION).status_code == 200
    alter_database(http, admin, change)
    try:
        assert drop_connections(http, admin) >= 1
        logout = http.delete(SESSION)
    finally:
        alter_database(http, admin, undo)
    assert_unrecorded(http, logout, cookie, caplog)
    assert revoked_rows(http) == []
    # The one thing not done: a copy of the cookie taken before is still a session.
    assert http.get(SESSION, headers=with_cookie(cookie)).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_logout_sqlite_cannot_record_still_deletes_the_cookie(
    app_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    http = app_of()
    cookie, _ = login(http)
    db: Database = http.app.state.db

    # Every connection opened from now on writes nothing, as on a full disk or a read-only
    # file: SQLite answers "attempt to write a readonly database" (an OperationalError).
    def query_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only = ON")

    sa.event.listen(db.engine, "connect", query_only)
    db.engine.dispose()
    try:
        logout = http.delete(SESSION)
    finally:
        sa.event.remove(db.engine, "connect", query_only)
        db.engine.dispose()
    assert_unrecorded(http, logout, cookie, caplog)
    assert revoked_rows(http) == []


@pytest.mark.parametrize("failures", [1, 2])
def test_a_logout_is_recorded_again_once_after_an_operational_error(
    app_of: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failures: int
) -> None:
    http = app_of()
    cookie, _ = login(http)
    calls: list[str] = []
    revoke: Callable[[Authenticator, Any], None] = Authenticator.revoke

    def failing(self: Authenticator, session: Any) -> None:
        calls.append(session.sid)
        if len(calls) <= failures:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        revoke(self, session)

    monkeypatch.setattr(Authenticator, "revoke", failing)
    logout = http.delete(SESSION)
    assert calls == [session_id(cookie)] * 2
    if failures == 1:
        assert logout.status_code == 204
        assert_logged_out_in_the_browser(http, logout)
        assert [sid for sid, _ in revoked_rows(http)] == [session_id(cookie)]
    else:
        assert_unrecorded(http, logout, cookie, caplog)
        assert revoked_rows(http) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_logout_failing_otherwise_still_deletes_the_cookie(
    app_of: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    http = app_of()
    login(http)

    def broken(self: Authenticator, session: Any) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(Authenticator, "revoke", broken)
    logout = http.delete(SESSION)
    assert_logged_out_in_the_browser(http, logout)
    assert (logout.status_code, logout.json()["detail"]) == (
        500,
        "internal error; see the server log",
    )
    errors = [(r.getMessage(), r.exc_info is not None) for r in caplog.records if r.levelno >= 40]
    assert errors == [("the logout of test-reviewer failed", True)]


def test_an_event_stream_looks_its_logout_up_at_most_every_recheck_interval(
    app_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = app_of()
    cookie, _ = login(http)
    auth = http.app.state.services.auth
    session = auth.read_session(cookie)
    lookups: list[str] = []
    looked_up = auth.revoked
    monkeypatch.setattr(auth, "revoked", lambda sid: lookups.append(sid) or looked_up(sid))
    now = [1000.0]
    watch = events.SessionWatch(auth, session, monotonic=lambda: now[0])

    def ask_at(t: float) -> bool:
        now[0] = 1000.0 + t
        return asyncio.run(watch.ended())

    assert [ask_at(t) for t in (0.0, 1.0, 4.9)] == [False, False, False]
    assert lookups == []
    assert ask_at(events.SESSION_RECHECK_S) is False
    assert lookups == [session.sid]
    auth.revoke(session)
    assert ask_at(events.SESSION_RECHECK_S + 1) is False  # not asked again yet
    assert ask_at(2 * events.SESSION_RECHECK_S + 0.1) is True
    assert lookups == [session.sid, session.sid]
    # A bearer token's stream has no session to watch.
    assert asyncio.run(events.SessionWatch(auth, None).ended()) is False

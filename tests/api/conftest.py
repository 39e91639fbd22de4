"""Intake API fixtures: the app on SQLite and on PostgreSQL, a settable clock, sample bodies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import cv2
import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gridpatrol.api.app import create_app
from gridpatrol.api.settings import Settings
from gridpatrol.ingest.broker import free_port

from ..conftest import start_api, terminate

TOKENS = {
    "producer": "t-producer-5b0c",
    "reviewer": "t-reviewer-91aa",
    "platform": "t-platform-77de",
    "platform2": "t-platform-second",
    "admin": "t-admin-0f3e",
}
T = TypeVar("T")
# 12:00 in Shanghai: outside the night window.
NOON = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


class Clock:
    """A settable clock the app reads instead of the wall clock."""

    def __init__(self, now: datetime = NOON) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def token_config() -> dict[str, dict[str, str]]:
    out = {}
    for role, token in TOKENS.items():
        base = "platform" if role == "platform2" else role
        out[token] = {"role": base, "name": f"test-{role}"}
    return out


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def fresh_database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL schema of the caller's own (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/api.db"
        return
    schema = f"gp_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    with fresh_database(request.param, tmp_path, postgres_url) as url:
        yield url


def settings_for(db_url: str, tmp_path: Path, **extra: Any) -> Settings:
    extra.setdefault("api_tokens", token_config())
    return Settings(database_url=db_url, evidence_dir=tmp_path / "evidence", **extra)


class RoleClient:
    """Requests through the shared client with one role's bearer token."""

    def __init__(self, http: TestClient, token: str) -> None:
        self.http = http
        self.auth = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, url: str, **kw: Any) -> Any:
        kw["headers"] = {**self.auth, **(kw.get("headers") or {})}
        return self.http.request(method, url, **kw)

    def get(self, url: str, **kw: Any) -> Any:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Any:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> Any:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Any:
        return self.request("DELETE", url, **kw)


class Api:
    """A TestClient per role over one app."""

    def __init__(self, client: TestClient, clock: Clock) -> None:
        self.http = client
        self.clock = clock

    def as_(self, role: str) -> RoleClient:
        return RoleClient(self.http, TOKENS[role])

    def put_jpeg(self, seed: int = 0) -> str:
        data = jpeg(seed)
        sha = hashlib.sha256(data).hexdigest()
        response = self.as_("producer").put(
            f"/api/v1/evidence/{sha}", content=data, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code in (200, 201), response.text
        return sha

    def create(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        response = self.as_("producer").post(
            "/api/v1/candidates", json=body, headers={"Idempotency-Key": key or str(uuid.uuid4())}
        )
        assert response.status_code in (200, 201), response.text
        out: dict[str, Any] = response.json()
        return out

    @staticmethod
    def body(
        event_id: str | None = None,
        sha: str | None = None,
        ctype: str = "garbage_overflow",
        **override: Any,
    ) -> dict[str, Any]:
        return body(event_id, sha, ctype, **override)

    @staticmethod
    def jpeg(seed: int = 0) -> bytes:
        return jpeg(seed)

    def review(self, cid: str, decision: str, **extra: Any) -> Any:
        return self.as_("reviewer").post(
            f"/api/v1/candidates/{cid}/review", json={"decision": decision, **extra}
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_api(db_url: str, tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Api]]:
    """Build an app on this test's database; extra keyword arguments go to Settings."""
    clients: list[TestClient] = []

    def build(**extra: Any) -> Api:
        app = create_app(settings_for(db_url, tmp_path, **extra), clock=clock)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Api(client, clock)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api_body() -> type[Api]:
    """Sample bodies and images without an app."""
    return Api


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def fresh_jpeg() -> bytes:
    """A JPEG no other test stored: a module's tests share one server, and a file it holds
    already would make a candidate waiting for it complete at once."""
    return jpeg(uuid.uuid4().int)


def body(
    event_id: str | None = None,
    sha: str | None = None,
    ctype: str = "garbage_overflow",
    **override: Any,
) -> dict[str, Any]:
    """A complete camera candidate body."""
    out: dict[str, Any] = {
        "source": {
            "type": "camera",
            "system": "test-worker",
            "camera_id": "cam-1",
            "source_event_id": event_id or uuid.uuid4().hex,
        },
        "type": ctype,
        "description": "暴露垃圾 beside the bin",
        "occurred_at": "2026-11-27T03:59:00+00:00",
        "location": {"lat": 31.28, "lon": 121.45, "grid_code": "JA-DN-0101"},
        "severity": "MINOR",
        "urgency": "normal",
        "evidence": [{"sha256": sha or "0" * 64, "kind": "clean"}],
        "detection": {"model": "yolo11n", "score": 0.8, "zone_id": "z1", "dwell_s": 10},
    }
    out.update(override)
    return out


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (the app's pool threads have none)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LongPoll:
    """``GET /feed?wait=30`` from a thread of its own, and the page it returned after a change.

    The servers of these tests look at the database again only every 30 s
    (GRIDPATROL_FEED_RECHECK_S), at the poll's deadline, where it would return the new item
    too; so the poll must return well before that deadline: only a wake-up answers it then.
    These tests show that a change made elsewhere - another connection, another worker -
    wakes a poll already waiting.
    """

    WAIT_S = 30

    def __init__(self, get: Callable[..., Any], cursor: str) -> None:
        """``get(params=...)`` requests the feed as a platform."""
        self.page: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._poll, args=(get, cursor), daemon=True)
        self.thread.start()

    def _poll(self, get: Callable[..., Any], cursor: str) -> None:
        self.page = get(params={"wait": self.WAIT_S, "cursor": cursor}).json()

    def woken_by(self, change: Callable[[], T]) -> tuple[T, dict[str, Any]]:
        """Run ``change`` while the poll waits; its result and the page the poll returned."""
        # Time for the request to reach the server and find nothing; a poll that has not yet
        # arrived by then only makes this run prove less, it cannot make it fail.
        self.thread.join(2)
        assert self.thread.is_alive() and self.page is None, f"the poll returned {self.page}"
        out = change()
        # Half the wait: a bound with 15 s to spare for a slow machine, not a benchmark.
        self.thread.join(self.WAIT_S / 2)
        assert not self.thread.is_alive(), (
            f"not woken: the poll would return only at its {self.WAIT_S} s deadline"
        )
        assert self.page is not None, "the poll failed"
        return out, self.page


NO_NIGHT_SITE = """\
site: {name: test, timezone: Asia/Shanghai}
policy:
  night: {start: "00:00", end: "00:00"}  # start == end: no night window
"""


class Server:
    """``gridpatrol api`` in a subprocess on a free port of its own."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "api-server.log"
        self.env = {
            **os.environ,
            "GRIDPATROL_DATABASE_URL": db_url,
            "GRIDPATROL_EVIDENCE_DIR": str(workdir / "evidence"),
            "GRIDPATROL_API_TOKENS": json.dumps(token_config()),
            # As long as a long poll's longest wait: only a wake-up answers one early.
            "GRIDPATROL_FEED_RECHECK_S": str(LongPoll.WAIT_S),
            # The site below holds nothing, so the release loop has nothing to do; its read
            # every 5 s would otherwise meet a dropped connection first and renew the pool
            # before the request a test sends to see the 503.
            "GRIDPATROL_RELEASE_INTERVAL_S": "3600",
        }
        # A site without the night window: the server runs on the wall clock, and a case
        # confirmed between 22:00 and 08:00 site time would be held, and released at its end
        # in the middle of whatever test runs then.
        site = workdir / "site.yaml"
        site.write_text(NO_NIGHT_SITE, encoding="utf-8")
        self.env["GRIDPATROL_CONFIG"] = str(site)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once started, clients know the port: a restart keeps it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self) -> None:
        """Start the API and return once this process listens on its port and is healthy.

        Answering on the port is not enough: another process may have taken it since
        free_port(). Until the first start the API moves to a new free port then; a server
        that does not come up is killed, and the error carries its log.
        """
        self.proc, self.port = start_api(
            self._launch, self.port, self.log, movable=not self.started
        )
        self.started = True

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        self.port = port
        cmd = [sys.executable, "-m", "gridpatrol.cli", "api", "--port", str(port)]
        with self.log.open("ab") as log:
            return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def client(self, role: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module", params=DATABASES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[Server]:
    """A real API process, shared by a module's tests, on a database of its own."""
    workdir = tmp_path_factory.mktemp("server")
    with fresh_database(request.param, workdir, postgres_url) as url:
        srv = Server(url, workdir)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()

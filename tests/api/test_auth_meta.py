"""Authentication, console sessions with CSRF, problem details, health, metrics, types."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from gridpatrol.api import db as api_db
from gridpatrol.api.app import create_app
from gridpatrol.api.db import MAX_OVERFLOW, POOL_SIZE
from gridpatrol.api.settings import Settings
from gridpatrol.ingest.broker import free_port

from .conftest import TOKENS, Api, fresh_database, settings_for, token_config
from .test_server import Forwarder


def test_hashed_tokens_and_401s(db_url: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"secret-reviewer").hexdigest()
    settings = Settings(
        database_url=db_url,
        evidence_dir=tmp_path / "ev",
        api_tokens={f"sha256:{digest}": {"role": "reviewer", "name": "alice"}},  # type: ignore[dict-item]
    )
    with TestClient(create_app(settings)) as http:
        ok = http.get("/api/v1/session", headers={"Authorization": "Bearer secret-reviewer"})
        assert ok.json() == {"name": "alice", "role": "reviewer", "csrf_token": ""}
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eA=="}):
            response = http.get("/api/v1/candidates", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


def test_refuses_to_start_without_tokens(db_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=db_url, evidence_dir=tmp_path / "ev")
    with pytest.raises(RuntimeError, match="no API tokens"):
        create_app(settings)
    generated = create_app(settings.model_copy(update={"allow_generated_tokens": True}))
    assert len(generated.state.services.settings.api_tokens) == 4


def test_session_cookie_and_csrf(api: Any) -> None:
    http: TestClient = api.http
    assert http.post("/api/v1/session", json={"token": "wrong"}).status_code == 401
    login = http.post("/api/v1/session", json={"token": "t-reviewer-91aa"})
    assert login.status_code == 200
    session = login.json()
    assert (session["name"], session["role"]) == ("test-reviewer", "reviewer")
    cookie = login.headers["set-cookie"]
    assert "gp_session=" in cookie and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert http.get("/api/v1/session").json() == session
    assert http.get("/api/v1/candidates").status_code == 200
    cid = api.create(api.body("e1", api.put_jpeg()))["id"]
    url = f"/api/v1/candidates/{cid}/review"
    http.headers.pop("Authorization", None)
    refused = http.post(url, json={"decision": "confirm"})
    assert refused.status_code == 403
    bad = http.post(url, json={"decision": "confirm"}, headers={"X-CSRF-Token": "guess"})
    assert bad.status_code == 403
    good = http.post(
        url, json={"decision": "confirm"}, headers={"X-CSRF-Token": session["csrf_token"]}
    )
    assert good.status_code == 200
    assert good.json()["history"][-1]["who"] == "test-reviewer"
    assert http.delete("/api/v1/session").status_code == 204
    assert http.get("/api/v1/session").status_code == 401
    http.cookies.set("gp_session", "forged.value")
    assert http.get("/api/v1/candidates").status_code == 401


@pytest.mark.parametrize("cookie", ["abc.d\u00e9f", "\u00e9.abc", "abc.\u00ff"])
def test_a_session_cookie_with_other_than_ascii_is_invalid(api: Any, cookie: str) -> None:
    header = f"gp_session={cookie}".encode("latin-1")
    response = api.http.get("/api/v1/candidates", headers={"Cookie": header})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "the session has expired or is invalid",
        "instance": "/api/v1/candidates",
    }


@pytest.mark.parametrize(
    ("role", "status"), [("reviewer", 200), ("admin", 200), ("platform", 403), ("producer", 403)]
)
def test_only_a_reviewer_logs_in_to_the_console(api: Any, role: str, status: int) -> None:
    http: TestClient = api.http
    login = http.post("/api/v1/session", json={"token": TOKENS[role]})
    assert login.status_code == status, login.text
    if status == 403:
        assert login.headers["content-type"] == "application/problem+json"
        assert (
            login.json()["detail"] == f"the console needs the role reviewer; test-{role} is {role}"
        )
        assert "set-cookie" not in login.headers
        assert http.get("/api/v1/session").status_code == 401


def test_problem_details_everywhere(api: Any) -> None:
    for response, status in (
        (api.http.get("/api/v1/nowhere"), 404),
        (api.http.get("/nowhere"), 404),
        (api.as_("reviewer").get("/api/v1/candidates", params={"limit": "many"}), 422),
        (api.as_("reviewer").delete("/api/v1/candidates"), 405),
        (
            api.as_("producer").post(
                "/api/v1/candidates", content=b"{", headers={"Idempotency-Key": "x"}
            ),
            422,
        ),
    ):
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["title"] and problem["type"] == "about:blank"


def test_health_metrics_and_types(api: Any) -> None:
    assert api.http.get("/api/v1/healthz").json() == {"status": "ok"}
    api.create(api.body("e1", api.put_jpeg()))
    api.as_("platform").get("/api/v1/feed")
    text = api.http.get("/api/v1/metrics").text
    assert 'gridpatrol_candidates{status="new"} 1.0' in text
    assert (
        'gridpatrol_api_requests_total{method="POST",route="/api/v1/candidates",status="201"} 1.0'
        in text
    )
    assert (
        'gridpatrol_api_request_seconds_count{method="PUT",route="/api/v1/evidence/{sha256}"}'
        in text
    )
    assert "gridpatrol_feed_last_position 0.0" in text
    assert "gridpatrol_api_database_up 1.0" in text
    types = api.as_("producer").get("/api/v1/types").json()
    smoke = next(t for t in types if t["type"] == "smoke")
    assert smoke == {
        "type": "smoke",
        "name_zh": "烟雾报警",
        "name_en": "Smoke",
        "unit": "派出所",
        "urgent": True,
    }
    assert len(types) == 13
    assert api.http.get("/api/v1/types").status_code == 401


def test_metrics_answer_while_the_database_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on the port: every connection is refused, as in a database outage.
    down = f"postgresql+psycopg://gp:secret@127.0.0.1:{free_port()}/gp"
    settings = settings_for(down, tmp_path, migrate_on_start=False)
    with TestClient(create_app(settings)) as http:
        assert http.get("/api/v1/healthz").status_code == 200
        scrapes = [http.get("/api/v1/metrics") for _ in range(3)]
    assert [s.status_code for s in scrapes] == [200, 200, 200]
    text = scrapes[-1].text
    assert (
        'gridpatrol_api_requests_total{method="GET",route="/api/v1/healthz",status="200"} 1.0'
        in text
    )
    assert (
        'gridpatrol_api_requests_total{method="GET",route="/api/v1/metrics",status="200"} 2.0'
        in text
    )
    assert "gridpatrol_api_database_up 0.0" in text
    assert "gridpatrol_candidates" not in text and "gridpatrol_feed_" not in text
    # The outage is logged once, in one line, not at every scrape.
    failed = [r for r in caplog.records if "the database cannot be read" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelname == "WARNING" and failed[0].exc_info is None


def database_up(http: TestClient) -> float:
    text = http.get("/api/v1/metrics").text
    families = text_string_to_metric_families(text)
    family = next(f for f in families if f.name == "gridpatrol_api_database_up")
    return family.samples[0].value


def test_metrics_answer_while_every_pooled_connection_is_taken(
    make_api: Callable[..., Api],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow database with every pooled connection taken: the scrape answers, with
    database_up 0, instead of waiting for a connection. The pool's timeout is raised to an
    hour so that a scrape waiting for the pool shows as one not answered (with its 10 s it
    would answer after 10 s, Prometheus's whole scrape timeout: the instance reported down)."""
    caplog.set_level(logging.INFO, logger="gridpatrol.api.metrics")
    monkeypatch.setattr(api_db, "POOL_TIMEOUT_S", 3600.0)
    api = make_api()
    engine = api.http.app.state.db.engine
    held = [engine.connect() for _ in range(POOL_SIZE + MAX_OVERFLOW)]
    with ThreadPoolExecutor(2) as pool:
        try:
            scrapes = [pool.submit(api.http.get, "/api/v1/metrics") for _ in range(2)]
            done, _ = wait(scrapes, timeout=60)  # a generous bound, no timing assertion
        finally:
            for conn in held:
                conn.close()
    assert len(done) == 2, "no answer within 60 s"
    for scrape in scrapes:
        text = scrape.result().text
        assert "gridpatrol_api_database_up 0.0" in text
        assert "gridpatrol_candidates" not in text and "gridpatrol_feed_" not in text
    # With connections free again, the gauges are back (within a few scrapes at most).
    assert any(database_up(api.http) == 1.0 for _ in range(30))
    lines = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.api.metrics"]
    assert lines == [
        "metrics: the database cannot be read; its gauges are left out until it can: "
        "no answer within 2 s",
        "metrics: the database can be read again",
    ]


class Valve(Forwarder):
    """A TCP port that passes its connections on to ``target`` until ``freeze()``: then no
    byte more passes either way, while the kernel still acknowledges what is sent to it, as
    with a hung server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.flowing = threading.Event()
        self.flowing.set()
        self.port = free_port()
        super().__init__(self.port, target)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        self.flowing.clear()

    def stop(self) -> None:
        """Resets every connection (a shutdown wakes a thread blocked on it; a close alone
        does not), so that whatever still waits on one ends."""
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        super().stop()
        self.flowing.set()


@pytest.mark.postgres
def test_metrics_answer_while_the_database_hangs(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that takes the bytes of an open pooled connection and never answers: the
    scrape answers, with database_up 0 (before it waited as long as the connection lived)."""
    caplog.set_level(logging.INFO, logger="gridpatrol.api.metrics")
    target = make_url(postgres_url)
    valve = Valve((target.host or "127.0.0.1", target.port or 5432))
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        through = make_url(url).set(host="127.0.0.1", port=valve.port).render_as_string(False)
        settings = settings_for(through, tmp_path)
        with TestClient(create_app(settings)) as http, ThreadPoolExecutor(2) as pool:
            try:
                assert database_up(http) == 1.0  # the pooled connection is open
                valve.freeze()
                scrapes = [pool.submit(http.get, "/api/v1/metrics") for _ in range(2)]
                done, _ = wait(scrapes, timeout=60)  # a generous bound, no timing assertion
            finally:
                valve.stop()
            assert len(done) == 2, "no answer within 60 s"
            for scrape in scrapes:
                text = scrape.result().text
                assert "gridpatrol_api_database_up 0.0" in text
                assert "gridpatrol_candidates" not in text
    lines = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.api.metrics"]
    assert lines[0] == (
        "metrics: the database cannot be read; its gauges are left out until it can: "
        "no answer within 2 s"
    )


def test_site_file_policy_applies(db_url: str, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: {name: test, timezone: Europe/Berlin}\n"
        "policy:\n  urgent_types: [street_vending]\n  auto_confirm: []\n  sla_minutes: 30\n"
        "  categories: {street_vending: {scheme: SH-2015, code: '0201', name_zh: 占道经营}}\n"
    )
    settings = Settings(
        database_url=db_url,
        evidence_dir=tmp_path / "ev",
        config=site,
        api_tokens={"tok": {"role": "admin", "name": "root"}},  # type: ignore[dict-item]
    )
    with TestClient(create_app(settings)) as http:
        http.headers["Authorization"] = "Bearer tok"
        body = {"type": "street_vending", "urgency": "normal", "source": {"type": "camera"}}
        doc = http.post("/api/v1/candidates", json=body, headers={"Idempotency-Key": "k"}).json()
        assert doc["urgency"] == "immediate"
        assert doc["category"] == {"scheme": "SH-2015", "code": "0201", "name_zh": "占道经营"}
        assert doc["missing_elements"] == [
            "source.source_event_id",
            "description",
            "occurred_at",
            "location",
            "severity",
            "evidence",
        ]
        smoke = http.post(
            "/api/v1/candidates",
            json={"type": "smoke", "description": "x"},
            headers={"Idempotency-Key": "k2"},
        ).json()
        assert json.dumps(smoke["status"]) == '"incomplete"'


def test_console_files(api: Any) -> None:
    index = api.http.get("/review")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    same = api.http.get("/review/static/index.html")
    assert same.status_code == 200
    assert same.content == index.content
    for path in ("/review/static/nothing.js", "/review/static/%2e%2e/service.py"):
        missing = api.http.get(path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
    assert api.http.get("/", follow_redirects=False).headers["location"] == "/review"


def feed_lag(api: Any) -> dict[str, float]:
    text = api.http.get("/api/v1/metrics").text
    families = text_string_to_metric_families(text)
    family = next(f for f in families if f.name == "gridpatrol_feed_lag")
    return {s.labels["name"]: s.value for s in family.samples}


def test_feed_lag_for_every_platform_token_from_the_start(api: Any) -> None:
    # A platform that never acknowledged must show its lag, or the alert on it cannot fire.
    assert feed_lag(api) == {"test-platform": 0.0, "test-platform2": 0.0}
    for event in ("a", "b"):
        api.create(api.body(event, api.put_jpeg(), ctype="smoke"))  # auto-confirmed
    assert feed_lag(api) == {"test-platform": 2.0, "test-platform2": 2.0}
    assert api.as_("platform").post("/api/v1/feed/ack", json={"cursor": "1"}).status_code == 204
    assert feed_lag(api) == {"test-platform": 1.0, "test-platform2": 2.0}


def test_feed_lag_leaves_out_tokens_no_longer_configured(make_api: Callable[..., Api]) -> None:
    # An admin and the second platform acknowledge; then the second platform's token is
    # withdrawn. Its cursor stays in the database, but a lag series for it would grow for
    # ever and fire the lag alert on a platform that no longer pulls.
    api = make_api()
    api.create(api.body("a", api.put_jpeg(), ctype="smoke"))  # auto-confirmed
    for role in ("platform2", "admin"):
        assert api.as_(role).post("/api/v1/feed/ack", json={"cursor": "1"}).status_code == 204
    assert feed_lag(api) == {"test-admin": 0.0, "test-platform": 1.0, "test-platform2": 0.0}
    tokens = token_config()
    del tokens[TOKENS["platform2"]]
    again = make_api(api_tokens=tokens)
    assert feed_lag(again) == {"test-admin": 0.0, "test-platform": 1.0}


def borrowed_threads(http: TestClient) -> tuple[float, float]:
    """The app's thread pool: threads taken and its size."""
    assert http.portal is not None

    def stats() -> tuple[float, float]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        return limiter.borrowed_tokens, limiter.total_tokens

    return http.portal.call(stats)


def test_a_database_with_no_free_connection_answers_503_and_health_still_answers(
    api: Any,
) -> None:
    """Every pooled connection taken (a slow or hung database): requests wait the pool's
    timeout, then get 503 with Retry-After (not 500); meanwhile, with every thread of the
    pool waiting, /healthz still answers."""
    engine = api.http.app.state.db.engine
    held = [engine.connect() for _ in range(POOL_SIZE + MAX_OVERFLOW)]
    reviewer = api.as_("reviewer")
    try:
        _, threads = borrowed_threads(api.http)
        with ThreadPoolExecutor(int(threads)) as pool:
            waiting = [pool.submit(reviewer.get, "/api/v1/candidates") for _ in range(int(threads))]
            for _ in range(600):  # until every thread of the app's pool waits for a connection
                if borrowed_threads(api.http)[0] == threads:
                    break
                time.sleep(0.1)
            assert borrowed_threads(api.http) == (threads, threads)
            assert api.http.get("/api/v1/healthz").json() == {"status": "ok"}
            # Answered while they all still wait.
            assert not any(f.done() for f in waiting)
            answers = [f.result() for f in waiting]
    finally:
        for conn in held:
            conn.close()
    assert {(r.status_code, r.headers["Retry-After"]) for r in answers} == {(503, "1")}
    assert {r.json()["detail"] for r in answers} == {"the database is busy; retry shortly"}
    assert reviewer.get("/api/v1/candidates").status_code == 200


def test_a_database_that_takes_connections_but_never_answers_gets_503(tmp_path: Path) -> None:
    # The kernel completes the TCP handshake for the listening socket; nothing ever answers.
    with socket.create_server(("127.0.0.1", 0)) as black_hole:
        port = black_hole.getsockname()[1]
        hung = f"postgresql+psycopg://gp:secret@127.0.0.1:{port}/gp"
        settings = settings_for(hung, tmp_path, migrate_on_start=False)
        with TestClient(create_app(settings)) as http, ThreadPoolExecutor(1) as pool:
            headers = {"Authorization": f"Bearer {TOKENS['reviewer']}"}
            answer = pool.submit(http.get, "/api/v1/candidates", headers=headers)
            # A generous bound to wait for (the connect timeout is 5 s); before it had none.
            done, _ = wait([answer], timeout=60)
            black_hole.close()  # lets a request still waiting end (its connection is reset)
            assert done, "no answer within 60 s"
            response = answer.result()
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert response.json()["detail"] == "the database is unavailable; retry shortly"

"""The real API process: concurrent intake, feed order under load, long-poll, events."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from gridpatrol.ingest.broker import free_port

from .conftest import LongPoll, Server, fresh_database
from .test_intake_consistency import IN_FLIGHT_ITEM


def upload(server: Any, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    with server.client("producer") as http:
        response = http.put(
            f"/evidence/{sha}", content=data, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code in (200, 201)
    return sha


def test_twenty_concurrent_posts_of_one_key_make_one_candidate(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(1))
    payload = api_body.body(None, sha)
    camera = payload["source"]["camera_id"] = f"cam-{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(20)

    def post(_i: int) -> tuple[int, dict[str, Any]]:
        with server.client("producer") as http:
            barrier.wait()
            r = http.post("/candidates", json=payload, headers={"Idempotency-Key": "one-key"})
            return r.status_code, r.json()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))
    # The request that claims the key creates the candidate; one that comes while it runs
    # gets 409 at once, one that comes after it answered replays its answer.
    assert {code for code, _ in results} <= {201, 409}, results
    created = [doc for code, doc in results if code == 201]
    assert created and all(doc == created[0] for doc in created), results
    refused = [doc for code, doc in results if code == 409]
    assert all(
        doc == {**IN_FLIGHT_ITEM["body"], "instance": "/api/v1/candidates"} for doc in refused
    )
    with server.client("producer") as http:
        retry = http.post("/candidates", json=payload, headers={"Idempotency-Key": "one-key"})
    assert (retry.status_code, retry.json()) == (201, created[0])
    with server.client("reviewer") as http:
        items = http.get("/candidates", params={"camera_id": camera}).json()["items"]
    assert [c["id"] for c in items] == [created[0]["id"]]


def test_concurrent_posts_of_one_event_under_many_keys(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(2))
    payload = api_body.body(None, sha)
    barrier = threading.Barrier(10)

    def post(i: int) -> tuple[int, str]:
        with server.client("producer") as http:
            barrier.wait()
            r = http.post("/candidates", json=payload, headers={"Idempotency-Key": f"k-{i}"})
            return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(post, range(10)))
    assert sorted(code for code, _ in results) == [200] * 9 + [201]
    assert len({cid for _, cid in results}) == 1


def feed_end(server: Any) -> str:
    with server.client("platform") as http:
        cursor = "0"
        while True:
            page = http.get("/feed", params={"cursor": cursor, "limit": 1000}).json()
            if not page["items"]:
                return str(page["next_cursor"])
            cursor = page["next_cursor"]


def test_feed_has_no_gaps_while_writers_race(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(3))
    start = feed_end(server)
    per_writer, writers = 15, 4
    seen: list[str] = []
    stop = threading.Event()

    def write(w: int) -> None:
        with server.client("producer") as http:
            for _i in range(per_writer):
                body = api_body.body(None, sha, ctype="smoke")  # auto-confirmed
                r = http.post(
                    "/candidates", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
                )
                assert r.status_code == 201

    def read() -> None:
        cursor = start
        with server.client("platform") as http:
            while not stop.is_set() or len(seen) < per_writer * writers:
                page = http.get("/feed", params={"cursor": cursor, "wait": 1}).json()
                positions = list(range(int(cursor) + 1, int(page["next_cursor"]) + 1))
                assert len(positions) == len(page["items"])
                seen.extend(c["id"] for c in page["items"])
                cursor = page["next_cursor"]

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    stop.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert len(seen) == per_writer * writers
    assert len(set(seen)) == len(seen)


def test_long_poll_returns_when_a_candidate_becomes_visible(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(4))
    start = feed_end(server)
    with server.client("platform") as platform, server.client("producer") as producer:
        poll = LongPoll(partial(platform.get, "/feed"), start)

        def create() -> dict[str, Any]:
            body = api_body.body(None, sha, ctype="waterlogging")  # urgent: auto-confirmed
            key = {"Idempotency-Key": str(uuid.uuid4())}
            response = producer.post("/candidates", json=body, headers=key)
            assert response.status_code == 201, response.text
            created: dict[str, Any] = response.json()
            return created

        created, page = poll.woken_by(create)
    assert [c["id"] for c in page["items"]] == [created["id"]]
    assert page["next_cursor"] == str(int(start) + 1)


def test_server_sent_events(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(5))
    events: list[tuple[str, dict[str, Any]]] = []
    cid = str(uuid.uuid4())
    wanted = {"id": cid}
    connected = threading.Event()

    def listen() -> None:
        with server.client("reviewer") as http, http.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in stream.iter_lines():
                connected.set()
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if data["id"] == wanted.get("id"):
                        events.append((kind, data))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen)
    listener.start()
    assert connected.wait(20)
    with server.client("producer") as http:
        body = {**api_body.body(None, sha), "id": cid}
        doc = http.post("/candidates", json=body, headers={"Idempotency-Key": cid}).json()
    with server.client("reviewer") as http:
        http.post(f"/candidates/{doc['id']}/review", json={"decision": "confirm"})
    listener.join(timeout=30)
    assert [k for k, _ in events] == ["candidate.created", "candidate.changed"]
    assert events[0][1]["id"] == doc["id"]
    assert events[0][1]["camera_id"] == "cam-1"
    assert events[1][1]["status"] == "confirmed"
    keys = {"id", "status", "type", "camera_id", "sensor_id", "created_at", "updated_at"}
    assert set(events[0][1]) == keys
    assert events[0][1]["created_at"] == doc["created_at"]


def test_the_command_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    env = {"GRIDPATROL_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "api", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no API tokens" in proc.stderr


class Forwarder:
    """A TCP port that passes every connection on to ``target``: a database "coming up" at
    that port the moment it is started."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.open: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by stop()
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                self.open += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        for sock in self.open:
            sock.close()


def api_command(db_url: str, port: int, workers: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        "GRIDPATROL_DATABASE_URL": db_url,
        "GRIDPATROL_API_TOKENS": json.dumps({"t": {"role": "admin", "name": "a"}}),
        "GRIDPATROL_EVIDENCE_DIR": str(log.parent / "evidence"),
        "PATH": "/usr/bin:/bin",
    }
    cmd = [sys.executable, "-m", "gridpatrol.cli", "api", "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen([*cmd, "--workers", workers], env=env, stdout=out, stderr=out)


def api_command_run(url: URL, workers: str) -> subprocess.CompletedProcess[str]:
    """``gridpatrol api`` on ``url`` that is expected to end by itself (within 60 s)."""
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "api", "--port", "1", "--workers", workers],
        env={
            "GRIDPATROL_DATABASE_URL": url.render_as_string(False),
            "GRIDPATROL_API_TOKENS": json.dumps({"t": {"role": "admin", "name": "a"}}),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def waits_then_serves(
    proc: subprocess.Popen[bytes], log: Path, port: int, waiting: str, release: Callable[[], None]
) -> None:
    """The command warns ``waiting`` and goes on waiting until ``release()`` lets it reach its
    database; then it serves, and a SIGTERM stops it with status 0."""
    try:
        wait_until(lambda: waiting in log.read_text(), "the waiting warning")
        assert proc.poll() is None
        release()
        wait_until(lambda: healthy(port), "the API serving")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def refused_at_once(proc: subprocess.CompletedProcess[str], line: str) -> None:
    """Setup to mend: status 2, said in ``line``, without waiting or a traceback."""
    assert proc.returncode == 2, proc.stderr
    assert line in proc.stderr
    assert "Traceback" not in proc.stderr and "secret" not in proc.stderr
    assert "not reachable yet" not in proc.stderr


def wait_until(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):  # a generous bound, no timing assertion
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within 60 s: {what}")


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.postgres
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_command_waits_for_a_database_that_comes_up_later(
    workers: str, tmp_path: Path, postgres_url: str
) -> None:
    """After a site's power cut the API may start before its database: it waits, saying so,
    and serves once the database is up, instead of exiting for good."""
    db_port, api_port, log = free_port(), free_port(), tmp_path / "api.log"
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        target = make_url(postgres_url)
        later = make_url(url).set(port=db_port, password="secret").render_as_string(False)
        proc = api_command(later, api_port, workers, log)
        waiting = (
            f"is not reachable yet (connection failed: connection to server at "
            f'"127.0.0.1", port {db_port} failed: Connection refused); retrying in 1 s'
        )
        forwarders: list[Forwarder] = []

        def come_up() -> None:
            target_at = (target.host or "127.0.0.1", target.port or 5432)
            forwarders.append(Forwarder(db_port, target_at))

        try:
            waits_then_serves(proc, log, api_port, waiting, come_up)
        finally:
            for forwarder in forwarders:
                forwarder.stop()
    text = log.read_text()
    assert "Traceback" not in text and "secret" not in text


@pytest.mark.postgres
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_command_names_a_database_that_refuses_it(
    workers: str, tmp_path: Path, postgres_url: str
) -> None:
    # The server answers and refuses (no such database): setup to mend, status 2 at once.
    url = make_url(postgres_url).set(database="gp_nowhere", password="secret")
    refused_at_once(
        api_command_run(url, workers),
        "the intake API cannot start: the database refused it: connection failed: connection "
        f'to server at "{url.host}", port {url.port} failed: FATAL:  database "gp_nowhere" '
        "does not exist",
    )


@pytest.mark.postgres
@pytest.mark.parametrize("scope", ["ROLE", "DATABASE"])
def test_the_command_waits_while_its_connection_limit_is_reached(
    scope: str, tmp_path: Path, postgres_url: str
) -> None:
    """After a power cut, connections that died without a reset count against a role's or a
    database's CONNECTION LIMIT until the server notices: the API waits (before it exited 2,
    which the sample unit never restarts) and serves once connections are free."""
    name = f"gp_limit_{uuid.uuid4().hex[:12]}"
    api_port, log = free_port(), tmp_path / "api.log"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD 'secret'")  # no superuser
            conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {name}")
            conn.exec_driver_sql(f"ALTER {scope} {name} CONNECTION LIMIT 0")
        url = make_url(postgres_url).set(username=name, password="secret", database=name)
        proc = api_command(url.render_as_string(False), api_port, "1", log)
        waiting = f'FATAL:  too many connections for {scope.lower()} "{name}"); retrying in 1 s'

        def free_connections() -> None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"ALTER {scope} {name} CONNECTION LIMIT -1")

        waits_then_serves(proc, log, api_port, waiting, free_connections)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        admin.dispose()
    text = log.read_text()
    assert "Traceback" not in text and "secret" not in text
    assert "cannot start" not in text


@pytest.mark.postgres
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_command_names_a_connection_its_own_setup_fails(
    workers: str, tmp_path: Path, postgres_url: str
) -> None:
    """A failure of the client's own before any server answer (here SSL required by the URL,
    which the server does not offer) is setup to mend: status 2 at once in one line, where
    before it was waited on for good."""
    admin = sa.create_engine(postgres_url)
    with admin.connect() as conn:
        assert conn.exec_driver_sql("SHOW ssl").scalar() == "off"
    admin.dispose()
    url = make_url(postgres_url).set(password="secret").update_query_dict({"sslmode": "require"})
    refused_at_once(
        api_command_run(url, workers),
        "the intake API cannot start: cannot connect to the database: connection failed: "
        f'connection to server at "{url.host}", port {url.port} failed: server does not '
        "support SSL, but SSL was required",
    )


def test_concurrent_batches_with_shared_keys(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(6))
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    bodies = []
    for _ in range(30):
        body = api_body.body(None, sha)
        body["source"]["camera_id"] = camera
        bodies.append(body)
    keys = [str(uuid.uuid4()) for _ in bodies]
    items = [{"idempotency_key": k, "body": b} for k, b in zip(keys, bodies, strict=True)]
    barrier = threading.Barrier(4)

    def post(_i: int) -> list[dict[str, Any]]:
        with server.client("producer") as http:
            barrier.wait()
            response = http.post("/candidates/batch", json={"items": items})
            assert response.status_code == 207
            results: list[dict[str, Any]] = response.json()["items"]
            return results

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(post, range(4)))
    # Per key: the batch that claimed it creates the candidate (201), a later one replays that
    # response (201, the same body), one that meets the claim in flight gets 409. The server
    # is one process, whose registry holds a batch's keys all at once, and these batches have
    # the same keys: so a batch meets all of them in flight or none (batches in different
    # processes, or with overlapping key sets, could meet some).
    for results in batches:
        assert len({r["status"] for r in results}) == 1, results
        assert all(r == IN_FLIGHT_ITEM for r in results if r["status"] == 409), results
    created: dict[str, dict[str, Any]] = {}
    for key, body, *results in zip(keys, bodies, *batches, strict=True):
        assert {r["status"] for r in results} <= {201, 409}, (key, results)
        docs = [r["body"] for r in results if r["status"] == 201]
        assert docs, f"no batch created the candidate of key {key}: {results}"
        assert all(doc == docs[0] for doc in docs), (key, docs)
        assert docs[0]["source"] == body["source"]
        created[key] = docs[0]
    assert len({doc["id"] for doc in created.values()}) == 30
    with server.client("reviewer") as http:
        page = http.get("/candidates", params={"camera_id": camera, "limit": 100}).json()
    assert sorted(c["id"] for c in page["items"]) == sorted(d["id"] for d in created.values())


def test_concurrent_batches_of_one_set_of_events(server: Any, api_body: Any) -> None:
    sha = upload(server, api_body.jpeg(7))
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    bodies = []
    for _ in range(30):
        body = api_body.body(None, sha)
        body["source"]["camera_id"] = camera
        bodies.append(body)
    barrier = threading.Barrier(4)

    def post(_i: int) -> list[str]:
        items = [{"idempotency_key": str(uuid.uuid4()), "body": b} for b in bodies]
        with server.client("producer") as http:
            barrier.wait()
            response = http.post("/candidates/batch", json={"items": items})
            assert response.status_code == 207
            results = response.json()["items"]
            assert {r["status"] for r in results} <= {200, 201}
            return [r["body"]["id"] for r in results]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(post, range(4)))
    assert ids[0] == ids[1] == ids[2] == ids[3]
    with server.client("reviewer") as http:
        page = http.get("/candidates", params={"camera_id": camera, "limit": 100}).json()
    assert sorted(c["id"] for c in page["items"]) == sorted(ids[0])


def drop_connections(server: Any, postgres_url: str) -> int:
    """Terminate the API process's PostgreSQL sessions, as a database restart would."""
    assert server.proc is not None
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            dropped = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": f"gridpatrol-api-{server.proc.pid}"},
            ).scalar_one()
    finally:
        admin.dispose()
    return int(dropped)


# SQLite has no server that could drop a connection.
@pytest.mark.parametrize("server", ["postgres"], indirect=True)
def test_dropped_database_connections(server: Any, api_body: Any, postgres_url: str) -> None:
    sha = upload(server, api_body.jpeg(6))
    with server.client("producer") as producer, server.client("reviewer") as reviewer:
        post = {"json": api_body.body(None, sha), "headers": {"Idempotency-Key": "drop-1"}}
        assert producer.post("/candidates", **post).status_code == 201
        assert drop_connections(server, postgres_url) >= 1
        # A read on a dropped connection: 503, and the pool is renewed for the next one.
        down = reviewer.get("/candidates")
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "1"
        assert down.headers["Content-Type"] == "application/problem+json"
        assert down.json() == {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the database is unavailable; retry shortly",
            "instance": "/api/v1/candidates",
        }
        assert reviewer.get("/candidates").status_code == 200
        # An idempotent write on a dropped connection runs again on a fresh one.
        assert drop_connections(server, postgres_url) >= 1
        again = {"json": api_body.body(None, sha), "headers": {"Idempotency-Key": "drop-2"}}
        created = producer.post("/candidates", **again)
        assert created.status_code == 201
        assert reviewer.get(f"/candidates/{created.json()['id']}").status_code == 200


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_shuts_the_api_down_gracefully_with_status_0(
    tmp_path: Path, stop: signal.Signals
) -> None:
    srv = Server(f"sqlite:///{tmp_path / 'api.db'}", tmp_path)
    srv.start()
    assert srv.proc is not None
    srv.proc.send_signal(stop)
    assert srv.proc.wait(timeout=30) == 0
    log = srv.log.read_text()
    assert "Application shutdown complete." in log
    assert "Traceback" not in log


class HeldRequest:
    """A request the server holds open, sent from a thread of its own: the console's event
    stream (``/events``) or a feed long poll (``/feed?wait=30``). ``lines`` is what it got."""

    def __init__(self, srv: Server, kind: str) -> None:
        self.kind = kind
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.sent = threading.Event()
        self.http = srv.client("reviewer" if kind == "events" else "platform")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.kind == "events":
                with self.http.stream("GET", "/events") as stream:
                    for line in stream.iter_lines():
                        self.lines.append(line)
                        self.sent.set()  # ": connected": the server streams
            else:
                assert self.http.get("/healthz").status_code == 200  # connected beforehand
                self.sent.set()
                response = self.http.get("/feed", params={"wait": LongPoll.WAIT_S})
                self.lines.append(f"{response.status_code} {response.text}")
        except BaseException as exc:
            self.error = exc
        finally:
            self.http.close()

    def wait_held(self) -> None:
        assert self.sent.wait(30), self.error
        # Time for the poll to reach the server (the stream has already been answered).
        self.thread.join(2)
        assert self.thread.is_alive(), (self.lines, self.error)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
@pytest.mark.parametrize("kind", ["events", "feed"], ids=["event-stream", "feed-long-poll"])
def test_a_stop_signal_ends_event_streams_and_long_polls_at_once(
    tmp_path: Path, kind: str, stop: signal.Signals
) -> None:
    """They would hold the graceful shutdown until their clients left (a stream for ever, a
    poll up to 30 s): told to stop, a stream ends (the browser reconnects with its last id)
    and a poll answers as at its deadline, and the API stops with status 0."""
    srv = Server(f"sqlite:///{tmp_path / 'api.db'}", tmp_path)
    srv.start()
    assert srv.proc is not None
    try:
        held = HeldRequest(srv, kind)
        held.wait_held()
        srv.proc.send_signal(stop)
        assert srv.proc.wait(timeout=10) == 0
        held.thread.join(10)
        assert not held.thread.is_alive()
        assert held.error is None
        if kind == "events":
            assert held.lines == [": connected", ""]
        else:
            assert held.lines == ['200 {"items":[],"next_cursor":"0"}']
        assert_shut_down_in_order(srv)
    finally:
        kill_if_running(srv)


def assert_shut_down_in_order(srv: Server, servers: int = 1) -> None:
    """Each of the process's ``servers`` ran its lifespan's shutdown, and none was cut short:
    no request cancelled when the graceful shutdown ran out, no worker killed."""
    log = srv.log.read_text()
    assert log.count("Application shutdown complete.") == servers
    assert "timeout graceful shutdown exceeded" not in log
    assert "did not stop in time" not in log
    assert "Traceback" not in log


def kill_if_running(srv: Server) -> None:
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


SERVER = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "waits"),
    [
        # A server answering in its lc_messages: starting, stopping and full read alike.
        (SERVER + "致命错误:  数据库系统正在关闭", True),
        (SERVER + '致命错误:  角色 "lim" 的连接过多', True),
        # German keeps the word FATAL: read as a refusal, as docs/operations.md says.
        (SERVER + "FATAL:  das Datenbanksystem fährt hoch", False),
        # In English a refusal is told from a busy server.
        (SERVER + 'FATAL:  database "gp_nowhere" does not exist', False),
        (SERVER + 'FATAL:  password authentication failed for user "gp"', False),
        (SERVER + "FATAL:  the database system is starting up", True),
        (SERVER + 'FATAL:  too many connections for role "lim"', True),
        # The client's own setup: no server answered.
        (SERVER + "server does not support SSL, but SSL was required", False),
        (SERVER + "Connection refused", True),
    ],
)
def test_a_server_answering_in_another_language_is_waited_on(message: str, waits: bool) -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    from gridpatrol.api.cli import database_unreachable

    exc = OperationalError("connect", {}, psycopg.OperationalError(message))
    assert database_unreachable(exc) is waits

"""``gridpatrol api --workers 2`` on PostgreSQL, and the LISTEN/NOTIFY bus between workers.

The end-to-end tests hold keep-alive connections pinned to each worker (the answering pid is in
``/healthz``'s ``X-Worker-Pid`` header, and every later response is checked to come over the
same socket), so "through worker A" and "through worker B" mean what they say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from gridpatrol.api import bus as bus_module
from gridpatrol.api.bus import MAX_PAYLOAD, Bus, Note, Payload, channel_for, pack
from gridpatrol.api.hub import Event, Hub

from .conftest import (
    TOKENS,
    LongPoll,
    Server,
    body,
    fresh_database,
    fresh_jpeg,
    token_config,
)
from .test_server import assert_shut_down_in_order, kill_if_running

WAIT_S = 30.0


# -- a server with two workers, and connections pinned to each -------------------------------


class Pinned:
    """A client with one keep-alive connection to one worker; a reconnection fails the test."""

    def __init__(self, http: httpx.Client, pid: int, port: int) -> None:
        self.http = http
        self.pid = pid
        self.port = port

    def request(self, method: str, url: str, role: str | None = None, **kw: Any) -> httpx.Response:
        if role is not None:
            kw["headers"] = {"Authorization": f"Bearer {TOKENS[role]}", **kw.get("headers", {})}
        response = self.http.request(method, url, **kw)
        self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        assert local_port(response) == self.port, f"the connection to worker {self.pid} changed"


def local_port(response: httpx.Response) -> int:
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


class Workers(Server):
    """``gridpatrol api --workers 2``; ``pin`` opens clients until it holds some on each."""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gridpatrol.cli", "api", "--port", str(self.port)]
        cmd += ["--workers", "2"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)

    def pin(self, per_worker: int = 1) -> list[list[Pinned]]:
        """``per_worker`` pinned clients on each worker: ``[[on A, ...], [on B, ...]]``."""
        assert self.proc is not None
        by_pid: dict[int, list[Pinned]] = {}
        spare: list[httpx.Client] = []
        deadline = time.monotonic() + 60
        while len(by_pid) < 2 or any(len(c) < per_worker for c in by_pid.values()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text()[-3000:])
            http = httpx.Client(base_url=self.url, timeout=60)
            try:
                response = http.get("/healthz")
            except httpx.TransportError:
                http.close()
                time.sleep(0.1)
                continue
            pid = int(response.headers["X-Worker-Pid"])
            pinned = by_pid.setdefault(pid, [])
            if len(pinned) < per_worker:
                pinned.append(Pinned(http, pid, local_port(response)))
            else:
                spare.append(http)  # kept open meanwhile, so the next one may meet the other
        for http in spare:
            http.close()
        return list(by_pid.values())


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp("workers")
    with fresh_database("postgres", workdir, postgres_url) as url:
        server = Workers(url, workdir)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def pinned(workers: Workers) -> Iterator[Callable[[int], list[list[Pinned]]]]:
    """Pins afresh for each test, so no idle connection has been closed by the server."""
    opened: list[Pinned] = []

    def pin(per_worker: int) -> list[list[Pinned]]:
        groups = workers.pin(per_worker)
        opened.extend(c for group in groups for c in group)
        return groups

    yield pin
    for client in opened:
        client.http.close()


def post_candidate(client: Pinned, ctype: str = "garbage_overflow", cid: str | None = None) -> str:
    payload = body(None, upload(client), ctype)
    if cid is not None:
        payload["id"] = cid
    response = client.request(
        "POST",
        "/candidates",
        role="producer",
        json=payload,
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    created: str = response.json()["id"]
    return created


def upload(client: Pinned) -> str:
    """Evidence that exists, which auto-confirmation asks for."""
    data = fresh_jpeg()
    sha = hashlib.sha256(data).hexdigest()
    headers = {"Content-Type": "image/jpeg"}
    put = client.request("PUT", f"/evidence/{sha}", role="producer", content=data, headers=headers)
    assert put.status_code in (200, 201), put.text
    return sha


class Subscriber:
    """Reads ``/events`` on one pinned connection in a thread, until ``until`` ids were seen."""

    def __init__(self, client: Pinned) -> None:
        self.client = client
        self.created: list[str] = []
        self.until: set[str] = set()
        self.connected = threading.Event()
        self._seen = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        auth = {"Authorization": f"Bearer {TOKENS['reviewer']}"}
        with self.client.http.stream("GET", "/events", headers=auth) as stream:
            self.client.check(stream)
            kind = ""
            for line in stream.iter_lines():
                self.connected.set()
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "candidate.created":
                    with self._seen:
                        self.created.append(json.loads(line.removeprefix("data: "))["id"])
                        self._seen.notify_all()
                    if self.until and self.until <= set(self.created):
                        return

    def wait_for(self, ids: set[str]) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: ids <= set(self.created), WAIT_S), self.created


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_events_reach_the_subscribers_of_every_worker_exactly_once(
    pinned: Callable[[int], list[list[Pinned]]],
) -> None:
    (listen_a, post_a), (listen_b, post_b) = pinned(2)
    on_a, on_b = Subscriber(listen_a), Subscriber(listen_b)
    assert on_a.connected.wait(WAIT_S) and on_b.connected.wait(WAIT_S)

    from_b = post_candidate(post_b)
    from_a = post_candidate(post_a)
    on_a.wait_for({from_a, from_b})
    on_b.wait_for({from_a, from_b})
    # PostgreSQL delivers notifications in commit order. Each worker has now heard the other's
    # notification, so a second copy of either could only come before these last two.
    last_a, last_b = str(uuid.uuid4()), str(uuid.uuid4())
    on_a.until = on_b.until = {last_a, last_b}
    post_candidate(post_b, cid=last_b)
    post_candidate(post_a, cid=last_a)
    for subscriber in (on_a, on_b):
        subscriber.thread.join(WAIT_S)
        assert not subscriber.thread.is_alive()
        assert Counter(subscriber.created) == {from_a: 1, from_b: 1, last_a: 1, last_b: 1}


@pytest.mark.postgres
def test_a_long_poll_on_one_worker_returns_what_another_made_visible(
    pinned: Callable[[int], list[list[Pinned]]],
) -> None:
    (poll_a,), (post_b,) = pinned(1)
    start = feed_end(poll_a)
    poll = LongPoll(partial(poll_a.request, "GET", "/feed", role="platform"), start)
    # urgent: auto-confirmed
    created, page = poll.woken_by(partial(post_candidate, post_b, ctype="waterlogging"))
    assert [c["id"] for c in page["items"]] == [created]
    assert page["next_cursor"] == str(int(start) + 1)


def feed_end(client: Pinned) -> str:
    cursor = "0"
    while True:
        params = {"cursor": cursor, "limit": 1000}
        page = client.request("GET", "/feed", role="platform", params=params).json()
        if not page["items"]:
            return str(page["next_cursor"])
        cursor = page["next_cursor"]


@pytest.mark.postgres
def test_a_console_session_from_one_worker_is_valid_on_the_other(
    pinned: Callable[[int], list[list[Pinned]]],
) -> None:
    (on_a,), (on_b,) = pinned(1)
    login = on_a.request("POST", "/session", json={"token": TOKENS["reviewer"]})
    assert login.status_code == 200
    cookie = login.cookies["gp_session"]
    on_a.http.cookies.clear()

    session = on_b.request("GET", "/session", headers={"Cookie": f"gp_session={cookie}"})
    assert session.status_code == 200
    assert session.json() == {
        "name": "test-reviewer",
        "role": "reviewer",
        "csrf_token": login.json()["csrf_token"],
    }
    listing = on_b.request("GET", "/candidates", headers={"Cookie": f"gp_session={cookie}"})
    assert listing.status_code == 200
    forged = on_b.request("GET", "/session", headers={"Cookie": f"gp_session={cookie}x"})
    assert forged.status_code == 401


@pytest.mark.postgres
def test_logging_out_on_one_worker_ends_the_session_on_the_other(
    pinned: Callable[[int], list[list[Pinned]]],
) -> None:
    (on_a,), (on_b,) = pinned(1)
    login = on_a.request("POST", "/session", json={"token": TOKENS["reviewer"]})
    assert login.status_code == 200
    cookie = {"Cookie": f"gp_session={login.cookies['gp_session']}"}
    on_a.http.cookies.clear()
    assert on_b.request("GET", "/session", headers=cookie).status_code == 200
    assert on_a.request("DELETE", "/session", headers=cookie).status_code == 204
    assert on_b.request("GET", "/session", headers=cookie).status_code == 401


@pytest.mark.postgres
def test_metrics_count_the_requests_of_every_worker(
    pinned: Callable[[int], list[list[Pinned]]],
) -> None:
    (on_a,), (on_b,) = pinned(1)
    before = types_requests(on_a)
    n = 7
    for client in (on_a, on_b):
        for _ in range(n):
            assert client.request("GET", "/types", role="producer").status_code == 200
    assert types_requests(on_a) == types_requests(on_b) == before + 2 * n

    # The database gauges come once, from the worker that answers, not once per worker.
    families = scrape(on_b)
    (last,) = families["gridpatrol_feed_last_position"]
    assert last.value == int(feed_end(on_a))


def scrape(client: Pinned) -> dict[str, list[Any]]:
    text = client.request("GET", "/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def types_requests(client: Pinned) -> float:
    return sum(
        sample.value
        for sample in scrape(client)["gridpatrol_api_requests"]
        if sample.name == "gridpatrol_api_requests_total"
        and sample.labels == {"route": "/api/v1/types", "method": "GET", "status": "200"}
    )


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    env = {
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "GRIDPATROL_API_TOKENS": json.dumps(token_config()),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "api", "--port", "1", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--workers 2 needs PostgreSQL: SQLite admits one writer" in proc.stderr
    assert not (tmp_path / "x.db").exists()


def worker_pids(workers: Workers, connections: int) -> Counter[int]:
    """Which worker answered each of ``connections`` fresh connections, held open together."""
    clients = [httpx.Client(base_url=workers.url, timeout=30) for _ in range(connections)]
    try:
        return Counter(int(c.get("/healthz").headers["X-Worker-Pid"]) for c in clients)
    finally:
        for client in clients:
            client.close()


def test_each_worker_has_a_socket_of_its_own(workers: Workers) -> None:
    """The kernel spreads connections over the workers' own sockets (SO_REUSEPORT); with one
    shared socket a burst of connections can all go to whichever worker is in accept()."""
    workers.pin()  # both are serving
    assert len(worker_pids(workers, 32)) == 2


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(
    tmp_path: Path, postgres_url: str
) -> None:
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        server = Workers(url, tmp_path)
        server.start()
        assert server.proc is not None
        try:
            (first, *_), (second, *_) = server.pin()
            os.kill(first.pid, 9)
            deadline = time.monotonic() + WAIT_S
            while True:
                pids = set(worker_pids(server, 16))
                if second.pid in pids and len(pids) == 2 and first.pid not in pids:
                    break
                assert time.monotonic() < deadline, f"no replacement for {first.pid}: {pids}"
                time.sleep(0.2)
            assert server.proc.poll() is None
            assert "died (exit code -9)" in server.log.read_text()
            server.proc.terminate()
            assert server.proc.wait(timeout=60) == 0
            for pid in (*pids,):
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
        finally:
            server.stop()


@pytest.mark.postgres
def test_sigterm_ends_the_workers_event_streams_and_long_polls(
    tmp_path: Path, postgres_url: str
) -> None:
    """Each worker, told to stop, ends its event streams and answers its long polls at once,
    so every worker runs its lifespan's shutdown and none is killed for want of time."""
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        server = Workers(url, tmp_path)
        server.start()
        assert server.proc is not None
        opened: list[Pinned] = []
        try:
            groups = server.pin(2)
            opened = [client for group in groups for client in group]
            (listen_a, poll_a), (listen_b, _) = groups
            on_a, on_b = Subscriber(listen_a), Subscriber(listen_b)
            assert on_a.connected.wait(WAIT_S) and on_b.connected.wait(WAIT_S)
            start = feed_end(poll_a)
            # Not checked to come over the pinned connection: the worker closes it with its
            # answer (it stops), and a closed socket has no address to compare any more.
            auth = {"Authorization": f"Bearer {TOKENS['platform']}"}
            poll = LongPoll(partial(poll_a.http.request, "GET", "/feed", headers=auth), start)
            poll.thread.join(2)  # time for the poll to reach the worker
            assert poll.thread.is_alive() and poll.page is None, poll.page

            server.proc.terminate()
            assert server.proc.wait(timeout=15) == 0
            for thread in (on_a.thread, on_b.thread, poll.thread):
                thread.join(WAIT_S)
                assert not thread.is_alive()
            assert poll.page == {"items": [], "next_cursor": start}
            assert_shut_down_in_order(server, servers=2)
        finally:
            kill_if_running(server)
            for client in opened:
                client.http.close()


def test_workers_refuse_a_port_in_use(tmp_path: Path, postgres_url: str) -> None:
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        server = Workers(url, tmp_path)
        with socket.create_server(("127.0.0.1", server.port)):
            server.start()
            assert server.proc is not None
            assert server.proc.wait(timeout=60) == 2
        assert f"cannot listen on 127.0.0.1:{server.port}" in server.log.read_text()


# -- the bus in this process -----------------------------------------------------------------


class RecordingHub(Hub):
    """Records what reaches this process's subscribers and feed waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[str] = []
        self.wakes = 0
        self._changed = threading.Condition()

    def deliver(self, events: list[Event]) -> None:
        with self._changed:
            self.delivered.extend(data["id"] for _kind, data in events)
            self._changed.notify_all()

    def wake_feed(self) -> None:
        with self._changed:
            self.wakes += 1
            self._changed.notify_all()

    def wait_for(self, ids: list[str]) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: set(ids) <= set(self.delivered), WAIT_S)
            assert ok, self.delivered


def event(cid: str, size: int = 0) -> Event:
    return ("candidate.created", {"id": cid, "camera_id": "c" * size})


@pytest.fixture
def bus_url(tmp_path: Path, postgres_url: str) -> Iterator[str]:
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        yield url


@pytest.fixture
def buses(bus_url: str) -> Iterator[tuple[RecordingHub, RecordingHub, Bus, Bus]]:
    """Two processes' hubs and buses, as two workers have them."""
    hub1, hub2 = RecordingHub(), RecordingHub()
    bus1, bus2 = Bus(bus_url, hub1), Bus(bus_url, hub2)
    bus1.start()
    bus2.start()
    try:
        assert bus1.listening.wait(WAIT_S) and bus2.listening.wait(WAIT_S)
        yield hub1, hub2, bus1, bus2
    finally:
        bus1.stop()
        bus2.stop()


@pytest.mark.postgres
def test_the_bus_delivers_each_event_once_in_each_process(
    buses: tuple[RecordingHub, RecordingHub, Bus, Bus],
) -> None:
    hub1, hub2, bus1, bus2 = buses
    hub1.publish([event("x1")])
    hub1.feed_changed()
    hub2.wait_for(["x1"])
    # Commit order flushes: anything hub1's bus sent before "s2" arrives before it.
    hub2.publish([event("s2")])
    hub1.wait_for(["s2"])
    hub1.publish([event("s1")])
    hub2.wait_for(["s1"])
    assert hub1.delivered == ["x1", "s2", "s1"]
    assert hub2.delivered == ["x1", "s2", "s1"]
    assert hub1.wakes == hub2.wakes == 1
    assert bus1.dropped == bus2.dropped == 0


@pytest.mark.postgres
def test_a_large_batch_crosses_in_several_payloads_in_order(
    buses: tuple[RecordingHub, RecordingHub, Bus, Bus],
) -> None:
    hub1, hub2, _bus1, bus2 = buses
    ids = [f"big-{i}" for i in range(300)]
    hub1.publish([event(cid, size=50) for cid in ids])
    hub2.wait_for(ids)
    assert hub2.delivered == ids
    assert bus2.dropped == 0


@pytest.mark.postgres
def test_the_bus_reconnects_after_the_database_drops_it(
    buses: tuple[RecordingHub, RecordingHub, Bus, Bus],
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub1, hub2, _bus1, _bus2 = buses
    dropped = terminate(postgres_url, f"gridpatrol-bus-{os.getpid()}")
    assert dropped >= 2  # both listeners; the senders connect lazily
    # Notes sent while the listeners reconnect are lost (at most once); keep sending until
    # one arrives.
    sent: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while not hub2.delivered and time.monotonic() < deadline:
        sent.append(f"after-drop-{len(sent)}")
        hub1.publish([event(sent[-1])])
        time.sleep(0.2)
    assert hub2.delivered
    assert len(set(hub2.delivered)) == len(hub2.delivered)
    assert set(hub2.delivered) <= set(sent)
    assert "listener connection failed" in caplog.text


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "expected"),
    [("", (1, 30, 10, 3)), ("?keepalives_idle=120&keepalives_count=5", (1, 120, 10, 5))],
    ids=["defaults", "the-url-wins"],
)
def test_bus_connections_probe_a_silent_server(
    postgres_url: str, query: str, expected: tuple[int, int, int, int]
) -> None:
    """TCP keepalive on the bus's sockets: a listener whose connection died without a reset
    fails within about a minute and reconnects, instead of hearing nothing for hours."""
    with bus_module.connect(sa.make_url(postgres_url + query).set(drivername="postgresql")) as conn:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        with sock:
            options = (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            )
    assert options == expected


def terminate(postgres_url: str, name: str) -> int:
    """End the named sessions, as a database restart would."""
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        count = conn.scalar(sa.text(f"{query} WHERE application_name = :n"), {"n": name})
    admin.dispose()
    return int(count or 0)


def test_pack_splits_batches_under_the_notify_limit_and_drops_what_cannot_fit() -> None:
    notes = [Note(tuple(event(f"n{i}-{k}", size=100) for k in range(5)), False) for i in range(40)]
    notes.append(Note((event("huge", size=MAX_PAYLOAD),), False))
    notes.append(Note((), True))
    payloads, oversized = pack("me", notes)
    assert oversized == 1
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = [Payload.model_validate_json(p) for p in payloads]
    assert [d.feed for d in decoded] == [False] * (len(decoded) - 1) + [True]
    ids = [data["id"] for d in decoded for _kind, data in d.events]
    assert ids == [f"n{i}-{k}" for i in range(40) for k in range(5)]
    assert {d.origin for d in decoded} == {"me"}


def test_a_full_send_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "QUEUE_SIZE", 2)
    counted: list[int] = []
    bus = Bus("postgresql+psycopg://nobody@127.0.0.1:1/none", Hub(), on_drop=counted.append)
    for i in range(3):
        bus.send([event(f"q{i}")], feed=False)  # never blocks, though nothing sends
    assert bus.dropped == 1
    assert counted == [1]


class HungThread:
    """A bus thread stuck in a call to a silent database: each join waits its whole timeout
    on a clock of its own."""

    def __init__(self, clock: list[float], name: str) -> None:
        self.clock = clock
        self.name = name
        self.waits: list[float] = []

    def join(self, timeout: float) -> None:
        self.waits.append(timeout)
        self.clock[0] += timeout

    def is_alive(self) -> bool:
        return True


def test_stopping_waits_for_both_threads_within_one_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(bus_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bus = Bus("postgresql+psycopg://nobody@127.0.0.1:1/none", Hub())
    threads = [HungThread(clock, "bus-listen"), HungThread(clock, "bus-send")]
    bus._threads = threads  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger=bus_module.__name__):
        bus.stop()
    assert [t.waits for t in threads] == [[bus_module.JOIN_TIMEOUT_S], [0.0]]
    assert [r.getMessage() for r in caplog.records if r.name == bus_module.__name__] == [
        f"bus {bus.origin}: ['bus-listen', 'bus-send'] still waiting on the database; left"
    ]


def test_channels_are_per_schema_and_valid_identifiers() -> None:
    assert channel_for("gp_abc") == "gridpatrol_gp_abc"
    assert channel_for("gp_abc") != channel_for("gp_abd")
    long = channel_for("s" * 63)
    assert len(long) <= 63 and long != channel_for("s" * 62 + "t")

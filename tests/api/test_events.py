"""Server-sent events over HTTP: event ids, replay after a reconnect, resets."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gridpatrol.api.auth import SESSION_COOKIE
from gridpatrol.api.routers.events import SESSION_RECHECK_S

from .conftest import TOKENS, body, fresh_jpeg

WAIT_S = 60


@dataclass(frozen=True)
class Message:
    id: str
    kind: str
    data: dict[str, Any]


Until = Callable[[list[Message]], bool]


class Stream:
    """``GET /events`` read in a thread until ``until`` holds for what it got, or it ends."""

    def __init__(
        self, server: Any, until: Until, cookie: str | None = None, **request: Any
    ) -> None:
        self.server = server
        self.cookie = cookie
        self.until = until
        self.request = request
        self.messages: list[Message] = []
        self.connected = threading.Event()
        self.ended_by_server = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.connected.wait(WAIT_S), "the stream did not open"

    def _read(self) -> None:
        with (
            self._client() as http,
            http.stream("GET", "/events", **self.request) as stream,
        ):
            assert stream.status_code == 200
            fields: dict[str, str] = {}
            for line in stream.iter_lines():
                self.connected.set()
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "data" in fields:
                    data = json.loads(fields["data"])
                    self.messages.append(Message(fields.get("id", ""), fields["event"], data))
                    if self.until(self.messages):
                        return
                fields = {}
            self.ended_by_server = True

    def _client(self) -> httpx.Client:
        if self.cookie is None:
            client: httpx.Client = self.server.client("reviewer")
            return client
        cookies = {SESSION_COOKIE: self.cookie}
        return httpx.Client(base_url=self.server.url, cookies=cookies, timeout=WAIT_S)

    def join(self) -> list[Message]:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), f"still waiting; got {self.messages}"
        return self.messages


def changed(wanted: dict[str, str]) -> Until:
    """Until each candidate of ``wanted`` was announced with that status."""
    return lambda got: all(
        any(m.data.get("id") == cid and m.data["status"] == st for m in got)
        for cid, st in wanted.items()
    )


def create(server: Any, doc: dict[str, Any]) -> dict[str, Any]:
    with server.client("producer") as http:
        response = http.post("/candidates", json=doc, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


def upload(server: Any, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    with server.client("producer") as http:
        response = http.put(
            f"/evidence/{sha}", content=data, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code in (200, 201), response.text
    return sha


def dropped_total(server: Any) -> float:
    with server.client("reviewer") as http:
        text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("gridpatrol_api_sse_dropped_total "):
            return float(line.split()[1])
    raise AssertionError("gridpatrol_api_sse_dropped_total is not exported")


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_reconnect_replays_what_changed_since_the_last_event(server: Any, how: str) -> None:
    sha = upload(server, fresh_jpeg())
    first_doc = {**body(None, sha), "id": str(uuid.uuid4())}
    stream = Stream(server, changed({first_doc["id"]: "new"}))
    first = create(server, first_doc)
    (message,) = stream.join()
    assert message.kind == "candidate.created"
    assert message.id == f"{first['updated_at']}|{first['id']}"

    # Disconnected: three changes the console does not hear of.
    second = create(server, body(None, sha))
    third = create(server, body(None, sha))
    with server.client("reviewer") as http:
        review = http.post(f"/candidates/{first['id']}/review", json={"decision": "confirm"})
        assert review.status_code == 200, review.text
    missed = {second["id"]: "new", third["id"]: "new", first["id"]: "confirmed"}

    resume = (
        {"headers": {"Last-Event-ID": message.id}}
        if how == "header"
        else {"params": {"since": message.id}}
    )
    got = Stream(server, changed(missed), **resume).join()
    assert {m.kind for m in got} == {"candidate.changed"}
    replayed = {m.data["id"]: m for m in got if m.data["id"] in missed}
    assert {cid: m.data["status"] for cid, m in replayed.items()} == missed
    for m in got:
        assert m.id == f"{m.data['updated_at']}|{m.data['id']}"
    # Oldest change first, as they happened.
    assert [m.data["id"] for m in got if m.data["id"] in missed] == list(missed)


def test_an_id_that_is_not_ours_gets_a_reset(server: Any) -> None:
    got = Stream(server, bool, headers={"Last-Event-ID": "yesterday"}).join()
    assert [(m.kind, m.data) for m in got] == [("reset", {"reason": "unknown_id"})]
    assert got[0].id.endswith("|")


@pytest.mark.parametrize(
    "instant",
    [
        "0001-01-01T00:00:00+00:00",
        "0001-01-01T05:00:00+14:00",
        "9999-12-31T23:59:59-05:00",
    ],
)
def test_an_id_at_the_ends_of_the_calendar_gets_a_reset(server: Any, instant: str) -> None:
    got = Stream(server, bool, params={"since": f"{instant}|x"}).join()
    assert [(m.kind, m.data) for m in got] == [("reset", {"reason": "unknown_id"})]


def test_a_console_that_falls_behind_gets_a_reset_and_so_does_a_long_replay(
    server: Any,
) -> None:
    """One change of more candidates than a stream's queue holds (1000): the stream gets a
    reset and ends; a reconnect from before them (over 500 to replay) gets a reset too."""
    data = fresh_jpeg()
    sha = hashlib.sha256(data).hexdigest()
    marker_doc = {**body(None, sha), "id": str(uuid.uuid4())}
    stream = Stream(server, changed({marker_doc["id"]: "incomplete"}))
    create(server, marker_doc)
    (before,) = stream.join()

    # 1000 more candidates waiting for the same evidence file: its upload changes 1001 at once.
    with server.client("producer") as http:
        for _ in range(2):
            items = [
                {"idempotency_key": uuid.uuid4().hex, "body": body(None, sha)} for _ in range(500)
            ]
            response = http.post("/candidates/batch", json={"items": items})
            assert response.status_code == 207, response.text
            assert {item["status"] for item in response.json()["items"]} == {201}
    dropped = dropped_total(server)

    behind = Stream(server, lambda got: False)
    upload(server, data)
    got = behind.join()
    assert behind.ended_by_server
    assert [(m.kind, m.data) for m in got] == [("reset", {"reason": "overflow"})]
    assert got[0].id.endswith("|")
    assert dropped_total(server) == dropped + 1001

    far = Stream(server, bool, headers={"Last-Event-ID": before.id}).join()
    assert [(m.kind, m.data) for m in far] == [("reset", {"reason": "too_many"})]


def test_a_stream_opened_with_a_session_ends_when_the_session_is_logged_out(server: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        login = http.post("/session", json={"token": TOKENS["reviewer"]})
        assert login.status_code == 200, login.text
        cookie = http.cookies[SESSION_COOKIE]
        csrf = login.json()["csrf_token"]
    stream = Stream(server, lambda got: False, cookie=cookie)
    # The stream looks the logout up at most every SESSION_RECHECK_S: once that has passed
    # since it opened, the next change sent asks.
    time.sleep(SESSION_RECHECK_S + 0.2)
    # Logged out in another tab: the cookie the open stream came with is the same session.
    with httpx.Client(base_url=server.url, cookies={SESSION_COOKIE: cookie}) as http:
        assert http.delete("/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    create(server, body(None, upload(server, fresh_jpeg())))
    assert stream.join() == []
    assert stream.ended_by_server
    # A stream opened with a bearer token is not a session's: it goes on.
    doc = {**body(None, upload(server, fresh_jpeg())), "id": str(uuid.uuid4())}
    bearer = Stream(server, changed({doc["id"]: "new"}))
    create(server, doc)
    assert [m.kind for m in bearer.join()] == ["candidate.created"]

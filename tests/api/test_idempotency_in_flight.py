"""A request whose Idempotency-Key another request is running right now answers 409 at once
(it does not wait for the first one and replay it), in this API process or another one; in a
batch only that item does, while the others go on. Once the first one has answered, the key
replays its answer; a key whose request failed runs again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest

from .test_candidates import post
from .test_intake_consistency import IN_FLIGHT_ITEM, batch, on_postgres_only, patch

URL = "/api/v1/candidates"
# Bounded only so that a request that waits for the held one fails instead of hanging the test.
ANSWER_S = 20


class Held:
    """Requests stopped where their key is in flight, until the test releases them."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()
        self.released = threading.Event()

    def arrived(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            reached = self.changed.wait_for(lambda: self.count >= count, timeout=ANSWER_S)
        assert reached, f"{self.count} of {count} requests were held"

    def stop_first(self, has: Callable[[str], bool]) -> Callable[[str], bool]:
        """``has`` (the evidence store's) that stops the first request to look."""

        def first_stops(digest: str) -> bool:
            with self.changed:
                first = self.count == 0
                self.count += 1
                self.changed.notify_all()
            if first:
                assert self.released.wait(60)
            return has(digest)

        return first_stops


class CountedLock:
    """The app's SQLite write lock, counting the writers that come to wait for it."""

    def __init__(self, lock: Any, held: Held) -> None:
        self.lock = lock
        self.held = held

    def __enter__(self) -> None:
        self.held.arrived()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@contextmanager
def holding(api: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    """Hold the app's writes sent in the block where their keys are in flight.

    SQLite: every write waits for the write lock, which the test's own transaction holds (a
    request's key is in flight from before its transaction). PostgreSQL: the first write
    stops in its work, with its key claimed under the key's advisory lock, at its first look
    at the evidence store.
    """
    held = Held()
    db = api.http.app.state.db
    if db.dialect == "sqlite":
        with db.write():
            monkeypatch.setattr(db, "_write_lock", CountedLock(db._write_lock, held))
            yield held
        return
    store = api.http.app.state.services.candidates.store
    monkeypatch.setattr(store, "has", held.stop_first(store.has))
    try:
        yield held
    finally:
        held.released.set()


def assert_in_flight(response: Any, path: str) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {**IN_FLIGHT_ITEM["body"], "instance": path}


@contextmanager
def in_flight(
    api: Any, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor, send: Callable[[], Any]
) -> Iterator[tuple[Held, Future[Any]]]:
    """``send`` started from ``pool`` and held (see :func:`holding`) for the block."""
    with holding(api, monkeypatch) as held:
        first = pool.submit(send)
        held.wait_for(1)
        yield held, first


def first_request(api: Any, how: str) -> tuple[Callable[[], Any], str, int]:
    """A create or a patch under the key ``k-held``: how to send it, its path, its status."""
    sha = api.put_jpeg()
    if how == "post":
        payload = api.body("e-held", sha)
        return lambda: post(api, payload, key="k-held"), URL, 201
    cid = api.create(api.body("e-patched", sha))["id"]
    change = {"description": "fuller"}
    return lambda: patch(api, cid, change, "k-held"), f"{URL}/{cid}", 200


def with_held(api: Any, keys: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A create's body and batch items under ``keys``: that body under ``k-held``, bodies of
    other events under the other keys."""
    sha = api.put_jpeg()
    payload = api.body("e-held", sha)
    items = [
        {"idempotency_key": k, "body": payload if k == "k-held" else api.body(f"e-{k}", sha)}
        for k in keys
    ]
    return payload, items


@pytest.mark.parametrize("how", ["post", "patch"])
def test_a_key_in_flight_is_refused_at_once_and_replayed_once_answered(
    api: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    send, path, status = first_request(api, how)
    with ThreadPoolExecutor(2) as pool:
        with in_flight(api, monkeypatch, pool, send) as (_held, first):
            assert_in_flight(pool.submit(send).result(timeout=ANSWER_S), path)
        answered = first.result(timeout=ANSWER_S)
    assert answered.status_code == status, answered.text
    replay = send()
    assert (replay.status_code, replay.json()) == (status, answered.json())


def test_a_batch_item_whose_key_is_in_flight_is_refused_alone(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, items = with_held(api, ["k-a", "k-held", "k-b"])
    send = partial(post, api, payload, "k-held")
    with ThreadPoolExecutor(2) as pool:
        with in_flight(api, monkeypatch, pool, send) as (held, first):
            sent = pool.submit(batch, api, items)
            if api.http.app.state.db.dialect == "sqlite":
                # One writer at a time: the batch's other items wait for the lock as well.
                held.wait_for(2)
            else:
                # The other items are created while the first request still runs.
                sent.result(timeout=ANSWER_S)
        results = sent.result(timeout=ANSWER_S)
        created = first.result(timeout=ANSWER_S)
    assert [r["status"] for r in results] == [201, 409, 201]
    assert results[1] == IN_FLIGHT_ITEM
    assert created.status_code == 201, created.text
    # Sent again, the refused item replays the first request's answer, the others their own.
    again = batch(api, items)
    assert again == [results[0], {"status": 201, "body": created.json()}, results[2]]


@on_postgres_only
def test_another_api_process_meets_the_key_in_flight(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two apps on one database, as two API worker processes: only the key's advisory lock,
    # held by the first one's transaction, tells the other that the key is in flight.
    api, other = make_api(), make_api()
    payload, items = with_held(api, ["k-held", "k-a"])
    send = partial(post, api, payload, "k-held")
    with ThreadPoolExecutor(2) as pool:
        with in_flight(api, monkeypatch, pool, send) as (_held, first):
            assert_in_flight(pool.submit(post, other, payload, "k-held").result(ANSWER_S), URL)
            results = pool.submit(batch, other, items).result(timeout=ANSWER_S)
        created = first.result(timeout=ANSWER_S)
    assert [r["status"] for r in results] == [409, 201]
    assert results[0] == IN_FLIGHT_ITEM
    assert created.status_code == 201, created.text
    replay = post(other, payload, key="k-held")
    assert (replay.status_code, replay.json()) == (201, created.json())
    listed = api.as_("reviewer").get(URL).json()["items"]
    assert sorted(c["id"] for c in listed) == sorted(
        [created.json()["id"], results[1]["body"]["id"]]
    )


def test_a_key_whose_request_failed_runs_again(api: Any) -> None:
    cid = str(uuid.uuid4())
    change = {"description": "fuller"}
    assert patch(api, cid, change, "k-failed").status_code == 404
    api.create({**api.body("e1", api.put_jpeg()), "id": cid})
    # Neither answered from the failed request nor refused as in flight: run, and stored.
    patched = patch(api, cid, change, "k-failed")
    assert (patched.status_code, patched.json()["description"]) == (200, "fuller")
    assert patch(api, cid, change, "k-failed").json() == patched.json()

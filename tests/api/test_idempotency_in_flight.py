"""A request whose Idempotency-Key another request is running right now answers 409 at once
(it does not wait for the first one and replay it), in this API process or another one; in a
batch only that item does, while the others go on. Once the first one has answered, the key
replays its answer; a key whose request failed runs again. A key that is done replays its
answer even while another replay of it holds the key."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, text

from gridpatrol.api import service

from .test_candidates import post
from .test_intake_consistency import IN_FLIGHT_ITEM, batch, on_postgres_only, patch

URL = "/api/v1/candidates"
T = TypeVar("T")
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
    """The app's SQLite write lock, counting the writers that come to wait for it.

    ``first_goes_last``: the first writer to come takes the lock only after another writer
    has written, so a batch that meets its key is refused before (not replayed after) it.
    """

    def __init__(self, lock: Any, held: Held, first_goes_last: bool) -> None:
        self.lock = lock
        self.held = held
        self.first: int | None = None
        self.first_goes_last = first_goes_last
        self.another_wrote = threading.Event()

    def __enter__(self) -> None:
        with self.held.changed:
            if self.held.count == 0:
                self.first = threading.get_ident()
        self.held.arrived()
        if self.first_goes_last and self.first == threading.get_ident():
            assert self.another_wrote.wait(ANSWER_S)
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if self.first != threading.get_ident():
            self.another_wrote.set()


@contextmanager
def holding(
    api: Any, monkeypatch: pytest.MonkeyPatch, first_goes_last: bool = False
) -> Iterator[Held]:
    """Hold the app's writes sent in the block where their keys are in flight.

    SQLite: every write waits for the write lock, which the test's own transaction holds (a
    request's key is in flight from before its transaction; ``first_goes_last``: see
    :class:`CountedLock`). PostgreSQL: the first write
    stops in its work, with its key claimed under the key's advisory lock, at its first look
    at the evidence store.
    """
    held = Held()
    db = api.http.app.state.db
    if db.dialect == "sqlite":
        with db.write():
            lock = CountedLock(db._write_lock, held, first_goes_last)
            monkeypatch.setattr(db, "_write_lock", lock)
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
    api: Any,
    monkeypatch: pytest.MonkeyPatch,
    pool: ThreadPoolExecutor,
    send: Callable[[], Any],
    first_goes_last: bool = False,
) -> Iterator[tuple[Held, Future[Any]]]:
    """``send`` started from ``pool`` and held (see :func:`holding`) for the block."""
    with holding(api, monkeypatch, first_goes_last) as held:
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
        with in_flight(api, monkeypatch, pool, send, first_goes_last=True) as (held, first):
            sent = pool.submit(batch, api, items)
            if api.http.app.state.db.dialect == "sqlite":
                # One writer at a time: the batch's other items wait for the lock as well;
                # the batch writes first, before the key's request (after its commit the
                # batch would replay it).
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


CHANGE = {"description": "fuller"}


def failed_then_run(first: Any, then: Any) -> Any:
    """A patch under ``k-failed`` that fails (404) in ``first``, sent again in ``then`` once
    its candidate exists: neither answered from the failed request nor refused as in
    flight, but run. Its answer."""
    cid = str(uuid.uuid4())
    assert patch(first, cid, CHANGE, "k-failed").status_code == 404
    then.create({**then.body("e1", then.put_jpeg()), "id": cid})
    patched = patch(then, cid, CHANGE, "k-failed")
    assert (patched.status_code, patched.json()["description"]) == (200, "fuller")
    return patched


def test_a_key_whose_request_failed_runs_again(api: Any) -> None:
    patched = failed_then_run(api, api)
    assert patch(api, patched.json()["id"], CHANGE, "k-failed").json() == patched.json()


def meanwhile(
    api: Any, statement: str, request: Callable[[], Any], action: Callable[[], T]
) -> tuple[Any, T]:
    """Send ``request`` to ``api`` and, once it has run its first statement that starts with
    ``statement`` (in its transaction, its key held), ``action`` from another thread, answered
    before the request goes on. What both returned."""
    engine = api.http.app.state.db.engine
    out: list[T] = []
    with ThreadPoolExecutor(1) as pool:

        def ran(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            if not out and sql.startswith(statement):
                out.append(pool.submit(action).result(timeout=ANSWER_S))

        event.listen(engine, "after_cursor_execute", ran)
        try:
            answered = request()
        finally:
            event.remove(engine, "after_cursor_execute", ran)
    assert len(out) == 1
    return answered, out[0]


def replays(api: Any, key: str, payload: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """A single request, another body and a batch item under ``key``: their answers."""
    other_body = {**payload, "description": "another body"}
    items = [{"idempotency_key": key, "body": body} for body in (payload, other_body)]
    return post(api, payload, key), post(api, other_body, key), batch(api, items)


def assert_replayed(answers: tuple[Any, Any, list[Any]], created: Any) -> None:
    single, other_body, items = answers
    assert (single.status_code, single.json()) == (201, created.json())
    assert other_body.status_code == 422, other_body.text
    assert other_body.json()["detail"] == "this Idempotency-Key was used with another request body"
    assert items[0] == {"status": 201, "body": created.json()}
    assert items[1]["status"] == 422


def test_a_done_key_replays_while_another_replay_of_it_runs(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SPEC §8: a replay of key+body returns the original response, even while another
    # replay of it runs (and holds the key) in this process: nothing is in flight.
    monkeypatch.setattr(api.http.app.state.db, "writes_inline", lambda: False)
    payload = api.body("e-done", api.put_jpeg())
    created = post(api, payload, key="k-done")
    assert created.status_code == 201, created.text
    pg = api.http.app.state.db.dialect == "postgresql"
    claim = "WITH held" if pg else "INSERT INTO idempotency"
    send = partial(post, api, payload, "k-done")
    replayed, answers = meanwhile(api, claim, send, partial(replays, api, "k-done", payload))
    assert (replayed.status_code, replayed.json()) == (201, created.json())
    assert_replayed(answers, created)


@on_postgres_only
def test_a_done_key_replays_while_another_process_replays_it(make_api: Any) -> None:
    # Two apps on one database, as two API worker processes: the first one's replay holds
    # the key's advisory lock, which the other meets.
    api, other = make_api(), make_api()
    payload = api.body("e-done", api.put_jpeg())
    created = post(api, payload, key="k-done")
    assert created.status_code == 201, created.text
    send = partial(post, api, payload, "k-done")
    replay_there = partial(replays, other, "k-done", payload)
    replayed, answers = meanwhile(api, "WITH held", send, replay_there)
    assert (replayed.status_code, replayed.json()) == (201, created.json())
    assert_replayed(answers, created)


# The advisory locks held of keys of the producer, named test-producer (a 64-bit lock id is
# classid:objid).
LOCKS_OF_KEYS = text(
    "SELECT count(*) FROM pg_locks AS l, unnest(CAST(:keys AS TEXT[])) AS k,"
    " LATERAL (SELECT "
    + service._key_lock("CAST('test-producer' AS TEXT)", "k")
    + " AS id) AS h WHERE l.locktype = 'advisory' AND l.objsubid = 1"
    " AND CAST(l.classid AS BIGINT) = (h.id >> 32) & 4294967295"
    " AND CAST(l.objid AS BIGINT) = h.id & 4294967295"
)


@on_postgres_only
def test_a_batch_of_done_keys_takes_no_advisory_locks(api: Any) -> None:
    # A replay needs no lock: a batch of 500 retries would otherwise take 500 of the lock
    # table's slots, which all sessions share (docs/operations.md).
    items = [
        {"idempotency_key": f"k-{n}", "body": api.body(f"e-{n}", api.put_jpeg())} for n in range(3)
    ]
    created = batch(api, items)
    assert [r["status"] for r in created] == [201, 201, 201]
    engine = api.http.app.state.db.engine

    def advisory_locks() -> int:
        """The batch's keys' advisory locks held (by any session)."""
        with engine.connect() as conn:
            found = conn.execute(LOCKS_OF_KEYS, {"keys": [i["idempotency_key"] for i in items]})
            return int(found.scalar_one())

    send = partial(api.as_("producer").post, f"{URL}/batch", json={"items": items})
    replayed, locks = meanwhile(api, "SELECT idempotency.", send, advisory_locks)
    assert replayed.json()["items"] == created
    assert locks == 0


@on_postgres_only
def test_a_failed_request_releases_the_key_for_another_process(make_api: Any) -> None:
    # The key's lock ends with the failed request's transaction, also as another process
    # sees it: a lock held on by the pooled connection would pass a retry in the same
    # process (advisory locks are re-entrant), not this one.
    failed_then_run(make_api(), make_api())

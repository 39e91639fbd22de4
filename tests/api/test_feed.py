"""The platform's feed: visible order without gaps, cursors, acks, night hold."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from .conftest import LongPoll
from .test_auth_meta import feed_lag
from .test_candidates import WatchedLock
from .test_intake_consistency import on_postgres_only

FEED = "/api/v1/feed"
SH = ZoneInfo("Asia/Shanghai")
NIGHT = datetime(2026, 11, 27, 23, 30, tzinfo=SH).astimezone(UTC)
MORNING = datetime(2026, 11, 28, 8, 0, tzinfo=SH).astimezone(UTC)


def confirmed(api: Any, event: str, **kw: Any) -> str:
    cid = str(api.create(api.body(event, api.put_jpeg(), **kw))["id"])
    if api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json()["status"] == "new":
        assert api.review(cid, "confirm").status_code == 200
    return cid


def feed(api: Any, role: str = "platform", **params: Any) -> dict[str, Any]:
    response = api.as_(role).get(FEED, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_feed_in_visible_order_with_cursors(api: Any) -> None:
    a = confirmed(api, "a")
    unreviewed = api.create(api.body("u", api.put_jpeg()))["id"]
    b = confirmed(api, "b")
    page = feed(api, limit=1)
    assert [c["id"] for c in page["items"]] == [a]
    assert page["next_cursor"] == "1"
    page = feed(api, cursor=page["next_cursor"])
    assert [c["id"] for c in page["items"]] == [b]
    assert page["items"][0]["status"] == "confirmed"
    assert page["next_cursor"] == "2"
    empty = feed(api, cursor="2")
    assert empty == {"items": [], "next_cursor": "2"}
    assert unreviewed not in [c["id"] for c in feed(api)["items"]]


def test_ack_stores_the_cursor_per_token_and_marks_pulled(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    platform = api.as_("platform")
    assert platform.post(f"{FEED}/ack", json={"cursor": "1"}).status_code == 204
    assert [c["id"] for c in feed(api)["items"]] == [b]
    # another platform token has a cursor of its own
    assert [c["id"] for c in feed(api, role="platform2")["items"]] == [a, b]
    doc = api.as_("reviewer").get(f"/api/v1/candidates/{a}").json()
    assert doc["status"] == "pulled"
    assert doc["history"][-1]["action"] == "pulled"
    assert platform.post(f"{FEED}/ack", json={"cursor": "9"}).status_code == 422
    assert platform.post(f"{FEED}/ack", json={"cursor": "x"}).status_code == 422
    assert platform.post(f"{FEED}/ack", json={"cursor": "0"}).status_code == 204
    assert [c["id"] for c in feed(api)["items"]] == [b]


def test_a_visible_change_gets_a_new_position(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    patched = api.as_("producer").patch(
        f"/api/v1/candidates/{a}",
        json={"detection": {"dwell_s": 600}},
        headers={"Idempotency-Key": "upd"},
    )
    assert patched.status_code == 200
    page = feed(api, cursor="2")
    assert [c["id"] for c in page["items"]] == [a]
    assert page["items"][0]["detection"]["dwell_s"] == 600
    assert page["next_cursor"] == "3"
    assert [c["id"] for c in feed(api)["items"]] == [b, a]


def test_the_feed_lists_a_case_once_at_its_latest_change(api: Any) -> None:
    """A detector's routine updates of a confirmed case each move it in the feed: a platform
    reading from before it gets it once, as it is now, and its lag counts it once."""
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    for dwell in range(1, 21):
        patched = api.as_("producer").patch(
            f"/api/v1/candidates/{a}",
            json={"detection": {"dwell_s": dwell}},
            headers={"Idempotency-Key": f"dwell-{dwell}"},
        )
        assert patched.status_code == 200, patched.text
    page = feed(api, role="platform2", cursor="0")
    assert [c["id"] for c in page["items"]] == [b, a]
    assert page["items"][1]["detection"]["dwell_s"] == 20
    assert page["next_cursor"] == "22"
    assert feed(api, role="platform2", cursor="2") == {
        "items": [page["items"][1]],
        "next_cursor": "22",
    }
    assert feed_lag(api) == {"test-platform": 2.0, "test-platform2": 2.0}
    # Position 1 was a's before its updates: acknowledging it passes nothing the platform has.
    assert api.as_("platform").post(f"{FEED}/ack", json={"cursor": "1"}).status_code == 204
    assert doc_of(api, a)["status"] == "confirmed"
    assert feed_lag(api) == {"test-platform": 2.0, "test-platform2": 2.0}
    assert api.as_("platform").post(f"{FEED}/ack", json={"cursor": "22"}).status_code == 204
    assert [doc_of(api, cid)["status"] for cid in (a, b)] == ["pulled", "pulled"]
    assert feed_lag(api) == {"test-platform": 0.0, "test-platform2": 2.0}


def test_night_hold_until_the_window_ends(api: Any) -> None:
    api.clock.now = datetime(2026, 11, 27, 23, 30, tzinfo=SH).astimezone(UTC)
    held = confirmed(api, "held")
    urgent = confirmed(api, "urgent", ctype="crowd_gathering")
    auto = confirmed(api, "auto", ctype="smoke")
    doc = api.as_("reviewer").get(f"/api/v1/candidates/{held}").json()
    morning = datetime(2026, 11, 28, 8, 0, tzinfo=SH)
    assert datetime.fromisoformat(doc["hold_until"]) == morning
    assert doc["history"][-1]["action"] == "held"
    assert [c["id"] for c in feed(api)["items"]] == [urgent, auto]
    api.clock.now = datetime(2026, 11, 28, 7, 59, tzinfo=SH).astimezone(UTC)
    assert [c["id"] for c in feed(api)["items"]] == [urgent, auto]
    api.clock.now = datetime(2026, 11, 28, 8, 0, tzinfo=SH).astimezone(UTC)
    page = feed(api)
    assert [c["id"] for c in page["items"]] == [urgent, auto, held]
    assert page["next_cursor"] == "3"
    assert page["items"][2]["history"][-1]["action"] == "released"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_release_that_waited_for_the_write_lock_is_dated_when_it_got_it(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # updated_at must follow commit order (event replays rely on it), so a write takes the
    # time once it holds the lock, not before it waited for it.
    (cid,) = held(api, 1)
    api.clock.now = MORNING
    db = api.http.app.state.db
    lock = WatchedLock(db._write_lock)
    monkeypatch.setattr(db, "_write_lock", lock)
    later = MORNING + timedelta(seconds=20)
    with ThreadPoolExecutor(1) as pool:
        with db.write():
            pending = pool.submit(feed, api)
            assert lock.blocked.wait(20), "the release never reached the write lock"
            api.clock.now = later  # the time the lock is held by another writer
        assert [c["id"] for c in pending.result(timeout=20)["items"]] == [cid]
    doc = doc_of(api, cid)
    assert doc["history"][-1]["action"] == "released"
    assert datetime.fromisoformat(doc["history"][-1]["at"]) == later
    assert datetime.fromisoformat(doc["updated_at"]) == later


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_batch_is_dated_when_its_transaction_holds_the_write_lock(api: Any) -> None:
    engine = api.http.app.state.db.engine

    def waited(conn: Any) -> None:
        # Each write transaction waits 20 s for another process's lock (BEGIN IMMEDIATE).
        if not conn.get_execution_options().get("readonly", False):
            api.clock.advance(seconds=20)

    event.listen(engine, "begin", waited)
    try:
        (cid,) = batch(api, 1, "garbage_overflow")
    finally:
        event.remove(engine, "begin", waited)
    doc = doc_of(api, cid)
    assert datetime.fromisoformat(doc["created_at"]) == api.clock.now
    assert datetime.fromisoformat(doc["updated_at"]) == api.clock.now


def test_feed_roles_and_parameters(api: Any) -> None:
    assert api.as_("reviewer").get(FEED).status_code == 403
    assert api.as_("producer").get(FEED).status_code == 403
    assert api.http.get(FEED).status_code == 401
    assert api.as_("platform").get(FEED, params={"wait": 31}).status_code == 422
    assert api.as_("platform").get(FEED, params={"cursor": "-1"}).status_code == 422
    assert api.as_("admin").get(FEED).status_code == 200


# Concurrency: two apps on one database stand for two worker processes. Each scenario
# starts its requests together from threads of their own and then checks exact outcomes;
# on PostgreSQL unlocked read-modify-writes made these fail (duplicates, lost updates, 500s).


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call on a thread of its own, all released at once; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=300) for future in futures]


def batch(api: Any, count: int, ctype: str) -> list[str]:
    """``count`` complete candidates of ``ctype`` created in one batch; their ids."""
    sha = api.put_jpeg()
    items = [
        {"idempotency_key": uuid.uuid4().hex, "body": api.body(uuid.uuid4().hex, sha, ctype)}
        for _ in range(count)
    ]
    response = api.as_("producer").post("/api/v1/candidates/batch", json={"items": items})
    assert response.status_code == 207, response.text
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201] * count
    return [str(r["body"]["id"]) for r in results]


def held(api: Any, count: int) -> list[str]:
    """``count`` candidates confirmed at night, so held until the morning."""
    api.clock.now = NIGHT
    ids = batch(api, count, "garbage_overflow")
    for cid in ids:
        assert api.review(cid, "confirm").json()["hold_until"] == MORNING.isoformat()
    return ids


def patch(api: Any, cid: str) -> int:
    response = api.as_("producer").patch(
        f"/api/v1/candidates/{cid}",
        json={"description": f"patched {cid}"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    return int(response.status_code)


def ack(api: Any, role: str, cursor: int) -> int:
    response = api.as_(role).post(f"{FEED}/ack", json={"cursor": str(cursor)})
    return int(response.status_code)


def register(api: Any, cid: str) -> int:
    response = api.as_("platform").post(
        f"/api/v1/candidates/{cid}/status", json={"stage": "registered"}
    )
    return int(response.status_code)


def doc_of(api: Any, cid: str) -> dict[str, Any]:
    return dict(api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json())


def actions(doc: dict[str, Any], action: str) -> int:
    return sum(1 for h in doc["history"] if h["action"] == action)


def test_concurrent_releases_give_each_held_candidate_one_position(make_api: Any) -> None:
    apis = [make_api(), make_api()]
    ids = held(apis[0], 40)
    apis[0].clock.now = MORNING
    together([partial(feed, apis[i % 2]) for i in range(8)])
    page = feed(apis[0], limit=1000)
    assert sorted(c["id"] for c in page["items"]) == sorted(ids)
    assert page["next_cursor"] == "40"
    assert all(actions(doc, "released") == 1 for doc in page["items"])


def test_a_release_loses_no_concurrent_update(make_api: Any) -> None:
    apis = [make_api(), make_api()]
    ids = held(apis[0], 30)
    apis[0].clock.now = MORNING
    releases = [partial(feed, apis[i % 2]) for i in range(4)]
    patches = [partial(patch, apis[i % 2], cid) for i, cid in enumerate(ids)]
    assert together(releases + patches)[len(releases) :] == [200] * len(ids)
    page = feed(apis[0], limit=1000)
    assert sorted(c["id"] for c in page["items"]) == sorted(ids)
    moved = 0
    for cid in ids:
        doc = doc_of(apis[0], cid)
        assert doc["description"] == f"patched {cid}"
        assert (actions(doc, "released"), actions(doc, "updated")) == (1, 1)
        order = [h["action"] for h in doc["history"] if h["action"] in ("released", "updated")]
        moved += order == ["released", "updated"]
    # Patched after its release, a visible candidate moves to a new position.
    assert page["next_cursor"] == str(len(ids) + moved)


def test_an_ack_loses_no_concurrent_update(make_api: Any) -> None:
    apis = [make_api(), make_api()]
    ids = batch(apis[0], 30, "smoke")  # auto-confirmed: positions 1 to 30
    registered, patched = ids[::2], ids[1::2]
    calls = [partial(ack, apis[0], "platform", 30), partial(ack, apis[1], "platform2", 30)]
    calls += [partial(register, apis[i % 2], cid) for i, cid in enumerate(registered)]
    calls += [partial(patch, apis[i % 2], cid) for i, cid in enumerate(patched)]
    assert together(calls) == [204, 204] + [200] * len(ids)
    for cid in registered:
        doc = doc_of(apis[0], cid)
        assert doc["status"] == "registered"
        assert list(doc["stages"]) == ["registered"]
    for cid in patched:
        doc = doc_of(apis[0], cid)
        assert doc["description"] == f"patched {cid}"
        pulled = actions(doc, "pulled")
        assert (doc["status"], pulled, actions(doc, "updated")) in (
            ("pulled", 1, 1),
            # Moved past position 30 before the ack read it: pulled once the platform
            # acknowledges its new position.
            ("confirmed", 0, 1),
        )
    assert ack(apis[1], "platform", int(feed(apis[0])["next_cursor"])) == 204
    for cid in patched:
        doc = doc_of(apis[0], cid)
        assert (doc["status"], actions(doc, "pulled"), actions(doc, "updated")) == ("pulled", 1, 1)


def test_concurrent_acks_of_one_token_keep_the_furthest_cursor(make_api: Any) -> None:
    apis = [make_api(), make_api()]
    last = 0
    for _round in range(3):
        ids = batch(apis[0], 8, "smoke")
        cursors = list(range(last + 8, last, -1))
        last += 8
        calls = [partial(ack, apis[i % 2], "platform", c) for i, c in enumerate(cursors)]
        assert together(calls) == [204] * len(cursors)
        assert feed(apis[0]) == {"items": [], "next_cursor": str(last)}
        assert all(actions(doc_of(apis[0], cid), "pulled") == 1 for cid in ids)


@contextmanager
def side_connections(db_url: str) -> Iterator[tuple[sa.Connection, sa.Connection]]:
    """A connection to hold locks as another worker's transaction would, and one in autocommit
    to watch who waits for whom (pg_stat_activity is read once per transaction)."""
    engine = sa.create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as holder, engine.connect() as watcher:
            yield holder, watcher.execution_options(isolation_level="AUTOCOMMIT")
    finally:
        engine.dispose()


def backend_of(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def waiting_for(watcher: sa.Connection, pid: int) -> int:
    """The backend that waits for a lock ``pid`` holds, once one does."""
    query = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waiter = watcher.execute(query, {"pid": pid}).scalar()
        if waiter is not None:
            return int(waiter)
        time.sleep(0.02)
    raise AssertionError(f"no backend came to wait for backend {pid}")


@on_postgres_only
def test_an_ack_of_the_position_a_case_is_leaving_does_not_pull_it(
    make_api: Any, db_url: str
) -> None:
    """The ack of a case's old position, while a PATCH moves it, leaves it to the ack of its
    new position: the ack's look at the feed was taken before it waited for the case."""
    apis = [make_api(), make_api()]
    a, b = batch(apis[0], 2, "smoke")  # auto-confirmed: positions 1 and 2
    with side_connections(db_url) as (holder, watcher), ThreadPoolExecutor(2) as pool:
        with holder.begin():
            # A create or release in another worker, holding the feed counter.
            holder.exec_driver_sql("SELECT last FROM feed_counter WHERE id = 1 FOR UPDATE")
            patched = pool.submit(patch, apis[0], a)
            # The PATCH holds A and has taken it from position 1; it waits for the counter.
            patching = waiting_for(watcher, backend_of(holder))
            acked = pool.submit(ack, apis[1], "platform", 1)
            # The ack found A at position 1 and waits for the PATCH's lock on it.
            waiting_for(watcher, patching)
        assert (patched.result(timeout=60), acked.result(timeout=60)) == (200, 204)
    doc = doc_of(apis[0], a)
    assert (doc["description"], doc["status"], actions(doc, "pulled")) == (
        f"patched {a}",
        "confirmed",
        0,
    )
    page = feed(apis[0], cursor="1")
    assert ([c["id"] for c in page["items"]], page["next_cursor"]) == ([b, a], "3")
    assert ack(apis[0], "platform", 3) == 204
    for cid in (a, b):
        doc = doc_of(apis[0], cid)
        assert (doc["status"], actions(doc, "pulled")) == ("pulled", 1)


@on_postgres_only
def test_a_stage_after_the_night_hold_waits_for_another_writer_and_releases_the_case(
    api: Any, db_url: str
) -> None:
    """The report's release skips a case another writer has (it is placing or changing it);
    the report, once it holds the case itself, releases it as the window has ended, instead of
    refusing it as held until a time already past."""
    (cid,) = held(api, 1)
    api.clock.now = MORNING + timedelta(minutes=1)
    later = MORNING + timedelta(minutes=2)
    with side_connections(db_url) as (holder, watcher), ThreadPoolExecutor(1) as pool:
        with holder.begin():
            holder.execute(
                sa.text("SELECT id FROM candidates WHERE id = :id FOR UPDATE"), {"id": cid}
            )
            reported = pool.submit(
                api.as_("platform").post,
                f"/api/v1/candidates/{cid}/status",
                json={"stage": "registered"},
            )
            waiting_for(watcher, backend_of(holder))
            api.clock.now = later  # the time the report gets the case
        response = reported.result(timeout=60)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc == doc_of(api, cid)
    released, registered = doc["history"][-2:]
    assert (released["action"], released["who"]) == ("released", "policy")
    assert registered["action"] == "registered"
    assert datetime.fromisoformat(released["at"]) == later
    assert datetime.fromisoformat(registered["at"]) >= later
    assert doc["status"] == "registered"
    assert datetime.fromisoformat(doc["stages"]["registered"]) >= later
    assert actions(doc, "released") == 1
    page = feed(api)
    assert ([c["id"] for c in page["items"]], page["next_cursor"]) == ([cid], "1")


def test_crossed_merges_one_wins_the_other_is_refused(make_api: Any) -> None:
    """A into B and B into A at once: one merge goes through, the other finds its target
    merged (409), never a deadlock (503)."""
    apis = [make_api(), make_api()]
    for _round in range(5):
        a, b = batch(apis[0], 2, "garbage_overflow")
        calls = [
            partial(apis[0].review, a, "merge", merge_into=b),
            partial(apis[1].review, b, "merge", merge_into=a),
        ]
        statuses = sorted(r.status_code for r in together(calls))
        assert statuses == [200, 409]
        merged = [doc_of(apis[0], cid)["status"] for cid in (a, b)]
        assert sorted(merged) == ["merged", "new"]


@pytest.mark.parametrize("change", [{"urgency": "immediate"}, {"type": "smoke"}])
def test_a_held_candidate_made_urgent_is_visible_at_once(api: Any, change: dict[str, Any]) -> None:
    api.clock.now = NIGHT
    held = confirmed(api, "held")
    other = confirmed(api, "other")
    assert doc_of(api, held)["hold_until"] == MORNING.isoformat()
    patched = api.as_("producer").patch(
        f"/api/v1/candidates/{held}", json=change, headers={"Idempotency-Key": "urgent"}
    )
    assert patched.status_code == 200, patched.text
    doc = patched.json()
    assert (doc["urgency"], doc["hold_until"]) == ("immediate", None)
    assert [h["action"] for h in doc["history"]][-2:] == ["updated", "released"]
    assert doc["history"][-1]["who"] == "policy"
    page = feed(api)
    assert [c["id"] for c in page["items"]] == [held]
    assert page["items"][0] == doc_of(api, held) == doc
    # The morning releases the other one; the urgent one keeps its single position.
    api.clock.now = MORNING
    page = feed(api)
    assert [c["id"] for c in page["items"]] == [held, other]
    assert page["next_cursor"] == "2"
    assert actions(doc_of(api, held), "released") == 1


def test_a_patch_that_changes_nothing_keeps_position_and_history(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    new = api.create(api.body("n", api.put_jpeg()))
    api.clock.advance(minutes=5)
    for cid in (a, new["id"]):
        before = doc_of(api, cid)
        same = {
            "description": before["description"],
            "detection": {"dwell_s": before["detection"]["dwell_s"]},
            "evidence": before["evidence"][:1],
            "severity": before["severity"].lower(),
        }
        patched = api.as_("producer").patch(
            f"/api/v1/candidates/{cid}", json=same, headers={"Idempotency-Key": f"same-{cid}"}
        )
        assert (patched.status_code, patched.json()) == (200, before)
        assert doc_of(api, cid) == before
    assert feed(api, cursor="2") == {"items": [], "next_cursor": "2"}
    assert [c["id"] for c in feed(api)["items"]] == [a, b]


def test_a_confirm_between_the_polls_query_and_its_wait_wakes_it(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The poll looks at the database again only at its 30 s deadline.
    api = make_api(feed_recheck_s=LongPoll.WAIT_S)
    cid = str(api.create(api.body("r", api.put_jpeg()))["id"])
    services = api.http.app.state.services
    candidates, hub = services.candidates, services.hub
    query, wait = candidates.feed, hub.wait_feed
    queries: list[list[str]] = []
    woken: list[bool] = []

    def query_then_confirm(*args: Any) -> tuple[list[str], int]:
        items, last = query(*args)
        queries.append(items)
        if len(queries) == 1:
            # The poll found nothing and has not yet begun to wait: the race, every time.
            assert api.review(cid, "confirm").status_code == 200
        return items, last

    async def recorded_wait(timeout: float, since_generation: int | None = None) -> None:
        await wait(timeout, since_generation=since_generation)
        # Woken: the generation moved past the one the poll read before its query. A wait
        # that missed the confirm's wake-up ends at the deadline with it unchanged.
        woken.append(hub.feed_generation != since_generation)

    monkeypatch.setattr(candidates, "feed", query_then_confirm)
    monkeypatch.setattr(hub, "wait_feed", recorded_wait)
    with ThreadPoolExecutor(1) as pool:
        page = pool.submit(feed, api, wait=LongPoll.WAIT_S).result()
    assert woken == [True]
    assert [c["id"] for c in page["items"]] == [cid]
    assert [len(items) for items in queries] == [0, 1]


def test_a_cursor_beyond_the_end_is_refused_as_by_ack(api: Any) -> None:
    """A cursor kept from before a restore to an older database: answered as up to date, the
    platform would skip the positions given out until the feed reached it again."""
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    platform = api.as_("platform")
    beyond = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "cursor 3 is beyond the end of the feed",
    }
    for params in ({"cursor": "3"}, {"cursor": "3", "wait": 30}):
        refused = platform.get(FEED, params=params)
        assert (refused.status_code, refused.headers["content-type"]) == (
            422,
            "application/problem+json",
        )
        assert refused.json() == {**beyond, "instance": FEED}
    ack = platform.post(f"{FEED}/ack", json={"cursor": "3"})
    assert ack.json() == {**beyond, "instance": f"{FEED}/ack"}
    assert feed(api, cursor="2") == {"items": [], "next_cursor": "2"}
    assert [c["id"] for c in feed(api, cursor="0")["items"]] == [a, b]


def test_ack_takes_the_cursor_as_a_number_too(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    platform = api.as_("platform")
    assert platform.post(f"{FEED}/ack", json={"cursor": 1}).status_code == 204
    assert [c["id"] for c in feed(api)["items"]] == [b]
    assert doc_of(api, a)["status"] == "pulled"
    assert platform.post(f"{FEED}/ack", json={"cursor": "2"}).status_code == 204
    assert feed(api) == {"items": [], "next_cursor": "2"}
    for cursor in (-1, 1.0, True, 3):
        assert platform.post(f"{FEED}/ack", json={"cursor": cursor}).status_code == 422
    assert doc_of(api, b)["status"] == "pulled"

"""Candidate intake over HTTP: idempotency, natural keys, incomplete bodies, PATCH, batch."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from gridpatrol.api.db import CandidateRow, IdempotencyRow
from gridpatrol.api.schemas import check_depth
from gridpatrol.api.service import parse_candidate, request_hash

from .conftest import on_event_loop

URL = "/api/v1/candidates"


def post(api: Any, payload: Any, key: str | None = "k") -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.as_("producer").post(URL, json=payload, headers=headers)


def test_complete_candidate_is_new_with_policy_fields(api: Any) -> None:
    sha = api.put_jpeg()
    response = post(api, api.body("e1", sha))
    assert response.status_code == 201
    doc = response.json()
    assert doc["status"] == "new"
    assert doc["missing_elements"] == []
    assert doc["suggested_unit"] == "绿化市容所"
    assert doc["urgency"] == "normal"
    assert doc["history"][0]["who"] == "test-producer"
    assert doc["history"][0]["action"] == "created"
    uuid.UUID(doc["id"])
    got = api.as_("reviewer").get(f"{URL}/{doc['id']}")
    assert got.status_code == 200
    assert got.json() == doc


def test_replay_conflict_and_missing_key(api: Any) -> None:
    sha = api.put_jpeg()
    first = post(api, api.body("e1", sha), key="key-1")
    replay = post(api, api.body("e1", sha), key="key-1")
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    other = post(api, api.body("e2", sha), key="key-1")
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    missing = post(api, api.body("e3", sha), key=None)
    assert missing.status_code == 400
    assert missing.json()["status"] == 400


def leave_claim_in_flight(api: Any, key: str, payload: dict[str, Any]) -> None:
    """The claim a batch leaves when its process dies between its two transactions."""
    parsed = parse_candidate(payload).model_dump(mode="json", exclude_unset=True)
    digest = request_hash("POST", "/candidates", parsed)
    row = IdempotencyRow(
        key=key,
        principal="test-producer",
        request_hash=digest,
        state="in_flight",
        created_at=api.clock(),
    )
    with api.http.app.state.db.write() as session:
        session.add(row)


def test_a_claim_in_flight_refuses_then_goes_stale(api: Any) -> None:
    payload = api.body("e-stale", api.put_jpeg())
    leave_claim_in_flight(api, "key-stale", payload)
    assert post(api, payload, key="key-stale").status_code == 409
    assert post(api, {**payload, "description": "other"}, key="key-stale").status_code == 422
    api.clock.advance(seconds=61)
    taken = post(api, payload, key="key-stale")
    assert taken.status_code == 201
    replay = post(api, payload, key="key-stale")
    assert (replay.status_code, replay.json()) == (201, taken.json())


def test_known_natural_key_under_a_new_key_returns_the_existing(api: Any) -> None:
    sha = api.put_jpeg()
    first = post(api, api.body("same-event", sha), key="a").json()
    again = post(api, api.body("same-event", sha, description="again"), key="b")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    page = api.as_("reviewer").get(URL).json()
    assert [c["id"] for c in page["items"]] == [first["id"]]


def test_client_supplied_id(api: Any) -> None:
    cid = str(uuid.uuid4())
    doc = post(api, {**api.body("e1", api.put_jpeg()), "id": cid}).json()
    assert doc["id"] == cid
    assert api.as_("platform").get(f"{URL}/{cid}").json()["id"] == cid


@pytest.mark.parametrize(
    ("drop", "missing"),
    [
        ("description", ["description"]),
        ("location", ["location"]),
        ("severity", ["severity"]),
        ("urgency", ["urgency"]),
        ("occurred_at", ["occurred_at"]),
        ("type", ["type"]),
        ("evidence", ["evidence"]),
        ("source", ["source"]),
    ],
)
def test_missing_elements_are_stored_incomplete(api: Any, drop: str, missing: list[str]) -> None:
    payload = api.body("e1", api.put_jpeg())
    del payload[drop]
    response = post(api, payload)
    assert response.status_code == 201
    assert response.json()["status"] == "incomplete"
    assert response.json()["missing_elements"] == missing


def test_unknown_evidence_and_empty_location_count_as_missing(api: Any) -> None:
    payload = api.body("e1", "a" * 64, location={"crs": "WGS84"})
    doc = post(api, payload).json()
    assert doc["status"] == "incomplete"
    assert doc["missing_elements"] == ["location", "evidence"]


@pytest.mark.parametrize(
    "bad",
    [
        {"occurred_at": [1, 2]},
        {"occurred_at": "2026-11-27T03:59:00"},  # naive time
        {"severity": "SEVERE"},
        {"urgency": "now"},
        {"evidence": [{"sha256": "xyz"}]},
        {"location": {"lat": 91, "lon": 0}},
        {"source": {"type": "rumour"}},
        {"id": "not-a-uuid"},
    ],
)
def test_schema_invalid_bodies_are_refused_and_not_stored(api: Any, bad: dict[str, Any]) -> None:
    response = post(api, {**api.body("e1", api.put_jpeg()), **bad})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"]
    assert api.as_("reviewer").get(URL).json()["items"] == []


def test_urgent_types_are_raised_to_immediate(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg(), ctype="crowd_gathering")).json()
    assert doc["urgency"] == "immediate"
    assert doc["suggested_unit"] == "派出所"


def test_patch_supplements_an_incomplete_candidate(api: Any) -> None:
    late = hashlib.sha256(api.jpeg(5)).hexdigest()
    payload = api.body("e1", late)
    del payload["description"]
    doc = post(api, payload).json()
    assert doc["missing_elements"] == ["description", "evidence"]
    assert api.put_jpeg(5) == late  # the evidence arrives after the candidate
    waiting = api.as_("reviewer").get(f"{URL}/{doc['id']}").json()
    assert (waiting["status"], waiting["missing_elements"]) == ("incomplete", ["description"])
    sha = api.put_jpeg(6)
    patch = {"description": "garbage", "evidence": [{"sha256": sha, "kind": "latest"}]}
    response = api.as_("producer").patch(
        f"{URL}/{doc['id']}", json=patch, headers={"Idempotency-Key": "p1"}
    )
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "new"
    assert done["missing_elements"] == []
    assert [e["sha256"] for e in done["evidence"]] == [late, sha]
    assert [h["action"] for h in done["history"]] == ["created", "updated", "supplemented"]
    assert [h["fields"] for h in done["history"][1:]] == [["evidence"], ["description", "evidence"]]


def test_patch_merges_detection_and_alarm(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    patch = {"detection": {"dwell_s": 40}, "severity": "major"}
    done = (
        api.as_("producer")
        .patch(f"{URL}/{doc['id']}", json=patch, headers={"Idempotency-Key": "p1"})
        .json()
    )
    assert done["detection"] == {**doc["detection"], "dwell_s": 40}
    assert done["severity"] == "MAJOR"


def test_patch_errors(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    producer = api.as_("producer")
    no_key = producer.patch(f"{URL}/{doc['id']}", json={"description": "x"})
    assert no_key.status_code == 400
    unknown = producer.patch(
        f"{URL}/{uuid.uuid4()}", json={"description": "x"}, headers={"Idempotency-Key": "u"}
    )
    assert unknown.status_code == 404
    owned = producer.patch(
        f"{URL}/{doc['id']}", json={"status": "confirmed"}, headers={"Idempotency-Key": "o"}
    )
    assert owned.status_code == 422
    assert api.review(doc["id"], "reject", reason_code="false_positive").status_code == 200
    late = producer.patch(
        f"{URL}/{doc['id']}", json={"description": "x"}, headers={"Idempotency-Key": "l"}
    )
    assert late.status_code == 410
    assert late.json()["title"] == "Gone"


def feed_cursor(api: Any) -> str:
    return str(
        api.as_("platform").get("/api/v1/feed", params={"cursor": "0"}).json()["next_cursor"]
    )


def test_a_patch_cannot_set_an_element_to_null(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    assert api.review(doc["id"], "confirm").status_code == 200
    confirmed = api.as_("reviewer").get(f"{URL}/{doc['id']}").json()
    cursor = feed_cursor(api)
    producer = api.as_("producer")
    for key, patch, named in (
        ("n1", {"evidence": None}, "evidence"),
        ("n2", {"type": None, "location": None, "description": "x"}, "location, type"),
        ("n3", {"references": None, "measurements": None}, "measurements, references"),
    ):
        response = producer.patch(
            f"{URL}/{doc['id']}", json=patch, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 422, key
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "type": "about:blank",
            "title": "Unprocessable Content",
            "status": 422,
            "detail": f"a patch cannot remove elements: {named} cannot be null"
            " (leave an element out to keep it)",
            "instance": f"{URL}/{doc['id']}",
        }
    assert api.as_("reviewer").get(f"{URL}/{doc['id']}").json() == confirmed
    assert feed_cursor(api) == cursor
    # Also while incomplete; an unknown field may be null (it is kept as sent).
    partial = api.body("e2", api.put_jpeg(1))
    del partial["description"]
    incomplete = post(api, partial, key="k2").json()
    refused = producer.patch(
        f"{URL}/{incomplete['id']}", json={"severity": None}, headers={"Idempotency-Key": "n4"}
    )
    assert (refused.status_code, refused.json()["detail"]) == (
        422,
        "a patch cannot remove elements: severity cannot be null (leave an element out to keep it)",
    )
    extra = producer.patch(
        f"{URL}/{incomplete['id']}", json={"note": None}, headers={"Idempotency-Key": "n5"}
    )
    assert extra.status_code == 200
    assert extra.json()["note"] is None


def test_a_null_patch_accepted_by_an_earlier_release_replays_its_answer(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gridpatrol.api.service as service

    doc = post(api, api.body("e1", api.put_jpeg(), measurements=[{"n": "t", "v": 1}])).json()
    producer = api.as_("producer")
    patch_url = f"{URL}/{doc['id']}"
    # A release without the null check accepted this PATCH and stored its answer by key.
    monkeypatch.setattr(service, "refuse_nulls", lambda body: None)
    first = producer.patch(patch_url, json={"measurements": None}, headers={"Idempotency-Key": "p"})
    assert first.status_code == 200, first.text
    assert first.json()["measurements"] is None
    monkeypatch.undo()
    replay = producer.patch(
        patch_url, json={"measurements": None}, headers={"Idempotency-Key": "p"}
    )
    assert (replay.status_code, replay.text) == (200, first.text)
    # A new key with the same body is refused, and its refusal does not keep the key.
    refused = producer.patch(
        patch_url, json={"measurements": None}, headers={"Idempotency-Key": "q"}
    )
    assert (refused.status_code, refused.json()["detail"]) == (
        422,
        "a patch cannot remove elements: measurements cannot be null"
        " (leave an element out to keep it)",
    )
    fixed = producer.patch(patch_url, json={"measurements": []}, headers={"Idempotency-Key": "q"})
    assert (fixed.status_code, fixed.json()["measurements"]) == (200, [])


def test_a_patch_cannot_take_required_elements_from_a_visible_candidate(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    assert api.review(doc["id"], "confirm").status_code == 200
    for status in ("confirmed", "registered"):
        if status == "registered":
            reported = api.as_("platform").post(
                f"{URL}/{doc['id']}/status", json={"stage": "registered"}
            )
            assert reported.status_code == 200
        before = api.as_("reviewer").get(f"{URL}/{doc['id']}").json()
        cursor = feed_cursor(api)
        for key, patch, lost in (
            ("d", {"description": ""}, "description"),
            ("l", {"location": {"lat": None, "lon": None, "grid_code": None}}, "location"),
            ("s", {"source": {"source_event_id": None}}, "source.source_event_id"),
            (
                "b",
                {"source": {"source_event_id": None}, "description": ""},
                "source.source_event_id, description",
            ),
        ):
            response = api.as_("producer").patch(
                f"{URL}/{doc['id']}", json=patch, headers={"Idempotency-Key": status + key}
            )
            assert response.status_code == 422, (status, key)
            assert response.json() == {
                "type": "about:blank",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": f"candidate {doc['id']} is {status}: a patch cannot take away its {lost}",
                "instance": f"{URL}/{doc['id']}",
            }
        assert api.as_("reviewer").get(f"{URL}/{doc['id']}").json() == before
        assert feed_cursor(api) == cursor


def test_a_visible_candidate_that_lost_its_evidence_file_still_takes_updates(api: Any) -> None:
    sha = api.put_jpeg()
    doc = post(api, api.body("e1", sha)).json()
    assert api.review(doc["id"], "confirm").status_code == 200
    api.http.app.state.services.store.path(sha).unlink()
    response = api.as_("producer").patch(
        f"{URL}/{doc['id']}", json={"detection": {"dwell_s": 50}}, headers={"Idempotency-Key": "u"}
    )
    assert response.status_code == 200, response.text
    done = response.json()
    assert (done["status"], done["missing_elements"]) == ("confirmed", ["evidence"])
    assert done["detection"]["dwell_s"] == 50


def test_a_new_candidate_may_lose_an_element_and_wait_as_incomplete(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    response = api.as_("producer").patch(
        f"{URL}/{doc['id']}", json={"description": ""}, headers={"Idempotency-Key": "u"}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["missing_elements"]) == (
        "incomplete",
        ["description"],
    )


def test_batch_gives_per_item_results(api: Any) -> None:
    sha = api.put_jpeg()
    items = [
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"idempotency_key": "b2", "body": {**api.body("e2", sha), "severity": 5}},
        {"idempotency_key": "b3", "body": api.body("e1", sha)},
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"idempotency_key": "b1", "body": api.body("e9", sha)},
        {"idempotency_key": "b4", "body": [1]},
    ]
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201, 422, 200, 201, 422, 422]
    again = api.as_("producer").post(f"{URL}/batch", json={"items": items[:1]})
    assert again.json()["items"] == results[:1]
    assert results[2]["body"]["id"] == results[0]["body"]["id"]
    assert results[3]["body"] == results[0]["body"]
    assert results[1]["body"]["status"] == 422
    too_many = [{"idempotency_key": f"k{i}", "body": {}} for i in range(501)]
    assert api.as_("producer").post(f"{URL}/batch", json={"items": too_many}).status_code == 422


def nested(levels: int) -> Any:
    """Arrays nested ``levels`` deep."""
    return json.loads("[" * levels + "]" * levels)


def too_deep(loc: list[Any], what: str) -> dict[str, Any]:
    return {
        "loc": loc,
        "msg": f"Value error, {what} is nested more than 32 levels deep",
        "type": "value_error",
    }


def schema_refusal(instance: str, *errors: dict[str, Any]) -> dict[str, Any]:
    """The problem body of a request the schema refuses."""
    return {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the request does not match the schema",
        "instance": instance,
        "errors": list(errors),
    }


def test_a_body_nested_too_deeply_is_refused_not_a_server_error(api: Any) -> None:
    sha = api.put_jpeg()
    # A measurement object is one level; its value may take the other 31.
    ok = post(api, api.body("e0", sha, measurements=[{"v": nested(31)}]), key="k0")
    assert ok.status_code == 201, ok.text
    assert ok.json()["measurements"] == [{"v": nested(31)}]
    measurement = (["body", "measurements", 0], "a measurement")
    refused = {
        "k1": (api.body("e1", sha, measurements=[{"v": nested(32)}]), measurement),
        "k2": (api.body("e2", sha, measurements=[{"v": nested(256)}]), measurement),
        "k3": (api.body("e3", sha, context=nested(33)), (["body", "context"], "an added field")),
        "k4": (
            api.body("e4", sha, detection={"trace": nested(300)}),
            (["body", "detection", "trace"], "an added field"),
        ),
    }
    for key, (payload, (loc, what)) in refused.items():
        response = post(api, payload, key=key)
        assert response.status_code == 422, key
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == schema_refusal(URL, too_deep(loc, what))
    deep_patch = api.as_("producer").patch(
        f"{URL}/{ok.json()['id']}",
        json={"measurements": [{"v": nested(256)}]},
        headers={"Idempotency-Key": "p1"},
    )
    assert deep_patch.status_code == 422
    assert deep_patch.json()["errors"] == [too_deep(["body", "measurements", 0], "a measurement")]
    stored = api.as_("reviewer").get(URL).json()["items"]
    assert [(c["id"], c["measurements"]) for c in stored] == [
        (ok.json()["id"], [{"v": nested(31)}])
    ]


def test_a_body_the_server_cannot_serialize_is_refused_with_a_fixed_detail(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gridpatrol.api.schemas as schemas

    sha = api.put_jpeg()
    doc = post(api, api.body("e0", sha), key="k0").json()
    # Past the nesting check (were it ever to let such a value through), the serializer fails.
    monkeypatch.setattr(schemas, "check_depth", lambda value, what, limit=32: None)
    detail = "the body is nested too deeply to be stored as JSON"
    created = post(api, api.body("e1", sha, context=nested(300)), key="k1")
    patched = api.as_("producer").patch(
        f"{URL}/{doc['id']}", json={"context": nested(300)}, headers={"Idempotency-Key": "p1"}
    )
    batch = api.as_("producer").post(
        f"{URL}/batch",
        json={
            "items": [{"idempotency_key": "b1", "body": api.body("e2", sha, context=nested(300))}]
        },
    )
    assert (created.status_code, created.json()["detail"]) == (422, detail)
    assert (patched.status_code, patched.json()["detail"]) == (422, detail)
    assert batch.status_code == 207
    assert batch.json()["items"] == [
        {
            "status": 422,
            "body": {
                "type": "about:blank",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": detail,
            },
        }
    ]


def test_a_batch_refuses_only_the_item_nested_too_deeply(api: Any) -> None:
    sha = api.put_jpeg()
    items = [
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"idempotency_key": "b2", "body": api.body("e2", sha, measurements=[{"v": nested(256)}])},
        {"idempotency_key": "b3", "body": api.body("e3", sha)},
    ]
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201, 422, 201]
    assert results[1]["body"] == {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the candidate does not match the schema",
        "errors": [too_deep(["measurements", 0], "a measurement")],
    }


def test_the_depth_check_counts_arrays_and_objects_alike() -> None:
    def chain(levels: int) -> Any:
        value: Any = {}
        for index in range(levels - 1):
            value = {"a": value} if index % 2 else [value]
        return value

    for accepted in (5, None, "x", [], {}, nested(32), chain(32), (0, [1, {"b": nested(29)}])):
        check_depth(accepted, "v")
    wide = [0] * 1000 + [{"a": nested(31)}] + [[]] * 1000
    for refused in (nested(33), chain(33), {"a": nested(32)}, wide, [(nested(32),)]):
        with pytest.raises(ValueError) as caught:
            check_depth(refused, "v")
        assert str(caught.value) == "v is nested more than 32 levels deep"
    with pytest.raises(ValueError) as caught:
        check_depth(nested(3), "a measurement", limit=2)
    assert str(caught.value) == "a measurement is nested more than 2 levels deep"


def test_the_depth_check_keeps_no_entry_per_scalar() -> None:
    # A measurement of 300 000 numbers (about 600 KB of JSON) is looked at in one pass: the
    # check holds the arrays and objects of the next level only, never one entry per number
    # (that took about 19 MB and half a second per body).
    wide = {"v": [0] * 300_000}
    tracemalloc.start()
    try:
        check_depth(wide, "a measurement")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_list_filters_and_pages_newest_first(api: Any) -> None:
    sha = api.put_jpeg()
    ids = []
    for i in range(5):
        api.clock.advance(seconds=1)
        camera = "cam-1" if i % 2 == 0 else "cam-2"
        payload = api.body(f"e{i}", sha)
        payload["source"]["camera_id"] = camera
        ids.append(post(api, payload, key=f"k{i}").json()["id"])
    reviewer = api.as_("reviewer")
    first = reviewer.get(URL, params={"limit": 2}).json()
    assert [c["id"] for c in first["items"]] == ids[::-1][:2]
    rest = reviewer.get(URL, params={"limit": 10, "cursor": first["next_cursor"]}).json()
    assert [c["id"] for c in rest["items"]] == ids[::-1][2:]
    assert rest["next_cursor"] is None
    cam2 = reviewer.get(URL, params={"camera_id": "cam-2"}).json()
    assert [c["id"] for c in cam2["items"]] == [ids[3], ids[1]]
    assert reviewer.get(URL, params={"status": "confirmed"}).json()["items"] == []
    assert reviewer.get(f"{URL}/{uuid.uuid4()}").status_code == 404


def test_logs_carry_candidate_ids(api: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gridpatrol.api.service")
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    api.review(doc["id"], "confirm")
    records = [r for r in caplog.records if getattr(r, "candidate_id", None) == doc["id"]]
    assert [r.__dict__["status"] for r in records] == ["new", "confirmed"]
    assert doc["id"] in records[0].getMessage()


class WatchedLock:
    """The app's SQLite write lock, announcing in ``blocked`` a writer that has to wait for it,
    and recording whether that writer was on the event loop's thread."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.blocked = threading.Event()
        self.blocked_on_loop: list[bool] = []

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            self.blocked_on_loop.append(on_event_loop())
            self.blocked.set()
            self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_post_waiting_for_the_sqlite_write_lock_leaves_the_event_loop_free(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite writes run on the event loop only while no other thread writes; one that would
    # wait for the lock goes to the thread pool, so other requests are still answered.
    sha = api.put_jpeg()
    db = api.http.app.state.db
    lock = WatchedLock(db._write_lock)
    monkeypatch.setattr(db, "_write_lock", lock)
    with ThreadPoolExecutor(2) as pool:
        with db.write():
            pending = pool.submit(post, api, api.body("e-locked", sha), "k-locked")
            assert lock.blocked.wait(20), "the post never reached the write lock"
            assert lock.blocked_on_loop == [False], "the post waits on the event loop"
            # Bounded only so that a stalled event loop fails the test instead of hanging it.
            health = pool.submit(api.http.get, "/api/v1/healthz").result(timeout=20)
            assert health.status_code == 200
            assert not pending.done()
        response = pending.result(timeout=20)
    assert response.status_code == 201
    assert response.json()["source"]["source_event_id"] == "e-locked"


def test_a_new_candidate_cannot_set_server_fields(api: Any) -> None:
    sha = api.put_jpeg()
    owned: dict[str, Any] = {
        "hold_until": "2026-11-27T00:00:00+00:00",
        "arrive_by": "2026-11-27T00:00:00+00:00",
        "stages": {"closed": "2026-11-27T00:00:00+00:00"},
        "merged_into": str(uuid.uuid4()),
        "review": {"reason_code": "other"},
        "status": "confirmed",
    }
    for name, value in owned.items():
        response = post(api, {**api.body(f"e-{name}", sha), name: value}, key=f"k-{name}")
        assert response.status_code == 422, name
        assert response.headers["content-type"] == "application/problem+json"
        detail = f"the server owns {name}; a new candidate cannot set them"
        assert response.json()["detail"] == detail
    assert api.as_("reviewer").get(URL).json()["items"] == []


def test_a_batch_refuses_server_fields_per_item(api: Any) -> None:
    sha = api.put_jpeg()
    at = "2026-11-27T00:00:00+00:00"
    items = [
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"idempotency_key": "b2", "body": {**api.body("e2", sha), "hold_until": at}},
        {"idempotency_key": "b3", "body": {**api.body("e3", sha), "stages": {}, "review": {}}},
    ]
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201, 422, 422]
    assert [r["body"].get("detail") for r in results[1:]] == [
        "the server owns hold_until; a new candidate cannot set them",
        "the server owns review, stages; a new candidate cannot set them",
    ]
    page = api.as_("reviewer").get(URL).json()
    assert [c["id"] for c in page["items"]] == [results[0]["body"]["id"]]


def test_patch_to_another_candidates_source_event_id_is_refused_for_good(api: Any) -> None:
    # 422, not 409: the producers' outbox retries a 409, and this request can never succeed.
    sha = api.put_jpeg()
    post(api, api.body("e1", sha), key="a")
    unkeyed = api.body(sha=sha)
    del unkeyed["source"]["source_event_id"]
    second = post(api, unkeyed, key="b").json()
    assert second["missing_elements"] == ["source.source_event_id"]
    source = {**second["source"], "source_event_id": "e1"}
    response = api.as_("producer").patch(
        f"{URL}/{second['id']}", json={"source": source}, headers={"Idempotency-Key": "p"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "another candidate has this source_event_id"
    assert api.as_("reviewer").get(f"{URL}/{second['id']}").json() == second


SOURCE_KEY_FIXED = (
    "candidate {cid} is known by its (source.system, source_event_id):"
    " a patch cannot change or remove {fields}"
)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ({"source_event_id": "rewritten"}, "source.source_event_id"),
        ({"source_event_id": None}, "source.source_event_id"),
        ({"system": "other-worker"}, "source.system"),
        ({"system": None, "source_event_id": "e2"}, "source.system, source.source_event_id"),
    ],
)
def test_a_patch_cannot_change_the_source_key_an_event_is_known_by(
    api: Any, source: dict[str, Any], fields: str
) -> None:
    # The pair is how a re-post of the event finds its candidate: changed or dropped, the
    # next post of the event would make a second candidate.
    payload = api.body("e1", api.put_jpeg())
    first = post(api, payload, key="k1").json()
    cid = first["id"]
    refused = api.as_("producer").patch(
        f"{URL}/{cid}", json={"source": source}, headers={"Idempotency-Key": "p1"}
    )
    assert refused.status_code == 422  # final for a producer's outbox, which retries a 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == SOURCE_KEY_FIXED.format(cid=cid, fields=fields)
    assert api.as_("reviewer").get(f"{URL}/{cid}").json() == first
    again = post(api, payload, key="k2")
    assert (again.status_code, again.json()) == (200, first)
    page = api.as_("reviewer").get(URL).json()
    assert [c["id"] for c in page["items"]] == [cid]


def test_a_patch_may_repeat_the_source_key_or_fill_it_in(api: Any) -> None:
    sha = api.put_jpeg()
    keyed = post(api, api.body("e1", sha), key="k1").json()
    same = {"system": "test-worker", "source_event_id": "e1", "camera_id": "cam-2"}
    repeated = api.as_("producer").patch(
        f"{URL}/{keyed['id']}", json={"source": same}, headers={"Idempotency-Key": "p1"}
    )
    assert repeated.status_code == 200
    assert repeated.json()["source"] == {"type": "camera", **same}
    unkeyed = api.body(sha=sha)
    del unkeyed["source"]["source_event_id"]
    incomplete = post(api, unkeyed, key="k2").json()
    assert incomplete["status"] == "incomplete"
    filled = api.as_("producer").patch(
        f"{URL}/{incomplete['id']}",
        json={"source": {"source_event_id": "e2"}},
        headers={"Idempotency-Key": "p2"},
    )
    assert filled.status_code == 200
    assert (filled.json()["status"], filled.json()["source"]["source_event_id"]) == ("new", "e2")
    again = post(api, {**unkeyed, "source": filled.json()["source"]}, key="k3")
    assert (again.status_code, again.json()["id"]) == (200, incomplete["id"])


def test_a_source_rewrite_accepted_by_an_earlier_release_replays_its_answer(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gridpatrol.api.service as service

    cid = post(api, api.body("e1", api.put_jpeg())).json()["id"]
    producer = api.as_("producer")
    rewrite = {"source": {"source_event_id": "rewritten"}}
    # A release without the check accepted this PATCH and stored its answer by key.
    monkeypatch.setattr(service, "refuse_source_rewrite", lambda cid, stored, doc: None)
    first = producer.patch(f"{URL}/{cid}", json=rewrite, headers={"Idempotency-Key": "p"})
    assert first.status_code == 200, first.text
    monkeypatch.undo()
    replay = producer.patch(f"{URL}/{cid}", json=rewrite, headers={"Idempotency-Key": "p"})
    assert (replay.status_code, replay.text) == (200, first.text)
    back = {"source": {"source_event_id": "e1"}}
    refused = producer.patch(f"{URL}/{cid}", json=back, headers={"Idempotency-Key": "q"})
    assert (refused.status_code, refused.json()["detail"]) == (
        422,
        SOURCE_KEY_FIXED.format(cid=cid, fields="source.source_event_id"),
    )


def test_a_read_does_not_wait_for_a_writers_row_lock(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    db = api.http.app.state.db
    locked = select(CandidateRow.id).where(CandidateRow.id == doc["id"]).with_for_update()
    with ThreadPoolExecutor(1) as pool, db.write() as session:
        session.execute(locked)  # a PATCH or review in progress on PostgreSQL holds this
        # Bounded only so that a read that waits fails instead of hanging the test.
        got = pool.submit(api.as_("reviewer").get, f"{URL}/{doc['id']}").result(timeout=20)
    assert got.status_code == 200
    assert got.json() == doc


def raw_json(api: Any, method: str, url: str, payload: Any, key: str | None = None) -> Any:
    """``payload`` as ASCII JSON, where a lone surrogate travels as its \\u escape."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    content = json.dumps(payload, ensure_ascii=True).encode()
    return api.as_("producer").request(method, url, content=content, headers=headers)


@pytest.mark.parametrize(
    "bad",
    [
        {"note": "broken \ud800 text"},
        {"measurements": [{"n": "level", "v": 1.0, "label": "\udc00"}]},
        {"context": {"\ud83d": 1}},
    ],
)
def test_lone_surrogates_are_refused_not_a_server_error(api: Any, bad: dict[str, Any]) -> None:
    # A 500 is retried by a producer's outbox: one bad string would block it for good.
    sha = api.put_jpeg()
    response = raw_json(api, "POST", URL, {**api.body("e1", sha), **bad}, key="k1")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "text must be valid Unicode (no lone surrogates)"
    assert api.as_("reviewer").get(URL).json()["items"] == []
    items = [
        {"idempotency_key": "b1", "body": api.body("e2", sha)},
        {"idempotency_key": "b2", "body": {**api.body("e3", sha), **bad}},
        {"idempotency_key": "b3", "body": api.body("e4", sha)},
    ]
    batch = raw_json(api, "POST", f"{URL}/batch", {"items": items})
    assert batch.status_code == 207
    results = batch.json()["items"]
    assert [r["status"] for r in results] == [201, 422, 201]
    assert results[1]["body"]["detail"] == "text must be valid Unicode (no lone surrogates)"
    doc = results[0]["body"]
    patched = raw_json(api, "PATCH", f"{URL}/{doc['id']}", bad, key="p1")
    assert patched.status_code == 422
    assert patched.headers["content-type"] == "application/problem+json"
    assert api.as_("reviewer").get(f"{URL}/{doc['id']}").json() == doc


@pytest.mark.parametrize(
    "spell",
    [str.upper, lambda cid: cid.replace("-", ""), lambda cid: f"urn:uuid:{cid}"],
    ids=["uppercase", "hyphenless", "urn"],
)
def test_a_client_id_is_found_in_any_spelling_the_body_accepts(api: Any, spell: Any) -> None:
    cid, target = str(uuid.uuid4()), str(uuid.uuid4())
    sha = api.put_jpeg()
    doc = post(api, {**api.body("e1", sha), "id": spell(cid)}, key="k1").json()
    assert doc["id"] == cid  # stored in canonical form
    post(api, {**api.body("e2", sha), "id": spell(target)}, key="k2")
    assert api.as_("reviewer").get(f"{URL}/{spell(cid)}").json() == doc
    patched = api.as_("producer").patch(
        f"{URL}/{spell(cid)}", json={"description": "x"}, headers={"Idempotency-Key": "p1"}
    )
    assert (patched.status_code, patched.json()["id"]) == (200, cid)
    merged = api.review(spell(cid), "merge", merge_into=spell(target))
    assert merged.status_code == 200, merged.text
    assert (merged.json()["id"], merged.json()["merged_into"]) == (cid, target)
    assert api.as_("reviewer").get(f"{URL}/{target}").json()["references"] == [cid]
    confirmed = api.review(spell(target), "confirm")
    assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")
    registered = api.as_("platform").post(
        f"{URL}/{spell(target)}/status", json={"stage": "registered"}
    )
    assert (registered.status_code, registered.json()["status"]) == (200, "registered")


def test_a_path_id_that_is_no_uuid_is_unknown_or_refused(api: Any) -> None:
    reviewer = api.as_("reviewer")
    assert reviewer.get(f"{URL}/not-a-uuid").status_code == 404
    refused = reviewer.get(f"{URL}/a%3Bb")
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"


ID_TAKEN = "urn:gridpatrol:problem:candidate-id-taken"


def test_a_client_id_reused_for_another_event_is_a_conflict(api: Any) -> None:
    sha = api.put_jpeg()
    cid, other = str(uuid.uuid4()), str(uuid.uuid4())
    first = post(api, {**api.body("e1", sha), "id": cid}, key="k1").json()
    post(api, {**api.body("e2", sha), "id": other}, key="k2")
    # The same event again, under a new key and in another spelling of its id: the original.
    again = post(api, {**api.body("e1", sha), "id": cid.upper()}, key="k3")
    assert (again.status_code, again.json()) == (200, first)
    detail = f"candidate {cid} exists with another (source.system, source_event_id)"
    # Another event under that id, also one whose natural key another candidate has.
    for event, key in (("e3", "k4"), ("e2", "k5")):
        taken = post(api, {**api.body(event, sha), "id": cid}, key=key)
        assert taken.status_code == 409
        assert taken.headers["content-type"] == "application/problem+json"
        assert (taken.json()["type"], taken.json()["detail"]) == (ID_TAKEN, detail)
    no_event = api.body(None, sha)
    del no_event["source"]["source_event_id"]
    assert post(api, {**no_event, "id": cid}, key="k6").status_code == 409
    fresh = str(uuid.uuid4())
    items = [
        {"idempotency_key": "b1", "body": {**api.body("e4", sha), "id": cid}},
        {"idempotency_key": "b2", "body": {**api.body("e5", sha), "id": fresh}},
        {"idempotency_key": "b3", "body": {**api.body("e6", sha), "id": fresh}},
        {"idempotency_key": "b4", "body": {**api.body("e1", sha), "id": cid}},
    ]
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [409, 201, 409, 200]
    assert (results[0]["body"]["type"], results[0]["body"]["detail"]) == (ID_TAKEN, detail)
    assert results[2]["body"]["type"] == ID_TAKEN
    assert results[3]["body"] == first
    page = api.as_("reviewer").get(URL).json()
    assert sorted(c["source"]["source_event_id"] for c in page["items"]) == ["e1", "e2", "e5"]
    assert api.as_("reviewer").get(f"{URL}/{cid}").json() == first


def test_bodies_over_the_size_limits_are_refused_and_not_stored(make_api: Any) -> None:
    api = make_api(max_body_bytes=4096, max_batch_bytes=10_000)
    producer = api.as_("producer")
    sha = api.put_jpeg()
    big = {**api.body("big", sha), "note": "x" * 5000}
    limit = "a candidate body is limited to 4096 bytes"

    def refused(response: Any, detail: str = limit) -> None:
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == detail

    refused(post(api, big))

    def chunked(payload: Any, key: str) -> Any:
        data = json.dumps(payload).encode()
        parts = iter([data[i : i + 1000] for i in range(0, len(data), 1000)])
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        return producer.post(URL, content=parts, headers=headers)

    refused(chunked(big, "c1"))  # no Content-Length: counted as it arrives
    small = chunked(api.body("small", sha), "c2")
    assert small.status_code == 201, small.text
    cid = small.json()["id"]
    refused(
        producer.patch(f"{URL}/{cid}", json={"note": "x" * 5000}, headers={"Idempotency-Key": "p"})
    )
    items = [
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"idempotency_key": "b2", "body": big},
        {"idempotency_key": "b3", "body": api.body("e3", sha)},
    ]
    response = producer.post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201, 413, 201]
    assert (results[1]["body"]["status"], results[1]["body"]["detail"]) == (413, limit)
    near = [
        {"idempotency_key": f"n{i}", "body": {**api.body(f"n{i}", sha), "note": "x" * 3000}}
        for i in range(3)
    ]
    refused(
        producer.post(f"{URL}/batch", json={"items": near}),
        "a batch is limited to 10000 bytes",
    )
    page = api.as_("reviewer").get(URL).json()
    assert sorted(c["source"]["source_event_id"] for c in page["items"]) == ["e1", "e3", "small"]
    assert api.as_("reviewer").get(f"{URL}/{cid}").json() == small.json()


def test_a_batch_item_is_refused_for_its_size_where_a_single_post_would_be(
    make_api: Any,
) -> None:
    """An item is measured as the same body posted alone is (its bytes as sent, as the outbox
    sends a lone create) and first, as a single POST is refused before it is read."""
    api = make_api(max_body_bytes=4096)
    producer = api.as_("producer")
    sha = api.put_jpeg()
    limit = "a candidate body is limited to 4096 bytes"

    def sized(event: str, size: int, **override: Any) -> dict[str, Any]:
        out = api.body(event, sha, **override)
        sent = len(json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode())
        return {**out, "description": out["description"] + "x" * (size - sent)}

    def answers(bodies: list[dict[str, Any]]) -> list[tuple[int, str | None]]:
        alone = [post(api, b, key=f"alone-{i}") for i, b in enumerate(bodies)]
        items = [{"idempotency_key": f"item-{i}", "body": b} for i, b in enumerate(bodies)]
        batch = producer.post(f"{URL}/batch", json={"items": items}).json()["items"]
        single = [(r.status_code, r.json().get("detail")) for r in alone]
        assert [(r["status"], r["body"].get("detail")) for r in batch] == single
        return single

    over = [
        sized("o1", 4097),
        sized("o2", 4097, hold_until="2026-11-27T00:00:00+00:00"),
        sized("o3", 4097, severity="CATASTROPHIC"),
    ]
    assert answers(over) == [(413, limit)] * 3
    assert post(api, sized("a1", 4096), key="a1").status_code == 201
    at_limit = {"idempotency_key": "a2", "body": sized("a2", 4096)}
    accepted = producer.post(f"{URL}/batch", json={"items": [at_limit]}).json()["items"]
    assert accepted[0]["status"] == 201, accepted


def test_a_batch_item_is_measured_by_its_bytes_as_sent(make_api: Any) -> None:
    """An item is held to the limit by the bytes of its body as the batch carries them, as the
    same bytes posted alone are, not by the JSON the server would write of it: a client may
    write a number or a character otherwise (1e-7 as JavaScript and Go write it, 1e-07 in
    Python; non-ASCII escaped, with a space after each separator)."""
    api = make_api(max_body_bytes=4096)
    producer = api.as_("producer")
    sha = api.put_jpeg()
    limit = "a candidate body is limited to 4096 bytes"
    as_json = {"Content-Type": "application/json"}

    def compact(body: dict[str, Any]) -> bytes:
        """As the server would write it, and httpx sends it."""
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def js(body: dict[str, Any]) -> bytes:
        return compact(body).replace(b'"x":1e-07', b'"x":1e-7')

    def escaped(body: dict[str, Any]) -> bytes:
        return json.dumps(body, separators=(", ", ": ")).encode()

    def sized(size: int, pad: str, write: Callable[[dict[str, Any]], bytes]) -> dict[str, Any]:
        """A body of an event of its own, of ``size`` bytes as ``write`` writes it."""
        detection = {"model": "yolo11n", "score": 0.8, "x": 1e-7}
        body = api.body(uuid.uuid4().hex, sha, description="", detection=detection)
        body["description"] = pad * ((size - len(write(body))) // len(pad.encode()))
        body["description"] += "x" * (size - len(write(body)))
        assert len(write(body)) == size
        return body

    def answers(send: Callable[[], bytes]) -> list[tuple[int, str | None]]:
        """The answers to a body ``send`` writes, posted alone and as a batch's item."""
        key = {"Idempotency-Key": uuid.uuid4().hex}
        alone = producer.post(URL, content=send(), headers={**as_json, **key})
        item_key = uuid.uuid4().hex.encode()
        batch = b'{"items": [{"idempotency_key": "%s", "body": %s}]}' % (item_key, send())
        item = producer.post(f"{URL}/batch", content=batch, headers=as_json).json()["items"][0]
        return [
            (alone.status_code, alone.json().get("detail")),
            (item["status"], item["body"].get("detail")),
        ]

    assert b'"x":1e-07}' in compact(sized(4096, "x", js)), "Python writes 1e-07"
    assert answers(lambda: js(sized(4096, "x", js))) == [(201, None)] * 2
    assert answers(lambda: js(sized(4097, "x", js))) == [(413, limit)] * 2
    # 4096 bytes as the server would write it, over 7000 as this client sends it.
    assert len(escaped(sized(4096, "暴", compact))) > 7000
    assert answers(lambda: escaped(sized(4096, "暴", compact))) == [(413, limit)] * 2


def test_a_batch_item_without_a_usable_key_is_refused_alone(api: Any) -> None:
    sha = api.put_jpeg()
    items: list[dict[str, Any]] = [
        {"idempotency_key": "b1", "body": api.body("e1", sha)},
        {"body": api.body("e2", sha)},
        {"idempotency_key": None, "body": api.body("e3", sha)},
        {"idempotency_key": "", "body": api.body("e4", sha)},
        {"idempotency_key": 5, "body": api.body("e5", sha)},
        {"idempotency_key": "é", "body": api.body("e6", sha)},
        {"idempotency_key": "b7", "body": api.body("e7", sha)},
        {"idempotency_key": "b8"},
    ]
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207
    results = response.json()["items"]
    assert [r["status"] for r in results] == [201, 400, 400, 400, 400, 400, 201, 422]
    required = "a batch item needs its idempotency_key"
    malformed = "an idempotency_key is 1-200 printable ASCII characters"
    assert [r["body"]["detail"] for r in results[1:6]] == [required] * 3 + [malformed] * 2
    assert results[7]["body"]["detail"] == "the candidate must be a JSON object"
    page = api.as_("reviewer").get(URL).json()
    assert sorted(c["source"]["source_event_id"] for c in page["items"]) == ["e1", "e7"]

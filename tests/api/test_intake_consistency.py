"""Intake consistency over HTTP: a known idempotency key is answered before any work, list
cursors out of range, evidence stored while its candidate is judged, a stale claim taken over
by two batches at once, and the time a create is dated with."""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from gridpatrol.api.db import MissingEvidenceRow

from .test_candidates import leave_claim_in_flight, post

URL = "/api/v1/candidates"
OTHER_BODY = "this Idempotency-Key was used with another request body"


def patch(api: Any, cid: str, payload: dict[str, Any], key: str) -> Any:
    return api.as_("producer").patch(f"{URL}/{cid}", json=payload, headers={"Idempotency-Key": key})


def batch(api: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = api.as_("producer").post(f"{URL}/batch", json={"items": items})
    assert response.status_code == 207, response.text
    out: list[dict[str, Any]] = response.json()["items"]
    return out


def doc_of(api: Any, cid: str) -> dict[str, Any]:
    return dict(api.as_("reviewer").get(f"{URL}/{cid}").json())


def without_event_id(api: Any, sha: str) -> dict[str, Any]:
    """A body with neither id nor natural key: only its idempotency key keeps it single."""
    payload = api.body(sha=sha)
    del payload["source"]["source_event_id"]
    return dict(payload)


def assert_other_body(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == OTHER_BODY


def test_a_patch_replayed_after_the_candidate_was_rejected_gets_its_first_answer(
    api: Any,
) -> None:
    doc = post(api, api.body("e1", api.put_jpeg()), key="k-create").json()
    first = patch(api, doc["id"], {"description": "fuller"}, "k-patch")
    assert first.status_code == 200
    assert api.review(doc["id"], "reject", reason_code="other").status_code == 200
    again = patch(api, doc["id"], {"description": "fuller"}, "k-patch")
    assert (again.status_code, again.json()) == (200, first.json())
    # Under a new key the same patch is judged against the candidate as it is now.
    assert patch(api, doc["id"], {"description": "fuller"}, "k-new").status_code == 410


def test_a_key_reused_with_another_body_is_refused_whatever_that_body_names(api: Any) -> None:
    sha = api.put_jpeg()
    doc = post(api, api.body("e1", sha), key="k-post").json()
    assert patch(api, doc["id"], {"description": "a"}, "k-patch").status_code == 200
    # Each of these bodies, under a new key, would be refused otherwise: 404, 410, 409.
    assert_other_body(patch(api, str(uuid.uuid4()), {"description": "a"}, "k-patch"))
    assert api.review(doc["id"], "reject", reason_code="other").status_code == 200
    assert_other_body(patch(api, doc["id"], {"description": "b"}, "k-patch"))
    assert_other_body(post(api, {**api.body("e2", sha), "id": doc["id"]}, key="k-post"))
    assert post(api, {**api.body("e2", sha), "id": doc["id"]}, key="k-other").status_code == 409
    assert doc_of(api, doc["id"])["description"] == "a"


def list_cursor(instant: str) -> str:
    raw = f"{instant}|{uuid.uuid4()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_a_list_cursor_out_of_range_in_utc_is_refused(api: Any, instant: str) -> None:
    post(api, api.body("e1", api.put_jpeg()))
    response = api.as_("reviewer").get(URL, params={"cursor": list_cursor(instant)})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "invalid cursor"


def test_a_list_cursor_at_the_ends_of_the_range_is_read(api: Any) -> None:
    doc = post(api, api.body("e1", api.put_jpeg())).json()
    reviewer = api.as_("reviewer")
    early = reviewer.get(URL, params={"cursor": list_cursor("0001-01-01T01:00:00+01:00")})
    assert (early.status_code, early.json()["items"]) == (200, [])
    late = reviewer.get(URL, params={"cursor": list_cursor("9999-12-31T18:59:59-05:00")})
    assert late.status_code == 200
    assert [c["id"] for c in late.json()["items"]] == [doc["id"]]


@pytest.mark.parametrize("how", ["post", "batch"])
def test_a_file_stored_while_its_candidate_is_judged_completes_it(
    api: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sha = api.put_jpeg(7)
    store = api.http.app.state.services.candidates.store
    has = store.has
    asked: list[str] = []

    def landing(digest: str) -> bool:
        # The file lands right after the candidate's first look for it.
        asked.append(digest)
        return has(digest) and (digest != sha or asked.count(sha) > 1)

    monkeypatch.setattr(store, "has", landing)
    if how == "post":
        created = post(api, api.body("e1", sha))
        assert created.status_code == 201
        doc = created.json()
    else:
        (item,) = batch(api, [{"idempotency_key": "k1", "body": api.body("e1", sha)}])
        assert item["status"] == 201
        doc = item["body"]
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    judged = doc_of(api, doc["id"])
    assert (judged["status"], judged["missing_elements"]) == ("new", [])
    assert judged["history"][-1]["action"] == "supplemented"
    with api.http.app.state.db.read() as session:
        assert session.scalars(select(MissingEvidenceRow)).all() == []


@pytest.mark.postgres
@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_two_batches_taking_over_one_stale_claim_make_one_candidate(api: Any) -> None:
    payload = without_event_id(api, api.put_jpeg())
    leave_claim_in_flight(api, "k-stale", payload)
    api.clock.advance(seconds=61)
    items = [{"idempotency_key": "k-stale", "body": payload}]
    engine = api.http.app.state.db.engine
    second: list[list[dict[str, Any]]] = []
    started: list[bool] = []

    def between(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The first batch has read the stale claim (without a lock): another batch takes it
        # over and finishes before the first one goes on.
        if started or not statement.startswith("SELECT") or "FROM idempotency" not in statement:
            return
        started.append(True)
        with ThreadPoolExecutor(1) as pool:
            second.append(pool.submit(batch, api, items).result(timeout=60))

    event.listen(engine, "after_cursor_execute", between)
    try:
        first = batch(api, items)
    finally:
        event.remove(engine, "after_cursor_execute", between)
    assert second[0][0]["status"] == 201
    assert first == second[0]
    listed = api.as_("reviewer").get(URL).json()["items"]
    assert [c["id"] for c in listed] == [first[0]["body"]["id"]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_post_without_id_or_event_id_is_dated_when_its_transaction_holds_the_write_lock(
    api: Any,
) -> None:
    # updated_at must follow commit order (event replays rely on it), so a create takes the
    # time once its transaction holds the lock, not before it waited for it.
    payload = without_event_id(api, api.put_jpeg())
    engine = api.http.app.state.db.engine
    before = api.clock.now

    def waited(conn: Any) -> None:
        # Each write transaction waits 20 s for another process's lock (BEGIN IMMEDIATE).
        if not conn.get_execution_options().get("readonly", False):
            api.clock.advance(seconds=20)

    event.listen(engine, "begin", waited)
    try:
        response = post(api, payload, key="k-dated")
    finally:
        event.remove(engine, "begin", waited)
    assert response.status_code == 201
    doc = response.json()
    assert doc["missing_elements"] == ["source.source_event_id"]
    at = {doc["created_at"], doc["updated_at"], doc["history"][0]["at"]}
    assert api.clock.now > before
    assert {datetime.fromisoformat(t) for t in at} == {api.clock.now}

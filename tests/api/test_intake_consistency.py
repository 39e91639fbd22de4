"""Intake consistency over HTTP: a known idempotency key is answered before any work, list
cursors out of range, evidence stored while its candidate is judged (also when the look after
commit fails, or a PATCH or another create runs meanwhile), stale claims a batch
takes over (in flight for another process's batch), and the time a create is dated with."""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from gridpatrol.api.db import MissingEvidenceRow

from .test_candidates import leave_claim_in_flight, post

URL = "/api/v1/candidates"
OTHER_BODY = "this Idempotency-Key was used with another request body"
# A batch item whose key another request is running right now.
IN_FLIGHT_ITEM = {
    "status": 409,
    "body": {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "a request with this Idempotency-Key is in flight",
    },
}
on_postgres_only = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


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


def unstored_file(api: Any, seed: int) -> tuple[bytes, str]:
    """An image the store does not hold yet, and its hash."""
    data: bytes = api.jpeg(seed)
    return data, hashlib.sha256(data).hexdigest()


def put_evidence(api: Any, data: bytes) -> Any:
    sha = hashlib.sha256(data).hexdigest()
    headers = {"Content-Type": "image/jpeg"}
    return api.as_("producer").put(f"/api/v1/evidence/{sha}", content=data, headers=headers)


def assert_completed(api: Any, *ids: str) -> None:
    """The candidates were completed by their evidence, and none waits for a file."""
    for cid in ids:
        judged = doc_of(api, cid)
        assert (judged["status"], judged["missing_elements"]) == ("new", [])
        assert judged["history"][-1]["action"] == "supplemented"
    with api.http.app.state.db.read() as session:
        assert session.scalars(select(MissingEvidenceRow)).all() == []


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
    assert (
        api.review(doc["id"], "reject", reason_code="other", reason="see photo").status_code == 200
    )
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
    assert (
        api.review(doc["id"], "reject", reason_code="other", reason="see photo").status_code == 200
    )
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


def landing_after_the_first_look(api: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stored file the store reports missing at its first look only; returns its hash."""
    sha: str = api.put_jpeg(7)
    store = api.http.app.state.services.candidates.store
    has = store.has
    asked: list[str] = []

    def landing(digest: str) -> bool:
        # The file lands right after the candidate's first look for it.
        asked.append(digest)
        return bool(has(digest)) and (digest != sha or asked.count(sha) > 1)

    monkeypatch.setattr(store, "has", landing)
    return sha


def create(api: Any, how: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` under the key k1, alone or as a batch's item: the status and body."""
    if how == "post":
        response = post(api, payload, key="k1")
        return response.status_code, response.json()
    (item,) = batch(api, [{"idempotency_key": "k1", "body": payload}])
    return item["status"], item["body"]


@pytest.mark.parametrize("how", ["post", "batch"])
def test_a_file_stored_while_its_candidate_is_judged_completes_it(
    api: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sha = landing_after_the_first_look(api, monkeypatch)
    status, doc = create(api, how, api.body("e1", sha))
    assert status == 201
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    assert_completed(api, doc["id"])


def batch_while_claiming(
    api: Any, items: list[dict[str, Any]], statement: str, other: Any, others: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """``items`` as a batch of ``api``; once its claim has run the first statement that starts
    with ``statement``, ``others`` as a batch of ``other`` (another API process), answered
    before the first batch goes on. Both batches' answers (the second's in a list)."""
    engine = api.http.app.state.db.engine
    meanwhile: list[list[dict[str, Any]]] = []
    with ThreadPoolExecutor(1) as pool:

        def ran(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            if meanwhile or not sql.startswith(statement):
                return
            # Bounded, so that a batch waiting for the first one fails instead of hanging.
            meanwhile.append(pool.submit(batch, other, others).result(timeout=20))

        event.listen(engine, "after_cursor_execute", ran)
        try:
            first = batch(api, items)
        finally:
            event.remove(engine, "after_cursor_execute", ran)
    return first, meanwhile


@on_postgres_only
def test_a_stale_claim_a_batch_takes_over_is_in_flight_for_another_process(make_api: Any) -> None:
    # Two apps on one database, as two API worker processes.
    api, other = make_api(), make_api()
    payload = without_event_id(api, api.put_jpeg())
    leave_claim_in_flight(api, "k-stale", payload)
    api.clock.advance(seconds=61)
    items = [{"idempotency_key": "k-stale", "body": payload}]
    # Once the first batch has read the stale claim (without a row lock, under the key's
    # advisory lock), another process's batch of the key meets it in flight, at once.
    first, second = batch_while_claiming(api, items, "SELECT idempotency.", other, items)
    assert second == [[IN_FLIGHT_ITEM]]
    assert first[0]["status"] == 201
    assert batch(other, items) == first
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


def judge_again_fails_once(api: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the next look at waiting candidates fail as a busy database would; returns the
    files it was asked about."""
    service = api.http.app.state.services.candidates
    arrived = service.evidence_arrived
    failed: list[str] = []

    def busy(who: Any, sha: str) -> int:
        if failed:
            return int(arrived(who, sha))
        failed.append(sha)
        raise OperationalError("DELETE FROM missing_evidence", {}, Exception("database is locked"))

    monkeypatch.setattr(service, "evidence_arrived", busy)
    return failed


@pytest.mark.parametrize("how", ["post", "batch"])
def test_a_failed_look_after_commit_answers_the_create_and_its_replay_completes_it(
    api: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sha = landing_after_the_first_look(api, monkeypatch)
    failed = judge_again_fails_once(api, monkeypatch)
    payload = api.body("e1", sha)
    status, doc = create(api, how, payload)
    assert failed == [sha]  # the look after commit ran, and failed
    # The candidate is committed: its answer is the create's, not a 503.
    assert status == 201, doc
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    assert doc_of(api, doc["id"])["status"] == "incomplete"
    # The producer's retry replays the answer and judges the candidate again.
    assert create(api, how, payload) == (status, doc)
    assert_completed(api, doc["id"])


@on_postgres_only
def test_two_batches_taking_over_stale_claims_in_opposite_orders_both_answer(
    make_api: Any,
) -> None:
    # Two apps on one database, as two API worker processes.
    api, other = make_api(), make_api()
    payloads = {key: without_event_id(api, api.put_jpeg(n)) for n, key in enumerate(["k1", "k2"])}
    for key, payload in payloads.items():
        leave_claim_in_flight(api, key, payload)
    api.clock.advance(seconds=61)
    forward = [{"idempotency_key": k, "body": payloads[k]} for k in ["k1", "k2"]]
    # Once the forward batch holds its first claim's row, taken over, the reverse batch meets
    # both keys in flight (their advisory locks). Had it taken over the other claim, it would
    # wait for this row while the forward batch waits for that one.
    first, meanwhile = batch_while_claiming(
        api, forward, "UPDATE idempotency", other, forward[::-1]
    )
    assert meanwhile == [[IN_FLIGHT_ITEM, IN_FLIGHT_ITEM]]
    assert [item["status"] for item in first] == [201, 201]
    assert batch(other, forward[::-1]) == first[::-1]
    listed = api.as_("reviewer").get(URL).json()["items"]
    assert sorted(c["id"] for c in listed) == sorted(item["body"]["id"] for item in first)


@on_postgres_only
def test_a_file_uploaded_while_a_patch_judges_its_candidate_answers_both(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, sha = unstored_file(api, 9)
    doc = post(api, api.body("e1", sha), key="k-create").json()
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    engine = api.http.app.state.db.engine
    store = api.http.app.state.services.candidates.store
    has = store.has
    patching: list[int] = []
    uploads: list[Future[Any]] = []
    judging = threading.Event()

    def the_upload(statement: str, starts: str, *parts: str) -> bool:
        # A statement of the upload's, once the PATCH misses the file.
        return (
            bool(patching)
            and threading.get_ident() not in patching
            and statement.startswith(starts)
            and all(part in statement for part in parts)
        )

    # The upload's look at the candidates waiting for the file: once it deleted their rows
    # or as it locks them (then waiting for the PATCH's lock), the PATCH goes on.
    def deleted(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if the_upload(statement, "DELETE FROM missing_evidence"):
            judging.set()

    def locking(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if the_upload(statement, "SELECT candidates.id ", "FOR UPDATE"):
            judging.set()

    def missing_then_uploaded(digest: str) -> bool:
        # The PATCH, holding its candidate, misses the file, which is uploaded right then.
        if digest != sha or patching:
            return bool(has(digest))
        patching.append(threading.get_ident())
        uploads.append(pool.submit(put_evidence, api, data))
        assert judging.wait(timeout=60)
        return False

    monkeypatch.setattr(store, "has", missing_then_uploaded)
    event.listen(engine, "after_cursor_execute", deleted)
    event.listen(engine, "before_cursor_execute", locking)
    try:
        with ThreadPoolExecutor(1) as pool:
            patched = patch(api, doc["id"], {"description": "fuller"}, "k-patch")
            uploaded = uploads[0].result(timeout=60)
    finally:
        event.remove(engine, "after_cursor_execute", deleted)
        event.remove(engine, "before_cursor_execute", locking)
    assert (patched.status_code, patched.json()["status"]) == (200, "incomplete")
    assert uploaded.status_code == 201, uploaded.text
    assert doc_of(api, doc["id"])["description"] == "fuller"
    assert_completed(api, doc["id"])


@on_postgres_only
def test_a_candidate_created_while_an_upload_judges_others_is_judged_by_its_own_look(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, sha = unstored_file(api, 10)
    earlier = post(api, api.body("e1", sha), key="k-1").json()
    engine = api.http.app.state.db.engine
    store = api.http.app.state.services.candidates.store
    has = store.has
    judging: list[int] = []  # the upload's thread, once it read who waits for the file
    creating: list[int] = []
    created = threading.Event()
    uploaded = threading.Event()
    later: list[Future[Any]] = []

    def upload() -> Any:
        try:
            return put_evidence(api, data)
        finally:
            uploaded.set()

    def read_waiting(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The upload has read which candidates wait for the file (in its write transaction):
        # another candidate referring to it is created and committed right then.
        waiting = statement.startswith("SELECT missing_evidence.candidate_id")
        if judging or not waiting or "LIMIT" in statement:
            return
        judging.append(threading.get_ident())
        later.append(pool.submit(post, api, api.body("e2", sha), "k-2"))
        assert created.wait(timeout=60)

    def judged_before_upload(digest: str) -> bool:
        me = threading.get_ident()
        if digest != sha or not judging or me in judging:
            return bool(has(digest))
        if not creating:  # the new candidate is judged as the file was being stored
            creating.append(me)
            return False
        # Its look after commit comes once the upload has answered.
        created.set()
        assert uploaded.wait(timeout=60)
        return bool(has(digest))

    monkeypatch.setattr(store, "has", judged_before_upload)
    event.listen(engine, "after_cursor_execute", read_waiting)
    try:
        with ThreadPoolExecutor(2) as pool:
            stored = pool.submit(upload).result(timeout=60)
            second = later[0].result(timeout=60)
    finally:
        event.remove(engine, "after_cursor_execute", read_waiting)
    assert stored.status_code == 201, stored.text
    assert (second.status_code, second.json()["status"]) == (201, "incomplete")
    assert_completed(api, earlier["id"], second.json()["id"])

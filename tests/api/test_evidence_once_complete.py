"""A case that had its evidence keeps it, over HTTP: a supplement whose upload never lands
(refused 413, 415 or 422, or never sent) does not take it away, also after a reviewer returned
the case and the producer answered; a case that never had its evidence still needs every file
it refers to."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gridpatrol.api.client import Outbox
from gridpatrol.api.db import CandidateRow, MissingEvidenceRow

from .conftest import Api, fresh_jpeg

URL = "/api/v1/candidates"
LIMIT = 200_000  # the evidence size limit of these tests' app


def patch(api: Api, cid: str, change: dict[str, Any]) -> dict[str, Any]:
    response = api.as_("producer").patch(
        f"{URL}/{cid}", json=change, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def put(api: Api, data: bytes, ctype: str = "image/jpeg") -> int:
    sha = hashlib.sha256(data).hexdigest()
    response = api.as_("producer").put(
        f"/api/v1/evidence/{sha}", content=data, headers={"Content-Type": ctype}
    )
    return int(response.status_code)


def held(api: Api) -> str:
    data = fresh_jpeg()
    assert put(api, data) == 201
    return hashlib.sha256(data).hexdigest()


def never_uploaded(api: Api) -> str:
    return hashlib.sha256(fresh_jpeg()).hexdigest()


def refused_not_a_jpeg(api: Api) -> str:
    data = b"\xff\xd8 not a JPEG " + uuid.uuid4().bytes
    assert put(api, data) == 422
    return hashlib.sha256(data).hexdigest()


def refused_media_type(api: Api) -> str:
    data = fresh_jpeg()
    assert put(api, data, "text/plain") == 415
    return hashlib.sha256(data).hexdigest()


def refused_too_large(api: Api) -> str:
    data = uuid.uuid4().bytes * (LIMIT // 16 + 1)
    assert put(api, data) == 413
    return hashlib.sha256(data).hexdigest()


SUPPLEMENTS = {
    "never uploaded": never_uploaded,
    "refused 422": refused_not_a_jpeg,
    "refused 415": refused_media_type,
    "refused 413": refused_too_large,
}


def steps(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["who"], entry["action"]) for entry in doc["history"]]


def waiting_rows(api: Api) -> list[str]:
    with api.http.app.state.db.read() as session:
        return list(session.scalars(select(MissingEvidenceRow.candidate_id)))


@pytest.mark.parametrize("unheld", list(SUPPLEMENTS.values()), ids=list(SUPPLEMENTS))
def test_an_answered_return_keeps_evidence_a_failed_supplement_did_not_take_away(
    make_api: Callable[..., Api], unheld: Callable[[Api], str]
) -> None:
    api = make_api(max_evidence_bytes=LIMIT)
    created = api.create(api.body(sha=held(api)))
    assert (created["status"], created["missing_elements"]) == ("new", [])
    cid = created["id"]
    api.clock.advance(minutes=1)
    supplement = [
        {"sha256": unheld(api), "kind": "snapshot"},
        {"sha256": held(api), "kind": "annotated"},
    ]
    supplemented = patch(api, cid, {"evidence": supplement})
    assert (supplemented["status"], supplemented["missing_elements"]) == ("new", [])
    api.clock.advance(minutes=1)
    returned = api.review(cid, "return", reason="say where exactly")
    assert returned.status_code == 200, returned.text
    assert returned.json()["status"] == "returned"
    api.clock.advance(minutes=1)
    answered = patch(api, cid, {"description": "暴露垃圾 beside the bin at gate 3"})
    assert (answered["status"], answered["missing_elements"]) == ("new", [])
    # Recorded when it first entered review, kept since.
    assert answered["first_complete_at"] == created["first_complete_at"] == created["created_at"]
    assert steps(answered) == [
        ("test-producer", "created"),
        ("test-producer", "updated"),
        ("test-reviewer", "returned"),
        ("test-producer", "supplemented"),
    ]
    assert waiting_rows(api) == []
    confirmed = api.review(cid, "confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"


def test_a_case_stored_before_entering_review_was_recorded_is_judged_by_its_return(
    api: Api,
) -> None:
    """A case stored by an earlier release has no ``first_complete_at``: a return that found
    it lacking nothing says it had its evidence."""
    cid = api.create(api.body(sha=held(api)))["id"]
    patch(api, cid, {"evidence": [{"sha256": never_uploaded(api), "kind": "snapshot"}]})
    with api.http.app.state.db.write() as session:
        row = session.scalars(select(CandidateRow).where(CandidateRow.id == cid)).one()
        row.doc = row.doc.replace('"first_complete_at"', '"earlier_field"')
    returned = api.review(cid, "return", reason="say where exactly").json()
    assert (returned["status"], returned["history"][-1]["missing_elements"]) == ("returned", [])
    api.clock.advance(seconds=1)
    answered = patch(api, cid, {"description": "at gate 3"})
    assert (answered["status"], answered["missing_elements"]) == ("new", [])
    assert answered["first_complete_at"] == api.clock.now.isoformat()
    assert api.review(cid, "confirm").status_code == 200


def test_a_case_that_never_had_its_evidence_still_needs_every_file(api: Api) -> None:
    """Posted with one file held and one never uploaded: incomplete, and a reviewer's return
    answered by the producer leaves it incomplete for the missing file, which completes it."""
    data = fresh_jpeg()
    missing = hashlib.sha256(data).hexdigest()
    evidence = [{"sha256": held(api), "kind": "clean"}, {"sha256": missing, "kind": "snapshot"}]
    created = api.create(api.body(evidence=evidence))
    cid = created["id"]
    assert (created["status"], created["missing_elements"]) == ("incomplete", ["evidence"])
    assert "first_complete_at" not in created
    assert api.review(cid, "return", reason="snapshot missing").status_code == 200
    answered = patch(api, cid, {"description": "at gate 3"})
    assert (answered["status"], answered["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409
    assert put(api, data) == 201
    doc = api.as_("reviewer").get(f"{URL}/{cid}").json()
    assert (doc["status"], doc["missing_elements"]) == ("new", [])


def test_a_return_asking_for_a_photo_is_answered_only_once_the_photo_is_held(api: Api) -> None:
    """A return found nothing missing (its entry's ``missing_elements`` is []) but asked for a
    photo: a file the answer brings must land before the case is back in review, while a
    supplement from before the return that never landed still does not hold it up."""
    created = api.create(api.body(sha=held(api)))
    cid = created["id"]
    early = never_uploaded(api)
    patch(api, cid, {"evidence": [{"sha256": early, "kind": "snapshot"}]})
    api.clock.advance(minutes=1)
    returned = api.review(cid, "return", reason="need a clean close-up photo").json()
    entry = returned["history"][-1]
    assert (returned["status"], entry["missing_elements"]) == ("returned", [])
    api.clock.advance(minutes=1)
    data = fresh_jpeg()
    clean = hashlib.sha256(data).hexdigest()
    answered = patch(api, cid, {"evidence": [{"sha256": clean, "kind": "clean"}]})
    assert (answered["status"], answered["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409
    # A routine latest frame that is not held asks for nothing more.
    latest = {"sha256": never_uploaded(api), "kind": "latest"}
    assert patch(api, cid, {"evidence": [latest]})["status"] == "incomplete"
    assert put(api, data) == 201
    doc = api.as_("reviewer").get(f"{URL}/{cid}").json()
    assert (doc["status"], doc["missing_elements"]) == ("new", [])
    assert steps(doc)[-1] == ("test-producer", "supplemented")
    assert waiting_rows(api) == []
    assert api.review(cid, "confirm").status_code == 200
    # The return recorded the status it was made from and the files the case had then.
    assert (entry["from"], entry["evidence_sha256"]) == (
        "new",
        sorted([created["evidence"][0]["sha256"], early]),
    )


def test_a_file_brought_after_an_answered_return_is_judged_as_one_before_it(api: Api) -> None:
    """Once the answer brought the case back to review, a later supplement that never lands
    does not hold it up when it goes back to incomplete and is completed again."""
    cid = api.create(api.body(sha=held(api)))["id"]
    assert api.review(cid, "return", reason="need a clean close-up photo").status_code == 200
    answered = patch(api, cid, {"evidence": [{"sha256": held(api), "kind": "clean"}]})
    assert (answered["status"], answered["missing_elements"]) == ("new", [])
    supplement = {"evidence": [{"sha256": never_uploaded(api), "kind": "snapshot"}]}
    lost = patch(api, cid, {**supplement, "description": ""})
    assert (lost["status"], lost["missing_elements"]) == ("incomplete", ["description"])
    again = patch(api, cid, {"description": "at gate 3"})
    assert (again["status"], again["missing_elements"]) == ("new", [])
    assert api.review(cid, "confirm").status_code == 200


def test_a_return_of_a_case_that_never_entered_review_is_no_sign_it_did(api: Api) -> None:
    """Incomplete only for a latest frame not held, a return finds nothing missing: the case
    still never entered review, and the file its answer brings is needed as every other."""
    evidence = [
        {"sha256": held(api), "kind": "clean"},
        {"sha256": never_uploaded(api), "kind": "latest"},
    ]
    created = api.create(api.body(evidence=evidence))
    cid = created["id"]
    assert (created["status"], created["missing_elements"]) == ("incomplete", ["evidence"])
    returned = api.review(cid, "return", reason="need a closer photo").json()
    assert returned["history"][-1]["missing_elements"] == []
    answered = patch(api, cid, {"evidence": [{"sha256": never_uploaded(api), "kind": "clean"}]})
    assert (answered["status"], answered["missing_elements"]) == ("incomplete", ["evidence"])
    assert "first_complete_at" not in answered
    assert api.review(cid, "confirm").status_code == 409


def test_a_case_stored_as_new_that_lost_an_element_keeps_its_evidence(api: Api) -> None:
    """A case stored as ``new`` before the time it entered review was recorded, taken back to
    incomplete by a PATCH: it had its evidence, and a supplement that never landed does not
    keep it from review once the element is back."""
    cid = api.create(api.body(sha=held(api)))["id"]
    with api.http.app.state.db.write() as session:
        row = session.scalars(select(CandidateRow).where(CandidateRow.id == cid)).one()
        row.doc = row.doc.replace('"first_complete_at"', '"earlier_field"')
    api.clock.advance(minutes=1)
    supplement = {"evidence": [{"sha256": never_uploaded(api), "kind": "snapshot"}]}
    lost = patch(api, cid, {**supplement, "description": ""})
    assert (lost["status"], lost["missing_elements"]) == ("incomplete", ["description"])
    lost_at = api.clock.now.isoformat()
    api.clock.advance(minutes=1)
    answered = patch(api, cid, {"description": "at gate 3"})
    assert (answered["status"], answered["missing_elements"]) == ("new", [])
    assert answered["first_complete_at"] == lost["first_complete_at"] == lost_at
    assert api.review(cid, "confirm").status_code == 200


@pytest.mark.parametrize(
    "sent", ["2026-11-27T03:59:59+00:00", "2026-11-27T05:00:00", "not a time", 1]
)
def test_a_first_complete_at_a_client_sent_is_no_record(
    api: Api, monkeypatch: pytest.MonkeyPatch, sent: object
) -> None:
    """An earlier release kept a ``first_complete_at`` a client sent, as any field it did not
    name: such a case still needs every file until it enters review."""
    import gridpatrol.api.service as service

    evidence = [
        {"sha256": held(api), "kind": "clean"},
        {"sha256": never_uploaded(api), "kind": "snapshot"},
    ]
    monkeypatch.setattr(service, "refuse_server_fields", lambda *args: None)
    created = api.create({**api.body(evidence=evidence), "first_complete_at": sent})
    monkeypatch.undo()
    cid = created["id"]
    assert (created["status"], created["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "return", reason="say where exactly").status_code == 200
    answered = patch(api, cid, {"description": "at gate 3"})
    assert (answered["status"], answered["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409


def test_requests_an_earlier_release_took_with_first_complete_at_replay_their_answers(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requests that set it then replay their stored answers (an outbox takes a 422 as
    final); one under a new key is refused, and its refusal does not keep the key."""
    import gridpatrol.api.service as service

    producer = api.as_("producer")
    body = {**api.body(sha=held(api)), "first_complete_at": "2026-11-27T04:00:00+00:00"}
    change = {"first_complete_at": "2026-11-27T04:00:00+00:00"}
    monkeypatch.setattr(service, "refuse_server_fields", lambda *args: None)
    first = producer.post(URL, json=body, headers={"Idempotency-Key": "c"})
    assert first.status_code == 201, first.text
    cid = first.json()["id"]
    patched = producer.patch(f"{URL}/{cid}", json=change, headers={"Idempotency-Key": "p"})
    assert patched.status_code == 200, patched.text
    monkeypatch.undo()
    replayed = producer.post(URL, json=body, headers={"Idempotency-Key": "c"})
    assert (replayed.status_code, replayed.text) == (201, first.text)
    again = producer.patch(f"{URL}/{cid}", json=change, headers={"Idempotency-Key": "p"})
    assert (again.status_code, again.text) == (200, patched.text)
    refused = producer.patch(f"{URL}/{cid}", json=change, headers={"Idempotency-Key": "q"})
    assert (refused.status_code, refused.json()["detail"]) == (
        422,
        "the server owns first_complete_at; a patch cannot set them",
    )
    fresh = producer.post(URL, json=body, headers={"Idempotency-Key": "d"})
    assert (fresh.status_code, fresh.json()["detail"]) == (
        422,
        "the server owns first_complete_at; a new candidate cannot set them",
    )
    fixed = producer.patch(f"{URL}/{cid}", json={"note": "x"}, headers={"Idempotency-Key": "q"})
    assert fixed.status_code == 200, fixed.text


def test_a_batch_an_earlier_release_took_with_first_complete_at_replays_its_answers(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A batch replayed as a producer's outbox sends it again (its queued keys and bodies, the
    answer to the first attempt lost) gets the first answer of every item, also of one that
    set the field; a new item that sets it is refused as a single POST is, keeping no key."""
    import gridpatrol.api.service as service

    producer = api.as_("producer")
    sha = held(api)
    outbox = Outbox(tmp_path / "outbox-replay.db", None, component="replay")
    with outbox.transaction() as txn:
        txn.create_candidate(api.body(sha=sha))
        txn.create_candidate({**api.body(sha=sha), "first_complete_at": "2026-11-27T04:00:00Z"})
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        queued = conn.execute(
            "SELECT idempotency_key, payload FROM outbox_ops WHERE kind = 'create' ORDER BY seq"
        ).fetchall()
    outbox.stop()
    # As ApiClient.create_batch sends the outbox's creates.
    batch = {"items": [{"idempotency_key": k, "body": json.loads(p)} for k, p in queued]}
    monkeypatch.setattr(service, "refuse_server_fields", lambda *args: None)
    first = producer.post(f"{URL}/batch", json=batch)
    monkeypatch.undo()
    assert [item["status"] for item in first.json()["items"]] == [201, 201], first.text
    replayed = producer.post(f"{URL}/batch", json=batch)
    assert (replayed.status_code, replayed.json()) == (207, first.json())

    fresh = {**api.body(sha=sha), "first_complete_at": "2026-11-27T04:00:00Z"}
    single = producer.post(URL, json=fresh, headers={"Idempotency-Key": "single"})
    assert single.status_code == 422, single.text
    refusal = {k: v for k, v in single.json().items() if k != "instance"}
    assert refusal["detail"] == "the server owns first_complete_at; a new candidate cannot set them"
    item = {"idempotency_key": "new", "body": fresh}
    for _attempt in range(2):  # the refusal keeps no key: it is judged again
        refused = producer.post(f"{URL}/batch", json={"items": [item, item]})
        assert refused.json()["items"] == [{"status": 422, "body": refusal}] * 2
    fixed = {"idempotency_key": "new", "body": api.body(sha=sha)}
    created = producer.post(f"{URL}/batch", json={"items": [fixed]})
    assert created.json()["items"][0]["status"] == 201, created.text


def test_an_item_refused_for_first_complete_at_leaves_its_key_to_the_next_item(
    api: Api,
) -> None:
    """An item refused for the field keeps no key in its batch either: a later item with that
    key is judged as the next single POST would be, and a replay of the batch answers as those
    POSTs sent again do (the refused body now meets the key of another one)."""
    producer = api.as_("producer")
    sha = held(api)
    owned = {**api.body(sha=sha), "first_complete_at": "2026-11-27T04:00:00Z"}
    valid = api.body(sha=sha)
    # The same as single POSTs, of another event (the batch's would be found as created).
    alone = [{**owned, "source": api.body()["source"]}, api.body(sha=sha)]

    def singles() -> list[tuple[int, Any]]:
        answers = []
        for body in alone:
            response = producer.post(URL, json=body, headers={"Idempotency-Key": "alone"})
            answers.append((response.status_code, response.json().get("detail")))
        return answers

    items = [{"idempotency_key": "k1", "body": owned}, {"idempotency_key": "k1", "body": valid}]
    first = producer.post(f"{URL}/batch", json={"items": items})
    replayed = producer.post(f"{URL}/batch", json={"items": items})
    got = [
        [(item["status"], item["body"].get("detail")) for item in answer.json()["items"]]
        for answer in (first, replayed)
    ]
    created = first.json()["items"][1]["body"]
    assert got == [
        [(422, "the server owns first_complete_at; a new candidate cannot set them"), (201, None)],
        [(422, "this Idempotency-Key was used with another request body"), (201, None)],
    ], first.text
    assert got == [singles(), singles()]
    assert replayed.json()["items"][1]["body"] == created
    assert api.as_("reviewer").get(f"{URL}/{created['id']}").json() == created


@pytest.mark.parametrize("unheld", list(SUPPLEMENTS.values()), ids=list(SUPPLEMENTS))
def test_one_held_file_answers_a_return_whatever_else_the_answer_brought(
    make_api: Callable[..., Api], unheld: Callable[[Api], str]
) -> None:
    """Answered by a detector's annotated frame whose upload never landed, then by a clean
    photo uploaded: the photo answers the return, the frame is owed by nothing, also not by
    the case's next return."""
    api = make_api(max_evidence_bytes=LIMIT)
    cid = api.create(api.body(sha=held(api)))["id"]
    api.clock.advance(minutes=1)
    assert api.review(cid, "return", reason="need a clean close-up photo").status_code == 200
    frame = unheld(api)
    detector = patch(api, cid, {"evidence": [{"sha256": frame, "kind": "annotated"}]})
    assert (detector["status"], detector["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409
    operator = patch(api, cid, {"evidence": [{"sha256": held(api), "kind": "clean"}]})
    assert (operator["status"], operator["missing_elements"]) == ("new", [])
    assert waiting_rows(api) == []
    api.clock.advance(minutes=1)
    returned = api.review(cid, "return", reason="closer still").json()
    assert (returned["status"], returned["history"][-1]["from"]) == ("returned", "new")
    assert frame in returned["history"][-1]["evidence_sha256"]
    again = patch(api, cid, {"evidence": [{"sha256": held(api), "kind": "clean"}]})
    assert (again["status"], again["missing_elements"]) == ("new", [])
    confirmed = api.review(cid, "confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"


def test_a_return_of_a_case_waiting_for_its_answer_still_wants_a_held_file(api: Api) -> None:
    """Returned again while it waits for the photo its answer brought and that never landed:
    the new return's answer must bring a held file (a description is not enough), and any
    held one will do; the unlanded frame is no longer needed."""
    cid = api.create(api.body(sha=held(api)))["id"]
    assert api.review(cid, "return", reason="need a clean close-up photo").status_code == 200
    frame = refused_not_a_jpeg(api)
    waiting = patch(api, cid, {"evidence": [{"sha256": frame, "kind": "annotated"}]})
    assert (waiting["status"], waiting["missing_elements"]) == ("incomplete", ["evidence"])
    returned = api.review(cid, "return", reason="the photo please").json()
    entry = returned["history"][-1]
    assert (returned["status"], entry["from"]) == ("returned", "incomplete")
    assert (frame in entry["evidence_sha256"], entry["missing_elements"]) == (False, ["evidence"])
    described = patch(api, cid, {"description": "at gate 3"})
    assert (described["status"], described["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409
    other = never_uploaded(api)
    still = patch(api, cid, {"evidence": [{"sha256": other, "kind": "clean"}]})
    assert (still["status"], still["missing_elements"]) == ("incomplete", ["evidence"])
    answered = patch(api, cid, {"evidence": [{"sha256": held(api), "kind": "clean"}]})
    assert (answered["status"], answered["missing_elements"]) == ("new", [])
    assert waiting_rows(api) == []
    assert api.review(cid, "confirm").status_code == 200


def test_the_upload_of_one_of_the_files_an_answer_brought_answers_the_return(api: Api) -> None:
    """An answer naming two photos neither of which is held yet waits for one of them only."""
    cid = api.create(api.body(sha=held(api)))["id"]
    assert api.review(cid, "return", reason="need a clean close-up photo").status_code == 200
    data = fresh_jpeg()
    photos = [
        {"sha256": never_uploaded(api), "kind": "snapshot"},
        {"sha256": hashlib.sha256(data).hexdigest(), "kind": "clean"},
    ]
    answered = patch(api, cid, {"evidence": photos})
    assert (answered["status"], answered["missing_elements"]) == ("incomplete", ["evidence"])
    assert api.review(cid, "confirm").status_code == 409
    assert put(api, data) == 201
    doc = api.as_("reviewer").get(f"{URL}/{cid}").json()
    assert (doc["status"], doc["missing_elements"]) == ("new", [])
    assert waiting_rows(api) == []
    assert api.review(cid, "confirm").status_code == 200

"""A case that had its evidence keeps it, over HTTP: a supplement whose upload never lands
(refused 413, 415 or 422, or never sent) does not take it away, also after a reviewer returned
the case and the producer answered; a case that never had its evidence still needs every file
it refers to."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

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

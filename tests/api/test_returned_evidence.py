"""Returned cases and the evidence files they wait for, over HTTP: a case returned for want of
its photo comes back to review when the photo is uploaded (also one returned before returns
recorded what they asked, and one whose latest frame is not held yet, as incomplete), a
routine latest frame answers no return, a returned case's missing elements follow its
uploads, and a case that waits for no file any more (complete, rejected, merged) leaves no row
behind in ``missing_evidence`` (nor, after the migration, one that an earlier version
left)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select
from sqlalchemy.exc import OperationalError

from gridpatrol.api.db import CandidateRow, MissingEvidenceRow

from .test_evidence import migrate
from .test_intake_consistency import doc_of
from .test_intake_consistency import put_evidence as upload
from .test_intake_consistency import unstored_file as unstored

URL = "/api/v1/candidates"


def patch(api: Any, cid: str, change: dict[str, Any], key: str) -> dict[str, Any]:
    response = api.as_("producer").patch(
        f"{URL}/{cid}", json=change, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def waiting_rows(api: Any) -> list[tuple[str, str]]:
    """The (file, candidate) pairs the API notes as waiting."""
    with api.http.app.state.db.read() as session:
        rows = session.execute(select(MissingEvidenceRow.sha256, MissingEvidenceRow.candidate_id))
        return sorted((sha, cid) for sha, cid in rows)


def steps(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["who"], entry["action"]) for entry in doc["history"]]


def returned_for_its_photo(api: Any, ctype: str = "garbage_overflow") -> tuple[str, bytes]:
    """A case posted before its photo was uploaded, returned by a reviewer for the photo."""
    data, sha = unstored(api, 31)
    created = api.create(api.body("e1", sha, ctype=ctype))
    assert (created["status"], created["missing_elements"]) == ("incomplete", ["evidence"])
    returned = api.review(created["id"], "return", reason="snapshot missing").json()
    assert (returned["status"], returned["missing_elements"]) == ("returned", ["evidence"])
    return created["id"], data


@pytest.mark.parametrize(
    ("ctype", "status", "after"),
    [
        ("garbage_overflow", "new", []),
        ("smoke", "confirmed", [("policy", "auto_confirmed")]),
    ],
)
def test_a_case_returned_for_its_photo_enters_review_when_the_photo_is_uploaded(
    api: Any, ctype: str, status: str, after: list[tuple[str, str]]
) -> None:
    cid, data = returned_for_its_photo(api, ctype)
    # Returned at the clock's time, a millisecond after its creation (a case's writes are).
    returned_at = (api.clock.now + timedelta(milliseconds=1)).isoformat()
    api.clock.advance(seconds=1)
    assert upload(api, data).status_code == 201
    doc = doc_of(api, cid)
    assert (doc["status"], doc["missing_elements"]) == (status, [])
    assert steps(doc) == [
        ("test-producer", "created"),
        ("test-reviewer", "returned"),
        ("test-producer", "supplemented"),
        *after,
    ]
    # The return records what the case lacked (what the upload supplied), the status it was
    # returned from and the files it had.
    assert doc["history"][1:3] == [
        {
            "at": returned_at,
            "who": "test-reviewer",
            "action": "returned",
            "reason": "snapshot missing",
            "missing_elements": ["evidence"],
            "from": "incomplete",
            "evidence_sha256": [hashlib.sha256(data).hexdigest()],
        },
        {
            "at": api.clock.now.isoformat(),
            "who": "test-producer",
            "action": "supplemented",
            "fields": ["evidence"],
            "evidence_sha256": [hashlib.sha256(data).hexdigest()],
        },
    ]
    assert waiting_rows(api) == []
    feed = [c["id"] for c in api.as_("platform").get("/api/v1/feed").json()["items"]]
    if status == "new":
        assert feed == []
        assert api.review(cid, "confirm").json()["status"] == "confirmed"
    else:
        assert feed == [cid]


def test_a_case_returned_for_its_photo_and_description_waits_for_both(api: Any) -> None:
    data, sha = unstored(api, 32)
    cid = api.create(api.body("e1", sha, description=""))["id"]
    assert api.review(cid, "return", reason="photo, and what is it?").status_code == 200
    assert upload(api, data).status_code == 201
    doc = doc_of(api, cid)
    assert (doc["status"], doc["missing_elements"]) == ("returned", ["description"])
    assert doc["history"][1]["missing_elements"] == ["description", "evidence"]
    assert (steps(doc)[-1], doc["history"][-1]["fields"]) == (
        ("test-producer", "updated"),
        ["evidence"],
    )
    assert waiting_rows(api) == []
    # A routine update supplies neither: the case stays with its producer.
    assert patch(api, cid, {"detection": {"dwell_s": 900}}, "dwell")["status"] == "returned"
    answered = patch(api, cid, {"description": "暴露垃圾 beside the bin"}, "answer")
    assert (answered["status"], answered["missing_elements"]) == ("new", [])


def test_a_returned_case_shows_its_routine_frame_held_once_uploaded_and_stays_returned(
    api: Any,
) -> None:
    """A case that never had every element (no description): each file it refers to counts
    until it is held (one that had them needs only one, test_evidence_once_complete)."""
    cid = api.create(api.body("e1", api.put_jpeg(33), description=""))["id"]
    assert api.review(cid, "return", reason="what is it?").json()["status"] == "returned"
    data, sha = unstored(api, 34)
    updated = patch(api, cid, {"evidence": [{"sha256": sha, "kind": "latest"}]}, "frame")
    missing = ["description", "evidence"]
    assert (updated["status"], updated["missing_elements"]) == ("returned", missing)
    assert upload(api, data).status_code == 201
    doc = doc_of(api, cid)
    # The return asked for a description, not for this frame: the case stays returned.
    assert (doc["status"], doc["missing_elements"]) == ("returned", ["description"])
    assert steps(doc)[-1] == ("test-producer", "updated")
    assert waiting_rows(api) == []
    assert api.review(cid, "confirm").status_code == 409


def upload_unjudged(api: Any, monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Upload ``data`` with its look at the waiting cases failing (a busy database): the
    store holds the file, and the cases that wait for it are as they were."""
    service = api.http.app.state.services.candidates

    def busy(who: Any, sha: str) -> int:
        raise OperationalError("DELETE FROM missing_evidence", {}, Exception("database is locked"))

    monkeypatch.setattr(service, "evidence_arrived", busy)
    assert upload(api, data).status_code == 503
    monkeypatch.undo()


def test_a_patch_that_completes_a_returned_case_answers_its_return(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload stores the photo but its look at the waiting cases fails (a busy database):
    the producer's PATCH resending the same evidence completes the case, and answers the
    return as the upload would have."""
    cid, data = returned_for_its_photo(api)
    upload_unjudged(api, monkeypatch, data)
    sha = hashlib.sha256(data).hexdigest()
    assert doc_of(api, cid)["missing_elements"] == ["evidence"]
    doc = patch(api, cid, {"evidence": [{"sha256": sha, "kind": "clean"}]}, "again")
    assert (doc["status"], doc["missing_elements"]) == ("new", [])
    assert steps(doc)[-1] == ("test-producer", "supplemented")
    assert waiting_rows(api) == []


@pytest.mark.parametrize("returned", [False, True])
@pytest.mark.parametrize("decision", ["reject", "merge"])
def test_a_case_rejected_or_merged_while_it_waits_for_its_photo_leaves_no_row(
    api: Any, decision: str, returned: bool
) -> None:
    data, sha = unstored(api, 35)
    cid = api.create(api.body("e1", sha))["id"]
    target = api.create(api.body("t", api.put_jpeg(36)))["id"]
    assert waiting_rows(api) == [(sha, cid)]
    if returned:
        assert api.review(cid, "return", reason="snapshot missing").status_code == 200
        assert waiting_rows(api) == [(sha, cid)]
    extra = {"reason_code": "insufficient_evidence"} if decision == "reject" else {}
    extra = {"merge_into": target} if decision == "merge" else extra
    decided = api.review(cid, decision, **extra)
    assert decided.status_code == 200, decided.text
    assert waiting_rows(api) == []
    # The photo uploaded after all changes nothing of the case.
    assert upload(api, data).status_code == 201
    assert doc_of(api, cid) == decided.json()


def test_a_case_completed_by_a_patch_keeps_no_row_for_the_frame_it_replaced(api: Any) -> None:
    _data, lost = unstored(api, 37)
    clean = {"sha256": api.put_jpeg(38), "kind": "clean"}
    payload = api.body("e1", evidence=[clean, {"sha256": lost, "kind": "latest"}])
    cid = api.create(payload)["id"]
    assert waiting_rows(api) == [(lost, cid)]
    # The detector's next frame replaces the one whose upload never came.
    doc = patch(api, cid, {"evidence": [{"sha256": api.put_jpeg(39), "kind": "latest"}]}, "f")
    assert (doc["status"], doc["missing_elements"]) == ("new", [])
    assert waiting_rows(api) == []


def frame(sha: str) -> dict[str, Any]:
    return {"sha256": sha, "kind": "latest"}


@pytest.mark.parametrize("answer", ["upload", "patch"])
def test_a_routine_frame_answers_no_return_of_a_case_waiting_only_for_its_frame(
    api: Any, answer: str
) -> None:
    """Posted with its clean photo held and its latest frame not yet uploaded (incomplete,
    evidence missing), returned for another place: neither that frame's upload nor the
    detector's next frame and dwell time take it from its producer."""
    clean = {"sha256": api.put_jpeg(41), "kind": "clean"}
    first, first_sha = unstored(api, 42)
    cid = api.create(api.body("e1", evidence=[clean, frame(first_sha)]))["id"]
    returned = api.review(cid, "return", reason="wrong place").json()
    assert (returned["status"], returned["missing_elements"]) == ("returned", ["evidence"])
    if answer == "upload":
        assert upload(api, first).status_code == 201
    else:
        # The detector uploads its next frame, then updates the episode with it.
        change = {"evidence": [frame(api.put_jpeg(43))], "detection": {"dwell_s": 600}}
        assert patch(api, cid, change, "next")["status"] == "returned"
    doc = doc_of(api, cid)
    assert (doc["status"], doc["missing_elements"], steps(doc)[2:]) == (
        "returned",
        [],
        [("test-producer", "updated")],
    )
    # The frame is no element the return asks for; a return records what it asks, also none.
    assert doc["history"][1]["missing_elements"] == []
    assert waiting_rows(api) == []
    assert api.review(cid, "confirm").status_code == 409


def test_a_case_returned_for_its_clean_photo_with_its_frame_held_comes_back(api: Any) -> None:
    data, sha = unstored(api, 44)
    evidence = [{"sha256": sha, "kind": "clean"}, frame(api.put_jpeg(45))]
    cid = api.create(api.body("e1", evidence=evidence))["id"]
    returned = api.review(cid, "return", reason="snapshot missing").json()
    assert returned["history"][-1]["missing_elements"] == ["evidence"]
    assert upload(api, data).status_code == 201
    doc = doc_of(api, cid)
    assert (doc["status"], doc["missing_elements"], steps(doc)[-1]) == (
        "new",
        [],
        ("test-producer", "supplemented"),
    )


@pytest.mark.parametrize("answer", ["upload", "patch"])
def test_a_case_returned_for_its_clean_photo_comes_back_without_its_frame(
    api: Any, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Returned for its clean photo while its latest frame is not held either: the photo
    answers the return (no file but a latest frame is missing, as the return judges), and
    the case waits as incomplete for its frame, however many frames the detector sends
    before their uploads."""
    clean, clean_sha = unstored(api, 51)
    _first, first_sha = unstored(api, 52)
    photo = {"sha256": clean_sha, "kind": "clean"}
    cid = api.create(api.body("e1", evidence=[photo, frame(first_sha)]))["id"]
    returned = api.review(cid, "return", reason="snapshot missing").json()
    assert returned["history"][-1]["missing_elements"] == ["evidence"]
    if answer == "upload":
        assert upload(api, clean).status_code == 201
        doc = doc_of(api, cid)
    else:
        # The photo stored, its upload's look at the waiting cases failed: the detector's
        # next update, with a frame it has not uploaded yet, resends the photo.
        upload_unjudged(api, monkeypatch, clean)
        _next, next_sha = unstored(api, 53)
        doc = patch(api, cid, {"evidence": [photo, frame(next_sha)]}, "next")
    assert (doc["status"], doc["missing_elements"], steps(doc)[2:]) == (
        "incomplete",
        ["evidence"],
        [("test-producer", "supplemented")],
    )
    # Each routine update brings a frame the store does not hold yet: the case stays
    # incomplete, and the upload of the frame it names brings it into review.
    frames = [unstored(api, n) for n in range(54, 57)]
    for n, (_data, sha) in enumerate(frames):
        change = {"evidence": [frame(sha)], "detection": {"dwell_s": 600 + n}}
        changed = patch(api, cid, change, f"frame-{n}")
        assert (changed["status"], changed["missing_elements"]) == ("incomplete", ["evidence"])
    assert upload(api, frames[-1][0]).status_code == 201
    doc = doc_of(api, cid)
    assert (doc["status"], doc["missing_elements"], steps(doc)[-1]) == (
        "new",
        [],
        ("test-producer", "supplemented"),
    )
    assert waiting_rows(api) == []


def forget_what_the_return_asked(api: Any, cid: str) -> None:
    """Store the case's return entry as a version that recorded no missing elements did."""
    with api.http.app.state.db.write() as session:
        row = session.scalars(select(CandidateRow).where(CandidateRow.id == cid)).one()
        doc = json.loads(row.doc)
        assert doc["history"][-1]["action"] == "returned"
        del doc["history"][-1]["missing_elements"]
        row.doc = json.dumps(doc)


@pytest.mark.parametrize("kind", ["clean", "latest"])
def test_a_case_returned_before_returns_recorded_what_they_asked(api: Any, kind: str) -> None:
    """A return with no missing_elements asks for what the case lacks when its file comes,
    judged as a return is now: its clean photo brings it back, a latest frame does not."""
    data, sha = unstored(api, 46)
    evidence = [{"sha256": sha, "kind": kind}]
    if kind == "latest":
        evidence.insert(0, {"sha256": api.put_jpeg(47), "kind": "clean"})
    cid = api.create(api.body("e1", evidence=evidence))["id"]
    assert api.review(cid, "return", reason="snapshot missing").status_code == 200
    forget_what_the_return_asked(api, cid)
    assert upload(api, data).status_code == 201
    doc = doc_of(api, cid)
    status = "new" if kind == "clean" else "returned"
    assert (doc["status"], doc["missing_elements"]) == (status, [])
    assert doc["history"][-1]["action"] == ("supplemented" if kind == "clean" else "updated")
    assert waiting_rows(api) == []


def test_the_migration_indexes_the_rows_by_case_and_drops_those_of_cases_that_wait_no_more(
    api: Any,
) -> None:
    _data, waits = unstored(api, 48)
    waiting = api.create(api.body("e1", waits))["id"]
    _data, lost = unstored(api, 49)
    rejected = api.create(api.body("e2", lost))["id"]
    refused = api.review(rejected, "reject", reason_code="insufficient_evidence")
    assert refused.status_code == 200
    confirmed = api.create(api.body("e3", api.put_jpeg(50)))["id"]
    assert api.review(confirmed, "confirm").status_code == 200
    db = api.http.app.state.db
    # The rows an earlier version left: a rejected case's, one of a case completed after its
    # latest frame was replaced, one of a case gone.
    leftovers = [(lost, rejected), (lost, confirmed), (lost, "0" * 36)]
    with db.write() as session:
        session.execute(
            insert(MissingEvidenceRow), [{"sha256": s, "candidate_id": c} for s, c in leftovers]
        )
    migrate(db, "0005", down=True)
    migrate(db, "head")
    assert waiting_rows(api) == [(waits, waiting)]
    indexes = inspect(db.engine).get_indexes("missing_evidence")
    assert [(i["name"], i["column_names"]) for i in indexes] == [
        ("ix_missing_evidence_candidate", ["candidate_id"])
    ]

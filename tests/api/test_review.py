"""Review decisions, history, merges and auto-confirmation over HTTP."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.api.routers.events import replay


def new_candidate(api: Any, event: str = "e1", **kw: Any) -> dict[str, Any]:
    return dict(api.create(api.body(event, api.put_jpeg(), **kw)))


def later_by_a_millisecond(at: str) -> str:
    return (datetime.fromisoformat(at) + timedelta(milliseconds=1)).isoformat()


def test_confirm_records_history(api: Any) -> None:
    cid = new_candidate(api)["id"]
    api.clock.advance(seconds=1)
    response = api.review(cid, "confirm", reason="clearly garbage")
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "confirmed"
    assert doc["hold_until"] is None
    entry = doc["history"][-1]
    assert (entry["who"], entry["action"], entry["reason"]) == (
        "test-reviewer",
        "confirmed",
        "clearly garbage",
    )
    assert entry["at"] == api.clock.now.isoformat()
    again = api.review(cid, "confirm")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "code",
    [
        "false_positive",
        "duplicate",
        "licensed_activity",
        "out_of_jurisdiction",
        "insufficient_evidence",
        "other",
    ],
)
def test_reject_needs_a_listed_reason_code(api: Any, code: str) -> None:
    cid = new_candidate(api)["id"]
    assert api.review(cid, "reject").status_code == 422
    assert api.review(cid, "reject", reason_code="bored").status_code == 422
    doc = api.review(cid, "reject", reason_code=code, reason="see photo").json()
    assert doc["status"] == "rejected"
    assert doc["history"][-1]["reason_code"] == code
    assert api.review(cid, "confirm").status_code == 409


@pytest.mark.parametrize(
    ("decision", "extra", "detail"),
    [
        ("return", {}, "a return needs a reason saying what is missing"),
        ("return", {"reason": "  "}, "a return needs a reason saying what is missing"),
        ("reject", {"reason_code": "other"}, "a rejection as other needs a reason"),
        ("reject", {"reason_code": "other", "reason": "\t"}, "a rejection as other needs a reason"),
        ("reject", {}, "a rejection needs a reason_code"),
        ("merge", {}, "a merge needs merge_into"),
        (
            "confirm",
            {"merge_into": "0b9c3f0e-4a0d-4c49-9a51-2f4a4f3c8f10", "reason_code": "duplicate"},
            "merge_into goes only with the merge decision, not with confirm",
        ),
        (
            "return",
            {"merge_into": "0b9c3f0e-4a0d-4c49-9a51-2f4a4f3c8f10", "reason": "photo?"},
            "merge_into goes only with the merge decision, not with return",
        ),
        (
            "confirm",
            {"reason_code": "duplicate"},
            "reason_code goes only with the reject decision, not with confirm",
        ),
        (
            "return",
            {"reason_code": "insufficient_evidence", "reason": "photo?"},
            "reason_code goes only with the reject decision, not with return",
        ),
        (
            "merge",
            {"merge_into": "0b9c3f0e-4a0d-4c49-9a51-2f4a4f3c8f10", "reason_code": "duplicate"},
            "reason_code goes only with the reject decision, not with merge",
        ),
        (
            "reject",
            {"reason_code": "duplicate", "merge_into": "0b9c3f0e-4a0d-4c49-9a51-2f4a4f3c8f10"},
            "merge_into goes only with the merge decision, not with reject",
        ),
    ],
)
def test_a_decision_without_what_it_needs_is_refused_and_changes_nothing(
    api: Any, decision: str, extra: dict[str, str], detail: str
) -> None:
    cid = new_candidate(api)["id"]
    refused = api.review(cid, decision, **extra)
    assert (refused.status_code, refused.json()["detail"]) == (422, detail)
    assert refused.headers["content-type"] == "application/problem+json"
    doc = api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json()
    assert (doc["status"], [e["action"] for e in doc["history"]]) == ("new", ["created"])


def test_return_then_supplement_comes_back_as_new(api: Any) -> None:
    cid = new_candidate(api)["id"]
    assert api.review(cid, "return", reason="no address").json()["status"] == "returned"
    assert api.review(cid, "confirm").status_code == 409
    patched = api.as_("producer").patch(
        f"/api/v1/candidates/{cid}",
        json={"location": {"address": "大宁路 100号"}},
        headers={"Idempotency-Key": "s1"},
    )
    assert patched.json()["status"] == "new"
    assert api.review(cid, "confirm").json()["status"] == "confirmed"
    actions = [h["action"] for h in patched.json()["history"]]
    assert actions == ["created", "returned", "supplemented"]


def test_routine_update_keeps_a_returned_case_returned(api: Any) -> None:
    cid = new_candidate(api)["id"]
    assert api.review(cid, "return", reason="wrong place").json()["status"] == "returned"
    producer = api.as_("producer")
    url = f"/api/v1/candidates/{cid}"
    latest = {"sha256": api.put_jpeg(7), "kind": "latest"}
    for key, change in [
        ("dwell", {"detection": {"dwell_s": 900}}),
        ("frame", {"evidence": [latest]}),
    ]:
        doc = producer.patch(url, json=change, headers={"Idempotency-Key": key}).json()
        assert doc["status"] == "returned", key
        assert doc["history"][-1]["action"] == "updated"
    assert api.review(cid, "confirm").status_code == 409
    answer = {"description": "暴露垃圾 at the north gate"}
    doc = producer.patch(url, json=answer, headers={"Idempotency-Key": "answer"}).json()
    assert doc["status"] == "new"
    assert [(h["action"], h.get("count")) for h in doc["history"]] == [
        ("created", None),
        ("returned", None),
        ("updated", 2),  # both routine updates, in one entry
        ("supplemented", None),
    ]
    assert doc["history"][2]["fields"] == ["detection", "evidence"]


def test_new_evidence_answers_a_return(api: Any) -> None:
    cid = new_candidate(api)["id"]
    api.review(cid, "return", reason="blurred photo")
    crop = {"sha256": api.put_jpeg(8), "kind": "crop"}
    doc = api.as_("producer").patch(
        f"/api/v1/candidates/{cid}", json={"evidence": [crop]}, headers={"Idempotency-Key": "c"}
    )
    assert doc.json()["status"] == "new"


def test_routine_update_does_not_auto_confirm_a_returned_case(
    make_api: Any, tmp_path: Path
) -> None:
    # Returned complete, for what the reviewer's note says (a photo's upload would answer a
    # case returned for want of it); then its type is made auto-confirmed.
    before = make_api()
    cid = new_candidate(before)["id"]
    assert before.review(cid, "return", reason="wrong place").json()["status"] == "returned"
    site = tmp_path / "auto.yaml"
    site.write_text(
        "site: {name: test, timezone: Asia/Shanghai}\n"
        "policy:\n  auto_confirm: [smoke, garbage_overflow]\n",
        encoding="utf-8",
    )
    producer = make_api(config=site).as_("producer")
    doc = producer.patch(
        f"/api/v1/candidates/{cid}",
        json={"detection": {"dwell_s": 900}},
        headers={"Idempotency-Key": "d"},
    ).json()
    assert (doc["status"], doc["missing_elements"]) == ("returned", [])


def test_merge_into_an_existing_candidate(api: Any) -> None:
    target = new_candidate(api, "t")["id"]
    dup = new_candidate(api, "d")["id"]
    assert api.review(dup, "merge").status_code == 422
    assert api.review(dup, "merge", merge_into=str(uuid.uuid4())).status_code == 422
    assert api.review(dup, "merge", merge_into=dup).status_code == 422
    doc = api.review(dup, "merge", merge_into=target).json()
    assert doc["status"] == "merged"
    assert doc["merged_into"] == target
    got = api.as_("reviewer").get(f"/api/v1/candidates/{target}").json()
    assert got["references"] == [dup]
    assert got["history"][-1]["action"] == "merged_from"
    other = new_candidate(api, "o")["id"]
    assert api.review(other, "merge", merge_into=dup).status_code == 409


def test_auto_confirm_types_skip_review(api: Any) -> None:
    doc = new_candidate(api, ctype="smoke")
    assert doc["status"] == "confirmed"
    assert doc["urgency"] == "immediate"
    assert doc["history"][-1]["who"] == "policy"
    feed = api.as_("platform").get("/api/v1/feed").json()
    assert [c["id"] for c in feed["items"]] == [doc["id"]]


def test_review_roles_and_unknown(api: Any) -> None:
    cid = new_candidate(api)["id"]
    url = f"/api/v1/candidates/{cid}/review"
    assert api.as_("producer").post(url, json={"decision": "confirm"}).status_code == 403
    assert api.as_("platform").post(url, json={"decision": "confirm"}).status_code == 403
    assert api.http.post(url, json={"decision": "confirm"}).status_code == 401
    assert api.as_("reviewer").post(url, json={"decision": "approve"}).status_code == 422
    assert api.review(str(uuid.uuid4()), "confirm").status_code == 404
    assert api.as_("admin").post(url, json={"decision": "confirm"}).status_code == 200


def test_merging_into_a_visible_candidate_gives_it_a_new_feed_position(api: Any) -> None:
    target = new_candidate(api, "t")["id"]
    assert api.review(target, "confirm").status_code == 200
    dup = new_candidate(api, "d")["id"]
    assert api.review(dup, "merge", merge_into=target).status_code == 200
    feed = api.as_("platform").get("/api/v1/feed").json()
    # Listed once, at its new position: the one it had is given up.
    assert [c["id"] for c in feed["items"]] == [target]
    assert feed["next_cursor"] == "2"
    later = api.as_("platform").get("/api/v1/feed", params={"cursor": "1"}).json()
    assert [c["id"] for c in later["items"]] == [target]
    assert later["items"][0]["references"] == [dup]
    assert later["items"][0]["history"][-1]["action"] == "merged_from"


def test_a_closed_candidate_takes_no_merge(api: Any) -> None:
    target = new_candidate(api, "t")["id"]
    assert api.review(target, "confirm").status_code == 200
    for stage in ("registered", "dispatched", "arrived", "resolved", "verified", "closed"):
        reported = api.as_("platform").post(
            f"/api/v1/candidates/{target}/status", json={"stage": stage}
        )
        assert reported.status_code == 200
    closed = api.as_("reviewer").get(f"/api/v1/candidates/{target}").json()
    dup = new_candidate(api, "d")["id"]
    refused = api.review(dup, "merge", merge_into=target)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == f"cannot merge into candidate {target}: it is closed"
    assert api.as_("reviewer").get(f"/api/v1/candidates/{dup}").json()["status"] == "new"
    assert api.as_("reviewer").get(f"/api/v1/candidates/{target}").json() == closed


@pytest.mark.parametrize("hours", [0, 12])  # noon, and midnight inside the night window
def test_a_new_candidate_patched_to_an_auto_confirm_type_is_confirmed(api: Any, hours: int) -> None:
    api.clock.advance(hours=hours)
    cid = new_candidate(api)["id"]
    assert api.as_("platform").get("/api/v1/feed").json()["items"] == []
    response = api.as_("producer").patch(
        f"/api/v1/candidates/{cid}", json={"type": "smoke"}, headers={"Idempotency-Key": "t"}
    )
    assert response.status_code == 200
    doc = response.json()
    assert (doc["status"], doc["urgency"], doc["hold_until"]) == ("confirmed", "immediate", None)
    assert [(e["who"], e["action"]) for e in doc["history"][-2:]] == [
        ("test-producer", "updated"),
        ("policy", "auto_confirmed"),
    ]
    feed = api.as_("platform").get("/api/v1/feed").json()
    assert [c["id"] for c in feed["items"]] == [cid]
    assert feed["items"][0]["status"] == "confirmed"


def test_a_queued_case_of_a_type_auto_confirm_gained_since_stays_for_its_reviewer(
    make_api: Any, tmp_path: Path
) -> None:
    """The operator adds a type to auto_confirm and restarts the API: a routine update of a
    case of that type already queued leaves it queued; a patch to that type confirms."""
    before = make_api()
    waiting = new_candidate(before, "w")["id"]
    retyped = new_candidate(before, "r", ctype="street_vending")["id"]
    site = tmp_path / "auto.yaml"
    site.write_text(
        "site: {name: test, timezone: Asia/Shanghai}\n"
        "policy:\n  auto_confirm: [smoke, garbage_overflow]\n"
        '  night: {start: "00:00", end: "00:00"}\n',
        encoding="utf-8",
    )
    after = make_api(config=site)
    producer = after.as_("producer")
    for cid, change, status in (
        (waiting, {"detection": {"dwell_s": 70}}, "new"),
        (retyped, {"type": "garbage_overflow"}, "confirmed"),
    ):
        response = producer.patch(
            f"/api/v1/candidates/{cid}", json=change, headers={"Idempotency-Key": cid}
        )
        assert (response.status_code, response.json()["status"]) == (200, status)
    feed = after.as_("platform").get("/api/v1/feed").json()
    assert [c["id"] for c in feed["items"]] == [retyped]


def test_the_notes_the_console_sends_with_each_decision_are_taken(api: Any) -> None:
    bodies = [
        ("confirm", {"reason": "clearly garbage"}, "confirmed"),
        ("reject", {"reason_code": "duplicate", "reason": "seen"}, "rejected"),
        ("return", {"reason": "photo?"}, "returned"),
    ]
    for n, (decision, extra, status) in enumerate(bodies):
        cid = new_candidate(api, f"n{n}")["id"]
        response = api.review(cid, decision, **extra)
        assert (response.status_code, response.json()["status"]) == (200, status)
        entry = response.json()["history"][-1]
        assert {k: entry[k] for k in extra} == extra
    target = new_candidate(api, "t")["id"]
    dup = new_candidate(api, "d")["id"]
    merged = api.review(dup, "merge", merge_into=target, reason="same bin")
    assert (merged.status_code, merged.json()["history"][-1]["merge_into"]) == (200, target)


def test_routine_updates_fold_into_one_history_entry_until_another_entry(api: Any) -> None:
    created = new_candidate(api)
    cid, start = created["id"], created["history"][0]["at"]
    producer = api.as_("producer")
    url = f"/api/v1/candidates/{cid}"
    key = iter(range(100))

    def update(change: dict[str, Any]) -> dict[str, Any]:
        api.clock.advance(seconds=30)
        sent = producer.patch(url, json=change, headers={"Idempotency-Key": f"k{next(key)}"})
        assert sent.status_code == 200
        return dict(sent.json())

    def dwell(n: int) -> dict[str, Any]:
        return update({"detection": {"dwell_s": 60 * n}})

    def times(n: int) -> tuple[str, str]:
        first = dwell(1)["history"][-1]["at"]
        for i in range(2, n + 1):
            last = dwell(i)["history"][-1]
        assert last["at"] == first
        return first, api.clock.now.isoformat()

    first, last = times(5)
    doc = api.as_("reviewer").get(url).json()
    assert doc["history"] == [
        {"at": start, "who": "test-producer", "action": "created"},
        {
            "at": first,
            "who": "test-producer",
            "action": "updated",
            "fields": ["detection"],
            "count": 5,
            "last_at": last,
        },
    ]
    assert api.review(cid, "confirm").status_code == 200
    again, later = times(3)
    # An update that changes a required element has an entry of its own, and ends the run.
    changed = update({"description": "overflowing bins at the north gate"})["history"][-1]
    assert changed == {
        "at": api.clock.now.isoformat(),
        "who": "test-producer",
        "action": "updated",
        "fields": ["description"],
    }
    frame = {"sha256": api.put_jpeg(3), "kind": "latest"}
    after = update({"evidence": [frame]})["history"][-1]["at"]
    final = dwell(9)
    assert [(h["action"], h.get("count"), h["at"], h.get("last_at")) for h in final["history"]] == [
        ("created", None, start, None),
        ("updated", 5, first, last),
        # At the clock's time of the last update: a millisecond after it (_case_now).
        ("confirmed", None, later_by_a_millisecond(last), None),
        ("updated", 3, again, later),
        ("updated", None, changed["at"], None),
        ("updated", 2, after, api.clock.now.isoformat()),
    ]
    assert final["history"][-1]["fields"] == ["detection", "evidence"]
    feed = api.as_("platform").get("/api/v1/feed").json()["items"]
    assert feed[-1]["history"] == final["history"]


def test_a_decision_on_a_case_changed_since_it_was_seen_is_refused_and_changes_nothing(
    api: Any,
) -> None:
    cid = new_candidate(api)["id"]
    url = f"/api/v1/candidates/{cid}"
    # Another reviewer returns the case to its producer, with a note.
    returned = api.as_("admin").post(f"{url}/review", json={"decision": "return", "reason": "x?"})
    assert returned.status_code == 200
    before = api.as_("reviewer").get(url).json()
    # A case to merge into, confirmed on the status it has, and its answer to a second decision.
    target = new_candidate(api, "t")["id"]
    confirmed = api.review(target, "confirm", expected_status="new")
    assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")
    already = api.review(target, "confirm")
    assert (already.status_code, already.json()["title"]) == (409, "Conflict")
    target_before = api.as_("reviewer").get(f"/api/v1/candidates/{target}").json()

    # Decisions still possible, made on the case as it was (new), are refused as an illegal
    # one is (which says so first: a confirmation, here).
    illegal = api.review(cid, "confirm", expected_status="new")
    assert illegal.json()["detail"] == "cannot confirm a candidate that is returned"
    for decision, extra in [
        ("reject", {"reason_code": "duplicate"}),
        ("merge", {"merge_into": target}),
    ]:
        refused = api.review(cid, decision, expected_status="new", **extra)
        assert refused.status_code == 409, decision
        assert refused.headers["content-type"] == "application/problem+json"
        # The problem an illegal decision gets (already), but for what it says and names.
        assert refused.json() == {
            **already.json(),
            "detail": f"cannot {decision} a candidate that is returned (expected new)",
            "instance": f"{url}/review",
        }
    assert api.as_("reviewer").get(url).json() == before
    assert api.as_("reviewer").get(f"/api/v1/candidates/{target}").json() == target_before

    # Made on the case as it is, the decision goes through.
    rejected = api.review(cid, "reject", reason_code="duplicate", expected_status="returned")
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")
    assert [(h["action"], h["who"], h.get("reason")) for h in rejected.json()["history"]] == [
        ("created", "test-producer", None),
        ("returned", "test-admin", "x?"),
        ("rejected", "test-reviewer", None),
    ]


def test_a_decision_without_expected_status_applies_to_the_case_as_it_is(api: Any) -> None:
    cid = new_candidate(api)["id"]
    assert api.review(cid, "return", reason="photo?").json()["status"] == "returned"
    refused = api.review(cid, "reject", reason_code="duplicate", expected_status="open")
    assert refused.status_code == 422
    assert api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json()["status"] == "returned"
    rejected = api.review(cid, "reject", reason_code="duplicate")
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")


def test_a_decision_on_a_case_changed_since_it_was_read_is_refused(api: Any) -> None:
    """The status alone does not tell a case changed: returned and supplemented since, or
    given another type while new, it is new again, but not the case the reviewer judged."""
    cid = new_candidate(api)["id"]
    url = f"/api/v1/candidates/{cid}"
    producer = api.as_("producer")
    keys = iter(range(100))

    def patch(change: dict[str, Any]) -> dict[str, Any]:
        api.clock.advance(seconds=30)
        sent = producer.patch(url, json=change, headers={"Idempotency-Key": f"k{next(keys)}"})
        assert sent.status_code == 200, sent.text
        return dict(sent.json())

    def read() -> dict[str, Any]:
        return dict(api.as_("reviewer").get(url).json())

    # Reviewer A reads the case; reviewer B returns it; its producer sends another type and
    # one more frame, which answers the return: it is new again.
    seen = read()
    api.clock.advance(seconds=30)
    returned = api.as_("admin").post(f"{url}/review", json={"decision": "return", "reason": "x?"})
    assert returned.status_code == 200
    snapshot = {"sha256": api.put_jpeg(5), "kind": "snapshot"}
    again = patch({"type": "illegal_dumping", "evidence": [snapshot]})
    assert (again["status"], again["history"][-1]["action"]) == ("new", "supplemented")
    before = read()

    def decide(decision: str, on: dict[str, Any], **extra: Any) -> Any:
        return api.review(
            cid,
            decision,
            expected_status=on["status"],
            expected_updated_at=on["updated_at"],
            **extra,
        )

    target = new_candidate(api, "t")["id"]
    for decision, extra in [
        ("confirm", {}),
        ("reject", {"reason_code": "duplicate"}),
        ("return", {"reason": "which bin?"}),
        ("merge", {"merge_into": target}),
    ]:
        refused = decide(decision, seen, **extra)
        assert refused.status_code == 409, decision
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json() == {
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "detail": f"cannot {decision} candidate {cid}: it changed since it was read"
            f" (it is new, updated at {before['updated_at']})",
            "instance": f"{url}/review",
            "candidate_status": "new",
            "updated_at": before["updated_at"],
        }
    assert read() == before

    # Another type while it stays new is as much a change.
    seen = read()
    patch({"type": "garbage_overflow"})
    changed = read()
    assert decide("confirm", seen).status_code == 409
    assert read() == changed

    # Routine updates (a detector's dwell time, a latest frame) leave what was judged as it
    # was: a decision on the case read before them goes through.
    seen = read()
    patch({"detection": {"dwell_s": 600}})
    patch({"evidence": [{"sha256": api.put_jpeg(6), "kind": "latest"}]})
    assert read()["updated_at"] != seen["updated_at"]
    confirmed = decide("confirm", seen)
    assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")
    assert [h["action"] for h in confirmed.json()["history"]] == [
        "created",
        "returned",
        "supplemented",
        "updated",
        "updated",
        "confirmed",
    ]


def _patcher(api: Any, cid: str) -> Any:
    """A producer PATCH of ``cid`` at the clock's time, checked to succeed."""
    url = f"/api/v1/candidates/{cid}"

    def patch(change: dict[str, Any]) -> dict[str, Any]:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        sent = api.as_("producer").patch(url, json=change, headers=key)
        assert sent.status_code == 200, sent.text
        return dict(sent.json())

    return patch


def test_a_routine_update_on_an_instance_whose_clock_is_behind_is_no_change(api: Any) -> None:
    """Instances behind a load balancer stamp a case with their own clocks: a write on one
    whose clock is behind is still dated after what the case had, so a decision on the case
    as read before a routine update goes through."""
    doc = new_candidate(api)
    cid = doc["id"]
    api.clock.advance(seconds=-1)
    updated = _patcher(api, cid)({"detection": {"dwell_s": 600}})
    confirmed = api.review(cid, "confirm", expected_updated_at=doc["updated_at"])
    assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")
    after = later_by_a_millisecond(doc["updated_at"])
    assert updated["updated_at"] == updated["history"][-1]["at"] == after
    assert confirmed.json()["history"][-1]["at"] == later_by_a_millisecond(after)


def test_a_retype_on_an_instance_whose_clock_is_behind_is_a_change(api: Any) -> None:
    """A retype stamped by an instance whose clock is behind, then a routine update by one
    ahead: the retype is still after the version read, and the decision is refused."""
    doc = new_candidate(api)
    cid = doc["id"]
    patch = _patcher(api, cid)
    api.clock.advance(seconds=-1)
    assert patch({"type": "illegal_dumping"})["type"] == "illegal_dumping"
    api.clock.advance(seconds=2)
    now = patch({"detection": {"dwell_s": 600}})
    refused = api.review(cid, "confirm", expected_updated_at=doc["updated_at"])
    assert (refused.status_code, refused.json()["updated_at"]) == (409, now["updated_at"])
    times = [datetime.fromisoformat(h["at"]) for h in now["history"]]
    assert times == sorted(times)
    assert len(set(times)) == len(times)


def test_one_write_on_an_instance_whose_clock_is_ahead_does_not_date_later_ones_ahead(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A routine update on an instance 10 minutes ahead, then a confirm on one in time: the
    confirm is stamped at most CASE_CLOCK_LEAD (2 s) ahead of its clock, not after the update,
    so a stage reported after it is accepted and a replay from its event id sees other cases
    changed since."""
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.service")
    start = api.clock.now
    cid = new_candidate(api)["id"]
    api.clock.now = start + timedelta(minutes=10)
    _patcher(api, cid)({"detection": {"dwell_s": 600}})
    api.clock.now = start + timedelta(seconds=10)
    confirmed = api.review(cid, "confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["updated_at"] == (start + timedelta(seconds=12)).isoformat()
    warned = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.api.service"]
    assert warned == [
        f"candidate {cid}: its last write is dated 590.000 s ahead of this instance's clock"
        " (clock skew between instances); this write is stamped 2 s ahead of the clock,"
        " before it"
    ]

    registered_at = (start + timedelta(seconds=20)).isoformat()
    registered = api.as_("platform").post(
        f"/api/v1/candidates/{cid}/status", json={"stage": "registered", "at": registered_at}
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["stages"]["registered"] == registered_at

    api.clock.now = start + timedelta(seconds=30)
    other = new_candidate(api, "e2")
    event_id = f"{confirmed.json()['updated_at']}|{cid}"
    services = api.http.app.state.services
    messages = asyncio.run(replay(services, event_id, api.clock.now))
    replayed = [m.split("\n", 1)[0] for m in messages]
    assert f"id: {other['updated_at']}|{other['id']}" in replayed


def test_a_merge_after_writes_dated_ahead_stamps_its_target_at_most_the_lead_ahead(
    api: Any,
) -> None:
    """Source and target both last written on an instance 10 minutes ahead: a merge on one in
    time stamps each of them CASE_CLOCK_LEAD (2 s) ahead of its clock, the target not a
    further 2 s after the source's stamp."""
    start = api.clock.now
    source = new_candidate(api, "e1")["id"]
    target = new_candidate(api, "e2")["id"]
    api.clock.now = start + timedelta(minutes=10)
    _patcher(api, source)({"detection": {"dwell_s": 600}})
    _patcher(api, target)({"detection": {"dwell_s": 600}})
    api.clock.now = start + timedelta(seconds=10)
    merged = api.review(source, "merge", merge_into=target)
    assert merged.status_code == 200, merged.text
    lead = (start + timedelta(seconds=12)).isoformat()
    assert merged.json()["updated_at"] == lead
    got = api.as_("reviewer").get(f"/api/v1/candidates/{target}").json()
    assert (got["updated_at"], got["history"][-1]["at"]) == (lead, lead)


def test_a_change_dated_before_the_version_read_by_a_clock_behind_still_counts(api: Any) -> None:
    """Instances 3 s apart: a retype on the one behind, after a version dated by the one ahead,
    is stamped (capped) before that version; a later routine update dates the case after it.
    The retype still counts as changed since the version read."""
    start = api.clock.now
    cid = new_candidate(api)["id"]
    api.clock.now = start + timedelta(seconds=3)
    read = _patcher(api, cid)({"detection": {"dwell_s": 30}})["updated_at"]
    assert read == (start + timedelta(seconds=3)).isoformat()
    api.clock.now = start + timedelta(milliseconds=500)
    retyped = _patcher(api, cid)({"type": "illegal_dumping"})
    assert retyped["updated_at"] == (start + timedelta(milliseconds=2500)).isoformat()
    api.clock.now = start + timedelta(seconds=4)
    _patcher(api, cid)({"detection": {"dwell_s": 40}})
    refused = api.review(cid, "confirm", expected_updated_at=read)
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == (
        f"cannot confirm candidate {cid}: it changed since it was read (it is new, updated at"
        f" {(start + timedelta(seconds=4)).isoformat()})"
    )


def test_expected_updated_at_cut_to_milliseconds_or_seconds_is_the_version_read(api: Any) -> None:
    """A client that keeps times to the millisecond (JavaScript's Date) or the second sends
    the value cut: the case's own entry at the instant read is not a change since."""
    api.clock.now += timedelta(microseconds=637929)
    for event, cut in [("e1", 23), ("e2", 19)]:
        doc = new_candidate(api, event)
        assert doc["updated_at"].endswith(".637929+00:00")
        read = doc["updated_at"][:cut] + "Z"
        confirmed = api.review(doc["id"], "confirm", expected_updated_at=read)
        assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")

    # A retype at the same instant by this server's clock is still later, by a millisecond.
    doc = new_candidate(api, "e3")
    _patcher(api, doc["id"])({"type": "illegal_dumping"})
    read = doc["updated_at"][:23] + "Z"
    refused = api.review(doc["id"], "confirm", expected_updated_at=read)
    assert (refused.status_code, refused.json()["candidate_status"]) == (409, "new")
    # To the second, a retype in a later second.
    doc = new_candidate(api, "e4")
    api.clock.advance(seconds=1)
    _patcher(api, doc["id"])({"type": "illegal_dumping"})
    read = doc["updated_at"][:19] + "Z"
    refused = api.review(doc["id"], "confirm", expected_updated_at=read)
    assert (refused.status_code, refused.json()["candidate_status"]) == (409, "new")


def test_expected_updated_at_of_a_version_the_case_never_had_is_refused(api: Any) -> None:
    doc = new_candidate(api)
    cid = doc["id"]
    later = (api.clock.now + timedelta(seconds=1)).isoformat()
    refused = api.review(cid, "confirm", expected_updated_at=later)
    assert (refused.status_code, refused.json()["candidate_status"]) == (409, "new")
    naive = api.review(cid, "confirm", expected_updated_at="2026-11-27T12:00:00")
    assert naive.status_code == 422
    confirmed = api.review(cid, "confirm", expected_updated_at=doc["updated_at"])
    assert (confirmed.status_code, confirmed.json()["status"]) == (200, "confirmed")

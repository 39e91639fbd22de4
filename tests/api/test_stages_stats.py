"""Later stages reported by the platform, SLA, and statistics."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from gridpatrol.api.client import ApiClient

from .conftest import body, fresh_jpeg


def stage(api: Any, cid: str, name: str, at: Any = None) -> Any:
    payload = {"stage": name}
    if at is not None:
        payload["at"] = at.isoformat()
    return api.as_("platform").post(f"/api/v1/candidates/{cid}/status", json=payload)


def test_stages_in_order_with_arrive_by(api: Any) -> None:
    cid = api.create(api.body("a", api.put_jpeg()))["id"]
    assert stage(api, cid, "registered").status_code == 409  # not confirmed yet
    api.review(cid, "confirm")
    assert stage(api, cid, "dispatched").status_code == 409
    assert stage(api, cid, "registered").json()["status"] == "registered"
    assert stage(api, cid, "registered").status_code == 200  # a retry changes nothing
    dispatched = api.clock.now + timedelta(minutes=1)
    doc = stage(api, cid, "dispatched", dispatched).json()
    assert doc["arrive_by"] == (dispatched + timedelta(minutes=15)).isoformat()
    for name in ("arrived", "resolved", "verified", "closed"):
        doc = stage(api, cid, name).json()
        assert doc["status"] == name
    assert list(doc["stages"]) == [
        "registered",
        "dispatched",
        "arrived",
        "resolved",
        "verified",
        "closed",
    ]
    assert [h["who"] for h in doc["history"][-6:]] == ["test-platform"] * 6
    assert stage(api, cid, "verified").status_code == 409
    assert (
        api.as_("reviewer")
        .post(f"/api/v1/candidates/{cid}/status", json={"stage": "closed"})
        .status_code
        == 403
    )
    assert stage(api, cid, "teleported").status_code == 422


def test_stats_counts_precision_and_sla(api: Any) -> None:
    sha = api.put_jpeg()
    ids = []
    for i, camera in enumerate(["cam-1", "cam-1", "cam-2", "cam-2"]):
        body = api.body(f"e{i}", sha)
        body["source"]["camera_id"] = camera
        ids.append(api.create(body)["id"])
    api.review(ids[0], "confirm")
    api.review(ids[1], "reject", reason_code="false_positive")
    api.review(ids[2], "confirm")
    api.review(ids[3], "reject", reason_code="licensed_activity")
    late, waiting = ids[0], ids[2]
    now = api.clock.now
    stage(api, late, "registered", now)
    stage(api, late, "dispatched", now)
    api.clock.advance(minutes=20)
    stage(api, late, "arrived", now + timedelta(minutes=20))
    stage(api, waiting, "registered", api.clock.now)
    stage(api, waiting, "dispatched", api.clock.now)
    stats = api.as_("reviewer").get("/api/v1/stats").json()
    assert stats["total"] == 4
    assert stats["by_type"] == {"garbage_overflow": 4}
    assert stats["by_camera"] == {"cam-1": 2, "cam-2": 2}
    assert stats["by_status"] == {"arrived": 1, "dispatched": 1, "rejected": 2}
    assert stats["by_day"] == {"2026-11-27": 4}
    assert stats["precision_by_type"]["garbage_overflow"]["precision"] == 2 / 3
    assert stats["precision_by_camera"]["cam-1"]["precision"] == 0.5
    assert stats["precision_by_camera"]["cam-2"]["precision"] == 1.0
    assert stats["sla"]["breaches"] == 1
    assert [b["id"] for b in stats["sla_breaches"]] == [late]
    api.clock.advance(minutes=16)
    stats = api.as_("reviewer").get("/api/v1/stats").json()
    assert sorted(b["id"] for b in stats["sla_breaches"]) == sorted([late, waiting])
    assert api.as_("platform").get("/api/v1/stats").status_code == 403


def test_stats_list_the_latest_sla_breaches_and_count_them_all(api: Any) -> None:
    sha = api.put_jpeg()
    ids: list[str] = []
    for part in range(3):
        items = [
            {"idempotency_key": f"b{part}-{i}", "body": api.body(f"s{part}-{i}", sha, "smoke")}
            for i in range(67)
        ]
        sent = api.as_("producer").post("/api/v1/candidates/batch", json={"items": items})
        assert sent.status_code == 207
        ids += [r["body"]["id"] for r in sent.json()["items"]]
    assert len(ids) == 201
    start = api.clock.now
    # Dispatched a minute apart, in reverse: the latest deadline is the first candidate's.
    for n, cid in enumerate(reversed(ids)):
        api.clock.now = start + timedelta(minutes=n)  # no stage is dated ahead of the server
        assert stage(api, cid, "registered", start).status_code == 200
        assert stage(api, cid, "dispatched", start + timedelta(minutes=n)).status_code == 200
    api.clock.advance(hours=5)
    stats = api.as_("reviewer").get("/api/v1/stats").json()
    assert (stats["total"], stats["sla"]["breaches"]) == (201, 201)
    assert [b["id"] for b in stats["sla_breaches"]] == ids[:200]
    assert (
        stats["sla_breaches"][0]["arrive_by"] == (start + timedelta(minutes=200 + 15)).isoformat()
    )


def registered(api: Any) -> str:
    cid = str(api.create(api.body(None, api.put_jpeg()))["id"])
    assert api.review(cid, "confirm").status_code == 200
    # Later than the confirmation, which is a millisecond after the creation (_case_now).
    api.clock.advance(seconds=1)
    assert stage(api, cid, "registered").status_code == 200
    return cid


def refused_unchanged(
    api: Any, cid: str, name: str, at: Any, detail: str, status: int = 422
) -> None:
    before = api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json()
    refused = stage(api, cid, name, at)
    assert (refused.status_code, refused.headers["content-type"]) == (
        status,
        "application/problem+json",
    )
    assert refused.json()["detail"] == detail
    assert api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json() == before


def test_a_stage_dated_ahead_of_the_server_is_refused(api: Any) -> None:
    """A dispatch dated ahead would push arrive_by out and hide its SLA breach."""
    cid = registered(api)
    now = api.clock.now
    ahead = now + timedelta(minutes=5, seconds=1)
    refused_unchanged(
        api,
        cid,
        "dispatched",
        ahead,
        f"dispatched at {ahead.isoformat()} is later than the server's time"
        f" {now.isoformat()} (allowing 5 min of clock skew)",
    )
    # Within the allowance, for a platform's clock a little ahead of the server's.
    assert stage(api, cid, "dispatched", now + timedelta(minutes=5)).status_code == 200
    api.clock.advance(minutes=21)
    stats = api.as_("reviewer").get("/api/v1/stats").json()
    assert [b["id"] for b in stats["sla_breaches"]] == [cid]


def test_a_stage_dated_before_the_one_it_follows_is_refused(api: Any) -> None:
    cid = registered(api)
    registered_at = api.clock.now
    api.clock.advance(minutes=30)
    dispatched = registered_at + timedelta(minutes=10)
    assert stage(api, cid, "dispatched", dispatched).status_code == 200
    early = dispatched - timedelta(minutes=5, seconds=1)
    refused_unchanged(
        api,
        cid,
        "arrived",
        early,
        f"arrived at {early.isoformat()} is before dispatched at {dispatched.isoformat()}"
        " (allowing 5 min of clock skew)",
    )
    # Within the allowance it is taken as at the same instant, so the stages stay in order.
    arrived = stage(api, cid, "arrived", dispatched - timedelta(minutes=5)).json()
    assert arrived["stages"]["arrived"] == dispatched.isoformat()


def test_a_platform_clock_behind_the_server_that_dated_the_stage_before(api: Any) -> None:
    """Registered without ``at`` (the server's time), then a dispatch by a platform whose
    clock runs 2 min behind, a minute later: accepted, at the registration's time."""
    cid = registered(api)
    registered_at = api.clock.now
    api.clock.advance(minutes=1)
    dispatched = stage(api, cid, "dispatched", api.clock.now - timedelta(minutes=2))
    assert dispatched.status_code == 200
    assert dispatched.json()["stages"]["dispatched"] == registered_at.isoformat()
    assert dispatched.json()["arrive_by"] == (registered_at + timedelta(minutes=15)).isoformat()


def test_a_stage_dated_well_before_a_server_dated_one_is_refused(api: Any) -> None:
    cid = registered(api)
    registered_at = api.clock.now
    api.clock.advance(minutes=1)
    early = registered_at - timedelta(minutes=10)
    refused_unchanged(
        api,
        cid,
        "dispatched",
        early,
        f"dispatched at {early.isoformat()} is before registered at"
        f" {registered_at.isoformat()} (allowing 5 min of clock skew)",
    )


def test_a_stage_without_at_follows_one_dated_ahead(api: Any) -> None:
    """A dispatch dated 4 min ahead (a platform's clock), then an arrival reported without
    ``at`` a minute later: the arrival is not recorded before the dispatch."""
    cid = registered(api)
    dispatched = api.clock.now + timedelta(minutes=4)
    assert stage(api, cid, "dispatched", dispatched).status_code == 200
    api.clock.advance(minutes=1)
    doc = stage(api, cid, "arrived").json()
    assert doc["stages"]["arrived"] == dispatched.isoformat()
    # Later, the server's time is the later one again.
    api.clock.advance(minutes=10)
    resolved = stage(api, cid, "resolved").json()["stages"]["resolved"]
    assert resolved == api.clock.now.isoformat()


def test_a_stage_dated_before_the_candidate_was_created_is_refused(api: Any) -> None:
    """Before its creation is before its confirmation too, which the refusal names."""
    cid = str(api.create(api.body(None, api.put_jpeg()))["id"])
    api.clock.advance(seconds=1)
    assert api.review(cid, "confirm").status_code == 200
    created = api.clock.now
    api.clock.advance(hours=1)
    early = created - timedelta(minutes=5, seconds=1)
    refused_unchanged(
        api,
        cid,
        "registered",
        early,
        f"registered at {early.isoformat()} is before confirmed at {created.isoformat()}"
        " (allowing 5 min of clock skew)",
    )
    # The platform's clock may be a little behind the server's: taken as at the confirmation.
    at = created - timedelta(minutes=5)
    assert stage(api, cid, "registered", at).json()["stages"]["registered"] == created.isoformat()


def pull(api: Any) -> None:
    """The platform reads the feed and acknowledges it: its cases are pulled."""
    page = api.as_("platform").get("/api/v1/feed").json()
    ack = api.as_("platform").post("/api/v1/feed/ack", json={"cursor": page["next_cursor"]})
    assert ack.status_code == 204, ack.text


def confirmed_ten_minutes_after_creation(api: Any) -> tuple[str, Any]:
    """A case created at T and confirmed at T + 10 min; its id and T."""
    created = api.clock.now
    cid = str(api.create(api.body(None, api.put_jpeg()))["id"])
    api.clock.advance(minutes=10)
    assert api.review(cid, "confirm").status_code == 200
    return cid, created


@pytest.mark.parametrize("pulled", [False, True])
def test_registered_is_never_before_the_confirmation(api: Any, pulled: bool) -> None:
    """Reported at T + 7 min, by a platform's clock 3 min behind the server's: recorded at the
    confirmation, so arrive_by and the SLA count from when the platform could see the case."""
    cid, created = confirmed_ten_minutes_after_creation(api)
    confirmed = created + timedelta(minutes=10)
    api.clock.advance(minutes=1)
    if pulled:
        pull(api)
    doc = stage(api, cid, "registered", created + timedelta(minutes=7)).json()
    assert (doc["status"], doc["stages"]) == ("registered", {"registered": confirmed.isoformat()})
    doc = stage(api, cid, "dispatched", created + timedelta(minutes=8)).json()
    assert doc["stages"]["dispatched"] == confirmed.isoformat()
    assert doc["arrive_by"] == (confirmed + timedelta(minutes=15)).isoformat()


def test_registered_before_the_pull_is_recorded_as_reported(api: Any) -> None:
    """The platform may register a case before it acknowledges the feed, and report the
    registration after: the pull does not date it."""
    cid, created = confirmed_ten_minutes_after_creation(api)
    api.clock.advance(minutes=10)
    pull(api)
    at = created + timedelta(minutes=12)
    doc = stage(api, cid, "registered", at).json()
    assert doc["stages"]["registered"] == at.isoformat()


def test_registered_well_before_the_confirmation_is_refused(api: Any) -> None:
    cid, created = confirmed_ten_minutes_after_creation(api)
    confirmed = created + timedelta(minutes=10)
    early = confirmed - timedelta(minutes=5, seconds=1)
    refused_unchanged(
        api,
        cid,
        "registered",
        early,
        f"registered at {early.isoformat()} is before confirmed at {confirmed.isoformat()}"
        " (allowing 5 min of clock skew)",
    )


def test_registered_follows_the_end_of_the_night_hold(api: Any) -> None:
    """Confirmed at midnight (site time) and held to 08:00: the platform could not see it
    before, so a registration is dated from the release."""
    api.clock.advance(hours=12)
    cid = str(api.create(api.body(None, api.put_jpeg()))["id"])
    held = api.review(cid, "confirm").json()
    released = datetime.fromisoformat(held["hold_until"])
    api.clock.now = released + timedelta(minutes=1)
    pull(api)
    early = released - timedelta(minutes=6)
    refused_unchanged(
        api,
        cid,
        "registered",
        early,
        f"registered at {early.isoformat()} is before released at"
        f" {api.clock.now.isoformat()} (allowing 5 min of clock skew)",
    )
    doc = stage(api, cid, "registered", released - timedelta(minutes=1)).json()
    assert doc["stages"]["registered"] == api.clock.now.isoformat()


def test_a_case_held_for_the_night_takes_no_stage(api: Any) -> None:
    """Confirmed at midnight (site time) and not urgent: held to 08:00, and the platform is not
    to have it before. A stage reported meanwhile is refused; after 08:00 it is taken (with no
    feed read between), dated from the release."""
    api.clock.advance(hours=12)
    cid = str(api.create(api.body(None, api.put_jpeg()))["id"])
    hold_until = api.review(cid, "confirm").json()["hold_until"]
    assert datetime.fromisoformat(hold_until) > api.clock.now
    for name in ("registered", "dispatched"):
        detail = f"candidate {cid} is held until {hold_until}"
        refused_unchanged(api, cid, name, None, detail, status=409)
    api.clock.now = datetime.fromisoformat(hold_until) + timedelta(minutes=1)
    doc = stage(api, cid, "registered").json()
    assert (doc["status"], doc["stages"]) == (
        "registered",
        {"registered": api.clock.now.isoformat()},
    )
    assert [h["action"] for h in doc["history"][-2:]] == ["released", "registered"]


def test_a_stage_again_at_another_time_is_refused_naming_the_recorded_one(api: Any) -> None:
    """A platform correcting its dispatch time must not be told it succeeded while arrive_by
    and the SLA keep the first time; the same report again (or without ``at``) is a replay."""
    cid = registered(api)
    dispatched = api.clock.now + timedelta(minutes=1)
    first = stage(api, cid, "dispatched", dispatched)
    assert first.status_code == 200
    doc = first.json()
    assert doc["arrive_by"] == (dispatched + timedelta(minutes=15)).isoformat()
    api.clock.advance(minutes=3)
    later = dispatched + timedelta(minutes=2)
    refused_unchanged(
        api,
        cid,
        "dispatched",
        later,
        f"dispatched is recorded at {dispatched.isoformat()}; a report of it at"
        f" {later.isoformat()} does not change it",
        status=409,
    )
    for at in (dispatched, None):
        again = stage(api, cid, "dispatched", at)
        assert (again.status_code, again.json()) == (200, doc)


def test_a_replay_of_a_stage_recorded_later_than_reported_is_answered_as_before(api: Any) -> None:
    """Reported before the confirmation (a platform's clock behind), recorded at it: the same
    report again is a replay, not another time."""
    cid, created = confirmed_ten_minutes_after_creation(api)
    api.clock.advance(minutes=1)
    at = created + timedelta(minutes=7)
    doc = stage(api, cid, "registered", at).json()
    assert doc["stages"]["registered"] == (created + timedelta(minutes=10)).isoformat()
    again = stage(api, cid, "registered", at)
    assert (again.status_code, again.json()) == (200, doc)


def test_the_clients_stage_report_sent_again_is_answered_as_the_first(api_server: Any) -> None:
    """ApiClient.set_status without ``at`` leaves the time to the server: the same call again
    (a retry after a lost answer) is a replay, not a report of another time."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"], timeout=10)
    platform = ApiClient(api_server.url, api_server.tokens["platform"], timeout=10)
    try:
        sha = producer.put_evidence(fresh_jpeg(), "image/jpeg")
        created = producer.create_candidate(body(sha=sha, ctype="smoke"), uuid.uuid4().hex)
        assert created["status"] == "confirmed"  # auto-confirmed, never held
        first = platform.set_status(str(created["id"]), "registered")
        assert first["status"] == "registered"
        assert platform.set_status(str(created["id"]), "registered") == first
    finally:
        producer.close()
        platform.close()

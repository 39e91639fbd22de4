"""List queries of GET /candidates for the merge dialog: open cases, cases near another."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

URL = "/api/v1/candidates"
STAGES = ("registered", "dispatched", "arrived", "resolved", "verified", "closed")


def new_case(api: Any, **override: Any) -> str:
    doc = api.create(api.body(None, api.put_jpeg(), **override))
    assert doc["status"] == "new", doc
    return str(doc["id"])


def listed(api: Any, **params: Any) -> list[str]:
    response = api.as_("reviewer").get(URL, params=params)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["items"]]


def close(api: Any, cid: str) -> None:
    assert api.review(cid, "confirm").status_code == 200
    for stage in STAGES:
        reported = api.as_("platform").post(f"{URL}/{cid}/status", json={"stage": stage})
        assert reported.status_code == 200, reported.text


def test_open_leaves_out_rejected_merged_and_closed(api: Any) -> None:
    kept = new_case(api)
    confirmed = new_case(api)
    assert api.review(confirmed, "confirm").status_code == 200
    rejected = new_case(api)
    assert api.review(rejected, "reject", reason_code="duplicate").status_code == 200
    merged = new_case(api)
    assert api.review(merged, "merge", merge_into=kept).status_code == 200
    closed = new_case(api)
    close(api, closed)
    everything = {kept, confirmed, rejected, merged, closed}
    assert set(listed(api)) == everything
    assert set(listed(api, open="true")) == {kept, confirmed}
    assert set(listed(api, open="false")) == everything


def test_near_lists_the_same_type_and_source_within_a_day_nearest_first(api: Any) -> None:
    at = api.clock.now - timedelta(hours=2)

    def case(hours: float, **override: Any) -> str:
        occurred = (at + timedelta(hours=hours)).isoformat()
        return new_case(api, occurred_at=occurred, **override)

    target = case(0)
    later = case(3)
    earlier = case(-1)
    edge = case(-23.5)
    too_early = case(-25)
    other_type = case(0.5, ctype="illegal_parking")
    source = {"type": "camera", "system": "test-worker", "camera_id": "cam-2"}
    other_camera = case(0.5, source={**source, "source_event_id": "e-cam-2"})
    rejected = case(0.2)
    assert api.review(rejected, "reject", reason_code="duplicate").status_code == 200
    closed = case(0.1)
    close(api, closed)
    assert other_type and other_camera and too_early

    assert listed(api, near=target) == [closed, rejected, earlier, later, edge]
    assert listed(api, near=target, open="true") == [earlier, later, edge]
    assert listed(api, near=target, open="true", limit=2) == [earlier, later]
    assert earlier not in listed(api, near=earlier)  # never itself

    missing = api.as_("reviewer").get(URL, params={"near": "a" * 8})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_a_malformed_near_id_is_refused_with_422(api: Any) -> None:
    for near in ("{abc}", "a:b"):
        refused = api.as_("reviewer").get(URL, params={"near": near})
        assert refused.status_code == 422, (near, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"


def test_near_reads_only_candidates_received_around_the_window(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = api.clock.now - timedelta(minutes=5)
    target = new_case(api, occurred_at=at.isoformat())
    api.clock.advance(days=30)
    # Occurred within the window but received a month later: past the intake delay.
    held = new_case(api, occurred_at=(at + timedelta(hours=1)).isoformat())
    later = [new_case(api, occurred_at=api.clock.now.isoformat()) for _ in range(3)]
    loaded: list[str] = []
    parse = json.loads

    def spy(text: Any, *args: Any, **kwargs: Any) -> Any:
        loaded.append(text if isinstance(text, str) else "")
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", spy)
    assert listed(api, near=target) == []
    monkeypatch.undo()
    assert not [cid for cid in [held, *later] if any(cid in text for text in loaded)]


def test_an_unknown_status_is_refused_with_422(api: Any) -> None:
    confirmed = new_case(api)
    assert api.review(confirmed, "confirm").status_code == 200
    assert listed(api, status="confirmed") == [confirmed]
    refused = api.as_("reviewer").get(URL, params={"status": "bogus"})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    [error] = refused.json()["errors"]
    assert error["loc"] == ["query", "status"]
    assert "unknown status 'bogus'" in error["msg"]

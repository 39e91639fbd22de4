"""The console's time filter against live updates: the same window as the API's list."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest

from .test_console import PARKING, SITE_TZ, VENDING

pytestmark = [pytest.mark.browser]


def patch(console: Any, cid: str, dwell_s: float) -> None:
    with console.client("producer") as client:
        response = client.patch(
            f"/candidates/{cid}",
            json={"detection": {"dwell_s": dwell_s}},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 200, response.text


def test_a_case_received_at_the_end_instant_stays_out_of_the_window(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    """The API lists since <= created_at < until. A live update of a case received exactly
    at ``until`` must not bring it into the list (the next load would drop it again): the
    console does not even look it up. A change of a listed case, sent after it, is looked up
    and shows that the earlier event has been handled."""
    inside = seeder.camera_candidate(frames, minutes_ago=0, **VENDING)
    at_end = seeder.camera_candidate(frames, minutes_ago=0, **PARKING)
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([inside["id"], at_end["id"]])
    # ``until`` is when the API received the second case, to the millisecond (an instant
    # JavaScript reads a created_at to); the API leaves that case out of the list.
    received = datetime.fromisoformat(at_end["created_at"]).astimezone(SITE_TZ)
    until = received.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    page.eval_on_selector(
        "#f-until",
        "(input, value) => {"
        " input.value = value; input.dispatchEvent(new Event('change', { bubbles: true })); }",
        until,
    )
    ui.wait_rows([inside["id"]])
    page.wait_for_selector(f"#detail:has-text('{inside['id'][:8]}')")
    page.wait_for_selector("#live.on")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))

    patch(console, at_end["id"], 400.0)
    with page.expect_response(lambda r: r.url.endswith(f"/api/v1/candidates/{inside['id']}")):
        patch(console, inside["id"], 410.0)
    assert [url for url in asked if at_end["id"] in url] == []
    assert ui.rows() == [inside["id"]]
    ui.shot("end-instant-left-out")

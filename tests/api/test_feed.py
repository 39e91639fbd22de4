"""The platform's feed: visible order without gaps, cursors, acks, night hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

FEED = "/api/v1/feed"
SH = ZoneInfo("Asia/Shanghai")


def confirmed(api: Any, event: str, **kw: Any) -> str:
    cid = str(api.create(api.body(event, api.put_jpeg(), **kw))["id"])
    if api.as_("reviewer").get(f"/api/v1/candidates/{cid}").json()["status"] == "new":
        assert api.review(cid, "confirm").status_code == 200
    return cid


def feed(api: Any, role: str = "platform", **params: Any) -> dict[str, Any]:
    response = api.as_(role).get(FEED, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_feed_in_visible_order_with_cursors(api: Any) -> None:
    a = confirmed(api, "a")
    unreviewed = api.create(api.body("u", api.put_jpeg()))["id"]
    b = confirmed(api, "b")
    page = feed(api, limit=1)
    assert [c["id"] for c in page["items"]] == [a]
    assert page["next_cursor"] == "1"
    page = feed(api, cursor=page["next_cursor"])
    assert [c["id"] for c in page["items"]] == [b]
    assert page["items"][0]["status"] == "confirmed"
    assert page["next_cursor"] == "2"
    empty = feed(api, cursor="2")
    assert empty == {"items": [], "next_cursor": "2"}
    assert unreviewed not in [c["id"] for c in feed(api)["items"]]


def test_ack_stores_the_cursor_per_token_and_marks_pulled(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    platform = api.as_("platform")
    assert platform.post(f"{FEED}/ack", json={"cursor": "1"}).status_code == 204
    assert [c["id"] for c in feed(api)["items"]] == [b]
    # another platform token has a cursor of its own
    assert [c["id"] for c in feed(api, role="platform2")["items"]] == [a, b]
    doc = api.as_("reviewer").get(f"/api/v1/candidates/{a}").json()
    assert doc["status"] == "pulled"
    assert doc["history"][-1]["action"] == "pulled"
    assert platform.post(f"{FEED}/ack", json={"cursor": "9"}).status_code == 422
    assert platform.post(f"{FEED}/ack", json={"cursor": "x"}).status_code == 422
    assert platform.post(f"{FEED}/ack", json={"cursor": "0"}).status_code == 204
    assert [c["id"] for c in feed(api)["items"]] == [b]


def test_a_visible_change_gets_a_new_position(api: Any) -> None:
    a = confirmed(api, "a")
    b = confirmed(api, "b")
    patched = api.as_("producer").patch(
        f"/api/v1/candidates/{a}",
        json={"detection": {"dwell_s": 600}},
        headers={"Idempotency-Key": "upd"},
    )
    assert patched.status_code == 200
    page = feed(api, cursor="2")
    assert [c["id"] for c in page["items"]] == [a]
    assert page["items"][0]["detection"]["dwell_s"] == 600
    assert page["next_cursor"] == "3"
    assert [c["id"] for c in feed(api)["items"]] == [a, b, a]


def test_night_hold_until_the_window_ends(api: Any) -> None:
    api.clock.now = datetime(2026, 11, 27, 23, 30, tzinfo=SH).astimezone(UTC)
    held = confirmed(api, "held")
    urgent = confirmed(api, "urgent", ctype="crowd_gathering")
    auto = confirmed(api, "auto", ctype="smoke")
    doc = api.as_("reviewer").get(f"/api/v1/candidates/{held}").json()
    morning = datetime(2026, 11, 28, 8, 0, tzinfo=SH)
    assert datetime.fromisoformat(doc["hold_until"]) == morning
    assert doc["history"][-1]["action"] == "held"
    assert [c["id"] for c in feed(api)["items"]] == [urgent, auto]
    api.clock.now = datetime(2026, 11, 28, 7, 59, tzinfo=SH).astimezone(UTC)
    assert [c["id"] for c in feed(api)["items"]] == [urgent, auto]
    api.clock.now = datetime(2026, 11, 28, 8, 0, tzinfo=SH).astimezone(UTC)
    page = feed(api)
    assert [c["id"] for c in page["items"]] == [urgent, auto, held]
    assert page["next_cursor"] == "3"
    assert page["items"][2]["history"][-1]["action"] == "released"


def test_feed_roles_and_parameters(api: Any) -> None:
    assert api.as_("reviewer").get(FEED).status_code == 403
    assert api.as_("producer").get(FEED).status_code == 403
    assert api.http.get(FEED).status_code == 401
    assert api.as_("platform").get(FEED, params={"wait": 31}).status_code == 422
    assert api.as_("platform").get(FEED, params={"cursor": "-1"}).status_code == 422
    assert api.as_("admin").get(FEED).status_code == 200

"""The detail pane's history: a folded entry of routine updates (one producer's dwell times)
with how many there were and when the latest came, not only when the first did; each entry's
action in the console's language."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from .test_console import PARKING, SITE_TZ, status_of
from .test_queue_live import close

pytestmark = [pytest.mark.browser]


def shown_time(iso: str) -> str:
    """An instant as the console shows it in the zh-CN browser (toLocaleString, site time)."""
    at = datetime.fromisoformat(iso).astimezone(SITE_TZ)
    return f"{at.year}/{at.month}/{at.day} {at:%H:%M:%S}"


def test_folded_routine_updates_show_their_count_and_last_time_in_both_languages(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    cid = case["id"]
    for n in range(3):
        if n == 2:
            time.sleep(1.1)  # the last update a second later than the first, as shown
        response = seeder.client.patch(
            f"/candidates/{cid}",
            json={"detection": {"dwell_s": 360.0 + 60 * n}},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 200, response.text
    entry = response.json()["history"][-1]
    assert (entry["action"], entry["who"], entry["count"]) == ("updated", "test-producer", 3)
    first, last = shown_time(entry["at"]), shown_time(entry["last_at"])
    assert first != last

    page = ui.page
    ui.login("reviewer")
    page.click(f"#queue-body tr[data-id='{cid}']")
    page.wait_for_selector(f"#detail .detail-head:has-text('{cid}')")
    item = "#detail ol.history li:has(strong:text-is('更新'))"
    page.wait_for_selector(item)
    assert page.locator(item).count() == 1
    assert page.text_content(item) == f"{first} 更新 test-producer · 共 3 次，最后一次 {last}"
    ui.shot("folded-zh")

    page.click("#app .lang-toggle")
    page.wait_for_selector("#detail dl.facts dt:text-is('Description')")
    item = "#detail ol.history li:has(strong:text-is('Updated'))"
    assert page.text_content(item) == f"{first} Updated test-producer · ×3 · last {last}"
    ui.shot("folded-en")


def test_history_actions_are_in_the_consoles_language_an_unknown_one_as_sent(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cid = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)["id"]
    close(console, cid)  # confirmed, then every stage of the platform's to closed
    page = ui.page

    # A step a newer API may record, which this console has no name for.
    def with_unknown_step(route: Any) -> None:
        response = route.fetch()
        doc = response.json()
        doc["history"].append({**doc["history"][-1], "action": "archived", "who": "retention"})
        route.fulfill(response=response, json=doc)

    page.route(f"**/api/v1/candidates/{cid}", with_unknown_step)
    ui.login("reviewer")
    page.select_option("#f-status", "closed")
    page.click(f"#queue-body tr[data-id='{cid}']")
    # Waited for as a whole: the pane shows the listed copy of the case before its full read.
    actions = """want => JSON.stringify(want) === JSON.stringify(
      [...document.querySelectorAll('#detail ol.history li strong')].map((s) => s.textContent))"""
    steps = ["confirmed", "registered", "dispatched", "arrived", "resolved", "verified", "closed"]
    zh = ["创建", "确认", "立案", "派遣", "到场", "处置", "核查", "结案", "archived"]
    page.wait_for_function(actions, arg=zh)
    assert [h["action"] for h in status_of(console, cid)["history"]] == ["created", *steps]
    ui.shot("history-zh")

    page.click("#app .lang-toggle")
    en = [s.capitalize() for s in ["created", *steps]] + ["archived"]
    page.wait_for_function(actions, arg=en)
    ui.shot("history-en")

"""The detail pane's history shows a folded entry of routine updates (one producer's dwell
times) with how many there were and when the latest came, not only when the first did."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from .test_console import PARKING, SITE_TZ

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
    item = "#detail ol.history li:has(strong:text-is('updated'))"
    page.wait_for_selector(item)
    assert page.locator(item).count() == 1
    assert page.text_content(item) == f"{first} updated test-producer · 共 3 次，最后一次 {last}"
    ui.shot("folded-zh")

    page.click("#app .lang-toggle")
    page.wait_for_selector("#detail dl.facts dt:text-is('Description')")
    assert page.text_content(item) == f"{first} updated test-producer · ×3 · last {last}"
    ui.shot("folded-en")

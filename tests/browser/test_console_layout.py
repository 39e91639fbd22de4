"""The console's layout with long unbroken text: a case's address or description wraps in its
cell and in the detail pane instead of widening the page, and the list keeps its columns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .test_console_review import actionable

pytestmark = [pytest.mark.browser]

LATIN_ADDRESS = "https://example.org/" + "a" * 200
CHINESE_ADDRESS = "上海市静安区大宁路街道共和新路一千八百七十八号门前消防通道东侧" * 6


def long_case(seeder: Any, frames: list[bytes], address: str, description: str) -> str:
    """A camera case whose address and description are as given; its id."""
    at = datetime.now(UTC) - timedelta(minutes=3)
    sha = seeder.evidence(frames[-1])
    frame = {"sha256": sha, "captured_at": at.isoformat(), "width": 1280, "height": 720}
    case = seeder.create(
        {
            "source": {
                "type": "camera",
                "system": "gridpatrol-detect",
                "camera_id": "cam-dn-002",
                "source_event_id": f"cam-dn-002:fire-lane:{uuid.uuid4().hex[:8]}",
            },
            "type": "illegal_parking",
            "description": description,
            "occurred_at": at.isoformat(),
            "location": {"lat": 31.2801, "lon": 121.4512, "address": address},
            "severity": "MINOR",
            "urgency": "normal",
            "evidence": [frame | {"kind": "clean"}, frame | {"kind": "latest"}],
        }
    )
    return str(case["id"])


@pytest.mark.parametrize(
    ("address", "description"),
    [
        (LATIN_ADDRESS, "vehicle parked in the fire lane " + "X" * 400),
        (CHINESE_ADDRESS, "消防通道内车辆停放" + "车" * 400),
    ],
    ids=["latin", "chinese"],
)
def test_a_long_address_and_description_keep_the_page_within_the_window(
    ui: Any, seeder: Any, frames: list[bytes], address: str, description: str
) -> None:
    cid = long_case(seeder, frames, address, description)
    ui.login("reviewer")
    ui.wait_rows([cid])
    actionable(ui.page, cid)
    ui.image_width("#detail figure.main img")
    ui.shot("long-text")
    widths = ui.page.evaluate(
        """() => ({
          page: document.documentElement.scrollWidth,
          window: window.innerWidth,
          age: document.querySelector('#queue-body td.age').getBoundingClientRect().width,
          status: document.querySelector('#queue-body .badge').getBoundingClientRect().width,
          badgeLines: document.querySelector('#queue-body .badge').getClientRects().length,
        })"""
    )
    assert widths["page"] <= widths["window"], widths
    assert widths["age"] >= 40, widths
    assert widths["badgeLines"] == 1, widths
    # The whole address and description are shown, wrapped.
    assert address in ui.page.inner_text("#detail .detail-head")
    assert description in ui.page.inner_text("#detail .facts")

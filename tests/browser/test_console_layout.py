"""The console's layout with long unbroken text: a case's address or description wraps in its
cell and in the detail pane instead of widening the page, and the list keeps its columns. On a
1024 px screen the list keeps a readable address, rows a thumbnail tall and no sideways scroll;
on a 390 px one the detail pane keeps its width."""

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


# Ordinary cases of the demo site: the longest type names in both languages.
VENDING = {
    "type_": "street_vending",
    "camera_id": "cam-dn-001",
    "zone_id": "sidewalk-north",
    "address": "大宁路 100号",
}
BIKES = {
    "type_": "non_motor_parking",
    "camera_id": "cam-dn-003",
    "zone_id": "bike-bay",
    "address": "灵石路 695号",
}

MEASURE = """() => {
  const box = (e) => e.getBoundingClientRect();
  const pane = document.querySelector('.list-pane');
  const rows = [...document.querySelectorAll('#queue-body tr')];
  return {
    page: document.documentElement.scrollWidth,
    window: window.innerWidth,
    place: Math.min(...rows.map((r) => box(r.querySelector('td.place')).width)),
    age: Math.min(...rows.map((r) => box(r.querySelector('td.age')).width)),
    rowHeight: Math.max(...rows.map((r) => box(r).height)),
    listSideways: pane.scrollWidth - pane.clientWidth,
    detail: box(document.querySelector('.detail-pane')).width,
  };
}"""


def measure(ui: Any) -> dict[str, float]:
    result: dict[str, float] = ui.page.evaluate(MEASURE)
    return result


def ordinary(seeder: Any, frames: list[bytes], kind: dict[str, str], minutes_ago: float) -> str:
    """A case of this kind (VENDING or BIKES) at its camera's address; its id."""
    return str(seeder.camera_candidate(frames, **kind, minutes_ago=minutes_ago)["id"])


def show(ui: Any, ids: list[str], lang: str) -> None:
    """Log in, in this language, and wait for the queue and the selected case's frame."""
    ui.login("reviewer")
    if lang == "en":  # the browser's locale is zh-CN
        ui.page.click("#app .lang-toggle")
        ui.page.wait_for_selector("th:has-text('Location')")
    ui.wait_rows(ids)
    ui.image_width("#detail figure.main img")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_ordinary_cases_keep_a_readable_address_on_a_1024_px_screen(
    ui: Any, seeder: Any, frames: list[bytes], lang: str
) -> None:
    ui.page.set_viewport_size({"width": 1024, "height": 768})
    ids = [ordinary(seeder, frames, VENDING, 4), ordinary(seeder, frames, BIKES, 2)]
    show(ui, ids, lang)
    ui.shot(f"1024-{lang}")
    sizes = measure(ui)
    # The address keeps several characters a line, the type name may wrap instead.
    assert sizes["place"] >= 80, sizes
    # A thumbnail (54 px) sets the row's height, not a column squeezed to a few characters.
    assert sizes["rowHeight"] <= 110, sizes
    # The status column is in view: the list does not scroll sideways.
    assert sizes["listSideways"] == 0, sizes


def test_the_detail_pane_keeps_its_width_on_a_390_px_screen(
    ui: Any, seeder: Any, frames: list[bytes]
) -> None:
    ui.page.set_viewport_size({"width": 390, "height": 844})
    cid = ordinary(seeder, frames, BIKES, 2)
    show(ui, [cid], "zh")
    ui.shot("390")
    sizes = measure(ui)
    assert sizes["detail"] >= 250, sizes


@pytest.mark.parametrize(
    ("width", "lang"), [(1440, "zh"), (1024, "zh"), (1024, "en")], ids=["1440", "1024", "1024-en"]
)
@pytest.mark.parametrize("address", [LATIN_ADDRESS, CHINESE_ADDRESS], ids=["latin", "chinese"])
def test_a_long_address_shows_a_few_lines_in_the_list(
    ui: Any, seeder: Any, frames: list[bytes], address: str, width: int, lang: str
) -> None:
    ui.page.set_viewport_size({"width": width, "height": 900})
    cid = long_case(seeder, frames, address, "vehicle parked in the fire lane")
    other = ordinary(seeder, frames, VENDING, 4)
    show(ui, [cid, other], lang)
    ui.shot(f"long-{width}-{lang}")
    sizes = measure(ui)
    assert sizes["rowHeight"] <= 110, sizes
    assert sizes["place"] >= 80, sizes
    assert sizes["listSideways"] == 0, sizes
    assert sizes["page"] <= sizes["window"], sizes
    assert sizes["age"] >= 40, sizes
    # The list shows the start of the address; the whole of it is its cell's tooltip.
    cell = ui.page.locator(f"#queue-body tr[data-id='{cid}'] td.place > div")
    assert cell.get_attribute("title") == address
    assert cell.inner_text().replace("\n", "").startswith(address[:8])

"""The console on a phone (390 x 844): every view (login, queue and case detail, the decision
dialogs, statistics, zone editor) fits the screen's width. Nothing scrolls the page sideways;
long addresses and ids wrap or are cut short, and the controls a reviewer uses are on screen."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from .test_console_layout import BIKES, CHINESE_ADDRESS, LATIN_ADDRESS, VENDING
from .test_console_review import actionable, add_evidence, cancel, crop_of, sla_breached
from .test_zone_editor import camera_responder, mqtt_url, zone_editor

__all__ = ["camera_responder", "mqtt_url"]  # fixtures of the zone editor's snapshot

pytestmark = [pytest.mark.browser]

PHONE = {"width": 390, "height": 844}

# What lies beyond the window's sides: the page's sideways scroll, and every element matched by
# the selectors (rendered ones) whose box is not wholly between the window's left and right.
OUTSIDE = """(selectors) => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const sel of selectors) {
    const found = [...document.querySelectorAll(sel)];
    if (!found.length) out.push(`${sel}: none`);
    for (const e of found) {
      const r = e.getBoundingClientRect();
      if (!r.width) out.push(`${sel}: not shown`);
      else if (r.left < 0 || r.right > width) {
        out.push(`${sel}: ${Math.round(r.left)}..${Math.round(r.right)}`);
      }
    }
  }
  return {
    sideways: document.documentElement.scrollWidth - width,
    scrolled: window.scrollX,
    outside: out,
  };
}"""

HEADER = ["#app nav a", "#app .lang-toggle", "#logout", "#who"]
FILTERS = [
    "#f-status", "#f-type", "#f-camera", "#f-sensor", "#f-since", "#f-until", "#f-reset",
]  # fmt: skip
ACTIONS = ["#act-confirm", "#act-reject", "#act-return", "#act-merge"]
DETAIL = [*ACTIONS, "#toggle-annotated", "#toggle-clean", "#detail figure img", "#detail dd"]


def fits(page: Any, selectors: list[str]) -> None:
    """The page does not scroll sideways and every element of ``selectors`` is on screen."""
    where = page.evaluate(OUTSIDE, selectors)
    assert where == {"sideways": 0, "scrolled": 0, "outside": []}, where


def one_line_links(page: Any) -> None:
    """Each of the header's links to a view is one line high (not a letter a line)."""
    lines = page.eval_on_selector_all("#app nav a", "as => as.map(a => a.getClientRects().length)")
    assert lines == [1, 1, 1], lines


def phone_cases(seeder: Any, frames: list[bytes]) -> dict[str, Any]:
    """What a reviewer meets on a shift: a parking case at a long address with every frame (two
    crops among them), a second one at that camera, a vending case, a bike case and a sensor
    alarm. The long case, the newest, is the first listed; by name."""
    cases: dict[str, Any] = {
        "bikes": seeder.camera_candidate(frames, minutes_ago=40, **BIKES),
        "vending": seeder.camera_candidate(frames, minutes_ago=30, **VENDING),
        "sensor": seeder.sensor_candidate(frames, sensor_id="bin-dn-0105"),
    }
    parking = {"type_": "illegal_parking", "camera_id": "cam-dn-002", "zone_id": "fire-lane"}
    cases["earlier"] = seeder.camera_candidate(
        frames, minutes_ago=20, address=LATIN_ADDRESS, **parking
    )
    long_case = seeder.camera_candidate(frames, minutes_ago=1, address=CHINESE_ADDRESS, **parking)
    now = datetime.now(UTC).isoformat()
    crops = [
        seeder.evidence(crop_of(frames[5], (400, 250, 700, 650))),
        seeder.evidence(crop_of(frames[4], (420, 260, 700, 640))),
    ]
    add_evidence(
        seeder,
        long_case["id"],
        [{"sha256": sha, "kind": "crop", "captured_at": now} for sha in crops],
    )
    cases["long"] = long_case
    return cases


def phone_queue(ui: Any, seeder: Any, frames: list[bytes], lang: str = "zh") -> dict[str, Any]:
    """Log in on a phone with the cases of phone_cases listed, the long one shown in full."""
    ui.page.set_viewport_size(PHONE)
    cases = phone_cases(seeder, frames)
    ui.login("reviewer")
    if lang == "en":  # the browser's locale is zh-CN
        ui.page.click("#app .lang-toggle")
        ui.page.wait_for_selector("#act-confirm:has-text('Confirm')")
    ui.wait_rows([c["id"] for c in cases.values()])
    actionable(ui.page, cases["long"]["id"])
    ui.image_width("#detail figure.main img")
    ui.page.wait_for_selector("#detail .crops figure:nth-child(2) img")
    return cases


def test_the_login_form_fits_a_phone(ui: Any) -> None:
    page = ui.page
    page.set_viewport_size(PHONE)
    page.goto(f"{ui.server.url}/review")
    page.wait_for_selector("#login:not([hidden])")
    ui.shot("login")
    fits(page, ["#login-form", "#token", "#login-form button[type=submit]", "#login .lang-toggle"])


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_queue_and_a_case_fit_a_phone(
    ui: Any, seeder: Any, frames: list[bytes], lang: str
) -> None:
    cases = phone_queue(ui, seeder, frames, lang)
    page = ui.page
    long_id = cases["long"]["id"]
    ui.shot(f"queue-{lang}")
    fits(page, [*HEADER, *FILTERS, "#queue-body tr", "#queue-body td.place", *DETAIL])
    one_line_links(page)
    # The list does not scroll sideways either; the long address is cut short in it (its whole
    # text is the cell's title) and shown whole, wrapped, in the detail with the case's id.
    assert page.eval_on_selector(".list-pane", "p => p.scrollWidth - p.clientWidth") == 0
    cell = page.locator(f"#queue-body tr[data-id='{long_id}'] td.place > div")
    assert cell.get_attribute("title") == CHINESE_ADDRESS
    assert cell.evaluate("d => d.scrollHeight > d.clientHeight")
    head = page.inner_text("#detail .detail-head").replace("\n", "")
    assert long_id in head and CHINESE_ADDRESS in head
    # Every frame of the case is shown: the main one, first seen and latest, two crops.
    assert page.locator("#detail figure img").count() == 5

    # The other cases fit as well: the one at the long Latin address, the sensor alarm.
    for name in ("earlier", "sensor"):
        page.click(f"#queue-body tr[data-id='{cases[name]['id']}']")
        actionable(page, cases[name]["id"])
        ui.shot(f"{name}-{lang}")
        fits(page, [*HEADER, "#queue-body tr", *ACTIONS, "#detail dd"])


@pytest.mark.parametrize(
    ("key", "field"), [("r", "reason_code"), ("i", "reason"), ("m", "merge_id")]
)
def test_the_decision_dialogs_fit_a_phone(
    ui: Any, seeder: Any, frames: list[bytes], key: str, field: str
) -> None:
    cases = phone_queue(ui, seeder, frames)
    page = ui.page
    page.keyboard.press(key)
    page.wait_for_selector(f"#dlg[open] input[name={field}]")
    if key == "m":  # the other parking case at this camera is offered
        page.wait_for_selector(f"#dlg select option[value='{cases['earlier']['id']}']")
    ui.shot(f"dialog-{key}")
    fields = ["#dlg-body input", "#dlg-body select"] if key == "m" else ["#dlg-body input"]
    fits(page, ["#dlg", "#dlg-title", *fields, "#dlg-ok", "#dlg-cancel"])
    assert page.eval_on_selector("#dlg", "d => d.scrollWidth - d.clientWidth") == 0
    cancel(page)


def test_the_statistics_fit_a_phone(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    page.set_viewport_size(PHONE)
    breached, _ = sla_breached(seeder, frames, console)
    phone_cases(seeder, frames)
    ui.login("reviewer")
    page.click("nav a[data-view=stats]")
    page.wait_for_selector("#stats-body section[data-key=sla_breaches] tbody tr")
    ui.shot("statistics")
    fits(page, [*HEADER, "#st-since", "#st-until", "#st-last", "#stats-body section"])
    one_line_links(page)
    # The breach's table wraps its case id rather than scrolling sideways.
    table = "#stats-body section[data-key=sla_breaches]"
    assert breached["id"] in page.inner_text(f"{table} tbody").replace("\n", "")
    assert page.eval_on_selector(table, "s => s.scrollWidth - s.clientWidth") == 0


def test_the_zone_editor_fits_a_phone(ui: Any, camera_responder: list[str]) -> None:
    ui.page.set_viewport_size(PHONE)
    page = zone_editor(ui)
    page.wait_for_selector("#z-list li")
    page.click("#z-snapshot")
    page.wait_for_function("() => document.querySelector('#z-canvas').dataset.snapshot === 'ok'")
    page.click("#z-validate")
    page.wait_for_selector("#z-yaml[data-valid=true]")
    ui.shot("zones")
    controls = ["#z-camera", "#z-snapshot", "#z-new", "#z-delete", "#z-canvas", "#z-list li"]
    fits(page, [*HEADER, *controls, "#z-validate", "#z-yaml", "#z-copy", "#z-download"])
    one_line_links(page)
    # The canvas, where the zones are drawn with a finger, takes the screen's width.
    width = page.eval_on_selector("#z-canvas", "c => c.getBoundingClientRect().width")
    assert width >= PHONE["width"] - 40, width

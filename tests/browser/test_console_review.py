"""The console's review actions at their edges: double clicks, cases decided elsewhere, frames
not uploaded yet or not to be had just now, crops, a drained page, the decision dialogs' checks,
stale sessions, lost answers, SLA times."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from .conftest import annotate, intercepted
from .test_console import PARKING, SITE_TZ, VENDING, status_of
from .test_queue_live import STAGES, is_list, is_lookup, review

pytestmark = [pytest.mark.browser]

# Every POST the page sends, recorded as it is sent (a click's handler has sent its request by
# the time the click returns).
RECORD_POSTS = """
window.__posts = [];
const send = window.fetch;
window.fetch = (url, init) => {
  if (init && init.method === 'POST') window.__posts.push(String(url));
  return send(url, init);
};
"""


def two_listed(ui: Any, seeder: Any, frames: list[bytes]) -> tuple[str, str]:
    """Two cases listed after logging in: the selected one's id and the other's."""
    cases = [
        seeder.camera_candidate(frames, minutes_ago=5, **PARKING),
        seeder.camera_candidate(frames, minutes_ago=2, **VENDING),
    ]
    ui.login("reviewer")
    ui.wait_rows([c["id"] for c in cases])
    selected = ui.selected()
    (other,) = [str(c["id"]) for c in cases if c["id"] != selected]
    return selected, other


def gone_from_list(page: Any, cid: str) -> None:
    page.wait_for_function(f"() => !document.querySelector(\"#queue-body tr[data-id='{cid}']\")")


def test_a_double_click_on_confirm_decides_only_the_case_it_was_aimed_at(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    page.add_init_script(RECORD_POSTS)
    aimed, next_one = two_listed(ui, seeder, frames)
    page.wait_for_selector(f"#detail:has-text('{aimed[:8]}') .actions:not(.settling) #act-confirm")
    box = page.locator("#act-confirm").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    page.mouse.click(x, y)
    gone_from_list(page, aimed)
    # The pointer has not moved: the next case's Confirm is under it now, and a double click
    # (or the rest of a triple click) lands there.
    assert page.evaluate(f"document.elementFromPoint({x}, {y}).id") == "act-confirm"
    page.mouse.click(x, y, click_count=2)
    ui.shot("after-double-click")
    posts = page.evaluate("window.__posts")
    assert [url.rsplit("/", 2)[-2] for url in posts if url.endswith("/review")] == [aimed]
    assert status_of(console, aimed)["status"] == "confirmed"
    assert status_of(console, next_one)["status"] == "new"
    assert ui.selected() == next_one


def test_a_case_decided_elsewhere_while_shown_stays_until_the_reviewer_moves_on(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    shown, other = two_listed(ui, seeder, frames)
    page.wait_for_selector("#live.on")
    page.wait_for_selector(f"#detail:has-text('{shown[:8]}') #act-confirm:enabled")

    review(console, shown, decision="confirm")  # another reviewer
    who = status_of(console, shown)["history"][-1]["who"]
    notice = page.wait_for_selector("#decided-elsewhere")
    assert notice.inner_text() == f"此线索已由 {who} 处理：已确认。按 j/k 或点击列表继续"
    assert ui.selected() == shown
    assert page.is_visible(f"#detail .detail-head:has-text('{shown}') .badge.s-confirmed")
    for decision in ("confirm", "reject", "return", "merge"):
        assert not page.is_enabled(f"#act-{decision}"), decision
    ui.shot("decided-elsewhere")

    # The next key meant for the case shown does not act on another one.
    page.keyboard.press("c")
    page.wait_for_selector(f"#toast:has-text('{notice.inner_text()}')")
    assert status_of(console, other)["status"] == "new"
    assert ui.selected() == shown

    # Moving on drops it; the dialogs name the case they decide.
    page.keyboard.press("j")
    page.wait_for_selector(f"#detail .detail-head:has-text('{other}')")
    assert ui.rows() == [other]
    assert not page.is_visible("#decided-elsewhere")
    page.wait_for_selector("#act-reject:enabled")
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open]")
    assert page.inner_text("#dlg-title") == f"驳回原因 · {other[:8]}"


def test_a_reviewer_named_with_dollar_signs_is_named_as_they_are(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    # "$&" and "$'" mean the match and what follows it to String.replace with a string.
    name = "值班 $& $' 组"
    console.stop()
    console.env["GRIDPATROL_API_TOKENS"] = json.dumps(
        {
            tok: {"role": role, "name": name if role == "admin" else f"test-{role}"}
            for role, tok in console.tokens.items()
        }
    )
    console.start()
    page, shown, _ = live_and_actionable(ui, seeder, frames)
    with console.client("admin") as client:  # another reviewer
        response = client.post(f"/candidates/{shown}/review", json={"decision": "confirm"})
        assert response.status_code == 200, response.text
    notice = page.wait_for_selector("#decided-elsewhere")
    assert notice.inner_text() == f"此线索已由 {name} 处理：已确认。按 j/k 或点击列表继续"


def without_frames(
    seeder: Any, frames: list[bytes], skipped: list[bytes], **place: Any
) -> dict[str, Any]:
    """A camera case whose ``skipped`` frames are never uploaded (it refers to frames of its
    own, which no other test uploads)."""
    upload = seeder.evidence

    def evidence(data: bytes, content_type: str = "image/jpeg") -> str:
        if data in skipped:
            return hashlib.sha256(data + uuid.uuid4().bytes).hexdigest()
        sha: str = upload(data, content_type)
        return sha

    seeder.evidence = evidence
    try:
        case: dict[str, Any] = seeder.camera_candidate(frames, **place)
    finally:
        seeder.evidence = upload
    assert case["status"] == "incomplete", case
    return case


def test_a_frame_not_uploaded_yet_gives_way_to_one_that_is(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    annotated = annotate(frames[-1], PARKING["type_"])  # what camera_candidate sends
    no_flag = without_frames(seeder, frames, [annotated], minutes_ago=5, **PARKING)
    no_frame = without_frames(seeder, frames, [annotated, frames[-1]], minutes_ago=3, **PARKING)
    page = ui.page
    ui.login("reviewer")
    page.select_option("#f-status", "incomplete")
    ui.wait_rows([no_flag["id"], no_frame["id"]])
    for case in (no_flag, no_frame):  # the thumbnail: a frame that is there
        # Read in one go once a frame is drawn: the list drawn again (the filter's page, a live
        # update) puts a new <img> in, not loaded yet, and a missing frame's <img> is complete
        # (broken) before its error handler moves it on to the next frame.
        drawn = page.wait_for_function(
            "sel => { const i = document.querySelector(sel);"
            " return i && i.complete && i.naturalWidth > 0 && i.naturalWidth; }",
            arg=f"#queue-body tr[data-id='{case['id']}'] img.thumb",
        )
        assert drawn.json_value() == 1280

    # Without its annotated frame, the clean one is shown (and named), and cannot be toggled.
    page.click(f"#queue-body tr[data-id='{no_flag['id']}']")
    page.wait_for_selector(f"#detail .detail-head:has-text('{no_flag['id']}')")
    page.wait_for_selector("#detail figure.main figcaption:has-text('原图')")
    assert ui.image_width("#detail figure.main img") == 1280
    assert not page.is_enabled("#toggle-annotated")
    ui.shot("clean-in-place")

    # Neither frame there: the detail says so, where the frames would be.
    page.click(f"#queue-body tr[data-id='{no_frame['id']}']")
    page.wait_for_selector(f"#detail .detail-head:has-text('{no_frame['id']}')")
    page.wait_for_selector("#detail .main-evidence, #detail > p.noframe")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#detail .noframe')]"
        ".filter((p) => p.textContent === '画面尚未上传').length === 2"
    )
    assert not page.query_selector("#detail figure.main img")
    assert ui.image_width("#detail .dwell figure:first-child img") == 1280  # first seen
    ui.shot("no-frame-yet")


UNLOADED = "画面暂时无法加载，正在重试"

# Whether the page ever said a frame was not uploaded, in its text or a thumbnail's title.
WATCH_NOT_UPLOADED = """
window.__saidNotUploaded = false;
new MutationObserver(() => {
  const root = document.documentElement;
  if (root && (root.textContent.includes('画面尚未上传')
      || document.querySelector('[title="画面尚未上传"]'))) {
    window.__saidNotUploaded = true;
  }
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


def loaded_width(page: Any, selector: str) -> int:
    """naturalWidth of the image at ``selector``, once one there has loaded (a frame tried
    again replaces the image that failed)."""
    page.wait_for_function(
        "sel => document.querySelector(sel)?.naturalWidth > 0", arg=selector, polling=100
    )
    width: int = page.eval_on_selector(selector, "img => img.naturalWidth")
    return width


def test_a_frame_that_cannot_be_had_just_now_is_tried_again_not_called_not_uploaded(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    assert (case["status"], case["missing_elements"]) == ("new", [])
    page = ui.page
    page.add_init_script(WATCH_NOT_UPLOADED)
    down = [True]  # the evidence store cannot read its files just now

    def evidence(route: Any) -> None:
        if down:
            unavailable(route, "1")
        else:
            route.continue_()

    page.route("**/api/v1/evidence/*", evidence)
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    row = f"#queue-body tr[data-id='{case['id']}']"
    page.wait_for_selector(
        f"#detail:has(.detail-head:has-text('{case['id']}')) figure.main .noframe"
        f":text-is('{UNLOADED}')"
    )
    page.wait_for_selector(f"{row} span.thumb[title='{UNLOADED}']")
    assert page.is_enabled("#toggle-clean")  # the clean frame is there to ask for
    ui.shot("cannot-load")

    down.clear()  # the store recovers: the frames come back without the reviewer doing anything
    assert loaded_width(page, "#detail figure.main img") == 1280
    assert loaded_width(page, f"{row} img.thumb") == 1280
    assert loaded_width(page, "#detail .dwell figure:first-child img") == 1280
    assert loaded_width(page, "#detail .dwell figure:last-child img") == 1280
    assert page.locator("#detail .noframe").count() == 0
    ui.shot("loaded-again")
    assert page.evaluate("window.__saidNotUploaded") is False


def unavailable(route: Any, retry_after: str) -> None:
    """The evidence store's answer while it cannot read its files."""
    route.fulfill(
        status=503,
        headers={"Retry-After": retry_after},
        content_type="application/problem+json",
        body='{"title": "Service Unavailable", "status": 503}',
    )


def shows_failing(page: Any, cid: str) -> None:
    """Wait until the pane shows ``cid`` with its 3 frames said not to be had just now."""
    page.wait_for_selector(f"#detail .detail-head:has-text('{cid}')")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#detail .noframe.failing')]"
        f".filter((p) => p.textContent === '{UNLOADED}').length === 3"
    )


def test_frames_that_cannot_be_had_are_not_asked_for_again_before_their_time(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = [  # each with frames of its own: 3 files a case
        seeder.camera_candidate(
            [annotate(frames[0], f"first {i}"), annotate(frames[-1], f"latest {i}")],
            minutes_ago=5 + i,
            **PARKING,
        )
        for i in range(10)
    ]
    files = {e["sha256"] for case in cases for e in case["evidence"]}
    assert len(files) == 30
    page = ui.page
    asked: list[tuple[str, str]] = []  # (file, resource type) of each evidence request

    def evidence(route: Any) -> None:
        asked.append((route.request.url.rsplit("/", 1)[1], route.request.resource_type))
        unavailable(route, "120")

    page.route("**/api/v1/evidence/*", evidence)
    ui.login("reviewer")
    ui.wait_rows([case["id"] for case in cases])
    # Every file is tried and asked about once: then all of them wait for two minutes.
    page.wait_for_function(
        "() => document.querySelectorAll('#queue-body span.thumb[data-shas]').length === 10"
    )
    for _ in range(300):
        if {sha for sha, kind in asked if kind == "fetch"} == files:
            break
        page.wait_for_timeout(100)
    assert {sha for sha, kind in asked if kind == "fetch"} == files
    order = ui.rows()
    shows_failing(page, order[0])
    before = len(asked)

    for cid in order[1:6]:
        page.keyboard.press("j")
        shows_failing(page, cid)
    # Neither the pane nor the list asks for a file before its Retry-After has passed.
    assert asked[before:] == []
    assert (
        page.eval_on_selector_all(
            "#queue-body span.thumb[data-shas]", "spans => spans.map((s) => s.title)"
        )
        == [UNLOADED] * 10
    )


def test_frames_are_not_tried_again_while_logged_out(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = [seeder.camera_candidate(frames, minutes_ago=5 + i, **PARKING) for i in range(2)]
    page = ui.page
    asked: list[str] = []

    def evidence(route: Any) -> None:
        asked.append(route.request.url)
        unavailable(route, "1")

    page.route("**/api/v1/evidence/*", evidence)
    ui.login("reviewer")
    ui.wait_rows([case["id"] for case in cases])
    order = ui.rows()
    shows_failing(page, order[0])
    # The session ends (here by its own hand); the next read is refused and the login form is up.
    page.evaluate("fetch('/api/v1/session', { method: 'DELETE', credentials: 'same-origin' })")
    page.keyboard.press("j")
    page.wait_for_selector("#login:not([hidden])")
    page.wait_for_timeout(1000)  # what was on its way when the session ended lands
    before = len(asked)
    page.wait_for_timeout(6000)  # past the next retries' times (1, 2, 5 s)
    assert asked[before:] == []


def add_evidence(seeder: Any, cid: str, evidence: list[dict[str, Any]]) -> None:
    """The producer adds ``evidence`` to case ``cid``."""
    response = seeder.client.patch(
        f"/candidates/{cid}",
        json={"evidence": evidence},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text


def cut_jpeg(jpeg: bytes) -> bytes:
    """``jpeg`` without its scan: its headers, closed at once (ff d9). Its header reads as a
    JPEG's; the browser cannot draw it."""
    return jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xd9"


def test_a_frame_served_that_cannot_be_drawn_gives_way_to_the_clean_one_for_good(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    other = seeder.camera_candidate(frames, minutes_ago=3, **PARKING)
    (clean,) = [e["sha256"] for e in case["evidence"] if e["kind"] == "clean"]
    cut = cut_jpeg(annotate(frames[3], "cut"))
    sha = hashlib.sha256(cut).hexdigest()
    stored = seeder.client.put(
        f"/evidence/{sha}", content=cut, headers={"Content-Type": "image/jpeg"}
    )
    assert stored.status_code == 201, stored.text
    newer = {
        "sha256": sha,
        "kind": "annotated",
        "captured_at": datetime.now(UTC).isoformat(),
        "width": 1280,
        "height": 720,
    }
    add_evidence(seeder, case["id"], [newer])

    page = ui.page
    served: list[str] = []  # the resource type of each request for the cut frame

    def count(route: Any) -> None:
        served.append(route.request.resource_type)
        route.continue_()

    page.route(f"**/api/v1/evidence/{sha}", count)
    ui.login("reviewer")
    ui.wait_rows([case["id"], other["id"]])
    assert ui.rows() == [other["id"], case["id"]]
    page.click(f"#queue-body tr[data-id='{case['id']}']")
    shown = f"#detail:has(.detail-head:has-text('{case['id']}'))"
    page.wait_for_selector(f"{shown} figure.main figcaption:has-text('原图')")
    assert loaded_width(page, "#detail figure.main img") == 1280
    assert page.get_attribute("#detail figure.main img", "src") == f"/api/v1/evidence/{clean}"
    assert not page.is_enabled("#toggle-annotated")
    row = f"#queue-body tr[data-id='{case['id']}']"
    assert loaded_width(page, f"{row} img.thumb") == 1280
    assert "fetch" in served  # asked about once, and judged
    judged = len(served)

    # Shown again, and past the first retries' times: the cut frame is not asked for again.
    page.keyboard.press("k")
    page.wait_for_selector(f"#detail .detail-head:has-text('{other['id']}')")
    page.keyboard.press("j")
    page.wait_for_selector(f"{shown} figure.main figcaption:has-text('原图')")
    page.wait_for_timeout(3500)
    assert loaded_width(page, "#detail figure.main img") == 1280
    assert len(served) == judged
    ui.shot("cut-frame")


def crop_of(jpeg: bytes, box: tuple[int, int, int, int]) -> bytes:
    """The ``box`` (x1, y1, x2, y2) of a frame, as a JPEG: a detector's crop evidence."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    x1, y1, x2, y2 = box
    ok, buf = cv2.imencode(".jpg", image[y1:y2, x1:x2])
    assert ok
    return bytes(buf)


def test_a_cases_crops_are_shown_and_its_other_files_linked(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    (first_annotated,) = [e["sha256"] for e in case["evidence"] if e["kind"] == "annotated"]
    now = datetime.now(UTC)
    crops = [
        seeder.evidence(crop_of(frames[3], (400, 250, 700, 650))),
        seeder.evidence(crop_of(frames[4], (420, 260, 700, 640))),
    ]
    added = [
        seeder._ref(annotate(frames[3], "better"), "annotated", now),
        *({"sha256": sha, "kind": "crop", "captured_at": now.isoformat()} for sha in crops),
    ]
    add_evidence(seeder, case["id"], added)

    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    figures = f"#detail:has(.detail-head:has-text('{case['id']}')) .crops figure"
    page.wait_for_selector(f"{figures} img")
    assert page.eval_on_selector_all(f"{figures} img", "imgs => imgs.map(i => i.src)") == [
        f"{console.url}/api/v1/evidence/{sha}" for sha in crops
    ]
    assert loaded_width(page, "#detail .crops figure:nth-child(1) img") == 300
    assert loaded_width(page, "#detail .crops figure:nth-child(2) img") == 280
    assert page.eval_on_selector_all(
        f"{figures} figcaption", "cs => cs.map(c => c.textContent.split(' ')[0])"
    ) == ["目标截图", "目标截图"]
    # The earlier annotated frame, which the pane does not draw, is a link.
    links = page.eval_on_selector_all(
        "#detail .evidence-links a", "as => as.map(a => [a.textContent, a.getAttribute('href')])"
    )
    assert links == [["annotated", f"/api/v1/evidence/{first_annotated}"]]
    ui.shot("crops")


def test_the_next_page_loads_when_every_listed_case_is_decided(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = [seeder.camera_candidate(frames, minutes_ago=9, **PARKING) for _ in range(51)]
    page = ui.page
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 50")
    page.wait_for_selector("#live.on")
    listed = ui.rows()
    assert cases[0]["id"] not in listed  # the oldest waits on the next page
    for cid in listed[1:]:
        review(console, cid, decision="confirm")
    ui.wait_rows([listed[0]])
    assert ui.selected() == listed[0]
    page.keyboard.press("c")
    page.wait_for_selector(f"#detail .detail-head:has-text('{cases[0]['id']}')")
    assert ui.rows() == [cases[0]["id"]]
    assert ui.selected() == cases[0]["id"]
    assert page.is_hidden("#queue-empty")
    ui.shot("next-page")


def sla_breached(
    seeder: Any, frames: list[bytes], console: Any
) -> tuple[dict[str, Any], dict[str, datetime]]:
    """A case confirmed five hours ago and taken on by the platform, which arrived an hour ago,
    past its SLA; and the times of its stages."""
    case: dict[str, Any] = seeder.camera_candidate(frames, minutes_ago=300, **PARKING)
    review(console, case["id"], decision="confirm")
    now = datetime.now(UTC)
    # A case the platform took on hours ago: the API refuses stage times from before a case
    # was created or confirmed, and this one was both just now, so both are moved back.
    back = now - timedelta(hours=5)
    with sqlite3.connect(console.workdir / "api.db") as db:
        (stored,) = db.execute("SELECT doc FROM candidates WHERE id = ?", (case["id"],)).fetchone()
        doc = json.loads(stored)
        for entry in doc["history"]:
            if entry["action"] == "confirmed":
                entry["at"] = back.isoformat()
        db.execute(
            "UPDATE candidates SET created_at = ?, doc = ? WHERE id = ?",
            (back.replace(tzinfo=None), json.dumps(doc), case["id"]),
        )
    at = {
        "registered": now - timedelta(hours=4),
        "dispatched": now - timedelta(hours=3),
        "arrived": now - timedelta(hours=1),
    }
    with console.client("platform") as client:
        for stage in STAGES[:3]:
            body: dict[str, Any] = {"stage": stage}
            if stage in at:
                body["at"] = at[stage].isoformat()
            response = client.post(f"/candidates/{case['id']}/status", json=body)
            assert response.status_code == 200, response.text
    return case, at


@pytest.mark.parametrize("browser_timezone", ["America/New_York"])
def test_sla_breach_times_are_the_sites_in_a_browser_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, browser_timezone: str
) -> None:
    case, at = sla_breached(seeder, frames, console)
    arrive_by = datetime.fromisoformat(status_of(console, case["id"])["arrive_by"])
    page = ui.page
    ui.login("reviewer")
    page.click("nav a[data-view=stats]")
    block = page.wait_for_selector("#stats-body section[data-key=sla_breaches] tbody tr")
    cells = block.eval_on_selector_all(
        "td", "tds => Object.fromEntries(tds.map((td, i) => [i, td.textContent]))"
    )
    heads = page.eval_on_selector_all(
        "#stats-body section[data-key=sla_breaches] thead th",
        "ths => ths.map(th => th.textContent)",
    )
    shown = {heads[int(i) + 1]: text for i, text in cells.items()}

    def site(t: datetime) -> str:
        local = t.astimezone(SITE_TZ)
        return f"{local.year}/{local.month}/{local.day} {local:%H:%M:%S}"

    assert shown["应到场时间"] == site(arrive_by)
    assert shown["到场时间"] == site(at["arrived"])
    ui.shot("sla-site-time")


def actionable(page: Any, cid: str) -> None:
    """Wait until the detail shows this case with its Confirm button enabled."""
    page.wait_for_selector(f"#detail:has(.detail-head:has-text('{cid}')) #act-confirm:enabled")


# What the page shows and where its focus is, for a key press that opened no dialog.
PAGE_STATE = """() => ({
  focus: [document.activeElement].map((e) => e && `${e.tagName}#${e.id} ${e.name}`)[0],
  focusInDialog: Boolean(document.activeElement?.closest('dialog')),
  toast: [document.querySelector('#toast')].map((t) => (t.hidden ? null : t.textContent))[0],
  zoom: Boolean(document.querySelector('.zoom')),
  detail: document.querySelector('#detail .detail-head')?.textContent,
})"""


def open_dialog(ui: Any, key: str, case: dict[str, Any]) -> Any:
    page = ui.page
    actionable(page, case["id"])
    page.keyboard.press(key)
    try:
        page.wait_for_selector("#dlg[open]")
    except PlaywrightTimeout as exc:
        raise AssertionError(f"{key!r} opened no dialog: {page.evaluate(PAGE_STATE)}") from exc
    return page


def cancel(page: Any) -> None:
    """Cancel the open dialog; return once its close event has come, which comes a task
    later: a dialog opened before it would take it as its own and close at once."""
    page.evaluate(
        """() => new Promise((closed) => {
          document.querySelector('#dlg').addEventListener('close', closed, { once: true });
          document.querySelector('#dlg-cancel').click();
        })"""
    )


def decisions_intercepted(page: Any) -> None:
    """Decisions intercepted from the start (see intercepted): a route added only just before
    a decision is sent can miss it, and the decision is made instead of failing."""
    intercepted(page, "**/api/v1/candidates/*/review")


def one_listed(ui: Any, seeder: Any, frames: list[bytes]) -> dict[str, Any]:
    """A new case, the only one listed after logging in, its decisions intercepted (see
    decisions_intercepted)."""
    decisions_intercepted(ui.page)
    case: dict[str, Any] = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    return case


def returned_with(ui: Any, console: Any, cid: str, note: str) -> None:
    """OK on the open return dialog: the case leaves the list, returned with ``note``."""
    ui.page.keyboard.press("Enter")
    ui.wait_rows([])
    returned = status_of(console, cid)
    assert (returned["status"], returned["history"][-1]["reason"]) == ("returned", note)


def test_a_return_needs_a_reason_and_a_merge_a_full_id(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = one_listed(ui, seeder, frames)

    page = open_dialog(ui, "i", case)
    assert page.inner_text("#dlg-title") == f"退回补充说明 · {case['id'][:8]}"
    page.keyboard.press("Enter")
    assert page.inner_text("#dlg-error") == "请填写说明"
    assert page.is_visible("#dlg[open]")
    ui.shot("return-without-reason")
    cancel(page)

    # Reject: "other" needs its note; the other reasons do not.
    page = open_dialog(ui, "r", case)
    page.keyboard.press("6")
    page.keyboard.press("Enter")
    assert page.inner_text("#dlg-error") == "请填写说明"
    cancel(page)

    # Merge: a short or mangled id is refused before it is sent.
    page = open_dialog(ui, "m", case)
    page.fill("#dlg-body input[name=merge_id]", case["id"][:8])
    page.keyboard.press("Enter")
    assert page.inner_text("#dlg-error").startswith("线索编号应为完整的 UUID")
    assert page.is_visible("#dlg[open]")
    cancel(page)
    assert status_of(console, case["id"])["status"] == "new"

    page = open_dialog(ui, "i", case)
    page.fill("#dlg-body input[name=reason]", "no plate in the frame")
    returned_with(ui, console, case["id"], "no plate in the frame")


def logged_in_in_another_tab(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, role: str
) -> dict[str, Any]:
    """A case shown to the reviewer, whose next write follows another tab of this browser
    logging in with the token of ``role``: the shared cookie is that session's now."""
    case: dict[str, Any] = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    actionable(ui.page, case["id"])
    response = ui.page.context.request.post(
        f"{console.url}/api/v1/session", data={"token": console.tokens[role]}
    )
    assert response.ok, response.text()
    return case


def test_a_write_after_logging_in_again_in_another_tab_goes_through(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    # The same reviewer again: only the CSRF token is new.
    case = logged_in_in_another_tab(ui, seeder, frames, console, "reviewer")
    ui.page.keyboard.press("c")
    ui.wait_rows([])
    assert status_of(console, case["id"])["status"] == "confirmed"


def test_an_expired_session_mid_decision_keeps_the_case_after_logging_in(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    _, chosen = two_listed(ui, seeder, frames)
    page.click(f"#queue-body tr[data-id='{chosen}']")
    actionable(page, chosen)
    page.context.clear_cookies()  # the session is gone
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    assert page.inner_text("#login-error") == "会话已过期，请重新登录"
    ui.shot("session-expired")
    page.fill("#token", console.tokens["reviewer"])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector(f"#detail .detail-head:has-text('{chosen}')")
    assert ui.selected() == chosen
    assert status_of(console, chosen)["status"] == "new"


def test_more_is_hidden_while_the_list_reloads(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    for _ in range(51):
        seeder.camera_candidate(frames, minutes_ago=9, **PARKING)
    page = ui.page
    intercepted(page, is_list)  # so that the reload below is held
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 50")
    page.wait_for_selector("#queue-more:not([hidden])")
    held: list[Any] = []
    page.route(is_list, lambda route: held.append(route), times=1)
    page.select_option("#f-status", "")  # a reload, held on its way
    for _ in range(600):  # bounded: the page's requests reach the handler between calls
        if held:
            break
        page.evaluate("1")
    assert held, "the list was not asked for"
    assert page.is_hidden("#queue-more")
    ui.shot("reloading")
    held[0].continue_()
    page.wait_for_selector("#queue-more:not([hidden])")
    page.click("#queue-more")
    page.wait_for_selector("#queue-more", state="hidden")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 51")


def wait_held(page: Any, held: list[Any]) -> Any:
    """The request a route holds, once the page has sent it."""
    for _ in range(600):  # bounded: the page's requests reach the handler between calls
        if held:
            return held[0]
        page.evaluate("1")
    raise AssertionError("the request was not sent")


def test_a_write_after_someone_else_logged_in_in_another_tab_is_not_made_as_them(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = logged_in_in_another_tab(ui, seeder, frames, console, "admin")
    page = ui.page
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    assert page.inner_text("#login-error") == (
        "此浏览器已在另一标签页以 test-admin · admin 登录，未执行操作。请重新登录"
    )
    ui.shot("signed-in-elsewhere")
    assert status_of(console, case["id"])["status"] == "new"

    # Signed in again as the reviewer, the same case is decided, as the reviewer.
    page.fill("#token", console.tokens["reviewer"])
    # Back in, the queue reloads its list: decide once that list is in, not on the page as it
    # stood before the login.
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/api/v1/candidates")):
        page.click("#login-form button[type=submit]")
    actionable(page, case["id"])
    page.keyboard.press("c")
    ui.wait_rows([])
    last = status_of(console, case["id"])["history"][-1]
    assert (last["action"], last["who"]) == ("confirmed", "test-reviewer")


def live_and_actionable(ui: Any, seeder: Any, frames: list[bytes]) -> tuple[Any, str, str]:
    """Two cases listed, live updates on, the selected one ready for a decision: the page,
    the selected case's id and the other's, its decisions intercepted (see
    decisions_intercepted)."""
    decisions_intercepted(ui.page)
    shown, other = two_listed(ui, seeder, frames)
    ui.page.wait_for_selector("#live.on")
    actionable(ui.page, shown)
    return ui.page, shown, other


def test_a_decision_refused_as_decided_elsewhere_keeps_the_case_shown(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = live_and_actionable(ui, seeder, frames)
    held: list[Any] = []
    page.route(f"**/api/v1/candidates/{shown}/review", lambda route: held.append(route), times=1)
    page.keyboard.press("c")
    confirm = wait_held(page, held)

    # Another reviewer rejects it meanwhile, and this tab hears of it before its own answer.
    def lookup(response: Any) -> bool:
        return bool(response.url.endswith(f"/candidates/{shown}"))

    with page.expect_response(lookup) as heard:
        review(console, shown, decision="reject", reason_code="duplicate")
    heard.value.finished()
    confirm.continue_()
    notice = page.wait_for_selector("#decided-elsewhere")
    assert notice.inner_text() == "此线索已由 test-reviewer 处理：已驳回。按 j/k 或点击列表继续"
    assert page.inner_text("#toast") == (
        "状态已变化，无法执行: cannot confirm a candidate that is rejected"
    )
    assert ui.selected() == shown
    assert page.is_visible(f"#detail .detail-head:has-text('{shown}') .badge.s-rejected")
    ui.shot("conflict-held")
    assert status_of(console, other)["status"] == "new"


def test_a_dialog_confirmed_after_the_case_was_decided_elsewhere_sends_nothing(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    ui.page.add_init_script(RECORD_POSTS)
    page, shown, other = live_and_actionable(ui, seeder, frames)
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    review(console, shown, decision="confirm")  # another reviewer, while the dialog is open
    notice = page.wait_for_selector("#decided-elsewhere")
    page.keyboard.press("Enter")
    page.wait_for_selector("#dlg:not([open])", state="attached")
    page.wait_for_selector(f"#toast:has-text('{notice.inner_text()}')")
    assert [url for url in page.evaluate("window.__posts") if url.endswith("/review")] == []
    assert ui.selected() == shown
    assert page.is_visible("#decided-elsewhere")
    assert status_of(console, other)["status"] == "new"


def test_decided_by_names_the_reviewer_not_the_platform_step_after_it(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, _ = live_and_actionable(ui, seeder, frames)
    registered: list[bool] = []

    def register_first(route: Any) -> None:
        # The platform registers the confirmed case before this tab looks it up.
        if not registered and status_of(console, shown)["status"] == "confirmed":
            with console.client("platform") as client:
                response = client.post(f"/candidates/{shown}/status", json={"stage": "registered"})
                assert response.status_code == 200, response.text
            registered.append(True)
        route.continue_()

    page.route(f"**/api/v1/candidates/{shown}", register_first)
    review(console, shown, decision="confirm")
    notice = page.wait_for_selector("#decided-elsewhere")
    assert registered
    assert notice.inner_text() == "此线索已由 test-reviewer 处理：已立案。按 j/k 或点击列表继续"


def open_merge(ui: Any, seeder: Any, frames: list[bytes]) -> tuple[Any, str, str]:
    """The merge dialog of the selected case: its id and another open case's (not near it, so
    not offered until its id is pasted)."""
    shown, other = two_listed(ui, seeder, frames)
    page = ui.page
    actionable(page, shown)
    page.keyboard.press("m")
    page.wait_for_selector("#dlg[open] input[name=merge_id]")
    return page, shown, other


def merged(ui: Any, console: Any, shown: str, other: str) -> None:
    page = ui.page
    page.keyboard.press("Enter")
    gone_from_list(page, shown)
    case = status_of(console, shown)
    assert (case["status"], case["merged_into"]) == ("merged", other)


@pytest.mark.parametrize(
    "spelling",
    [
        lambda cid: cid.replace("-", "").upper(),
        lambda cid: f"{{{cid}}}",
        lambda cid: f"urn:uuid:{cid}",
    ],
    ids=["no-hyphens", "braces", "urn"],
)
def test_a_merge_id_is_taken_in_any_spelling_of_a_uuid(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, spelling: Any
) -> None:
    page, shown, other = open_merge(ui, seeder, frames)
    page.fill("#dlg-body input[name=merge_id]", spelling(other))
    page.wait_for_selector(f"#dlg-body option[value='{other}']:checked", state="attached")
    ui.shot("pasted")
    merged(ui, console, shown, other)


def test_a_merge_id_whose_lookup_failed_is_sent_on_ok(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    intercepted(ui.page, is_lookup)  # so that the pasted id's lookup below fails
    page, shown, other = open_merge(ui, seeder, frames)
    problem = '{"title": "Internal Server Error", "status": 500}'
    page.route(
        f"**/api/v1/candidates/{other}",
        lambda route: route.fulfill(
            status=500, content_type="application/problem+json", body=problem
        ),
        times=1,
    )
    page.fill("#dlg-body input[name=merge_id]", other)
    page.wait_for_selector("#toast:has-text('Internal Server Error')")
    merged(ui, console, shown, other)


# A fetch that fails before the page's next task (before a dialog's close event, say): set
# window.__failNow and the next decision sent fails so.
FAIL_AT_ONCE = """
window.__failNow = false;
const send = window.fetch;
window.fetch = (url, init) => {
  if (window.__failNow && String(url).endsWith('/review')) {
    window.__failNow = false;
    return Promise.reject(new TypeError('Failed to fetch'));
  }
  return send(url, init);
};
"""


def failing_reviews(page: Any, cid: str, how: str) -> None:
    """Make the next decision sent on ``cid`` fail: "abort" (the network), "at once" (see
    FAIL_AT_ONCE), or a 503 problem with the detail "database busy"."""

    def fail(route: Any) -> None:
        if how == "abort":
            route.abort("internetdisconnected")
        else:
            route.fulfill(
                status=503,
                content_type="application/problem+json",
                body='{"title": "Service Unavailable", "status": 503, "detail": "database busy"}',
            )

    if how == "at once":
        page.evaluate("window.__failNow = true")
    else:
        page.route(f"**/api/v1/candidates/{cid}/review", fail, times=1)


NOTE = "plate unreadable; please upload the clean frame of 10:42"


@pytest.mark.parametrize(
    ("how", "error"),
    [("abort", "Failed to fetch"), ("at once", "Failed to fetch"), ("503", "database busy")],
)
def test_a_rejection_that_fails_opens_again_with_its_reason_and_note(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, how: str, error: str
) -> None:
    ui.page.add_init_script(FAIL_AT_ONCE)
    case = one_listed(ui, seeder, frames)
    page = open_dialog(ui, "r", case)
    page.keyboard.press("4")
    page.fill("#dlg-body input[name=reason]", NOTE)
    failing_reviews(page, case["id"], how)
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#dlg[open] #dlg-error:text-is('{error}')")
    assert page.inner_text("#dlg-title") == f"驳回原因 · {case['id'][:8]}"
    assert page.input_value("#dlg-body input[name=reason]") == NOTE
    assert page.is_checked("#dlg-body input[value=out_of_jurisdiction]")
    ui.shot("failed-reject")
    assert status_of(console, case["id"])["status"] == "new"

    # Cancelled, the reason stays for the case: the next dialog for it opens with it.
    cancel(page)
    page = open_dialog(ui, "r", case)
    assert page.inner_text("#dlg-error") == ""
    assert page.input_value("#dlg-body input[name=reason]") == NOTE
    assert page.is_checked("#dlg-body input[value=out_of_jurisdiction]")
    page.keyboard.press("Enter")
    ui.wait_rows([])
    rejected = status_of(console, case["id"])
    assert (rejected["status"], rejected["review"]) == (
        "rejected",
        {"reason_code": "out_of_jurisdiction", "reason": NOTE},
    )


def test_a_note_the_api_refuses_is_kept_with_the_fields_errors(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = one_listed(ui, seeder, frames)
    page = open_dialog(ui, "i", case)
    note = "#dlg-body input[name=reason]"
    # As long a note as the API takes (api/schemas.py Text), and no longer.
    assert page.get_attribute(note, "maxlength") == "10000"
    page.fill(note, "x" * 10001)
    assert page.input_value(note) == "x" * 10000
    # One longer (a browser that ignores maxlength) is refused by the API, which says why.
    page.eval_on_selector(note, "input => input.removeAttribute('maxlength')")
    page.fill(note, "y" * 10001)
    page.keyboard.press("Enter")
    page.wait_for_selector("#dlg[open] #dlg-error:not(:empty)")
    assert page.inner_text("#dlg-error") == (
        "body.reason: String should have at most 10000 characters"
    )
    assert page.input_value(note) == "y" * 10001
    ui.shot("refused-note")
    page.fill(note, "no plate in the frame")
    page.keyboard.press("Enter")
    ui.wait_rows([])
    assert status_of(console, case["id"])["status"] == "returned"


def test_a_return_whose_session_expired_keeps_its_note_for_after_logging_in(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = one_listed(ui, seeder, frames)
    page = open_dialog(ui, "i", case)
    page.fill("#dlg-body input[name=reason]", NOTE)
    page.context.clear_cookies()  # the session is gone
    page.keyboard.press("Enter")
    page.wait_for_selector("#login:not([hidden])")
    assert not page.is_visible("#dlg[open]")  # not over the login form
    page.fill("#token", console.tokens["reviewer"])
    page.click("#login-form button[type=submit]")
    page = open_dialog(ui, "i", case)
    assert page.input_value("#dlg-body input[name=reason]") == NOTE
    returned_with(ui, console, case["id"], NOTE)


def test_a_note_kept_after_a_failed_rejection_is_not_offered_to_the_next_reviewer(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    intercepted(ui.page, "**/api/v1/site")  # so that the login's reference below is held
    case = one_listed(ui, seeder, frames)
    ui.page.wait_for_selector("#live.on")
    page = open_dialog(ui, "r", case)
    page.keyboard.press("4")
    page.fill("#dlg-body input[name=reason]", NOTE)
    failing_reviews(page, case["id"], "503")
    page.keyboard.press("Enter")
    page.wait_for_selector("#dlg[open] #dlg-error:text-is('database busy')")
    cancel(page)
    actionable(page, case["id"])
    # The session ends; the next shift's reviewer signs in on this tab.
    page.context.clear_cookies()
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", console.tokens["admin"])
    # A key pressed while the login still reads the site (held here) is not offered it either.
    held: list[Any] = []
    page.route("**/api/v1/site", lambda route: held.append(route), times=1)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#who:has-text('test-admin')")
    reading = wait_held(page, held)
    page = open_dialog(ui, "r", case)
    assert page.input_value("#dlg-body input[name=reason]") == ""
    assert page.is_checked("#dlg-body input[value=false_positive]")
    reading.continue_()
    page.keyboard.press("Enter")
    ui.wait_rows([])
    rejected = status_of(console, case["id"])
    assert (rejected["history"][-1]["who"], rejected["review"]) == (
        "test-admin",
        {"reason_code": "false_positive", "reason": None},
    )


def test_a_digit_in_a_return_note_after_a_reject_dialog_is_only_typed(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = one_listed(ui, seeder, frames)
    page = open_dialog(ui, "r", case)  # its digits pick a reason
    cancel(page)
    page = open_dialog(ui, "i", case)
    page.type("#dlg-body input[name=reason]", "upload frame 2")
    assert page.input_value("#dlg-body input[name=reason]") == "upload frame 2"
    returned_with(ui, console, case["id"], "upload frame 2")


def answer_lost(page: Any, cid: str, meanwhile: Callable[[], None] = lambda: None) -> list[str]:
    """The next decision sent on ``cid`` is made by the API, then (after ``meanwhile``) a proxy
    answers 504 for it, having timed out on the API's answer. Returns what the route did, as it
    does it (see taken_as_made)."""
    steps: list[str] = []

    def lost(route: Any) -> None:
        steps.append(f"API answered {route.fetch().status}")
        meanwhile()
        steps.append("answered 504")
        route.fulfill(
            status=504,
            content_type="application/problem+json",
            body='{"title": "Gateway Timeout", "status": 504}',
        )

    page.route(f"**/api/v1/candidates/{cid}/review", lost, times=1)
    return steps


def taken_as_made(ui: Any, shown: str, other: str, done: str, steps: list[str]) -> None:
    """The decision on ``shown`` whose answer was lost told as made (``done`` · its id), and
    the next case, ``other``, selected. ``steps`` are answer_lost's: the page has an outcome
    only once the route answered, unless its request went to the API past the route."""
    page = ui.page
    actionable(page, other)
    # A decision the route never took was answered 200 by the API itself: the page shows the
    # same, but nothing after it (the platform's ack) happened, and the asserts on the case
    # would name the wrong cause.
    assert steps == ["API answered 200", "answered 504"], (
        f"the route's steps: {steps} (none: the page's request went to the API past the route)"
    )
    assert page.inner_text("#toast") == f"{done} · {shown[:8]}"
    assert not page.is_visible("#toast.error")
    assert not page.is_visible("#dlg[open]")
    assert not page.is_visible("#decided-elsewhere")
    assert ui.rows() == [other]
    assert ui.selected() == other


def test_a_rejection_made_whose_answer_was_lost_is_taken_as_made(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = live_and_actionable(ui, seeder, frames)
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    page.keyboard.press("4")
    page.fill("#dlg-body input[name=reason]", NOTE)
    steps = answer_lost(page, shown)
    page.keyboard.press("Enter")
    taken_as_made(ui, shown, other, "已驳回", steps)
    rejected = status_of(console, shown)
    assert (rejected["status"], rejected["review"]) == (
        "rejected",
        {"reason_code": "out_of_jurisdiction", "reason": NOTE},
    )
    assert status_of(console, other)["status"] == "new"


def test_a_confirmation_whose_answer_was_lost_after_the_platform_pulled_it_is_taken_as_made(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = live_and_actionable(ui, seeder, frames)

    def pulled() -> None:
        # The platform's feed poll takes the case, and acknowledges it, before the answer
        # comes back.
        with console.client("platform") as platform:
            feed = platform.get("/feed").json()
            assert [c["id"] for c in feed["items"]] == [shown]
            acked = platform.post("/feed/ack", json={"cursor": feed["next_cursor"]})
            assert acked.status_code == 204, acked.text

    steps = answer_lost(page, shown, pulled)
    page.keyboard.press("c")
    taken_as_made(ui, shown, other, "已确认", steps)
    case = status_of(console, shown)
    assert case["status"] == "pulled"
    assert [(h["action"], h["who"]) for h in case["history"][-2:]] == [
        ("confirmed", "test-reviewer"),
        ("pulled", "test-platform"),
    ]
    assert status_of(console, other)["status"] == "new"


def test_a_merge_into_a_case_that_became_final_meanwhile_asks_for_another(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = open_merge(ui, seeder, frames)
    page.fill("#dlg-body input[name=merge_id]", other)
    page.wait_for_selector(f"#dlg-body option[value='{other}']:checked", state="attached")
    review(console, other, decision="reject", reason_code="duplicate")  # another reviewer
    page.keyboard.press("Enter")
    page.wait_for_selector("#dlg[open] #dlg-error:not(:empty)")
    assert page.inner_text("#dlg-error") == f"cannot merge into candidate {other}: it is rejected"
    assert page.inner_text("#dlg-title") == f"合并到 · {shown[:8]}"
    assert page.input_value("#dlg-body input[name=merge_id]") == ""
    assert page.locator(f"#dlg-body option[value='{other}']").count() == 0
    assert ui.selected() == shown
    assert status_of(console, shown)["status"] == "new"
    cancel(page)
    page = open_dialog(ui, "m", {"id": shown})
    assert page.input_value("#dlg-body input[name=merge_id]") == ""


def returned_unheard(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> tuple[Any, dict[str, Any]]:
    """A new case, the only one listed and ready for a decision, which another reviewer then
    returns: no live updates reach this tab (a missed event, or one not come yet), so it shows
    the case as it was read. The page and the case as it was listed."""
    page = ui.page
    page.route("**/api/v1/events*", lambda route: route.abort())
    case = one_listed(ui, seeder, frames)
    actionable(page, case["id"])
    with console.client("admin") as client:
        answer = client.post(
            f"/candidates/{case['id']}/review", json={"decision": "return", "reason": NOTE}
        )
        assert answer.status_code == 200, answer.text
    return page, case


def test_a_decision_on_a_case_returned_meanwhile_unheard_is_refused_and_shown_as_returned(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, case = returned_unheard(ui, seeder, frames, console)
    cid = case["id"]
    open_dialog(ui, "r", case)
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#toast:not([hidden])")
    assert page.inner_text("#toast") == (
        "状态已变化，无法执行: cannot reject a candidate that is returned (expected new)"
    )
    notice = page.wait_for_selector("#decided-elsewhere")
    assert notice.inner_text() == "此线索已由 test-admin 处理：已退回。按 j/k 或点击列表继续"
    assert (ui.rows(), ui.selected()) == ([cid], cid)
    assert page.is_visible(f"#detail .detail-head:has-text('{cid}') .badge.s-returned")
    for decision in ("confirm", "reject", "return", "merge"):
        assert not page.is_enabled(f"#act-{decision}"), decision
    ui.shot("returned-meanwhile")
    shown = status_of(console, cid)
    assert shown["status"] == "returned"
    assert [(h["action"], h["who"], h.get("reason")) for h in shown["history"]] == [
        ("created", "test-producer", None),
        ("returned", "test-admin", NOTE),
    ]


def producer_patch(console: Any, cid: str, change: dict[str, Any]) -> dict[str, Any]:
    with console.client("producer") as client:
        answer = client.patch(
            f"/candidates/{cid}", json=change, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


def test_a_decision_on_a_case_changed_meanwhile_unheard_is_refused_and_shown_as_it_is(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, case = returned_unheard(ui, seeder, frames, console)
    cid = case["id"]
    assert page.inner_text("#detail .detail-head h2") == "机动车乱停放 Illegal parking"
    # Its producer answers the return with another type and one more frame: it is new again,
    # the status this tab shows, but not the case it shows.
    snapshot = {"sha256": seeder.evidence(frames[3]), "kind": "snapshot"}
    changed = producer_patch(console, cid, {"type": "street_vending", "evidence": [snapshot]})
    assert changed["status"] == "new"

    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{cid}/review")) as sent:
        page.keyboard.press("c")
    assert sent.value.status == 409
    page.wait_for_selector("#toast:not([hidden])")
    told = "此线索在您查看后已有变化，未执行；已重新载入，请核对后再处理"
    assert page.inner_text("#toast") == told
    # Shown again as it is now, still to be decided.
    page.wait_for_selector("#detail .detail-head h2:has-text('占道经营')")
    assert page.inner_text("#detail .detail-head h2") == "占道经营 Street vending"
    assert (ui.rows(), ui.selected()) == ([cid], cid)
    actionable(page, cid)
    assert page.locator("#decided-elsewhere").count() == 0
    ui.shot("changed-meanwhile")
    assert status_of(console, cid) == changed

    # A detector's routine update meanwhile (dwell time, a fresh latest frame) leaves what the
    # reviewer judged as it was: confirmed on the case as shown.
    latest = {"sha256": seeder.evidence(frames[4]), "kind": "latest"}
    producer_patch(console, cid, {"detection": {"dwell_s": 900.0}, "evidence": [latest]})
    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{cid}/review")) as sent:
        page.keyboard.press("c")
    assert sent.value.status == 200
    assert sent.value.request.post_data_json == {
        "decision": "confirm",
        "expected_status": "new",
        "expected_updated_at": changed["updated_at"],
    }
    ui.wait_rows([])
    shown = status_of(console, cid)
    assert [(h["action"], h["who"]) for h in shown["history"]] == [
        ("created", "test-producer"),
        ("returned", "test-admin"),
        ("supplemented", "test-producer"),
        ("updated", "test-producer"),
        ("confirmed", "test-reviewer"),
    ]


def test_a_logout_that_failed_is_told_not_passed_over(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    one_listed(ui, seeder, frames)
    page = ui.page
    logouts: list[str] = []

    def logout(route: Any) -> None:
        if route.request.method != "DELETE":
            route.continue_()
            return
        logouts.append(route.request.method)
        if len(logouts) == 1:  # the network: the browser still holds its session
            route.abort("internetdisconnected")
            return
        # The API could not record the logout, and has the browser forget its cookie.
        route.fulfill(
            status=503,
            content_type="application/problem+json",
            headers={
                "Set-Cookie": 'gp_session=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; '
                "Max-Age=0; Path=/; SameSite=strict; HttpOnly"
            },
            body=json.dumps(
                {"title": "Service Unavailable", "status": 503, "detail": "the logout could not"}
            ),
        )

    page.route("**/api/v1/session", logout)
    page.click("#logout")
    page.wait_for_selector("#toast:not([hidden])")
    assert page.inner_text("#toast") == "退出失败，请重试: Failed to fetch"
    assert page.is_visible("#app") and page.is_hidden("#login")
    ui.shot("logout-failed")

    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert page.inner_text("#login-error") == "退出未能在服务器上记录；本浏览器已退出"
    assert page.is_hidden("#app")
    assert [c["name"] for c in page.context.cookies()] == []
    assert logouts == ["DELETE", "DELETE"]
    ui.shot("logout-unrecorded")

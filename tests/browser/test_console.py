"""The review console in headless Chromium against a real API with real evidence frames."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .conftest import annotate

pytestmark = [pytest.mark.browser]

SITE_TZ = ZoneInfo("Asia/Shanghai")  # the browser context's time zone (conftest)
PARKING = {
    "type_": "illegal_parking",
    "camera_id": "cam-dn-002",
    "zone_id": "fire-lane",
    "address": "共和新路 1878号",
}
VENDING = {
    "type_": "street_vending",
    "camera_id": "cam-dn-001",
    "zone_id": "sidewalk-north",
    "address": "大宁路 100号",
}


def status_of(console: Any, candidate_id: str) -> dict[str, Any]:
    with console.client("reviewer") as client:
        response = client.get(f"/candidates/{candidate_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def test_login_flagged_frame_and_keyboard_triage(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    oldest = seeder.camera_candidate(frames, minutes_ago=30, **PARKING)
    middle = seeder.sensor_candidate(frames, sensor_id="bf-0001")
    newest = seeder.camera_candidate(frames, minutes_ago=1, **VENDING)
    again = seeder.camera_candidate(frames, minutes_ago=3, **VENDING)
    page = ui.page
    page.goto(f"{console.url}/review")
    page.wait_for_selector("#login:not([hidden])")
    ui.shot("login")
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 4")
    queue = ui.rows()
    # Newest created first; the seeder created them in this order, one after the other.
    assert queue == [again["id"], newest["id"], middle["id"], oldest["id"]]
    first = ui.selected()
    assert first == queue[0]
    page.keyboard.press("j")
    page.wait_for_function(
        f"() => document.querySelector('#queue-body tr.selected').dataset.id === '{queue[1]}'"
    )
    page.keyboard.press("k")
    page.wait_for_function(
        f"() => document.querySelector('#queue-body tr.selected').dataset.id === '{queue[0]}'"
    )

    # The flagged frame of the selected candidate has loaded pixels, and so has its thumbnail.
    page.wait_for_selector(f"#detail:has-text('{first[:8]}') figure.main img")
    assert ui.image_width("#detail figure.main img") > 0
    assert ui.image_width("#queue-body tr.selected img.thumb") > 0
    ui.shot("flagged-frame")
    # A camera candidate: its dwell frames, and its clean frame behind the toggle.
    assert ui.image_width("#detail .dwell figure:first-child img") > 0
    page.click("#toggle-clean")
    page.wait_for_selector("#toggle-clean.on")
    assert ui.image_width("#detail figure.main img") > 0
    ui.shot("clean-frame")

    # c confirms; the confirmed item leaves the "new" queue and the next one is selected.
    page.keyboard.press("c")
    ui.wait_rows(queue[1:])
    assert status_of(console, first)["status"] == "confirmed"
    second = ui.selected()
    assert second == queue[1]
    ui.shot("confirmed")

    # r opens the reason picker; 2 picks "duplicate"; Enter rejects.
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    ui.shot("reject-dialog")
    page.keyboard.press("2")
    page.fill("#dlg-body input[name=reason]", "same stall as the earlier case")
    page.keyboard.press("Enter")
    ui.wait_rows(queue[2:])
    rejected = status_of(console, second)
    assert rejected["status"] == "rejected"
    assert any("duplicate" in str(h) for h in rejected["history"]), rejected["history"]
    assert ui.selected() == queue[2]
    ui.shot("rejected")

    # m merges into a case of another type and source (none is offered as near): its pasted id
    # shows it in the list; Enter confirms.
    page.keyboard.press("m")
    page.wait_for_selector("#dlg[open] #dlg-body p:has-text('附近没有可合并的线索')")
    page.fill("#dlg-body input[name=merge_id]", queue[3])
    page.wait_for_selector(f"#dlg[open] option[value='{queue[3]}']:checked", state="attached")
    ui.shot("merge-dialog")
    page.keyboard.press("Enter")
    ui.wait_rows(queue[3:])
    merged = status_of(console, queue[2])
    assert merged["status"] == "merged"
    assert queue[3] in str(merged), merged
    assert ui.selected() == queue[3]

    # k at the top stays there; i returns the last one for missing information.
    page.keyboard.press("k")
    assert ui.selected() == queue[3]
    page.keyboard.press("i")
    page.wait_for_selector("#dlg[open] input[name=reason]")
    page.fill("#dlg-body input[name=reason]", "address missing")
    page.keyboard.press("Enter")
    page.wait_for_selector("#queue-empty:not([hidden])")
    assert status_of(console, queue[3])["status"] == "returned"
    ui.shot("queue-empty")


def test_filters_live_arrival_and_statistics(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    parking = seeder.camera_candidate(frames, minutes_ago=20, **PARKING)
    vending = seeder.camera_candidate(frames, minutes_ago=10, **VENDING)
    bins = seeder.sensor_candidate(frames, sensor_id="bf-0001")
    page = ui.page
    everything = [parking["id"], vending["id"], bins["id"]]
    ui.login("reviewer")
    ui.wait_rows(everything)

    page.select_option("#f-type", "illegal_parking")
    ui.wait_rows([parking["id"]])
    ui.shot("filter-type")

    page.select_option("#f-type", "")
    page.select_option("#f-sensor", "bf-0001")
    ui.wait_rows([bins["id"]])
    page.select_option("#f-sensor", "")

    # Time window (on when the API received the candidates: a moment ago).
    local = datetime.now(SITE_TZ)
    page.fill("#f-since", (local + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([])
    page.fill("#f-since", (local - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows(everything)
    page.fill("#f-until", (local - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([])
    assert page.is_visible("#queue-empty")
    ui.shot("filter-time")
    page.click("#f-reset")
    ui.wait_rows(everything)

    page.select_option("#f-camera", "cam-dn-001")
    ui.wait_rows([vending["id"]])
    ui.shot("filter-camera")

    # Zoom: the flagged frame opens full size; a click closes it.
    page.wait_for_selector(f"#detail:has-text('{vending['id'][:8]}') figure.main img")
    page.click("#detail figure.main img")
    page.wait_for_selector(".zoom img")
    page.mouse.wheel(0, -300)
    ui.shot("zoom")
    page.click(".zoom")
    page.wait_for_selector(".zoom", state="detached")

    # A candidate created while the reviewer watches arrives through server-sent events.
    page.wait_for_selector("#live.on")
    fresh = seeder.camera_candidate(frames, minutes_ago=0, **VENDING)
    other_camera = seeder.camera_candidate(frames, minutes_ago=0, **PARKING)
    page.wait_for_selector(f"#queue-body tr[data-id='{fresh['id']}']")
    assert other_camera["id"] not in ui.rows()  # the camera filter applies to live arrivals
    assert ui.image_width(f"#queue-body tr[data-id='{fresh['id']}'] img.thumb") > 0
    ui.shot("live-arrival")

    # Confirm one so the statistics have a decision; then the statistics page.
    page.click(f"#queue-body tr[data-id='{vending['id']}']")
    page.wait_for_selector(f"#detail:has-text('{vending['id'][:8]}')")
    page.keyboard.press("c")
    page.wait_for_function(
        f"() => !document.querySelector(\"#queue-body tr[data-id='{vending['id']}']\")"
    )
    page.click("nav a[data-view=stats]")
    page.wait_for_selector("#stats-body .stat-block")
    text = page.inner_text("#stats-body")
    # The browser's locale is zh-CN: each type by its Chinese label, then its id.
    by_type = text.split("按类型\n\t\n")[1].split("\n按摄像头")[0]
    assert by_type.splitlines() == [
        "垃圾箱满溢 (bin_full)\t1",
        "机动车乱停放 (illegal_parking)\t2",
        "占道经营 (street_vending)\t2",
    ]
    ui.shot("statistics")

    # English UI.
    page.click("#app .lang-toggle")
    page.wait_for_selector("nav a[data-view=queue]:has-text('Queue')")
    page.click("nav a[data-view=queue]")
    page.wait_for_selector("th:has-text('Location')")
    ui.shot("english")


def reason_focused(page: Any) -> None:
    """Wait until the reason picker has focused its checked reason, as it does once it is
    shown: a focus moved before that would be taken back."""
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    page.wait_for_function("() => document.activeElement?.name === 'reason_code'")


def test_enter_on_the_dialogs_cancel_button_cancels(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    second = seeder.camera_candidate(frames, minutes_ago=2, **VENDING)
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([first["id"], second["id"]])
    selected = ui.selected()
    page.wait_for_selector(f"#detail:has-text('{selected[:8]}')")

    # r opens the reason picker; with Cancel focused (as Tab brings it there), Enter cancels,
    # it does not reject.
    page.keyboard.press("r")
    reason_focused(page)  # the dialog's own first focus, before the reviewer moves it
    page.focus("#dlg-cancel")
    assert page.evaluate("() => document.activeElement.id") == "dlg-cancel"
    ui.shot("cancel-focused")
    page.keyboard.press("Enter")
    page.wait_for_selector("#dlg:not([open])", state="attached")

    # The case is still the selected, undecided one: c now confirms it, not the next case.
    assert ui.selected() == selected
    page.keyboard.press("c")
    page.wait_for_function(
        f"() => !document.querySelector(\"#queue-body tr[data-id='{selected}']\")"
    )
    assert status_of(console, selected)["status"] == "confirmed"
    other = second["id"] if selected == first["id"] else first["id"]
    assert status_of(console, other)["status"] == "new"

    # Enter on the OK button still submits.
    page.keyboard.press("r")
    reason_focused(page)
    page.focus("#dlg-ok")
    page.keyboard.press("Enter")
    page.wait_for_selector("#queue-empty:not([hidden])")
    assert status_of(console, other)["status"] == "rejected"


def test_zoom_closes_on_keys_and_held_keys_decide_once(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    second = seeder.camera_candidate(frames, minutes_ago=2, **VENDING)
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([first["id"], second["id"]])
    selected = ui.selected()
    other = second["id"] if selected == first["id"] else first["id"]
    page.wait_for_selector(f"#detail:has-text('{selected[:8]}') figure.main img")

    # With the zoomed frame open, a triage key closes it and does not act on the list.
    for key in ("j", "c", "Escape"):
        page.click("#detail figure.main img")
        page.wait_for_selector(".zoom img")
        page.keyboard.press(key)
        page.wait_for_selector(".zoom", state="detached")
        assert ui.selected() == selected
    ui.shot("zoom-closed")
    assert status_of(console, selected)["status"] == "new"

    # Holding c confirms the selected case once; its key repeats do not confirm the next one.
    page.keyboard.down("c")
    page.wait_for_function(
        f"() => !document.querySelector(\"#queue-body tr[data-id='{selected}']\")"
    )
    page.wait_for_selector(f"#detail:has-text('{other[:8]}')")
    assert ui.selected() == other
    page.keyboard.down("c")  # a repeat (KeyboardEvent.repeat) of the held key
    page.keyboard.up("c")
    # No decision is in flight: r opens the reason picker for the remaining case at once.
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#dlg:not([open])", state="attached")
    assert status_of(console, selected)["status"] == "confirmed"
    assert status_of(console, other)["status"] == "new"
    assert ui.rows() == [other]


def test_the_newest_frames_of_a_kind_are_shown(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    bins = seeder.sensor_candidate(frames, sensor_id="bf-0001")
    # The detector sends a better annotated and clean frame later; evidence accumulates.
    now = datetime.now(SITE_TZ)
    newer = {
        "annotated": seeder._ref(annotate(frames[2], "better"), "annotated", now),
        "clean": seeder._ref(frames[2], "clean", now),
    }
    response = seeder.client.patch(
        f"/candidates/{case['id']}",
        json={"evidence": list(newer.values())},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text
    kinds = [e["kind"] for e in response.json()["evidence"]]
    assert kinds.count("annotated") == 2 and kinds.count("clean") == 2, kinds

    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([case["id"], bins["id"]])
    page.click(f"#queue-body tr[data-id='{case['id']}']")
    main = f"#detail:has-text('{case['id'][:8]}') figure.main img"
    page.wait_for_selector(main)
    assert page.get_attribute(main, "src") == f"/api/v1/evidence/{newer['annotated']['sha256']}"
    assert (
        page.get_attribute(f"#queue-body tr[data-id='{case['id']}'] img.thumb", "src")
        == f"/api/v1/evidence/{newer['annotated']['sha256']}"
    )
    assert page.is_enabled("#toggle-clean")
    page.click("#toggle-clean")
    page.wait_for_selector("#toggle-clean.on")
    assert page.get_attribute(main, "src") == f"/api/v1/evidence/{newer['clean']['sha256']}"
    ui.shot("newest-clean")

    # The sensor case has a snapshot and no annotated frame: the toggle does not claim one.
    page.click(f"#queue-body tr[data-id='{bins['id']}']")
    page.wait_for_selector(f"#detail:has-text('{bins['id'][:8]}') figure.main img")
    page.keyboard.press("a")  # the reviewer asks for the annotated frame again
    page.wait_for_selector(f"#detail:has-text('{bins['id'][:8]}') #toggle-clean.on")
    assert not page.is_enabled("#toggle-annotated")
    assert page.get_attribute("#toggle-annotated", "class") == ""
    assert page.inner_text("#detail figure.main figcaption").startswith("原图 ")
    ui.shot("no-annotated")


def test_a_conflicting_decision_shows_the_case_as_it_is_now(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    second = seeder.camera_candidate(frames, minutes_ago=2, **VENDING)
    page = ui.page
    # No live updates reach this tab: it learns of the other reviewer's decision only from
    # the 409 of its own.
    page.route("**/api/v1/events", lambda route: route.abort())
    ui.login("reviewer")
    ui.wait_rows([first["id"], second["id"]])
    page.select_option("#f-status", "")  # all statuses: a decided case stays in the list
    ui.wait_rows([first["id"], second["id"]])
    selected = ui.selected()
    page.wait_for_selector(f"#detail:has-text('{selected[:8]}') #act-confirm:enabled")

    with console.client("reviewer") as client:
        response = client.post(f"/candidates/{selected}/review", json={"decision": "confirm"})
        assert response.status_code == 200, response.text
    page.keyboard.press("r")
    page.wait_for_selector("#dlg[open] input[value=duplicate]")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#queue-body tr[data-id='{selected}'] .badge.s-confirmed")
    page.wait_for_selector(f"#detail:has-text('{selected[:8]}') .detail-head .badge.s-confirmed")
    assert page.inner_text("#toast") == (
        "状态已变化，无法执行: cannot reject a candidate that is confirmed"
    )
    for decision in ("confirm", "reject", "return", "merge"):
        assert not page.is_enabled(f"#act-{decision}"), decision
    assert ui.selected() == selected
    ui.shot("conflict")
    assert status_of(console, selected)["status"] == "confirmed"

    # In the default "new" queue the case decided elsewhere stays shown, as decided, until the
    # reviewer moves on: the next case does not take its place unseen.
    other = second["id"] if selected == first["id"] else first["id"]
    page.select_option("#f-status", "new")
    ui.wait_rows([other])
    page.wait_for_selector(f"#detail:has-text('{other[:8]}') #act-confirm:enabled")
    with console.client("reviewer") as client:
        response = client.post(
            f"/candidates/{other}/review", json={"decision": "return", "reason": "no address"}
        )
        assert response.status_code == 200, response.text
    page.keyboard.press("c")
    notice = page.wait_for_selector("#decided-elsewhere")
    assert notice.inner_text() == "此线索已由 test-reviewer 处理：已退回。按 j/k 或点击列表继续"
    assert page.inner_text("#toast").endswith("cannot confirm a candidate that is returned")
    assert (ui.rows(), ui.selected()) == ([other], other)
    page.keyboard.press("j")
    ui.wait_rows([])
    assert status_of(console, other)["status"] == "returned"


def test_live_updates_resume_after_a_broken_or_refused_event_stream(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    missed: list[dict[str, Any]] = []
    requests: list[int] = []
    up = {"now": False}
    # A stream that opens and ends at once; the browser reconnects after 100 ms by itself.
    short_stream = {"status": 200, "content_type": "text/event-stream", "body": "retry: 100\n\n"}

    def events(route: Any) -> None:
        n = len(requests)
        requests.append(n)
        if n == 0:  # the stream opens, then breaks
            route.fulfill(**short_stream)
        elif n == 1:  # a candidate arrives while the console is not connected
            missed.append(seeder.camera_candidate(frames, minutes_ago=2, **VENDING))
            route.fulfill(**short_stream)
        elif n == 2 or not up["now"]:  # a proxy answers 503: EventSource gives up for good
            route.fulfill(status=503, body="no upstream")
        else:
            route.continue_()

    page.route("**/api/v1/events", events)
    ui.login("reviewer")
    # Reopened after a break, the console loads the list again: the missed case is there.
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 2")
    ui.wait_rows([first["id"], missed[0]["id"]])

    # After the 503 (readyState CLOSED) the console reconnects by itself, with backoff.
    later = seeder.camera_candidate(frames, minutes_ago=1, **VENDING)
    up["now"] = True
    ui.wait_rows([first["id"], missed[0]["id"], later["id"]])
    page.wait_for_selector("#live.on")
    assert len(requests) >= 4
    live = seeder.camera_candidate(frames, minutes_ago=0, **PARKING)
    ui.wait_rows([first["id"], missed[0]["id"], later["id"], live["id"]])
    ui.shot("reconnected")


def test_live_updates_resume_after_logging_in_again(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    ui.login("reviewer")
    ui.wait_rows([first["id"]])
    page.wait_for_selector("#live.on")

    # The API restarts with a new session secret: the event stream's reconnect gets a 401,
    # so the console asks the reviewer to log in again.
    console.stop()
    page.wait_for_selector("#live.off", state="attached")
    console.start()
    page.wait_for_selector("#login:not([hidden])")
    ui.shot("login-again")
    page.fill("#token", console.tokens["reviewer"])
    page.click("#login-form button[type=submit]")  # the same page: no reload
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_selector("#live.on")
    fresh = seeder.camera_candidate(frames, minutes_ago=0, **VENDING)
    ui.wait_rows([first["id"], fresh["id"]])
    ui.shot("live-again")


@pytest.mark.parametrize("browser_timezone", ["America/New_York"])
def test_times_are_the_sites_in_a_browser_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, browser_timezone: str
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=10, **PARKING)
    page = ui.page
    assert page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone") == (
        browser_timezone
    )
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    page.wait_for_selector(f"#detail:has-text('{case['id'][:8]}') dl.facts")

    # The detail shows the site's (Shanghai's) wall-clock time, not New York's.
    occurred = datetime.fromisoformat(case["occurred_at"]).astimezone(SITE_TZ)
    shown = page.evaluate(
        """() => { const dts = [...document.querySelectorAll('#detail dl.facts dt')];
          const dt = dts.find((x) => x.textContent === '发生时间');
          return dt ? dt.nextElementSibling.textContent : null; }"""
    )
    assert shown == f"{occurred.year}/{occurred.month}/{occurred.day} {occurred:%H:%M:%S}"
    ui.shot("site-time")

    # The time filters are read as Shanghai times too.
    local = datetime.now(SITE_TZ)
    page.fill("#f-since", (local - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([case["id"]])
    page.fill("#f-until", (local - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([])
    page.fill("#f-until", (local + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([case["id"]])
    page.fill("#f-since", (local + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"))
    ui.wait_rows([])


def shown_facts(page: Any, cid: str) -> dict[str, str]:
    """The detail's facts of a case, label -> value, once it is selected."""
    page.click(f"#queue-body tr[data-id='{cid}']")
    page.wait_for_selector(f"#detail .detail-head:has-text('{cid}')")
    page.wait_for_selector("#detail dl.facts")
    shown: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#detail dl.facts dt')]
             .map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))"""
    )
    return shown


def test_a_decided_case_shows_its_reject_reason_and_merge(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    rejected = seeder.camera_candidate(frames, minutes_ago=9, **PARKING)
    merged = seeder.camera_candidate(frames, minutes_ago=6, **VENDING)
    target = seeder.camera_candidate(frames, minutes_ago=3, **VENDING)
    with console.client("reviewer") as client:
        for cid, decision in (
            (
                rejected["id"],
                {
                    "decision": "reject",
                    "reason_code": "licensed_activity",
                    "reason": "the stall has a permit",
                },
            ),
            (merged["id"], {"decision": "merge", "merge_into": target["id"]}),
        ):
            response = client.post(f"/candidates/{cid}/review", json=decision)
            assert response.status_code == 200, response.text
    page = ui.page
    ui.login("reviewer")
    page.select_option("#f-status", "")  # all statuses
    ui.wait_rows([rejected["id"], merged["id"], target["id"]])

    def facts(cid: str) -> dict[str, str]:
        return shown_facts(page, cid)

    # The reason as the reject dialog names it (5 许可经营), with the reviewer's note.
    shown = facts(rejected["id"])
    assert (shown["驳回原因"], shown["说明"]) == ("许可经营", "the stall has a permit")
    assert "已合并到" not in shown and "关联线索" not in shown
    last = page.inner_text("#detail ol.history li:last-child")
    assert last.endswith(" 驳回 test-reviewer · 许可经营 — the stall has a permit"), last
    ui.shot("rejected-reason")
    shown = facts(merged["id"])
    assert shown["已合并到"] == target["id"]
    assert "驳回原因" not in shown
    shown = facts(target["id"])
    assert shown["关联线索"] == merged["id"]
    ui.shot("merged-references")

    page.click("#app .lang-toggle")
    page.wait_for_selector("#detail dl.facts dt:text-is('Description')")
    shown = facts(rejected["id"])
    assert (shown["Reject reason"], shown["Note"]) == (
        "Licensed activity",
        "the stall has a permit",
    )
    assert facts(merged["id"])["Merged into"] == target["id"]
    assert facts(target["id"])["References"] == merged["id"]


def test_an_ended_episode_and_a_cleared_alarm_say_when(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    parked = seeder.camera_candidate(frames, minutes_ago=9, **PARKING)
    bin_full = seeder.sensor_candidate(frames, sensor_id="bf-0105")
    ended_at = datetime.now(UTC) - timedelta(minutes=4)
    cleared_at = ended_at + timedelta(minutes=1)
    patches = [
        (parked["id"], {"detection": {"ended_at": ended_at.isoformat()}}),
        (
            bin_full["id"],
            {
                "alarm": {"cleared_at": cleared_at.isoformat()},
                "measurements": [{"n": "fill", "u": "%", "v": 40}, {"n": "lid_open", "vb": False}],
            },
        ),
    ]
    for cid, patch in patches:
        response = seeder.client.patch(
            f"/candidates/{cid}", json=patch, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code == 200, response.text
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([parked["id"], bin_full["id"]])

    def facts(cid: str) -> dict[str, str]:
        return shown_facts(page, cid)

    def site_time(at: datetime) -> str:
        local = at.astimezone(SITE_TZ)
        return f"{local.year}/{local.month}/{local.day} {local:%H:%M:%S}"

    assert facts(parked["id"])["画面消失"] == site_time(ended_at)
    shown = facts(bin_full["id"])
    assert shown["报警解除"] == site_time(cleared_at)
    assert shown["测量值"] == "fill 40 %; lid_open false"
    assert "画面消失" not in shown
    ui.shot("ended-and-cleared")


def with_exif_rotation(jpeg: bytes) -> bytes:
    """The same pixels, with an EXIF Orientation of 6 (a viewer would turn them 90°)."""
    ifd = b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\x00\x00\x00\x00"
    exif = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    return jpeg[:2] + app1 + jpeg[2:]


def test_the_clean_frame_is_shown_as_stored_like_the_annotated_one(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    case = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    now = datetime.now(SITE_TZ)
    clean = seeder._ref(with_exif_rotation(frames[3]), "clean", now)
    response = seeder.client.patch(
        f"/candidates/{case['id']}",
        json={"evidence": [clean]},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.text
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([case["id"]])
    page.click("#toggle-clean")
    main = f"#detail figure.main img[src='/api/v1/evidence/{clean['sha256']}']"
    page.wait_for_selector(main)
    assert ui.image_width(main) > 0
    # Landscape (1280x720) as stored, like the annotated frame drawn on the same pixels.
    width, height = page.eval_on_selector(main, "img => [img.clientWidth, img.clientHeight]")
    assert width > height, (width, height)
    ui.shot("clean-as-stored")

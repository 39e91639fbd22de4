"""The console's queue with live updates racing list loads, replayed events and the merge
dialog, in headless Chromium against a real API."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from .conftest import annotate, intercepted
from .test_console import PARKING, VENDING, status_of

pytestmark = [pytest.mark.browser]

LIST = "/api/v1/candidates?"
STAGES = ("registered", "dispatched", "arrived", "resolved", "verified", "closed")


def is_list(url: str) -> bool:
    return LIST in url


def review(console: Any, cid: str, **decision: Any) -> None:
    with console.client("reviewer") as client:
        response = client.post(f"/candidates/{cid}/review", json=decision)
        assert response.status_code == 200, response.text


def close(console: Any, cid: str) -> None:
    review(console, cid, decision="confirm")
    with console.client("platform") as client:
        for stage in STAGES:
            response = client.post(f"/candidates/{cid}/status", json={"stage": stage})
            assert response.status_code == 200, response.text


def test_a_case_saved_while_the_list_loads_stays_listed(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    page = ui.page
    intercepted(page, is_list)  # so that the load below is held
    ui.login("reviewer")
    ui.wait_rows([first["id"]])
    page.wait_for_selector("#live.on")
    saved: list[dict[str, Any]] = []

    def hold(route: Any) -> None:
        # The page is read before the case is saved and lands after its event came.
        response = route.fetch()
        saved.append(seeder.camera_candidate(frames, minutes_ago=0, **VENDING))
        page.wait_for_timeout(1500)
        route.fulfill(response=response)

    page.route(is_list, hold, times=1)
    with page.expect_response(lambda r: is_list(r.url)):
        page.select_option("#f-status", "")  # all statuses: a load
    ui.wait_rows([first["id"], saved[0]["id"]])
    ui.shot("saved-during-load")


def test_a_case_changed_beyond_the_loaded_page_is_listed_once(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = [seeder.camera_candidate(frames, minutes_ago=9, **PARKING) for _ in range(51)]
    oldest = cases[0]["id"]
    page = ui.page
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 50")
    assert oldest not in ui.rows()
    page.wait_for_selector("#live.on")
    with page.expect_response(lambda r: is_list(r.url)):
        page.select_option("#f-status", "")  # all statuses: a returned case is listed too
    page.wait_for_selector("#queue-more:not([hidden])")

    # A change to the case of the next page, heard live before "more": its event tells it
    # belongs there, so it is not looked up. (Events come in order: once the case created
    # after it is listed, the change was heard.)
    looked_up: list[str] = []
    page.on("request", lambda r: looked_up.append(r.url) if "/candidates/" in r.url else None)
    review(console, oldest, decision="return", reason="no address")
    marker = seeder.camera_candidate(frames, minutes_ago=0, **VENDING)
    ui.wait_rows([c["id"] for c in [*cases[1:], marker]])
    assert not [url for url in looked_up if url.endswith(f"/candidates/{oldest}")]
    page.click("#queue-more")
    page.wait_for_selector("#queue-more", state="hidden")  # the last page landed
    ui.wait_rows([c["id"] for c in [*cases, marker]])
    assert ui.rows()[-1] == oldest
    ui.shot("more")


def incomplete(seeder: Any, frames: list[bytes], **place: Any) -> tuple[dict[str, Any], bytes]:
    """A case whose annotated frame is not uploaded yet (so incomplete), and that frame."""
    missing = annotate(frames[-1], uuid.uuid4().hex[:6])
    upload = seeder.evidence

    def skip_missing(data: bytes, content_type: str = "image/jpeg") -> str:
        return (
            hashlib.sha256(missing).hexdigest() if data == want[0] else upload(data, content_type)
        )

    want = [annotate(frames[-1], place["type_"])]  # the annotated frame camera_candidate sends
    seeder.evidence = skip_missing
    try:
        case = seeder.camera_candidate(frames, **place)
    finally:
        seeder.evidence = upload
    assert case["status"] == "incomplete", case
    return case, missing


def test_a_case_between_the_last_two_of_a_page_is_listed_after_the_last_left(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    # Received in this order: older (next page), last (the page's last row), hidden (not
    # new yet), then 49 newer ones, the first of which is the page's last but one.
    older = seeder.camera_candidate(frames, minutes_ago=9, **PARKING)
    last = seeder.camera_candidate(frames, minutes_ago=9, **PARKING)
    hidden, missing = incomplete(seeder, frames, minutes_ago=9, **PARKING)
    newer = [seeder.camera_candidate(frames, minutes_ago=9, **PARKING) for _ in range(49)]
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([c["id"] for c in [last, *newer]])
    page.wait_for_selector("#live.on")

    # The page's last row is decided elsewhere and leaves the list ...
    review(console, last["id"], decision="reject", reason_code="duplicate")
    ui.wait_rows([c["id"] for c in newer])
    # ... then the case received just after it becomes new: the next page starts after the
    # decided one, so only this page can list it.
    seeder.evidence(missing)
    assert status_of(console, hidden["id"])["status"] == "new"
    ui.wait_rows([c["id"] for c in [hidden, *newer]])
    page.click("#queue-more")
    page.wait_for_selector("#queue-more", state="hidden")
    ui.wait_rows([c["id"] for c in [hidden, older, *newer]])
    ui.shot("listed-after-the-last-left")


class Traffic:
    """The list loads and event streams of a tab: ``first`` answers its first stream, the
    later ones reach the API (after ``meanwhile`` for the second)."""

    def __init__(
        self, page: Any, first: Callable[[Any], None], meanwhile: Callable[[], None] = list
    ) -> None:
        self.lists: list[str] = []
        self.streams: list[str] = []
        self.first = first
        self.meanwhile = meanwhile
        page.on("request", lambda r: self.lists.append(r.url) if is_list(r.url) else None)
        page.route("**/api/v1/events*", self._events)

    def _events(self, route: Any) -> None:
        self.streams.append(route.request.url)
        if len(self.streams) == 1:
            self.first(route)
            return
        if len(self.streams) == 2:
            self.meanwhile()
        route.continue_()


def test_after_a_break_the_stream_replays_what_was_missed_without_a_reload(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    page = ui.page
    missed: list[dict[str, Any]] = []
    heard = {key: first[key] for key in ("id", "status", "updated_at")}
    last_id = f"{datetime.now(UTC).isoformat()}|{first['id']}"
    body = f"id: {last_id}\nevent: candidate.changed\ndata: {json.dumps(heard)}\n\n"
    traffic = Traffic(
        page,
        # An event with an id, then the stream breaks; the browser reconnects after 100 ms.
        lambda route: route.fulfill(content_type="text/event-stream", body=f"retry: 100\n{body}"),
        # A case arrives while the console is not connected.
        lambda: missed.append(seeder.camera_candidate(frames, minutes_ago=1, **VENDING)),
    )
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 2")
    ui.wait_rows([first["id"], missed[0]["id"]])
    assert len(traffic.streams) == 2  # the browser's own reconnect, which sent the last id
    # The first load only: the replay brought the missed case.
    assert len(traffic.lists) == 1, traffic.lists
    ui.shot("replayed")


def test_a_reset_loads_the_list_again(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    page = ui.page
    missed: list[dict[str, Any]] = []
    body = 'id: 2026-11-30T00:00:00+00:00|\nevent: reset\ndata: {"reason": "too_many"}\n\n'

    def reset(route: Any) -> None:
        missed.append(seeder.camera_candidate(frames, minutes_ago=1, **VENDING))
        route.fulfill(content_type="text/event-stream", body=f"retry: 600000\n{body}")

    traffic = Traffic(page, reset)
    ui.login("reviewer")
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 2")
    ui.wait_rows([first["id"], missed[0]["id"]])
    page.wait_for_selector("#live.on")
    # Reconnected afresh (not from the reset's id), and the list loaded again.
    assert len(traffic.streams) == 2 and "since=" not in traffic.streams[1]
    assert len(traffic.lists) == 2, traffic.lists
    live = seeder.camera_candidate(frames, minutes_ago=0, **PARKING)
    ui.wait_rows([first["id"], missed[0]["id"], live["id"]])


def open_merge(
    ui: Any, current: dict[str, Any], others: list[dict[str, Any]], offered: dict[str, Any]
) -> Any:
    """Log in, select ``current`` once the list shows it and ``others``, press "m" and wait
    for the merge dialog to offer ``offered``; the page."""
    page = ui.page
    ui.login("reviewer")
    ui.wait_rows([current["id"], *(o["id"] for o in others)])
    page.click(f"#queue-body tr[data-id='{current['id']}']")
    page.wait_for_selector(f"#detail:has-text('{current['id'][:8]}') #act-merge:enabled")
    page.keyboard.press("m")
    page.wait_for_selector(f"#dlg[open] option[value='{offered['id']}']", state="attached")
    return page


def test_the_merge_dialog_offers_open_cases_nearby_and_a_pasted_one(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    current = seeder.camera_candidate(frames, minutes_ago=2, **VENDING)
    nearby = seeder.camera_candidate(frames, minutes_ago=10, **VENDING)
    review(console, nearby["id"], decision="confirm")  # open, and not in the "new" list
    rejected = seeder.camera_candidate(frames, minutes_ago=8, **VENDING)
    review(console, rejected["id"], decision="reject", reason_code="duplicate")
    closed = seeder.camera_candidate(frames, minutes_ago=6, **VENDING)
    close(console, closed["id"])
    long_ago = seeder.camera_candidate(frames, minutes_ago=30 * 60, **VENDING)
    elsewhere = seeder.camera_candidate(frames, minutes_ago=4, **PARKING)
    page = open_merge(ui, current, [long_ago, elsewhere], nearby)
    offered = page.eval_on_selector_all("#dlg-body option", "os => os.map(o => o.value)")
    assert offered == [nearby["id"]]
    ui.shot("merge-nearby")

    # A pasted closed case is not offered; a pasted open one is, and Enter merges into it.
    page.fill("#dlg-body input[name=merge_id]", closed["id"])
    page.wait_for_selector("#toast:has-text('不能合并到该线索')")
    offered = page.eval_on_selector_all("#dlg-body option", "os => os.map(o => o.value)")
    assert offered == [nearby["id"]]
    page.fill("#dlg-body input[name=merge_id]", elsewhere["id"])
    page.wait_for_selector(f"#dlg-body option[value='{elsewhere['id']}']:checked", state="attached")
    ui.shot("merge-pasted")
    page.keyboard.press("Enter")
    ui.wait_rows([long_ago["id"], elsewhere["id"]])
    merged = status_of(console, current["id"])
    assert (merged["status"], merged["merged_into"]) == ("merged", elsewhere["id"])


def test_the_merge_dialog_merges_into_the_case_chosen_last(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    current = seeder.camera_candidate(frames, minutes_ago=2, **VENDING)
    nearby = seeder.camera_candidate(frames, minutes_ago=10, **VENDING)
    pasted = seeder.camera_candidate(frames, minutes_ago=4, **PARKING)
    page = open_merge(ui, current, [nearby, pasted], nearby)

    # An id pasted first, then a case chosen in the list: the list's choice is the one.
    page.fill("#dlg-body input[name=merge_id]", pasted["id"])
    page.wait_for_selector(f"#dlg-body option[value='{pasted['id']}']:checked", state="attached")
    page.select_option("#dlg-body select[name=merge_into]", nearby["id"])
    with page.expect_request(
        lambda r: r.url.endswith(f"/candidates/{current['id']}/review")
    ) as sent:
        page.keyboard.press("Enter")
    assert sent.value.post_data_json == {
        "decision": "merge",
        "merge_into": nearby["id"],
        "expected_status": "new",
        "expected_updated_at": current["updated_at"],
    }
    ui.wait_rows([nearby["id"], pasted["id"]])
    merged = status_of(console, current["id"])
    assert (merged["status"], merged["merged_into"]) == ("merged", nearby["id"])


def is_lookup(url: str) -> bool:
    """GET /candidates/{id}: the console's lookup of one case."""
    return bool(re.search(r"/api/v1/candidates/[^/?]+$", url))


def answer_one(page: Any, held: list[Any]) -> None:
    """Answer the oldest held lookup, once the page has asked for one."""
    for _ in range(600):  # bounded: the page's requests reach the handler between calls
        if held:
            held.pop(0).continue_()
            return
        page.evaluate("1")
    raise AssertionError("no lookup came")


def listed_and_live(ui: Any, seeder: Any, frames: list[bytes]) -> dict[str, Any]:
    """One case, listed in a console whose event stream is open, its lookups intercepted (see
    intercepted), so that a route added later holds the ones it is meant to."""
    intercepted(ui.page, is_lookup)
    first: dict[str, Any] = seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    ui.login("reviewer")
    ui.wait_rows([first["id"]])
    ui.page.wait_for_selector("#live.on")
    return first


def test_live_lookups_run_six_at_a_time_and_list_by_arrival(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = listed_and_live(ui, seeder, frames)
    page = ui.page
    held: list[Any] = []
    in_flight: list[int] = []  # lookups unanswered as each one is asked, itself included

    def hold(route: Any) -> None:
        held.append(route)
        in_flight.append(len(held))

    page.route(is_lookup, hold)
    # Ten cases saved while none of their lookups is answered.
    cases = [seeder.camera_candidate(frames, minutes_ago=1, **VENDING) for _ in range(10)]
    for _ in cases:
        answer_one(page, held)
    ui.wait_rows([first["id"], *[c["id"] for c in cases]])
    assert max(in_flight) == 6, in_flight
    # Newest first, as the API lists them, whatever order the lookups came back in.
    assert ui.rows() == [c["id"] for c in reversed(cases)] + [first["id"]]


def test_a_case_is_listed_by_when_it_arrived_not_by_when_its_lookup_came_back(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    first = listed_and_live(ui, seeder, frames)
    page = ui.page
    held: list[Any] = []
    page.route(is_lookup, lambda route: held.append(route), times=1)  # the older one's
    older = seeder.camera_candidate(frames, minutes_ago=1, **VENDING)
    newer = seeder.camera_candidate(frames, minutes_ago=1, **VENDING)
    ui.wait_rows([first["id"], newer["id"]])  # the older one's lookup is held back
    answer_one(page, held)
    ui.wait_rows([first["id"], older["id"], newer["id"]])
    assert ui.rows() == [newer["id"], older["id"], first["id"]]

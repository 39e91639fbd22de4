"""The console's list loads racing decisions: a page read before a case was decided (here or
elsewhere) lands after the decision, and must not list the case again."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from .conftest import intercepted
from .test_console import PARKING, status_of
from .test_console_review import actionable, live_and_actionable, wait_held
from .test_queue_live import is_list, review

pytestmark = [pytest.mark.browser]

# Every candidate.changed event the page's event streams hear, recorded before the console's
# own listener handles it (so a page function that sees it runs after the console did).
RECORD_EVENTS = """
window.__heard = [];
const Source = window.EventSource;
window.EventSource = class extends Source {
  constructor(...args) {
    super(...args);
    this.addEventListener('candidate.changed', (m) => window.__heard.push(JSON.parse(m.data)));
  }
};
"""

# Counts the queue's redraws from now on.
WATCH_QUEUE = """() => {
  window.__redrawn = 0;
  new MutationObserver(() => { window.__redrawn += 1; })
    .observe(document.querySelector('#queue-body'), { childList: true });
}"""


def held_list(page: Any, reload: Any) -> tuple[Any, Any]:
    """Hold the list request ``reload`` makes and read its page now: the held request and
    that page, to be answered later."""
    held: list[Any] = []
    page.route(is_list, lambda route: held.append(route), times=1)
    reload()
    route = wait_held(page, held)
    return route, route.fetch()


def land(page: Any, route: Any, read: Any) -> None:
    """Answer the held list request with the page read earlier; return once the console has
    drawn the list again."""
    page.evaluate(WATCH_QUEUE)
    route.fulfill(response=read)
    page.wait_for_function("() => window.__redrawn > 0")


def listening(ui: Any, seeder: Any, frames: list[bytes]) -> tuple[Any, str, str]:
    """As live_and_actionable, in a page that records the events it hears."""
    ui.page.add_init_script(RECORD_EVENTS)
    return live_and_actionable(ui, seeder, frames)


def decided_elsewhere_meanwhile(
    page: Any, console: Any, reload: Any, cid: str, **decision: Any
) -> tuple[Any, Any]:
    """Hold the list request ``reload`` makes, read its page, then have another reviewer
    decide ``cid`` and wait until the console heard it: the held request and the page."""
    route, read = held_list(page, reload)
    review(console, cid, **decision)
    status = status_of(console, cid)["status"]
    page.wait_for_function(
        "([id, status]) => window.__heard.some((e) => e.id === id && e.status === status)",
        arg=[cid, status],
    )
    return route, read


def logged_out_on_c(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> tuple[Any, str, str]:
    """Two cases listed; the session expired, so ``c`` on the selected one decided nothing and
    brought the login form, its token filled in: the page, that case's id and the other's."""
    page, shown, other = live_and_actionable(ui, seeder, frames)
    page.context.clear_cookies()
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    assert status_of(console, shown)["status"] == "new"
    page.fill("#token", console.tokens["reviewer"])
    return page, shown, other


def test_a_case_confirmed_before_the_reloaded_list_arrives_stays_decided(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = logged_out_on_c(ui, seeder, frames, console)
    # Back in, the queue reloads its list; its page is read now, before the decision ...
    route, read = held_list(page, lambda: page.click("#login-form button[type=submit]"))
    # ... which is made on the list as it stood, before that page arrives.
    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{shown}/review")) as sent:
        page.keyboard.press("c")
    assert sent.value.status == 200
    ui.wait_rows([other])
    ui.shot("decided-while-the-list-loads")

    land(page, route, read)
    assert ui.rows() == [other]
    assert ui.selected() == other
    actionable(page, other)
    assert page.locator("#decided-elsewhere").count() == 0
    ui.shot("list-arrived")
    last = status_of(console, shown)["history"][-1]
    assert (last["action"], last["who"]) == ("confirmed", "test-reviewer")


def test_a_case_heard_decided_elsewhere_before_the_list_arrives_is_not_listed_again(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    # Its lookup is held back: the page is all the console has of the case until it comes.
    lookups: list[Any] = []
    page.route(f"**/api/v1/candidates/{other}", lambda r: lookups.append(r))
    route, read = decided_elsewhere_meanwhile(
        page,
        console,
        lambda: page.click("#f-reset"),  # the same filters, reloaded
        other,
        decision="reject",
        reason_code="duplicate",
    )

    land(page, route, read)
    assert ui.rows() == [shown]
    assert ui.selected() == shown
    ui.shot("list-arrived")
    wait_held(page, lookups).continue_()  # the case heard changed is looked up all the same
    ui.wait_rows([shown])


def test_the_selected_case_decided_elsewhere_during_a_reload_is_shown_so(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    page.evaluate("location.hash = '#/stats'")
    page.wait_for_selector("#view-queue", state="hidden")
    # Back in the queue, its list reloads, keeping the case the reviewer was on.
    route, read = decided_elsewhere_meanwhile(
        page, console, lambda: page.evaluate("location.hash = '#/queue'"), shown, decision="confirm"
    )

    # Not replaced unseen by the next case: kept, then shown as decided elsewhere.
    land(page, route, read)
    assert ui.selected() == shown
    page.wait_for_selector("#decided-elsewhere")
    assert ui.rows() == [shown, other]
    assert page.is_disabled("#act-confirm")
    ui.shot("decided-elsewhere")


def heard(page: Any, cid: str, count: int = 1) -> None:
    """Wait until the console heard ``count`` changes of ``cid``."""
    page.wait_for_function(
        "([id, n]) => window.__heard.filter((e) => e.id === id).length >= n", arg=[cid, count]
    )


def held_lookups(page: Any, cid: str) -> Callable[[], None]:
    """Hold back the console's lookups of ``cid`` (the page shows what it knew before them):
    a function that lets them through, once the first was sent."""
    lookups: list[Any] = []
    released: list[bool] = []

    def hold(lookup: Any) -> None:
        if released:
            lookup.continue_()
        else:
            lookups.append(lookup)

    def release() -> None:
        wait_held(page, lookups)
        released.append(True)
        for lookup in lookups:
            lookup.continue_()

    page.route(f"**/api/v1/candidates/{cid}", hold)
    return release


def decided_by_admin(console: Any, cid: str) -> None:
    with console.client("admin") as client:
        response = client.post(f"/candidates/{cid}/review", json={"decision": "confirm"})
        assert response.status_code == 200, response.text


def away_and_back(page: Any) -> tuple[Any, Any]:
    """Go to the statistics and back to the queue, whose list reloads keeping the case the
    reviewer was on: the held list request and its page, read now."""
    page.evaluate("location.hash = '#/stats'")
    page.wait_for_selector("#view-queue", state="hidden")
    return held_list(page, lambda: page.evaluate("location.hash = '#/queue'"))


def held_decided_elsewhere(ui: Any, cid: str, rows: list[str], status: str) -> None:
    """``cid`` is selected among ``rows``, shown as confirmed by the admin with its actions
    off (``status`` as the notice names it)."""
    page = ui.page
    assert ui.rows() == rows
    assert ui.selected() == cid
    notice = page.wait_for_selector(
        f"#detail:has(.detail-head:has-text('{cid}')) #decided-elsewhere:has-text('{status}')"
    )
    assert notice.inner_text() == f"此线索已由 test-admin 处理：{status}。按 j/k 或点击列表继续"
    assert page.is_disabled("#act-confirm")
    assert page.is_visible(f"#queue-body tr.gone[data-id='{cid}']")


def moved_on(ui: Any, gone: str, other: str, console: Any) -> None:
    """``c`` on the case held as decided elsewhere decides nothing; ``j`` moves on to
    ``other``, the only one left listed."""
    page = ui.page
    page.keyboard.press("c")
    page.wait_for_selector("#toast.error:has-text('此线索已由 test-admin 处理')")
    assert status_of(console, other)["status"] == "new"
    page.keyboard.press("j")
    actionable(page, other)
    assert ui.rows() == [other]
    assert page.locator("#decided-elsewhere").count() == 0
    assert status_of(console, gone)["history"][-1]["who"] == "test-admin"


def test_after_logging_in_again_a_case_decided_elsewhere_meanwhile_stays_shown_so(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = logged_out_on_c(ui, seeder, frames, console)
    decided_by_admin(console, shown)  # while this tab is logged out
    # Back in, the list is read after that decision: the case is not on its page.
    route, read = held_list(page, lambda: page.click("#login-form button[type=submit]"))
    land(page, route, read)
    held_decided_elsewhere(ui, shown, [shown, other], "已确认")
    ui.shot("decided-while-logged-out")
    # The reviewer presses c again, meaning the case they were on: the other is not decided.
    moved_on(ui, shown, other, console)


def test_back_in_the_queue_a_case_decided_elsewhere_meanwhile_stays_shown_so(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    decided_by_admin(console, shown)
    page.wait_for_selector("#decided-elsewhere")
    route, read = away_and_back(page)  # the page read after the decision
    # Known decided: not looked up again (a lookup failing would not show it otherwise).
    failed = failing_lookups(page, shown, "503", times=1)

    land(page, route, read)
    held_decided_elsewhere(ui, shown, [shown, other], "已确认")
    assert len(failed) == 1  # the detail pane's read, once the list was drawn
    moved_on(ui, shown, other, console)


def test_a_case_held_as_decided_elsewhere_stays_so_when_it_changes_again_during_a_reload(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    route, read = away_and_back(page)  # the page read before the decision
    decided_by_admin(console, shown)
    heard(page, shown)
    # This tab confirms it on the list as it stood: refused, shown as decided elsewhere.
    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{shown}/review")) as sent:
        page.keyboard.press("c")
    assert sent.value.status == 409
    page.wait_for_selector("#decided-elsewhere:has-text('已确认')")
    # The platform registers it: an event's summary, later than the decision.
    with console.client("platform") as client:
        response = client.post(f"/candidates/{shown}/status", json={"stage": "registered"})
        assert response.status_code == 200, response.text
    heard(page, shown, 2)
    # Its lookups are held back: until they come, the case stays as the console knew it.
    release = held_lookups(page, shown)

    land(page, route, read)
    held_decided_elsewhere(ui, shown, [shown, other], "已确认")
    assert page.is_visible(f"#queue-body tr[data-id='{shown}'] .badge.s-confirmed")
    ui.shot("held-through-the-reload")
    release()
    page.wait_for_selector(f"#queue-body tr[data-id='{shown}'] .badge.s-registered")
    held_decided_elsewhere(ui, shown, [shown, other], "已立案")


def fifty_one(ui: Any, seeder: Any, frames: list[bytes]) -> list[str]:
    """51 cases, newest first; logged in, the first page (50) listed and live updates on; list
    loads intercepted (see intercepted), so that held_list holds the one it is meant to."""
    ui.page.add_init_script(RECORD_EVENTS)
    intercepted(ui.page, is_list)
    cases = [seeder.camera_candidate(frames, minutes_ago=9, **PARKING) for _ in range(51)]
    ui.login("reviewer")
    page = ui.page
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 50")
    page.wait_for_selector("#live.on")
    first = ui.rows()
    (last,) = [c["id"] for c in cases if c["id"] not in first]
    return [*first, last]


def test_a_case_selected_on_a_later_page_stays_selected_when_the_list_reloads(
    ui: Any, seeder: Any, frames: list[bytes]
) -> None:
    cases = fifty_one(ui, seeder, frames)
    page = ui.page
    page.click("#queue-more")
    ui.wait_rows(sorted(cases))
    page.click(f"#queue-body tr[data-id='{cases[-1]}']")
    actionable(page, cases[-1])

    # Back in the queue, only the first page is read: the case is still listed, and selected.
    route, read = away_and_back(page)
    land(page, route, read)
    assert ui.rows() == cases
    assert ui.selected() == cases[-1]
    actionable(page, cases[-1])
    assert page.locator("#decided-elsewhere").count() == 0


def test_a_more_page_read_before_a_decision_elsewhere_does_not_list_the_case(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = fifty_one(ui, seeder, frames)
    page = ui.page
    route, read = held_list(page, lambda: page.click("#queue-more"))
    review(console, cases[-1], decision="confirm")
    heard(page, cases[-1])
    release = held_lookups(page, cases[-1])  # the page is all the console has of it till then

    land(page, route, read)
    assert ui.rows() == cases[:-1]
    assert ui.selected() == cases[0]
    assert page.is_hidden("#queue-more")
    # The case heard changed is looked up all the same, and stays off the list.
    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{cases[-1]}")) as answer:
        release()
    assert answer.value.json()["status"] == "confirmed"
    page.evaluate("1")  # the console has handled the answer
    assert ui.rows() == cases[:-1]
    assert ui.selected() == cases[0]


def test_a_first_page_whose_cases_were_all_decided_meanwhile_loads_the_next(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = fifty_one(ui, seeder, frames)
    page = ui.page
    route, read = held_list(page, lambda: page.click("#f-reset"))
    for cid in cases[:-1]:
        review(console, cid, decision="confirm")
        heard(page, cid)

    route.fulfill(response=read)
    ui.wait_rows([cases[-1]])
    assert ui.selected() == cases[-1]
    actionable(page, cases[-1])


def failing_lookups(page: Any, cid: str, how: str, times: int | None = None) -> list[Any]:
    """Make the console's lookups of ``cid`` fail (``how``: "abort", or an HTTP status with
    the detail "lookup <status>"): the requests that failed so."""
    failed: list[Any] = []

    def fail(route: Any) -> None:
        failed.append(route)
        if how == "abort":
            route.abort()
        else:
            route.fulfill(
                status=int(how),
                content_type="application/problem+json",
                body=json.dumps({"title": "failed", "detail": f"lookup {how}"}),
            )

    page.route(f"**/api/v1/candidates/{cid}", fail, times=times)
    return failed


def confirmed_elsewhere_then_moved_on(ui: Any, shown: str, other: str, console: Any) -> None:
    """``shown``, confirmed by the admin, is held as decided elsewhere before ``other``; the
    reviewer moves on (see moved_on)."""
    held_decided_elsewhere(ui, shown, [shown, other], "已确认")
    moved_on(ui, shown, other, console)


def back_in_with_the_lookup_failing(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, how: str, times: int | None = None
) -> tuple[Any, str, str]:
    """Logged out on ``c`` (see logged_out_on_c), the case is decided elsewhere; logged in
    again, the list (which leaves it out) lands and the case's lookup fails (``how``, see
    failing_lookups) once: the page, the case's id and the other's."""
    page, shown, other = logged_out_on_c(ui, seeder, frames, console)
    decided_by_admin(console, shown)  # while this tab is logged out: the page leaves it out
    route, read = held_list(page, lambda: page.click("#login-form button[type=submit]"))
    failed = failing_lookups(page, shown, how, times)
    land(page, route, read)
    assert len(failed) == 1
    return page, shown, other


@pytest.mark.parametrize("how", ["abort", "500", "503"])
def test_a_failed_lookup_of_the_kept_case_keeps_the_list_as_it_was(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, how: str
) -> None:
    page, shown, other = back_in_with_the_lookup_failing(ui, seeder, frames, console, how)
    # Not known as it is now: the list stays, the reviewer's case selected, not the next one.
    assert ui.rows() == [shown, other]
    assert ui.selected() == shown
    if how != "abort":
        assert page.inner_text("#toast.error") == f"lookup {how}"
    page.unroute(f"**/api/v1/candidates/{shown}")
    # c meant the case on screen: refused, shown as decided elsewhere; the other is not decided.
    with page.expect_response(lambda r: r.url.endswith(f"/candidates/{shown}/review")) as sent:
        page.keyboard.press("c")
    assert sent.value.status == 409
    confirmed_elsewhere_then_moved_on(ui, shown, other, console)


def test_a_lookup_of_the_kept_case_answered_401_keeps_the_place_for_after_logging_in(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    # The session is lost again by the time the case is looked up.
    page, shown, other = back_in_with_the_lookup_failing(ui, seeder, frames, console, "401", 1)
    page.wait_for_selector("#login:not([hidden])")
    assert ui.rows() == [shown, other]
    assert ui.selected() == shown
    page.fill("#token", console.tokens["reviewer"])
    route, read = held_list(page, lambda: page.click("#login-form button[type=submit]"))
    land(page, route, read)
    confirmed_elsewhere_then_moved_on(ui, shown, other, console)


def test_back_in_the_queue_after_a_failed_filter_change_a_new_case_is_not_decided_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    decided_by_admin(console, other)
    ui.wait_rows([shown])
    # The confirmed cases' list fails: the new ones stay listed, the form says confirmed.
    route, _read = held_list(page, lambda: page.select_option("#f-status", "confirmed"))
    route.abort()
    page.wait_for_selector("#toast.error")

    route, read = away_and_back(page)  # the confirmed cases: the new one is not among them
    land(page, route, read)
    # Merely outside the filters now: not kept, and not shown as decided elsewhere.
    assert ui.rows() == [other]
    assert ui.selected() == other
    page.wait_for_selector(f"#detail .detail-head:has-text('{other}')")
    assert page.locator("#decided-elsewhere").count() == 0
    assert page.locator("#queue-body tr.gone").count() == 0
    assert status_of(console, shown)["status"] == "new"


def test_a_reload_keeping_the_case_during_a_filter_change_does_not_mark_it_decided(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = listening(ui, seeder, frames)
    decided_by_admin(console, other)
    ui.wait_rows([shown])
    # The confirmed cases are asked for; before they come, the language is switched, which
    # reloads the list keeping the case selected.
    held_list(page, lambda: page.select_option("#f-status", "confirmed"))  # left unanswered
    second, read = held_list(page, lambda: page.click("#app .lang-toggle"))
    assert "status=confirmed" in second.request.url
    land(page, second, read)
    assert ui.rows() == [other]
    assert ui.selected() == other
    page.wait_for_selector(f"#detail .detail-head:has-text('{other}')")
    assert page.locator("#decided-elsewhere").count() == 0
    assert status_of(console, shown)["status"] == "new"


def test_this_tabs_own_decision_during_the_kept_cases_lookup_is_not_decided_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    cases = fifty_one(ui, seeder, frames)
    page = ui.page
    last = cases[-1]
    page.click("#queue-more")
    ui.wait_rows(sorted(cases))
    page.click(f"#queue-body tr[data-id='{last}']")
    actionable(page, last)
    route, read = away_and_back(page)
    release = held_lookups(page, last)
    answers: list[Any] = []
    page.route(f"**/api/v1/candidates/{last}/review", lambda r: answers.append(r), times=1)
    with page.expect_request(lambda r: r.url.endswith(f"/candidates/{last}")):
        route.fulfill(response=read)  # the first page does not list it: looked up, held
    page.keyboard.press("c")  # on the case the reviewer sees selected
    post = wait_held(page, answers)
    answer = post.fetch()  # the decision is made; its answer is held
    assert answer.status == 200

    page.evaluate(WATCH_QUEUE)
    release()  # the lookup reads the case as this tab's decision left it
    page.wait_for_function("() => window.__redrawn > 0")
    assert ui.rows() == cases
    assert ui.selected() == last
    assert page.locator("#decided-elsewhere").count() == 0
    assert page.locator("#queue-body tr.gone").count() == 0
    post.fulfill(response=answer)
    ui.wait_rows(sorted(cases[:-1]))
    assert ui.rows() == cases[:-1]
    assert ui.selected() == cases[-2]
    assert page.locator("#decided-elsewhere").count() == 0
    assert status_of(console, last)["history"][-1]["who"] == "test-reviewer"


def test_more_after_a_kept_case_of_a_later_page_keeps_the_list_newest_first(
    ui: Any, seeder: Any, frames: list[bytes]
) -> None:
    ui.page.add_init_script(RECORD_EVENTS)
    intercepted(ui.page, is_list)  # so that away_and_back holds the reload
    cases = [seeder.camera_candidate(frames, minutes_ago=9, **PARKING) for _ in range(52)]
    ui.login("reviewer")
    page = ui.page
    page.wait_for_function("() => document.querySelectorAll('#queue-body tr').length === 50")
    page.wait_for_selector("#live.on")
    first = ui.rows()
    newest_first = [*first, cases[1]["id"], cases[0]["id"]]
    page.click("#queue-more")
    ui.wait_rows(sorted(newest_first))
    assert ui.rows() == newest_first
    oldest = cases[0]["id"]
    page.click(f"#queue-body tr[data-id='{oldest}']")
    actionable(page, oldest)

    route, read = away_and_back(page)  # the first page, then the case kept from the second
    land(page, route, read)
    assert ui.rows() == [*first, oldest]
    assert ui.selected() == oldest
    page.click("#queue-more")
    ui.wait_rows(sorted(newest_first))
    assert ui.rows() == newest_first  # once each, newest first
    assert ui.selected() == oldest
    actionable(page, oldest)


# The first detail read of window.__late.id is answered late: its case is read from the API
# at once (before whatever happens next), and handed to the console on window.__late.release().
# window.__late.landed is set once the console has handled that answer: the task it sets it
# in runs after the promise reactions the answer starts.
LATE_DETAIL = """
window.__late = { id: null, taken: false, release: null, landed: false };
const send = window.fetch;
window.fetch = async (url, init) => {
  const late = window.__late;
  const hold = Boolean(late.id) && !late.taken && (!init || !init.method || init.method === 'GET')
    && String(url).endsWith(`/candidates/${late.id}`);
  if (hold) late.taken = true;
  const response = await send(url, init);
  if (!hold) return response;
  const body = await response.text();
  await new Promise((resolve) => { late.release = resolve; });
  const answer = new Response(body, { status: response.status, headers: response.headers });
  const json = answer.json.bind(answer);
  answer.json = () => json().then((value) => {
    setTimeout(() => { late.landed = true; }, 0);
    return value;
  });
  return answer;
};
"""


def test_a_detail_read_before_a_decision_elsewhere_does_not_replace_the_case_after_it(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    ui.page.add_init_script(LATE_DETAIL)
    page, _, other = live_and_actionable(ui, seeder, frames)
    page.evaluate("id => { window.__late.id = id; }", other)
    page.keyboard.press("j")  # the other case: its detail is read now, and answered late
    page.wait_for_function("() => window.__late.release !== null")

    decided_by_admin(console, other)  # heard live, looked up, shown as decided elsewhere
    notice = "此线索已由 test-admin 处理：已确认。按 j/k 或点击列表继续"
    page.wait_for_selector(f"#decided-elsewhere:text-is('{notice}')")
    page.evaluate("window.__late.release()")
    page.wait_for_function("() => window.__late.landed")
    ui.shot("late-detail-dropped")
    assert page.inner_text("#decided-elsewhere") == notice
    assert page.inner_text(f"#detail .detail-head:has-text('{other}') .badge") == "已确认"
    assert page.inner_text(f"#queue-body tr[data-id='{other}'] .badge") == "已确认"
    assert ui.selected() == other
    assert page.is_disabled("#act-confirm")


# A dialog cancelled and another opened at once, as the console does after a failed decision:
# whether the second is still open after the first's close event has come.
DIALOG_AFTER_DIALOG = """async () => {
  const { dialog } = await import('/review/static/app.js');
  const first = dialog('first', () => () => 'first');
  document.querySelector('#dlg-cancel').click();
  await first;
  const second = dialog('second', () => () => 'second');
  await new Promise((resolve) => setTimeout(resolve, 100));
  const open = document.querySelector('#dlg').open;
  document.querySelector('#dlg-cancel').click();
  return { open, second: await second };
}"""


def test_a_dialog_opened_as_another_closes_stays_open(ui: Any) -> None:
    ui.login("reviewer")
    assert ui.page.evaluate(DIALOG_AFTER_DIALOG) == {"open": True, "second": None}


def test_a_newer_read_from_an_api_whose_clock_is_behind_is_shown(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    """Behind a load balancer the case is decided on an API instance whose clock is a second
    behind the one that wrote the copy shown: the newer read carries the older stamp."""
    page, shown, _ = live_and_actionable(ui, seeder, frames)
    page.wait_for_selector(f"#detail:has(.detail-head:has-text('{shown}')) .history li")
    stamped = datetime.fromisoformat(status_of(console, shown)["updated_at"])
    behind = (stamped - timedelta(seconds=1)).isoformat()

    def skewed(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["updated_at"] = behind
        route.fulfill(response=response, body=json.dumps(body))

    page.route(f"**/api/v1/candidates/{shown}", skewed)
    decided_by_admin(console, shown)
    held_decided_elsewhere(ui, shown, ui.rows(), "已确认")
    assert page.inner_text(f"#detail .detail-head:has-text('{shown}') .badge") == "已确认"
    assert page.inner_text(f"#queue-body tr[data-id='{shown}'] .badge") == "已确认"

"""The console's list loads racing decisions: a page read before a case was decided (here or
elsewhere) lands after the decision, and must not list the case again."""

from __future__ import annotations

from typing import Any

import pytest

from .test_console import status_of
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
    listed: tuple[Any, str, str] = live_and_actionable(ui, seeder, frames)
    return listed


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


def test_a_case_confirmed_before_the_reloaded_list_arrives_stays_decided(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page, shown, other = live_and_actionable(ui, seeder, frames)
    page.context.clear_cookies()  # the session expired
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    assert status_of(console, shown)["status"] == "new"

    # Back in, the queue reloads its list; its page is read now, before the decision ...
    page.fill("#token", console.tokens["reviewer"])
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

"""The console signed out (its login form up): triage keys decide nothing and open no dialog,
even once the browser's cookie is valid again; a dialog open when the session ends closes,
its note kept; an error met then is shown over the login form."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from .test_console import PARKING, status_of
from .test_console_review import NOTE, RECORD_POSTS, actionable, open_dialog, two_listed

pytestmark = [pytest.mark.browser]

EXPIRED = "会话已过期，请重新登录"


def session_url(console: Any) -> str:
    return f"{console.url}/api/v1/session"


def log_out_elsewhere(page: Any, console: Any) -> None:
    """Another tab of this browser logs out: the shared cookie's session is revoked."""
    request = page.context.request
    csrf = request.get(session_url(console)).json()["csrf_token"]
    response = request.delete(session_url(console), headers={"X-CSRF-Token": csrf})
    assert response.ok, response.text()


def log_in_elsewhere(page: Any, console: Any) -> None:
    """Another tab of this browser signs in as the reviewer again: the cookie is valid again
    (with another CSRF token)."""
    response = page.context.request.post(
        session_url(console), data={"token": console.tokens["reviewer"]}
    )
    assert response.ok, response.text()


def log_in_here(ui: Any, console: Any) -> None:
    ui.page.fill("#token", console.tokens["reviewer"])
    ui.page.click("#login-form button[type=submit]")
    ui.page.wait_for_selector("#app:not([hidden])")


def listed_recording_posts(ui: Any, seeder: Any, frames: list[bytes]) -> tuple[str, str]:
    """Two cases listed, each POST the page sends recorded: the selected one's id and the
    other's."""
    ui.page.add_init_script(RECORD_POSTS)
    return two_listed(ui, seeder, frames)


def signed_out_here_in_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> tuple[Any, str, str]:
    """Two cases listed; another tab logged out, so ``j`` brought the login form (the next case
    selected, out of sight); then that tab signed in as the reviewer again. The page, the case
    shown first and the one selected."""
    page = ui.page
    shown, other = listed_recording_posts(ui, seeder, frames)
    actionable(page, shown)
    log_out_elsewhere(page, console)
    page.keyboard.press("j")  # the next case is read: 401, the login form
    page.wait_for_selector("#login:not([hidden])")
    assert page.inner_text("#login-error") == EXPIRED
    log_in_elsewhere(page, console)
    return page, shown, other


def back_in_nothing_decided(ui: Any, console: Any, shown: str, other: str) -> None:
    """Signed in again on this tab: both cases listed and new, the one selected before
    selected again."""
    log_in_here(ui, console)
    ui.wait_rows([shown, other])
    actionable(ui.page, other)
    assert [status_of(console, cid)["status"] for cid in (shown, other)] == ["new", "new"]


@pytest.mark.parametrize("keys", [["c"], ["r", "Enter"]], ids=["confirm", "reject"])
def test_keys_on_the_login_form_decide_nothing_once_signed_in_elsewhere(
    ui: Any, seeder: Any, frames: list[bytes], console: Any, keys: list[str]
) -> None:
    page, shown, other = signed_out_here_in_elsewhere(ui, seeder, frames, console)
    page.click("#login h1")  # outside the token field: keys reach the page
    for key in keys:
        page.keyboard.press(key)
        assert not page.is_visible("#dlg[open]"), f"{key!r} opened a dialog on the login form"
    # A decision's handler has sent its request by the time its key press returns.
    reviews = page.evaluate("window.__posts.filter((u) => u.endsWith('/review'))")
    assert reviews == []
    ui.shot("keys-on-login-form")
    back_in_nothing_decided(ui, console, shown, other)


def test_a_write_while_signed_out_is_refused_unsent(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    # The console's own API module (the page's instance): the session it writes with is gone,
    # though the browser's cookie is valid again.
    page, shown, other = signed_out_here_in_elsewhere(ui, seeder, frames, console)
    status = page.evaluate(
        """async (id) => {
          const api = await import('/review/static/api.js');
          try {
            await api.post(`/candidates/${id}/review`, { decision: 'confirm' });
            return 'made';
          } catch (err) {
            return err.status;
          }
        }""",
        other,
    )
    assert status == 401
    assert page.evaluate("window.__posts.filter((u) => u.endsWith('/review'))") == []
    back_in_nothing_decided(ui, console, shown, other)


def test_an_error_met_as_the_session_ends_is_shown_over_the_login_form(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    page = ui.page
    shown, _ = two_listed(ui, seeder, frames)
    actionable(page, shown)
    page.context.clear_cookies()  # the session is gone
    page.keyboard.press("c")
    page.wait_for_selector("#login:not([hidden])")
    page.wait_for_selector("#toast.error:not([hidden])")
    assert page.is_visible("#toast.error")
    assert page.inner_text("#toast") != ""
    ui.shot("error-over-login-form")
    assert status_of(console, shown)["status"] == "new"


def wait_signed_out(ui: Any, seeder: Any, frames: list[bytes]) -> None:
    """Wait until the page finds its session ended: its event stream ends at the next change
    sent after the logout (looked up at most every few seconds), and reconnecting is refused."""
    for _ in range(30):  # bounded: a change each round until the stream is ended
        seeder.camera_candidate(frames, minutes_ago=1, **PARKING)
        try:
            ui.page.wait_for_selector("#login:not([hidden])", timeout=1000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the page did not find its session ended")


def test_a_dialog_open_when_the_session_ends_closes_and_keeps_its_note(
    ui: Any, seeder: Any, frames: list[bytes], console: Any
) -> None:
    shown, _ = listed_recording_posts(ui, seeder, frames)
    page = ui.page
    page.wait_for_selector("#live.on")
    page = open_dialog(ui, "i", {"id": shown})
    page.fill("#dlg-body input[name=reason]", NOTE)
    log_out_elsewhere(page, console)
    wait_signed_out(ui, seeder, frames)
    assert page.inner_text("#login-error") == EXPIRED
    page.wait_for_selector("#dlg", state="hidden")  # not left over the login form
    ui.shot("dialog-closed-on-login-form")
    assert page.evaluate("window.__posts.filter((u) => u.endsWith('/review'))") == []

    log_in_here(ui, console)
    page = open_dialog(ui, "i", {"id": shown})
    assert page.input_value("#dlg-body input[name=reason]") == NOTE
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#queue-body tr[data-id='{shown}']", state="detached")
    returned = status_of(console, shown)
    assert (returned["status"], returned["history"][-1]["reason"]) == ("returned", NOTE)

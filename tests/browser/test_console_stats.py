"""The statistics page reads a window of the candidates' history (the last 30 days unless the
reviewer sets another), never the whole table by default; its labels name what the API groups
by (the candidate type)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .test_console import PARKING, SITE_TZ

pytestmark = [pytest.mark.browser]


def default_start() -> datetime:
    """Midnight (site time) of the day 29 days before today: the default window's start."""
    today = datetime.now(SITE_TZ).date()
    return datetime.combine(today - timedelta(days=29), datetime.min.time(), SITE_TZ)


def sent(at: datetime) -> str:
    """An instant as the page sends it (Date.toISOString)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def window_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def total(page: Any, expected: str) -> None:
    page.wait_for_selector(f"#stats-body section[data-key=total] p.big:text-is('{expected}')")


def one_case_logged_in(ui: Any, seeder: Any, frames: list[bytes]) -> Any:
    """The tab of a reviewer logged in, with one case received a moment ago."""
    seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    ui.login("reviewer")
    return ui.page


def test_statistics_read_the_last_30_days_unless_the_reviewer_sets_a_window(
    ui: Any, seeder: Any, frames: list[bytes]
) -> None:
    page = one_case_logged_in(ui, seeder, frames)

    before = default_start()
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/v1/stats") as first:
        page.click("nav a[data-view=stats]")
    after = default_start()  # the same, unless the site's midnight passed meanwhile
    defaults = [{"since": [sent(before)]}, {"since": [sent(after)]}]
    assert window_of(first.value.url) in defaults
    start = before if window_of(first.value.url) == defaults[0] else after
    assert page.input_value("#st-since") == start.strftime("%Y-%m-%dT%H:%M")
    assert page.input_value("#st-until") == ""
    total(page, "1")
    ui.shot("last-30-days")

    # A window two to three days ago (site time) holds nothing received today.
    local = datetime.now(SITE_TZ).replace(second=0, microsecond=0)
    since, until = local - timedelta(days=3), local - timedelta(days=2)
    page.fill("#st-since", since.strftime("%Y-%m-%dT%H:%M"))
    with page.expect_request(lambda r: "until=" in r.url) as changed:
        page.fill("#st-until", until.strftime("%Y-%m-%dT%H:%M"))
    assert window_of(changed.value.url) == {
        "since": [sent(since)],
        "until": [sent(until)],
    }
    total(page, "0")
    ui.shot("window-set")

    # The reviewer's window stays when coming back to the page.
    page.click("nav a[data-view=queue]")
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/v1/stats") as back:
        page.click("nav a[data-view=stats]")
    assert window_of(back.value.url) == window_of(changed.value.url)

    # "Last 30 days" brings the default window back.
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/v1/stats") as again:
        page.click("#st-last")
    assert window_of(again.value.url) in defaults
    assert page.input_value("#st-until") == ""
    total(page, "1")


def test_precision_is_labelled_by_type_in_both_languages(
    ui: Any, seeder: Any, frames: list[bytes]
) -> None:
    page = one_case_logged_in(ui, seeder, frames)
    page.click("nav a[data-view=stats]")
    heading = "#stats-body section[data-key=precision_by_type] h3"
    page.wait_for_selector(heading)
    assert page.inner_text(heading) == "准确率（按类型）"
    assert page.inner_text("#st-last") == "最近 30 天"
    page.click("#app .lang-toggle")
    page.wait_for_selector(f"{heading}:text-is('Precision by type')")
    assert page.inner_text("#st-last") == "Last 30 days"
    assert page.inner_text("label:has(#st-since) span") == "Since"
    ui.shot("english")


def stats_opened_while_the_site_is_held(
    ui: Any, seeder: Any, frames: list[bytes]
) -> tuple[Any, list[Any], list[str]]:
    """One case received; the site's description held (its route in the list returned) while
    the reviewer logs in and opens the statistics; the statistics requests' URLs as sent."""
    seeder.camera_candidate(frames, minutes_ago=5, **PARKING)
    page = ui.page
    held: list[Any] = []
    page.route("**/api/v1/site", lambda route: held.append(route), times=1)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/stats" in r.url else None)
    ui.login("reviewer")
    page.click("nav a[data-view=stats]")
    return page, held, asked


@pytest.mark.parametrize("browser_timezone", ["America/New_York"])
def test_statistics_opened_before_the_sites_time_zone_is_known_wait_for_it(
    ui: Any, seeder: Any, frames: list[bytes], browser_timezone: str
) -> None:
    # The site's description is held while the reviewer, just logged in, opens the statistics:
    # they are read, and their window set, once the site's time zone is known, not before in
    # the browser's (New York, 13 hours from the site's).
    page, held, asked = stats_opened_while_the_site_is_held(ui, seeder, frames)
    page.wait_for_function("() => location.hash === '#/stats'")
    while not held:
        page.wait_for_timeout(20)
    assert asked == []
    before = default_start()
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/v1/stats") as first:
        held[0].continue_()
    after = default_start()
    assert window_of(first.value.url) in [{"since": [sent(before)]}, {"since": [sent(after)]}]
    total(page, "1")
    assert len(asked) == 1


@pytest.mark.parametrize("browser_timezone", ["America/New_York"])
def test_statistics_are_shown_when_the_site_is_slow_to_be_described_and_again_once_it_is(
    ui: Any, seeder: Any, frames: list[bytes], browser_timezone: str
) -> None:
    # An API that does not describe the site (its answer lost, say) does not leave the reviewer
    # without any view: after a few seconds the statistics come, and again once it answers,
    # their default window then the site's last 30 days, not the browser's.
    page, held, asked = stats_opened_while_the_site_is_held(ui, seeder, frames)
    total(page, "1")
    assert page.is_visible("#view-stats")
    assert len(held) == 1
    assert len(asked) == 1
    before = default_start()
    with page.expect_request(lambda r: urlsplit(r.url).path == "/api/v1/stats") as again:
        held[0].continue_()
    after = default_start()
    assert window_of(again.value.url) in [{"since": [sent(before)]}, {"since": [sent(after)]}]
    start = before if window_of(again.value.url) == {"since": [sent(before)]} else after
    assert page.input_value("#st-since") == start.strftime("%Y-%m-%dT%H:%M")
    total(page, "1")
    assert len(asked) == 2

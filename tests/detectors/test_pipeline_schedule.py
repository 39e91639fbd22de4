"""Schedules of background rules: what appears while a zone's schedule is off is judged all the
same (the background model learns whatever the schedule), and reported when it opens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from gridpatrol.detectors.pipeline import CameraPipeline
from gridpatrol.detectors.types import Detections
from tests.detectors.test_pipeline import NAMES, SHANGHAI, SIZE, WHOLE, camera

EVENING = datetime(2026, 3, 2, 22, 0, tzinfo=SHANGHAI)
DAYTIME = {"from": "06:00", "to": "23:00"}


def street(k: int, pile: bool, another: bool = False) -> np.ndarray:
    """A 160x90 grayscale street, with a bright pile on its lower left when ``pile``, and
    another on its upper left when ``another``."""
    base = np.tile(np.linspace(60, 140, 160, dtype=np.float32), (90, 1))
    if pile:
        base[50:80, 40:80] = 200
    if another:
        base[10:40, 5:45] = 200
    noise = np.random.default_rng(k).normal(0, 2, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def night(
    dumped: datetime,
    until: datetime,
    schedule: dict[str, str] | None,
    taken: datetime | None = None,
    another: datetime | None = None,
    another_taken: datetime | None = None,
    forget: datetime | None = None,
) -> list[tuple[str, str, str]]:
    """A frame every 20 s from 22:00 to ``until``, a pile dumped at ``dumped`` (and taken away
    at ``taken``; another pile elsewhere from ``another`` until ``another_taken``): the events
    as (kind, local time, first seen). At ``forget`` the pipeline forgets the rule's raised
    episode, as the worker does when it ends it (a silent camera)."""
    zone: dict[str, Any] = {"id": "corner", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    if schedule is not None:
        zone["schedule"] = schedule
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    events = []
    for k in range(int((until - EVENING).total_seconds()) // 20 + 1):
        t = EVENING + timedelta(seconds=20 * k)
        pile = dumped <= t and (taken is None or t < taken)
        later = (
            another is not None and another <= t and (another_taken is None or t < another_taken)
        )
        gray = street(k, pile, later)
        if t == forget:
            pipe.forget("corner", "piled_materials")
        for e in pipe.process(t, SIZE, Detections.empty(), None, gray):
            assert e.rule == "piled_materials" and e.zone_id == "corner"
            events.append((e.kind, e.t.strftime("%H:%M"), e.first_seen.strftime("%H:%M")))
    return events


def at(hhmm: str, day: int = 0) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return EVENING.replace(hour=h, minute=m) + timedelta(days=day)


@pytest.mark.parametrize(
    ("dumped", "until", "schedule", "expected"),
    [
        # The pile's dwell (30 min) completes at midnight, the background has learned it by
        # about 02:20 (learn_s 2 h): raised when the schedule opens, over since, so cleared.
        (at("23:30"), at("06:00", 1), DAYTIME,
         [("raise", "06:00", "23:30"), ("clear", "06:00", "23:30")]),
        # Still visible when the schedule opens: raised then, and going on.
        (at("05:00", 1), at("06:00", 1), DAYTIME, [("raise", "06:00", "05:00")]),
        # Dumped too late for its dwell before the schedule opens: raised when the dwell ends.
        (at("05:50", 1), at("06:20", 1), DAYTIME, [("raise", "06:20", "05:50")]),
        # Without a schedule the same pile raises at midnight (then updates, then clears).
        (at("23:30"), at("00:00", 1), None, [("raise", "00:00", "23:30")]),
    ],
    ids=["learned before the schedule opens", "still there", "dwell ends inside", "no schedule"],
)  # fmt: skip
def test_a_pile_dumped_while_the_schedule_is_off_is_raised_when_it_opens(
    dumped: datetime,
    until: datetime,
    schedule: dict[str, str] | None,
    expected: list[tuple[str, str, str]],
) -> None:
    assert night(dumped, until, schedule) == expected


# A pile dumped at 22:20: raised after its dwell, updated until the schedule closes at 23:00.
RAISED_IN_THE_EVENING = [
    ("raise", "22:50", "22:20"),
    *[("update", f"22:{m}", "22:20") for m in (52, 54, 56, 58)],
    ("update", "23:00", "22:20"),
]


def test_a_raised_pile_is_not_raised_again_the_next_morning() -> None:
    """A pile raised in the evening stays raised while the schedule is off: no update and no
    clear until it opens; then the episode, over meanwhile, clears."""
    assert night(at("22:20"), at("06:00", 1), DAYTIME) == [
        *RAISED_IN_THE_EVENING,
        ("clear", "06:00", "22:20"),
    ]


def test_a_pile_taken_away_at_night_is_not_continued_by_the_next_one() -> None:
    """A pile raised in the evening is taken away at 23:30, after the schedule closed; another
    is dumped elsewhere at 04:00. When the schedule opens the first episode clears and the
    second is raised with its own first sighting, not taken for the first one going on."""
    assert night(at("22:20"), at("06:00", 1), DAYTIME, at("23:30"), at("04:00", 1)) == [
        *RAISED_IN_THE_EVENING,
        ("clear", "06:00", "22:20"),
        ("raise", "06:00", "04:00"),
    ]


def test_a_pile_over_at_night_is_raised_when_the_schedule_opens_after_a_silent_camera() -> None:
    """A pile raised in the evening and taken away at 23:30; another dumped at 00:00 and taken
    away at 02:00, its dwell complete. At 03:00 the worker ends the first pile's candidate (its
    camera silent) and the pipeline forgets that episode only: the second pile, never reported,
    is raised and cleared when the schedule opens."""
    assert night(
        at("22:20"), at("06:00", 1), DAYTIME, at("23:30"), at("00:00", 1), at("02:00", 1),
        forget=at("03:00", 1),
    ) == [
        *RAISED_IN_THE_EVENING,
        ("raise", "06:00", "00:00"),
        ("clear", "06:00", "00:00"),
    ]  # fmt: skip


def test_a_raised_pile_over_at_night_keeps_its_last_sighting_until_its_clear() -> None:
    """The worker ends a raised episode at its rule's last sighting (a camera gone silent, its
    clock reset): one over while the schedule is off keeps the sighting of its own pile until
    its clear is reported, however long another pile has been there since."""
    zone = {"id": "corner", "polygon": WHOLE, "rules": {"piled_materials": {}},
            "schedule": DAYTIME}  # fmt: skip
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    seen: dict[str, dict[tuple[str, str], str]] = {}
    for k in range(int((at("06:00", 1) - EVENING).total_seconds()) // 20 + 1):
        t = EVENING + timedelta(seconds=20 * k)
        pile = at("22:20") <= t < at("23:30")
        pipe.process(t, SIZE, Detections.empty(), None, street(k, pile, t >= at("04:00", 1)))
        if t in (at("23:00"), at("05:00", 1), at("06:00", 1)):
            seen[t.strftime("%H:%M")] = {
                key: when.astimezone(SHANGHAI).strftime("%H:%M:%S")
                for key, when in pipe.last_seen().items()
            }
    assert seen == {
        "23:00": {("corner", "piled_materials"): "23:00:00"},
        "05:00": {("corner", "piled_materials"): "23:29:40"},
        "06:00": {("corner", "piled_materials"): "06:00:00"},  # the new pile, raised now
    }

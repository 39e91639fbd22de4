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


def street(k: int, pile: bool) -> np.ndarray:
    """A 160x90 grayscale street, with a bright pile on its lower left when ``pile``."""
    base = np.tile(np.linspace(60, 140, 160, dtype=np.float32), (90, 1))
    if pile:
        base[50:80, 40:80] = 200
    noise = np.random.default_rng(k).normal(0, 2, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def night(
    dumped: datetime, until: datetime, schedule: dict[str, str] | None
) -> list[tuple[str, str, str]]:
    """A frame every 20 s from 22:00 to ``until``, a pile dumped at ``dumped``: the events as
    (kind, local time, first seen)."""
    zone: dict[str, Any] = {"id": "corner", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    if schedule is not None:
        zone["schedule"] = schedule
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    events = []
    for k in range(int((until - EVENING).total_seconds()) // 20 + 1):
        t = EVENING + timedelta(seconds=20 * k)
        gray = street(k, t >= dumped)
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


def test_a_raised_pile_is_not_raised_again_the_next_morning() -> None:
    """A pile raised in the evening stays raised while the schedule is off: no update and no
    clear until it opens; then the episode, over meanwhile, clears."""
    assert night(at("22:20"), at("06:00", 1), DAYTIME) == [
        ("raise", "22:50", "22:20"),
        ("update", "22:52", "22:20"),
        ("update", "22:54", "22:20"),
        ("update", "22:56", "22:20"),
        ("update", "22:58", "22:20"),
        ("update", "23:00", "22:20"),
        ("clear", "06:00", "22:20"),
    ]

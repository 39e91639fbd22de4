"""Zone masks, anchors and schedules (in the site time zone, windows crossing midnight)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gridpatrol.detectors.zones import (
    ZoneGeometry,
    anchors,
    rasterise,
    schedule_active,
)
from gridpatrol.site import Schedule

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Left half of the frame, lower two thirds.
LOWER_LEFT = ZoneGeometry.of([(0.0, 1 / 3), (0.5, 1 / 3), (0.5, 1.0), (0.0, 1.0)])


def test_mask_is_rasterised_at_the_frame_size_and_cached() -> None:
    mask = LOWER_LEFT.mask((300, 90))
    assert mask.shape == (90, 300)
    assert mask[60, 10] and not mask[10, 10] and not mask[60, 250]
    assert LOWER_LEFT.mask((300, 90)) is mask
    assert abs(mask.mean() - (0.5 * 2 / 3)) < 0.02
    assert LOWER_LEFT.area((300, 90)) == int(mask.sum())


def test_a_zone_keeps_the_masks_of_its_latest_sizes_only() -> None:
    """Stills of ever new sizes (a folder scanned with a camera's zones) keep no mask of each:
    the 8 sizes cached last stay, each mask still the polygon at its size."""
    zone = ZoneGeometry.of(LOWER_LEFT.polygon)
    sizes = [(200 + 7 * k, 100 + 3 * k) for k in range(100)]
    for size in sizes:
        mask = zone.mask(size)
        assert mask.shape == (size[1], size[0])
        assert np.array_equal(mask, rasterise(LOWER_LEFT.polygon, size))
        assert zone.area(size) == int(mask.sum())
    assert list(zone._masks) == sizes[-8:]
    assert list(zone._areas) == sizes[-8:]
    # The latest sizes are served from the cache; an evicted one is rasterised again.
    assert zone.mask(sizes[-1]) is zone._masks[sizes[-1]]
    again = zone.mask(sizes[0])
    assert np.array_equal(again, rasterise(LOWER_LEFT.polygon, sizes[0]))
    assert list(zone._masks) == [*sizes[-7:], sizes[0]]


def test_a_size_in_use_keeps_its_mask_while_new_sizes_come_and_go() -> None:
    """The camera's own frame size, looked up with every frame, stays cached while a stream of
    other sizes passes through: the size used least recently goes, not the one cached first."""
    zone = ZoneGeometry.of(LOWER_LEFT.polygon)
    sizes = [(200 + 7 * k, 100 + 3 * k) for k in range(12)]
    for size in sizes[:8]:
        zone.area(size)
    frame = zone.mask(sizes[0])
    assert zone.area(sizes[0]) == int(frame.sum())
    assert list(zone._masks) == [*sizes[1:8], sizes[0]]
    assert list(zone._areas) == [*sizes[1:8], sizes[0]]
    for size in sizes[8:]:
        zone.area(size)
        assert zone.mask(sizes[0]) is frame
        zone.area(sizes[0])
    assert list(zone._masks) == [*sizes[5:12], sizes[0]]
    assert list(zone._areas) == [*sizes[5:12], sizes[0]]


@pytest.mark.parametrize(
    ("box", "anchor", "inside"),
    [
        # A person whose feet stand in the zone and whose head is above it is in it.
        ((100, 10, 140, 200), "bottom", True),
        ((100, 10, 140, 200), "center", True),
        # Feet above the zone's top edge: only the body overlaps, not the ground.
        ((100, 0, 140, 50), "bottom", False),
        # Straddling the right edge: the anchor decides.
        ((280, 150, 360, 250), "bottom", True),
        ((320, 150, 400, 250), "bottom", False),
        # Boxes leaving the frame are clipped, not errors.
        ((-50, 250, 10, 400), "bottom", True),
    ],
)
def test_boxes_in_zone_by_anchor(
    box: tuple[float, float, float, float], anchor: str, inside: bool
) -> None:
    xyxy = np.asarray([box], dtype=np.float32)
    got = LOWER_LEFT.boxes_in(xyxy, (640, 300), anchor)  # type: ignore[arg-type]
    assert got.tolist() == [inside]


def test_anchor_points_and_bbox() -> None:
    xyxy = np.asarray([[10, 20, 30, 60]], dtype=np.float32)
    assert anchors(xyxy, "bottom").tolist() == [[20.0, 60.0]]
    assert anchors(xyxy, "center").tolist() == [[20.0, 40.0]]
    assert LOWER_LEFT.bbox == pytest.approx((0.0, 1 / 3, 0.5, 1.0))
    assert LOWER_LEFT.boxes_in(np.zeros((0, 4), np.float32), (640, 300)).shape == (0,)


def sh(day: int, hour: int, minute: int = 0) -> datetime:
    """A Shanghai wall-clock time in the week of Monday 2026-03-02, as a UTC instant."""
    return datetime(2026, 3, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


@pytest.mark.parametrize(
    ("schedule", "at", "active"),
    [
        (None, sh(2, 3), True),
        ({}, sh(2, 23, 59), True),  # defaults: every day 00:00-23:59
        ({"from": "06:00", "to": "23:00"}, sh(2, 5, 59), False),
        ({"from": "06:00", "to": "23:00"}, sh(2, 6, 0), True),
        ({"from": "06:00", "to": "23:00"}, sh(2, 23, 0), True),  # `to` is inclusive
        ({"from": "06:00", "to": "23:00"}, sh(2, 23, 1), False),
        # 09:00 Shanghai is 01:00 UTC: the site time zone decides, not UTC.
        ({"from": "08:30", "to": "09:30"}, sh(2, 9, 0), True),
        ({"days": WEEKDAYS}, sh(7, 12), False),  # Saturday
        ({"days": WEEKDAYS}, sh(6, 12), True),  # Friday
        # Crossing midnight: the window belongs to the day it starts on.
        ({"days": ["fri"], "from": "22:00", "to": "06:00"}, sh(6, 23), True),
        ({"days": ["fri"], "from": "22:00", "to": "06:00"}, sh(7, 3), True),  # Sat early
        ({"days": ["fri"], "from": "22:00", "to": "06:00"}, sh(6, 3), False),  # Fri early
        ({"days": ["fri"], "from": "22:00", "to": "06:00"}, sh(7, 6, 1), False),
        ({"days": ["fri"], "from": "22:00", "to": "06:00"}, sh(6, 21, 59), False),
        ({"days": ["sun"], "from": "20:00", "to": "02:00"}, sh(2, 1, 30), True),  # Mon early
        ({"days": ["mon"], "from": "20:00", "to": "02:00"}, sh(2, 1, 30), False),
        ({"days": ["mon"], "from": "20:00", "to": "02:00"}, sh(3, 1, 30), True),  # Tue early
        ({"from": "07:00", "to": "07:00"}, sh(3, 6, 59), True),  # equal: a whole day
    ],
)
def test_schedule_in_site_time_zone(
    schedule: dict[str, object] | None, at: datetime, active: bool
) -> None:
    parsed = None if schedule is None else Schedule.model_validate(schedule)
    assert schedule_active(parsed, at, SHANGHAI) is active


def test_schedule_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule_active(Schedule(), datetime(2026, 3, 2, 12), SHANGHAI)  # noqa: DTZ001

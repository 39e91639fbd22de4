"""Zone geometry and schedules.

A zone is a polygon in normalized image coordinates (x, y in [0, 1]); masks are rasterised
once per frame size and cached, so membership tests are a vectorised array lookup. Ground
objects (persons, vehicles, props) are anchored at the bottom centre of their box, where they
touch the ground: a tall person whose head overlaps a zone drawn on the pavement is not in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

import cv2
import numpy as np
from numpy.typing import NDArray

from gridpatrol.site import ALL_DAYS, Schedule

Anchor = Literal["bottom", "center"]
Size = tuple[int, int]  # (width, height) in pixels
NormBox = tuple[float, float, float, float]
MAX_CACHED_SIZES = 8  # frame sizes whose mask (and area) a zone keeps
V = TypeVar("V")


def rasterise(polygon: Sequence[tuple[float, float]], size: Size) -> NDArray[np.bool_]:
    """Boolean (height, width) mask of a normalized polygon at ``size`` = (width, height)."""
    width, height = size
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) * (width, height)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def anchors(xyxy: NDArray[np.float32], anchor: Anchor = "bottom") -> NDArray[np.float32]:
    """Anchor point (N, 2) of each box: bottom centre (ground contact) or centre."""
    x = (xyxy[:, 0] + xyxy[:, 2]) / 2
    y = xyxy[:, 3] if anchor == "bottom" else (xyxy[:, 1] + xyxy[:, 3]) / 2
    return np.stack([x, y], axis=1).astype(np.float32)


def _cached(cache: dict[Size, V], size: Size) -> V | None:
    """The value cached for ``size``, now the most recently used one; None when there is none."""
    value = cache.pop(size, None)
    if value is not None:
        cache[size] = value  # dicts keep insertion order: the end is the latest use
    return value


def _keep(cache: dict[Size, V], size: Size, value: V) -> None:
    """Cache ``value`` for ``size``, dropping the least recently used sizes beyond
    MAX_CACHED_SIZES."""
    while len(cache) >= MAX_CACHED_SIZES:
        del cache[next(iter(cache))]
    cache[size] = value


@dataclass
class ZoneGeometry:
    """A zone's polygon with masks cached per frame size."""

    polygon: tuple[tuple[float, float], ...]
    _masks: dict[Size, NDArray[np.bool_]] = field(default_factory=dict, repr=False)
    _areas: dict[Size, int] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, polygon: Sequence[tuple[float, float]]) -> ZoneGeometry:
        return cls(tuple((float(x), float(y)) for x, y in polygon))

    def mask(self, size: Size) -> NDArray[np.bool_]:
        cached = _cached(self._masks, size)
        if cached is None:
            # A handful of sizes per camera (frame, background) in use at once; a source of
            # ever new sizes (a folder of stills, a camera changing resolution) must not keep
            # a full-resolution mask of each: the ones used least recently go.
            cached = rasterise(self.polygon, size)
            _keep(self._masks, size, cached)
        return cached

    def area(self, size: Size) -> int:
        """Pixels of the zone at ``size`` (cached like the mask)."""
        cached = _cached(self._areas, size)
        if cached is None:
            cached = int(self.mask(size).sum())
            _keep(self._areas, size, cached)
        return cached

    @property
    def bbox(self) -> NormBox:
        """Normalized bounding box of the polygon (x1, y1, x2, y2): the crop a scene head scores."""
        pts = np.asarray(self.polygon)
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        return (float(x1), float(y1), float(x2), float(y2))

    def contains(self, points: NDArray[np.float32], size: Size) -> NDArray[np.bool_]:
        """Which pixel points (N, 2) fall inside the zone at frame ``size``."""
        if len(points) == 0:
            return np.zeros(0, dtype=bool)
        width, height = size
        col = np.clip(points[:, 0].astype(np.int64), 0, width - 1)
        row = np.clip(points[:, 1].astype(np.int64), 0, height - 1)
        return self.mask(size)[row, col]

    def boxes_in(
        self, xyxy: NDArray[np.float32], size: Size, anchor: Anchor = "bottom"
    ) -> NDArray[np.bool_]:
        """Which boxes (pixels) have their anchor inside the zone."""
        return self.contains(anchors(xyxy, anchor), size)


def schedule_active(schedule: Schedule | None, t: datetime, tz: ZoneInfo) -> bool:
    """Whether a zone's rules are active at ``t`` (timezone-aware) in the site time zone.

    ``to`` is inclusive to the minute (the default 00:00-23:59 is the whole day). A window
    with ``from > to`` crosses midnight and belongs to the day it starts on: with
    ``days: [fri], from: "22:00", to: "06:00"`` Saturday 03:00 is active and Friday 03:00 is
    not. ``from == to`` means the whole day starting at ``from``.
    """
    if schedule is None:
        return True
    if t.tzinfo is None:
        raise ValueError("schedule_active needs a timezone-aware datetime")
    local = t.astimezone(tz)
    now = local.hour * 60 + local.minute
    start, end = schedule.minutes
    if start < end:
        started_on = local if start <= now <= end else None
    elif start == end:
        started_on = local if now >= start else local - timedelta(days=1)
    elif now >= start:
        started_on = local
    elif now <= end:
        started_on = local - timedelta(days=1)
    else:
        started_on = None
    return started_on is not None and ALL_DAYS[started_on.weekday()] in schedule.days

"""Patrol scheduling: many ``interval_s`` cameras share one ``patrol.max_fps`` budget.

Pure logic with time passed in. Visits are handed out at most ``max_fps`` per second; among the
cameras whose interval has elapsed, the one with the smallest virtual start time goes next
(start-time fair queueing, weighted by ``weight``). Each visit advances a camera's virtual time
by ``1 / weight``, so under overload cameras are visited in proportion to their weight, and a
camera never comes round more often than its interval. A camera its interval holds back keeps
the credit of the visits it did not take, so that it comes round at its interval when its
weighted share allows that, but at most one round of the patrol's worth (the virtual time in
which the camera of least weight gets one visit): a camera idle for long (its interval holding
it, backing off) cannot then take the budget for more than a round ahead of the others.
A camera with an active violation can be boosted: its weight is multiplied for a while, then
falls back by itself. A camera whose visits get no frame is tried every 2, 4, then 8 intervals
until one succeeds: opening a dead camera takes seconds, and a few of them would otherwise hold
up the patrol of all the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gridpatrol.site import MAX_WEIGHT, MIN_WEIGHT, PATROL_VISITS, Camera

MAX_BACKOFF = 8  # a failing camera is still tried at least every 8 intervals
# A visit at most this fraction of a period after its slot keeps the slots' pace: the patrol
# loop wakes a little late after every wait, and at hundreds of fps restarting the period from
# each late wake-up would lose a large part of the budget.
LATE_TOLERANCE = 0.25


@dataclass
class _Entry:
    interval_s: float
    weight: float
    finish: float = 0.0  # virtual finish time of the last visit
    last_visit: float | None = None
    boost: float = 1.0
    boost_until: float = 0.0
    visits: int = 0
    failures: int = 0  # consecutive visits that got no frame


@dataclass(frozen=True)
class Decision:
    """``camera_id`` to visit now, or None and how long to wait before asking again."""

    camera_id: str | None
    wait_s: float


class PatrolScheduler:
    def __init__(self, max_fps: float) -> None:
        if not 0 < max_fps < math.inf:
            raise ValueError("max_fps must be positive and finite")
        self.period = 1.0 / max_fps
        self._cams: dict[str, _Entry] = {}
        self._vtime = 0.0
        self._next_slot: float | None = None

    def add(self, camera_id: str, interval_s: float, weight: float = 1.0) -> None:
        if not 0 < interval_s < math.inf:  # NaN fails too
            raise ValueError(f"camera {camera_id}: interval_s must be positive, finite")
        # Outside the site file's range 1 / weight and the shares would leave floating point.
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise ValueError(
                f"camera {camera_id}: weight must be within {MIN_WEIGHT:g}-{MAX_WEIGHT:g}"
            )
        # A newcomer starts at the current virtual time: no credit for the past.
        self._cams[camera_id] = _Entry(interval_s, weight, finish=self._vtime)

    def remove(self, camera_id: str) -> None:
        self._cams.pop(camera_id, None)

    def boost(
        self, camera_id: str, now: float, factor: float = 4.0, duration_s: float = 600.0
    ) -> None:
        """Multiply the camera's weight by ``factor`` until ``now + duration_s``."""
        entry = self._cams[camera_id]
        entry.boost = max(factor, 1.0)
        entry.boost_until = now + duration_s

    def weight(self, camera_id: str, now: float) -> float:
        entry = self._cams[camera_id]
        return entry.weight * (entry.boost if now < entry.boost_until else 1.0)

    def visits(self, camera_id: str) -> int:
        return self._cams[camera_id].visits

    def failed(self, camera_id: str) -> float:
        """The last visit got no frame; returns the seconds until the camera is tried again."""
        entry = self._cams[camera_id]
        entry.failures += 1
        return entry.interval_s * _backoff(entry.failures)

    def succeeded(self, camera_id: str) -> None:
        self._cams[camera_id].failures = 0

    def next(self, now: float) -> Decision:
        """Pick the camera to visit at ``now`` and record the visit, or say how long to wait."""
        if not self._cams:
            return Decision(None, self.period)
        if self._next_slot is not None and now < self._next_slot:
            return Decision(None, self._next_slot - now)
        due = [cid for cid, e in self._cams.items() if self._due_in(e, now) <= 0]
        if not due:
            wait = min(self._due_in(e, now) for e in self._cams.values())
            return Decision(None, wait)
        # The credit a camera may hold: one round, the virtual time of one visit of the due
        # camera of least weight. Not raised to the virtual time itself: that would wipe the
        # credit of a camera its interval held back while the others were visited, and under
        # overload a weighted or boosted camera would come round no more often than the rest.
        # Less than a round is not enough either, as the virtual time moves on in steps of up
        # to a round. Of the due cameras only: a light camera due once a day would otherwise
        # let one back from failures take a hundred visits in a row.
        floor = self._vtime - max(1.0 / self._cams[cid].weight for cid in due)
        chosen = min(due, key=lambda cid: self._order(cid, floor))
        self._visit(chosen, now, floor)
        return Decision(chosen, 0.0)

    def _order(self, camera_id: str, floor: float) -> tuple[float, float, str]:
        """Smallest virtual start first; on a tie, the camera waiting longest."""
        entry = self._cams[camera_id]
        last = entry.last_visit if entry.last_visit is not None else float("-inf")
        return (max(entry.finish, floor), last, camera_id)

    def _due_in(self, entry: _Entry, now: float) -> float:
        if entry.last_visit is None:
            return 0.0
        return entry.last_visit + entry.interval_s * _backoff(entry.failures) - now

    def _visit(self, camera_id: str, now: float, floor: float) -> None:
        entry = self._cams[camera_id]
        start = max(entry.finish, floor)
        self._vtime = max(self._vtime, start)
        entry.finish = start + 1.0 / self.weight(camera_id, now)
        entry.last_visit = now
        entry.visits += 1
        self._next_slot = self._slot_after(now)

    def _slot_after(self, now: float) -> float:
        """The earliest time of the visit after one made at ``now``."""
        slot = self._next_slot
        if slot is not None and now - slot <= LATE_TOLERANCE * self.period:
            return slot + self.period  # woken a little late: keep the pace of the slots
        # Far behind (a slow visit, an idle spell): a period after this visit, not after the
        # slot it was due at, so that falling behind does not turn into a burst afterwards.
        return now + self.period


def _backoff(failures: int) -> int:
    return min(1 << min(failures, 8), MAX_BACKOFF)


def expected_revisit_s(
    cameras: Mapping[str, tuple[float, float]], max_fps: float
) -> dict[str, float]:
    """How often each patrol camera comes round in the long run, in seconds, from its
    ``(interval_s, weight)`` and the shared budget: the scheduler's fair shares, computed.

    Cameras that ask for less than their weighted share get their interval; the budget they
    leave is shared by the others in proportion to their weights (water-filling). Under
    overload a camera is visited less often than its interval asks.
    """
    rates: dict[str, float] = {}
    left = dict(cameras)
    budget = max_fps
    while left:
        total = sum(w for _, w in left.values())
        modest = {c: 1.0 / i for c, (i, w) in left.items() if 1.0 / i <= budget * w / total}
        if not modest:
            rates.update({c: budget * w / total for c, (_, w) in left.items()})
            break
        rates.update(modest)
        budget -= sum(modest.values())
        for camera_id in modest:
            del left[camera_id]
    # A share rounded to nothing (the budget used up to the last bit) is never a visit.
    return {c: 1.0 / r if r > 0 else math.inf for c, r in rates.items()}


def overload_report(
    cameras: Mapping[str, tuple[float, float]], max_fps: float, hold_visits: float
) -> list[str]:
    """Lines about patrol cameras visited less often than their interval; none when the budget
    suffices. ``hold_visits``: how many intervals a dwell survives between two visits."""
    demand = sum(1.0 / interval for interval, _ in cameras.values())
    if demand <= max_fps * 1.001:
        return []
    revisit = expected_revisit_s(cameras, max_fps)
    late = sorted(
        (c for c in cameras if revisit[c] > cameras[c][0] * 1.001), key=revisit.__getitem__
    )
    lines = [
        f"patrol: the cameras ask for {demand:.2f} visits/s and the budget is {max_fps:g} fps: "
        f"{len(late)} come round less often than their interval_s"
    ]
    lost = [c for c in late if revisit[c] > hold_visits * cameras[c][0]]
    if lost:
        shown = ", ".join(f"{c} every {revisit[c]:.0f} s" for c in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        lines.append(
            f"patrol: beyond {hold_visits:g} intervals between visits no dwell can build up "
            f"(raise patrol.max_fps, lengthen interval_s or weight them): {shown}{more}"
        )
    return lines


def patrol_overload(cameras: Sequence[Camera], max_fps: float) -> list[str]:
    """:func:`overload_report` for the patrol cameras among ``cameras``."""
    patrol = {c.id: (c.interval_s, c.weight) for c in cameras if c.interval_s is not None}
    return overload_report(patrol, max_fps, PATROL_VISITS)

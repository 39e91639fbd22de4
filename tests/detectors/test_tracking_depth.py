"""Stationary or not, for a person whose box changes size: walking away from or towards the
camera moves the box's centre little against its size, sitting down, standing up, swaying or
having the legs hidden do not move the person at all."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from gridpatrol.detectors.tracking import Tracker
from gridpatrol.detectors.types import Detections

FPS = 4.0
SPAN_S = 3.0
# (top, bottom, centre x, width) of the box at a time in seconds.
Pose = tuple[float, float, float, float]


def walker_away(t: float) -> Pose:
    """As a walker on the pedestrian street footage, seen from above: the feet rise faster
    than the head (32 and 20 px/s), the box shrinks from 173 px to 149 px in 2 s while its
    centre moves 0.35 of the box, and half a box only after 2.7 s."""
    top, bottom = 111.0 - 20.0 * t, 284.0 - 32.0 * t
    return top, bottom, 1680.0, 0.38 * (bottom - top)


def walker_towards(t: float) -> Pose:
    """The same walk reversed: the head and the feet sink, the box grows."""
    return walker_away(SPAN_S - t)


def sitting_down(t: float) -> Pose:
    """Stands 1 s, sits down over the next second (the head sinks 60 px, the feet stay, the
    knees widen the box), then sits."""
    s = min(max(t - 1.0, 0.0), 1.0)
    return 100.0 + 60.0 * s, 280.0, 500.0, 60.0 + 20.0 * s


def standing_up(t: float) -> Pose:
    return sitting_down(SPAN_S - t)


def swaying(t: float) -> Pose:
    """Shifting from foot to foot: 12 px either way, the head bobbing 4 px."""
    phase = math.sin(2 * math.pi * t / 1.5)
    return 100.0 + 4.0 * phase, 280.0, 500.0 + 12.0 * phase, 60.0


def standing_still(t: float) -> Pose:
    return 100.0, 280.0, 500.0, 60.0


def legs_hidden(t: float) -> Pose:
    """Standing; from 2.25 s a passer-by in front hides the legs: the box ends 70 px higher."""
    return 100.0, 280.0 if t < 2.25 else 210.0, 500.0, 60.0


def _judged(pose: Callable[[float], Pose], span_s: float) -> list[bool]:
    """Whether the one track is stationary at 0.5 on each frame at FPS from 2 s to span_s."""
    tracker = Tracker(history_s=10.0)
    judged: list[bool] = []
    for k in range(int(span_s * FPS) + 1):
        t = k / FPS
        top, bottom, cx, width = pose(t)
        box = [cx - width / 2, top, cx + width / 2, bottom]
        out = tracker.update(Detections.from_arrays([box], [0.9], [0]), t)
        assert out.tracker_id is not None and out.tracker_id.tolist() == [1]
        if t >= 2.0:
            judged.append(bool(tracker.motion(out.tracker_id).stationary(0.5, 2.0)[0]))
    return judged


@pytest.mark.parametrize(
    ("pose", "stationary"),
    [
        (walker_away, False),
        (walker_towards, False),
        (sitting_down, True),
        (standing_up, True),
        (swaying, True),
        (standing_still, True),
        (legs_hidden, True),
    ],
)
def test_a_walk_in_depth_moves_and_a_change_of_posture_does_not(
    pose: Callable[[float], Pose], stationary: bool
) -> None:
    judged = _judged(pose, SPAN_S)
    # Every frame from 2 s on (5 at 4 fps), not just the last: walking away, the centre
    # covers half a box only after 2.7 s.
    assert judged == [stationary] * 5


def test_the_depth_test_reads_the_window_the_history_keeps() -> None:
    """A walk away 3 s long that ended 3 s before: out of a 2 s window, it no longer counts."""
    tracker = Tracker(history_s=2.0)
    for k in range(int(6.0 * FPS) + 1):
        t = k / FPS
        top, bottom, cx, width = walker_away(min(t, SPAN_S))
        box = [cx - width / 2, top, cx + width / 2, bottom]
        out = tracker.update(Detections.from_arrays([box], [0.9], [0]), t)
        if t == SPAN_S:
            assert out.tracker_id is not None
            motion = tracker.motion(out.tracker_id)
            assert motion.displacement.tolist() == [np.inf]
    assert out.tracker_id is not None
    assert tracker.motion(out.tracker_id).displacement.tolist() == [0.0]
    (track,) = tracker.tracks
    assert len(track.extents) == len(track.history)


def _jittered(top_sd: float, bottom_sd: float, seed: int) -> Callable[[float], Pose]:
    """A person standing still whose box's top and bottom jitter by these shares of its 180 px
    height, as the detector's do from frame to frame (the height by 5-20 %)."""
    rng = np.random.default_rng(seed)
    noise: dict[float, tuple[float, float]] = {}

    def pose(t: float) -> Pose:
        if t not in noise:
            noise[t] = (rng.normal(0.0, top_sd), rng.normal(0.0, bottom_sd))
        dt, db = noise[t]
        return 100.0 + 180.0 * dt, 280.0 + 180.0 * db, 500.0, 70.0

    return pose


def _two_shapes(t: float) -> Pose:
    """A still object whose box the model finds in two shapes on and off, as a parked bicycle
    on the pedestrian street footage read from re-encoded copies of one frame: 218 px high
    from 797, or 261 px from 809 (the top lower by 0.28 of the height's change)."""
    if int(t * FPS) % 5 in (1, 2):
        return 809.0, 1070.0, 500.0, 207.0
    return 797.0, 1015.0, 500.0, 207.0


@pytest.mark.parametrize(
    "pose",
    [
        _jittered(0.02, 0.04, 1),
        _jittered(0.02, 0.06, 2),
        _jittered(0.03, 0.06, 3),
        _jittered(0.03, 0.08, 4),
        _jittered(0.03, 0.08, 5),
        _two_shapes,
    ],
    ids=["2-4%", "2-6%", "3-6%", "3-8%", "3-8%-b", "two-shapes"],
)
def test_a_still_box_that_jitters_stays_stationary_over_a_minute(
    pose: Callable[[float], Pose],
) -> None:
    """Some pair of jittered samples looks like a step in depth; no trend over the window
    does: stationary on every frame from 2 s on, for a minute at 4 fps."""
    assert _judged(pose, 60.0) == [True] * 233

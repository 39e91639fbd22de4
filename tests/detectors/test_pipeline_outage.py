"""Camera rule pipeline after an outage: frames that never came are no absence, also when the
first frame after them misses the object."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from gridpatrol.detectors.pipeline import CameraPipeline, RuleEvent
from tests.detectors.test_pipeline import NAMES, PARKED, SHANGHAI, SIZE, T0, WHOLE, camera, dets


@pytest.mark.parametrize(
    ("name", "parked", "expected"),
    [
        # The tracker needs the car again before it counts as parked: frames back from 370 s
        # show no parked car for a few seconds, which is no reason to end the episode.
        ("the car there all along", lambda s: s != 370, [("raise", 62.0, 60.0)]),
        # Gone for good: cleared clear_s (60 s) after the first frame back, the dwell up to
        # its last sighting before the outage.
        ("the car gone during the outage", lambda s: s < 370,
         [("raise", 62.0, 60.0), ("clear", 430.0, 298.0)]),
    ],
)  # fmt: skip
def test_an_outage_then_a_frame_without_the_car(
    name: str, parked: Callable[[float], bool], expected: list[tuple[str, float, float]]
) -> None:
    """A car parked in view of a 2 fps camera from 0 s; no frame from 300 s to 370 s."""
    zone = {"id": "kerb", "polygon": WHOLE,
            "rules": {"illegal_parking": {"dwell_s": 60, "update_s": 3600}}}  # fmt: skip
    pipe = CameraPipeline(camera([zone], fps=2), SHANGHAI, NAMES)
    events: list[RuleEvent] = []
    for k in range(1001):
        s = k / 2
        if 300 < s < 370:
            continue
        events += pipe.process(T0 + timedelta(seconds=s), SIZE, dets([PARKED] if parked(s) else []))
    got = [(e.kind, (e.t - T0).total_seconds(), e.dwell_s) for e in events]
    assert got == expected, name
